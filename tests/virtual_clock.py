"""A virtual clock for replayed investigations: time moves only when every thread on it waits.

The engine times its window on a Clock (app.tracers.base): its own thread samples procfs once a
second, the tracer thread holds the window. A captured replay on the machine's clock waited the
window out (3 s a test) and, on a loaded machine, saw its samples land late. On this clock the
threads that take part (the one that made the clock, and every thread started through `start`)
run as fast as they can; when all of them wait, time jumps to the earliest of their deadlines. So
a 3 s window takes as long as its samples take to read, and what the engine computes from the
times (rates, the tracer's marks, how long it ran) is the same on any machine, however loaded.

Only for windows whose tracer holds the window on the clock (procfs, tests.proctree.ReplayTracer):
a real tracer process runs in real time whatever the clock says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.tracers.base import Clock

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005  # how often a waiter looks at an event set by a thread the clock does not know
STALL_SECONDS = 120.0  # a taking-part thread that neither waits nor ends for this long (real) is a bug


class VirtualClock(Clock):
    def __init__(self, start: float | None = None) -> None:
        self._now = time.monotonic() if start is None else start
        self._cond = threading.Condition()
        self._actors: set[threading.Thread] = {threading.current_thread()}
        self._waiting: dict[threading.Thread, tuple[float, Callable[[], bool]]] = {}
        self.jumps = 0  # times time moved on (a test can check the replay did not wait in real time)
        self.stalls = 0  # times time moved on because a thread was stuck (STALL_SECONDS), not waiting

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return self._until(event.is_set, timeout)

    def join(self, thread: threading.Thread, timeout: float) -> None:
        if self._until(lambda: thread not in self._actors or not thread.is_alive(), timeout):
            thread.join()  # it left the clock: its last lines, in real time

    def start(self, thread: threading.Thread) -> None:
        """Start `thread` as one that takes part: time waits for it until it ends."""
        run = thread.run

        def taking_part() -> None:
            try:
                run()
            finally:
                with self._cond:
                    self._actors.discard(thread)
                    self._cond.notify_all()

        thread.run = taking_part  # type: ignore[method-assign]
        with self._cond:
            self._actors.add(thread)
        thread.start()

    def _until(self, done: Callable[[], bool], timeout: float) -> bool:
        me = threading.current_thread()
        with self._cond:
            deadline = self._now + max(0.0, timeout)
            self._waiting[me] = (deadline, done)
            stuck_since = time.monotonic()
            try:
                while True:
                    if done():
                        return True
                    if self._now >= deadline:
                        return False
                    all_wait = self._all_wait()
                    if all_wait or time.monotonic() - stuck_since > STALL_SECONDS:
                        if not all_wait:
                            self.stalls += 1
                            log.warning("virtual clock: a thread neither waited nor ended in %.0f s", STALL_SECONDS)
                        self._now = min(d for d, _ in self._waiting.values())
                        self.jumps += 1
                        stuck_since = time.monotonic()
                        self._cond.notify_all()
                        continue  # this thread's deadline may be the one reached
                    self._cond.wait(POLL_SECONDS)
            finally:
                del self._waiting[me]
                self._cond.notify_all()

    def _all_wait(self) -> bool:
        """Every taking-part thread waits, and none of them is about to wake (its event set)."""
        live = {t for t in self._actors if t.ident is None or t.is_alive()}  # started through us, or running
        if not live <= self._waiting.keys():
            return False
        # one whose event is set, or whose deadline came, is about to wake: it runs first
        return not any(deadline <= self._now or done() for deadline, done in self._waiting.values())

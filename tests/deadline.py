"""Deadline tests that hold on a loaded machine.

A test of a deadline used to time the call and assert an upper bound ("took < 1.5 s"): on a busy
machine the scheduler alone can exceed that, and the test failed while the code was right. Here the
peer never finishes (a stand-in that hangs, trickles a byte every few seconds through a long body, or
never accepts), so the call can only return through its own deadline: that it returns at all, with the
deadline's message, is the check. What is timed is a lower bound (load only makes a call later, never
earlier: robust) and a hang guard many times the deadline, which fails a deadline that does not work
instead of letting the test wait for pytest's timeout; it is not a timing assertion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HANG_GUARD_SECONDS = 60.0  # 20x and more the deadlines tested here (0.3-3 s)


def ends_by_deadline(call: Callable[[], T], *, at_least: float, what: str) -> tuple[T, float]:
    """Run `call` (against a peer that never finishes) in a thread; return its result and how long it
    took. Fails when it is still blocked after HANG_GUARD_SECONDS (the deadline does not work) or
    returned before `at_least` seconds (the deadline is shorter than configured)."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, name="deadline-call", daemon=True)
    worker.start()
    worker.join(HANG_GUARD_SECONDS)
    took = time.monotonic() - t0
    assert not worker.is_alive(), f"{what} still blocked {HANG_GUARD_SECONDS:.0f} s in: its deadline does not end it"
    if errors:
        raise errors[0]
    assert took >= at_least, f"{what} returned after {took:.2f} s, before its {at_least} s deadline"
    return box[0], took

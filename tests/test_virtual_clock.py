"""The virtual clock captured replays run on (tests/virtual_clock.py): time moves only when every thread
on it waits, to the earliest deadline; a thread at work holds it still."""

from __future__ import annotations

import threading
import time

from tests.virtual_clock import VirtualClock


def test_a_long_wait_takes_no_real_time_and_lands_on_its_deadline() -> None:
    clock = VirtualClock(start=100.0)
    t0 = time.monotonic()
    assert clock.wait(threading.Event(), 30.0) is False
    assert clock.monotonic() == 130.0
    assert time.monotonic() - t0 < 5  # not 30 s (a bound for a loaded machine: quiet it is milliseconds)


def test_time_waits_for_a_thread_at_work_and_jumps_to_the_earliest_deadline() -> None:
    clock = VirtualClock(start=0.0)
    seen: list[tuple[str, float]] = []
    working = threading.Event()
    go_on = threading.Event()

    def worker() -> None:
        seen.append(("worker starts", clock.monotonic()))
        working.set()
        go_on.wait(30)  # real work, not on the clock: time must not move meanwhile
        seen.append(("worker waits", clock.monotonic()))
        clock.wait(threading.Event(), 2.0)
        seen.append(("worker wakes", clock.monotonic()))

    t = threading.Thread(target=worker)
    clock.start(t)
    assert working.wait(30)
    waiter = threading.Thread(target=lambda: seen.append(("main wakes", clock.monotonic())))
    # the main thread waits 5 s on the clock while the worker is still at work: nothing moves until it waits
    threading.Timer(0.2, go_on.set).start()
    clock.wait(threading.Event(), 5.0)
    waiter.start()
    waiter.join()
    clock.join(t, 10.0)
    assert not t.is_alive()
    assert seen == [("worker starts", 0.0), ("worker waits", 0.0), ("worker wakes", 2.0), ("main wakes", 5.0)]


def test_an_event_set_by_another_thread_wakes_its_waiter_at_that_time() -> None:
    clock = VirtualClock(start=0.0)
    stop = threading.Event()

    def setter() -> None:
        clock.wait(threading.Event(), 1.5)
        stop.set()

    t = threading.Thread(target=setter)
    clock.start(t)
    assert clock.wait(stop, 30.0) is True
    assert clock.monotonic() == 1.5
    clock.join(t, 1.0)
    assert not t.is_alive()


def test_join_returns_at_its_timeout_when_the_thread_keeps_waiting() -> None:
    clock = VirtualClock(start=0.0)
    release = threading.Event()
    t = threading.Thread(target=lambda: clock.wait(release, 60.0))
    clock.start(t)
    clock.join(t, 4.0)
    assert t.is_alive() and clock.monotonic() == 4.0
    release.set()
    clock.join(t, 1.0)
    assert not t.is_alive() and clock.monotonic() == 4.0

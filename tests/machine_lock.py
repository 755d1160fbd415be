"""Two pytest processes sharing the machine in the suite's second pass (./test.sh, issue 25; the first pass,
running beside them, takes no lock: its tests start no workload or tracer).

The second pass runs its tests in two processes side by side. Most of its tests make their own
workload in their own memory cgroup and investigate only its pids: two of them at once only share the
CPUs and the disk, which every test must stand anyway (CI and nodes are busy). A test marked `machine`
needs the machine to itself: it changes what every other test's workload runs under (a zram device at
the highest swap priority, vm.swappiness, vm.page-cluster), or investigates the whole node (another
test's faults would be in its report), or measures what the machine costs it. Such a test holds an
exclusive lock while the other tests hold a shared one; a process waiting for the exclusive lock
stops new shared holders first (a turnstile), so it is not starved by the other process's stream of
short tests.

The locks are flock(2)s on files under /run (given up by the kernel when a process dies, also by
SIGKILL). Only when PFI_PASS_LOCK names the lock's folder (./test.sh sets it for the two processes);
anywhere else this does nothing.
A module marked `machine` at module level (pytestmark) holds its lock from its first test to its last,
so a module-scoped fixture that changes the machine (tests/test_tracers.py's zram device) lives inside it.

The swap set-up has a lock of its own (`swap_hold`), taken by the workload helpers themselves for as
long as they hold what they made: the test swap file shared (tests/workloads swap_enabled), a zram
device or the vm sysctls exclusive (zram_swap, zoo's vm_sysctls). So a zoo row at swappiness 200 runs
beside a file row of the other process, never beside a disk-swap row. A swap lock is only ever taken
inside a test's hold of the node lock and given back before it (fixtures set up and torn down inside the
test's protocol): the two locks are always taken in one order, and the two processes cannot deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "PFI_PASS_LOCK"


class PassLock:
    """A shared/exclusive lock of one process: `want(mode)` before a test, `release()` after; or
    `hold(mode)`, which nests (the strongest mode held inside the process is the one taken)."""

    def __init__(self, folder: Path, name: str = "node") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._gate = os.open(folder / f"{name}.gate", os.O_RDWR | os.O_CREAT, 0o600)
        self._main = os.open(folder / f"{name}.main", os.O_RDWR | os.O_CREAT, 0o600)
        self.mode: str | None = None  # "shared", "exclusive" or None (not held)
        self._holds = {"shared": 0, "exclusive": 0}

    @contextlib.contextmanager
    def hold(self, mode: str) -> Iterator[None]:
        self._holds[mode] += 1
        try:
            self._settle()
            yield
        finally:
            self._holds[mode] -= 1
            self._settle()

    def _settle(self) -> None:
        wanted = "exclusive" if self._holds["exclusive"] else "shared" if self._holds["shared"] else None
        if wanted is None:
            self.release()
        else:
            self.want(wanted)

    def want(self, mode: str) -> None:
        if self.mode == mode:
            return
        self.release()
        # The gate: an exclusive taker holds it while it waits and while it runs, so shared takers queue
        # behind it; a shared taker passes through it.
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        if mode == "exclusive":
            fcntl.flock(self._main, fcntl.LOCK_EX)
        else:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
            fcntl.flock(self._main, fcntl.LOCK_SH)
        self.mode = mode

    def release(self) -> None:
        if self.mode is None:
            return
        fcntl.flock(self._main, fcntl.LOCK_UN)
        if self.mode == "exclusive":
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        self.mode = None


def mode_of(item: pytest.Item) -> str:
    return "exclusive" if item.get_closest_marker("machine") else "shared"


def module_held(item: pytest.Item) -> bool:
    """Whether the item's module is marked `machine` as a whole (its lock spans the module)."""
    module = getattr(item, "module", None)
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return any(getattr(m, "name", None) == "machine" for m in marks)


def keep_after(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether the lock stays held from `item` to `nextitem`: inside a module marked as a whole, and from one
    `machine` test to the next (machine_first puts them together)."""
    if nextitem is None:
        return False
    if mode_of(item) == "exclusive" and mode_of(nextitem) == "exclusive":
        return True
    return module_held(item) and getattr(nextitem, "module", None) is getattr(item, "module", None)


def machine_first(items: list[pytest.Item]) -> None:
    """In the second pass's processes, their `machine` tests first, in their order, then the rest in theirs.
    Spread among the others, each machine test waited for the other process's test of the moment to end (a
    zoo row: up to 40 s) and stopped that process meanwhile; together at the start, the lock is taken once
    for all of them (keep_after), they wait for each other's process once, and the first pass, which runs
    beside them without the lock, fills the CPU they leave idle."""
    if os.environ.get(ENV):
        items.sort(key=lambda item: mode_of(item) != "exclusive")  # stable: the order within each kind stays


_lock: PassLock | None = None
_swap: PassLock | None = None


@contextlib.contextmanager
def swap_hold(mode: str) -> Iterator[None]:
    """The swap set-up's lock for the duration ("shared": uses the test swap file; "exclusive": a zram
    device or the vm sysctls); nothing outside the second pass's two processes."""
    global _swap
    folder = os.environ.get(ENV)
    if not folder:
        yield
        return
    if _swap is None:
        _swap = PassLock(Path(folder), "swap")
    with _swap.hold(mode):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    global _lock
    folder = os.environ.get(ENV)
    if not folder:
        yield
        return
    if _lock is None:
        _lock = PassLock(Path(folder))
    _lock.want(mode_of(item))
    try:
        yield
    finally:
        if not keep_after(item, nextitem):
            _lock.release()

"""One snapshot of each reported process at the window's end (psutil's `oneshot()` idea).

After the window the investigation reads, for each process it reports, its /proc/PID/{cgroup, cmdline,
io, status, ns/mnt} once, its memory cgroup's files once per group (the binding limit, usage, refaults),
and its smaps and pagemap at most once, when a rule asks for them (they can be large). The sampler's
swap evidence, the report's process section, the diagnosis and the recommendation all take what they
need from here: nothing of a reported process is read twice after the window (tests/test_snapshot.py
counts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.collectors.cgroupmem import read_group_memory
from app.collectors.procfs import ProcFS
from app.models import CgroupMemory
from app.parsers.cgroup import CgroupRef
from app.parsers.procfs import ProcStatus, SmapsEntry

__all__ = ["ProcessSnapshot", "WindowEnd"]

@dataclass
class ProcessSnapshot:
    """What one process looked like at the window's end; smaps and pagemap are read on first use, once.

    Of a process that exited during the window only its cgroup and mount namespace are asked for (the
    others are gone with it)."""

    pid: int
    exited: bool
    cgroup: CgroupRef | None
    cgroup_memory: CgroupMemory | None
    cgroup_problem: str | None  # why a process in a memory cgroup has no cgroup_memory (None: it has it)
    cmdline: list[str] | None
    io: dict[str, int] | None
    status: ProcStatus | None
    mnt_ns: str | None
    procfs: ProcFS = field(repr=False)
    _smaps: list[SmapsEntry] | None = field(default=None, repr=False)
    _smaps_read: bool = field(default=False, repr=False)
    _pagemap: dict[tuple[tuple[int, ...], int], dict[int, bytes] | None] = field(default_factory=dict, repr=False)

    def smaps(self) -> list[SmapsEntry] | None:
        """/proc/PID/smaps, read the first time a rule asks for it (None: exited, gone or refused)."""
        if not self._smaps_read:
            self._smaps = self.procfs.smaps(self.pid) if not self.exited else None
            self._smaps_read = True
        return self._smaps

    def pagemap(self, starts: list[int], pages: int) -> dict[int, bytes] | None:
        """/proc/PID/pagemap from each page number in `starts` (ProcFS.pagemap), read once per request."""
        key = (tuple(starts), pages)
        if key not in self._pagemap:
            self._pagemap[key] = self.procfs.pagemap(self.pid, starts, pages) if not self.exited else None
        return self._pagemap[key]

    @property
    def vm_swap_bytes(self) -> int | None:
        return self.status.vm_swap_bytes if self.status is not None else None


class WindowEnd:
    """Takes the snapshots at the window's end; each memory cgroup's files are read once for all of its
    processes. `cgroup_root` None: no cgroup memory (as the sampler without one)."""

    def __init__(self, procfs: ProcFS, cgroup_root: Path | None) -> None:
        self.procfs = procfs
        self.cgroup_root = cgroup_root
        self.snapshots: dict[int, ProcessSnapshot] = {}
        self._groups: dict[tuple[int, str], tuple[CgroupMemory | None, str | None]] = {}

    def take(self, pid: int, exited: bool) -> ProcessSnapshot:
        """The snapshot of `pid` (read now, the first time it is asked for)."""
        snap = self.snapshots.get(pid)
        if snap is not None:
            return snap
        procfs = self.procfs
        ref = procfs.cgroup(pid)
        mem, problem = self.group(ref)
        alive = not exited
        snap = self.snapshots[pid] = ProcessSnapshot(
            pid=pid, exited=exited, cgroup=ref, cgroup_memory=mem, cgroup_problem=problem,
            cmdline=procfs.cmdline(pid) if alive else None,
            io=procfs.io(pid) if alive else None,
            status=procfs.status(pid) if alive else None,
            mnt_ns=procfs.mnt_ns(pid),
            procfs=procfs,
        )
        return snap

    def group(self, ref: CgroupRef | None) -> tuple[CgroupMemory | None, str | None]:
        """The memory state of the group `ref` names and, when there is none, why (read once per group)."""
        if ref is None or ref.path in ("", "/") or self.cgroup_root is None:
            return None, None
        key = (ref.version, ref.path)
        if key not in self._groups:
            self._groups[key] = read_group_memory(self.cgroup_root, ref)
        return self._groups[key]

"""Per-second sampling of every process's fault counters during the window.

A process is identified by (pid, starttime): a PID reused inside the window is a new process.
Processes that start during the window count all their faults (their baseline is 0); processes that
exit keep what was last seen of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.collectors.cgroupmem import read_cgroup_memory
from app.collectors.procfs import ProcFS
from app.models import CgroupMemory
from app.parsers.cgroup import host_view
from app.parsers.procfs import MapEntry, ProcStat

from .estimate import SwapEvidence

# Bounds: how many processes get a maps/io snapshot when first seen faulting, per tick and in all.
MAX_SNAPSHOTS_PER_TICK = 64
MAX_SNAPSHOT_PROCESSES = 1024
MAX_SNAPSHOTS_PER_PROCESS = 4
MARK_FIRST = 16  # processes read first when the tracer starts and stops


@dataclass
class ProcessTrack:
    pid: int
    starttime: int
    comm: str
    baseline_majflt: int
    baseline_minflt: int
    last: ProcStat
    started_during_window: bool
    exited: bool = False
    series: list[int] = field(default_factory=list)  # majflt delta per tick
    maps: list[list[MapEntry]] = field(default_factory=list)  # snapshots, oldest first
    io_first: dict[str, int] | None = None
    io_first_tick: int = 0
    # Swap-vs-file evidence at the first snapshot (procfs backend): VmSwap and the memory cgroup's counters.
    vmswap_first: int | None = None
    cgroup_first: CgroupMemory | None = None

    @property
    def major_faults(self) -> int:
        return max(0, self.last.majflt - self.baseline_majflt)

    @property
    def minor_faults(self) -> int:
        return max(0, self.last.minflt - self.baseline_minflt)


class Sampler:
    """Takes one sample a tick; thread-safe marks for the tracer's start and stop."""

    def __init__(self, procfs: ProcFS, pids: list[int] | None = None, cgroup_root: Path | None = None) -> None:
        self.procfs = procfs
        self.cgroup_root = cgroup_root  # None: no cgroup evidence for the procfs estimates
        self._cgroup_tick: tuple[int, dict[str, CgroupMemory | None]] = (-1, {})
        self.only = set(pids) if pids else None
        self.tracks: dict[int, ProcessTrack] = {}
        self.node_vmstat: list[dict[str, int]] = []
        self.ticks = 0
        self._lock = threading.Lock()
        self.marks: dict[str, dict[int, tuple[int, int]]] = {}  # name -> pid -> (starttime, majflt)
        self.snapshotted = 0

    def _sample(self) -> dict[int, ProcStat]:
        stats = self.procfs.sample_all()
        if self.only is not None:
            stats = {pid: st for pid, st in stats.items() if pid in self.only}
        return stats

    def mark(self, name: str) -> None:
        """Record every process's majflt now (called from the tracer's thread at start/stop).

        Reading all of /proc takes a while on a busy node (0.1 s and more at 5,000 processes), and a
        process faulting 20,000 times a second moves meanwhile. So the likely faulters are read
        first, one by one: the processes with the most major faults so far.
        """
        with self._lock:
            likely = sorted(self.tracks.values(), key=lambda t: -(t.last.majflt - t.baseline_majflt or t.last.majflt))
            first_pids = [t.pid for t in likely[:MARK_FIRST]]
        marks: dict[int, tuple[int, int]] = {}
        for pid in first_pids:
            st = self.procfs.stat(pid)
            if st is not None:
                marks[pid] = (st.starttime, st.majflt)
        for pid, st in self._sample().items():
            marks.setdefault(pid, (st.starttime, st.majflt))
        with self._lock:
            self.marks[name] = marks

    def traced_window_majflt(self, pid: int) -> int | None:
        """majflt delta between the tracer's start and stop marks, when both saw the process."""
        start, stop = self.marks.get("start"), self.marks.get("stop")
        if not start or not stop:
            return None
        track = self.tracks.get(pid)
        b, e = start.get(pid), stop.get(pid)
        if e is None or track is None or e[0] != track.starttime:
            return None
        if b is None or b[0] != e[0]:
            return e[1]  # started after the tracer did: all its faults are in the window
        return e[1] - b[1]

    def first(self) -> None:
        stats = self._sample()
        with self._lock:
            for pid, st in stats.items():
                self.tracks[pid] = ProcessTrack(
                    pid=pid, starttime=st.starttime, comm=st.comm, baseline_majflt=st.majflt,
                    baseline_minflt=st.minflt, last=st, started_during_window=False,
                )
            if self.only:
                for pid in list(self.only)[:MAX_SNAPSHOT_PROCESSES]:
                    self._snapshot(pid)
        self.node_vmstat.append(self.procfs.vmstat())

    def tick(self) -> None:
        stats = self._sample()
        snaps = 0
        with self._lock:
            self.ticks += 1
            seen = set()
            for pid, st in stats.items():
                seen.add(pid)
                track = self.tracks.get(pid)
                if track is None or track.starttime != st.starttime:
                    # New during the window (or a reused PID): every fault it has is in the window.
                    track = ProcessTrack(
                        pid=pid, starttime=st.starttime, comm=st.comm, baseline_majflt=0,
                        baseline_minflt=0, last=st, started_during_window=True,
                        series=[0] * (self.ticks - 1),
                    )
                    self.tracks[pid] = track
                    delta = st.majflt
                else:
                    delta = st.majflt - track.last.majflt
                    track.last = st
                    track.comm = st.comm
                track.series.append(max(0, delta))
                if delta > 0 and not track.maps and snaps < MAX_SNAPSHOTS_PER_TICK and self._snapshot(pid):
                    snaps += 1
            for pid, track in self.tracks.items():
                if pid not in seen and not track.exited:
                    track.exited = True
                if track.exited:
                    track.series.append(0)
        self.node_vmstat.append(self.procfs.vmstat())

    def _snapshot(self, pid: int) -> bool:
        """Keep a maps snapshot (and the io counters) of a process that faults; bounded."""
        track = self.tracks.get(pid)
        if track is None or self.snapshotted >= MAX_SNAPSHOT_PROCESSES:
            return False
        maps = self.procfs.maps(pid)
        if maps is None:
            return False
        if len(track.maps) >= MAX_SNAPSHOTS_PER_PROCESS:
            track.maps.pop(1)  # keep the oldest and the newest ones
        track.maps.append(maps)
        if track.io_first is None:
            track.io_first = self.procfs.io(pid)
            track.io_first_tick = self.ticks
            track.vmswap_first = self._vmswap(pid)
            track.cgroup_first = self._cgroup_memory(pid)
        self.snapshotted += 1
        return True

    def _vmswap(self, pid: int) -> int | None:
        read = getattr(self.procfs, "read_text", None)  # test doubles of ProcFS may not have it
        text = read(f"{pid}/status") if read is not None else None
        for line in (text or "").splitlines():
            if line.startswith("VmSwap:"):
                parts = line.split()
                return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else None
        return None

    def _cgroup_memory(self, pid: int) -> CgroupMemory | None:
        """The process's memory cgroup counters, read once per group per tick (bounded by the snapshots)."""
        if self.cgroup_root is None:
            return None
        ref = self.procfs.cgroup(pid)
        if ref is None or ref.path in ("", "/"):
            return None
        ref = host_view(ref)  # "/../kubepods/..." from inside a cgroup namespace
        tick, cache = self._cgroup_tick
        if tick != self.ticks:
            cache = {}
            self._cgroup_tick = (self.ticks, cache)
        key = f"{ref.version}:{ref.path}"
        if key not in cache:
            cache[key] = read_cgroup_memory(self.cgroup_root, ref)
        return cache[key]

    def swap_evidence(self, track: ProcessTrack) -> SwapEvidence | None:
        """Counter deltas from the process's first snapshot to now, to tell swap-ins from file reads."""
        if track.io_first is None or track.exited:
            return None
        since = track.io_first_tick
        mine = sum(track.series[since:]) if since > 0 else track.major_faults
        vm = self.node_vmstat
        first_vm = vm[min(since, len(vm) - 1)] if vm else {}
        last_vm = vm[-1] if vm else {}

        def node(key: str) -> int | None:
            if key not in last_vm or key not in first_vm:
                return None
            return max(0, last_vm[key] - first_vm[key])

        a, b = track.cgroup_first, self._cgroup_memory(track.pid)
        same = a is not None and b is not None and a.path == b.path

        def cg(key: str) -> int | None:
            if not same:
                return None
            x, y = getattr(a, key), getattr(b, key)
            return max(0, y - x) if x is not None and y is not None else None

        return SwapEvidence(
            seconds=float(max(0, self.ticks - since)),
            process_majflt=mine,
            cgroup_path=b.path if same and b is not None else None,
            cgroup_pgmajfault=cg("pgmajfault"),
            cgroup_refault_anon=cg("workingset_refault_anon"),
            cgroup_refault_file=cg("workingset_refault_file"),
            cgroup_pswpin=cg("pswpin"),
            cgroup_zswpin=cg("zswpin"),
            node_pgmajfault=node("pgmajfault"),
            node_pswpin=node("pswpin"),
            node_zswpin=node("zswpin"),
            vmswap_start=track.vmswap_first,
            vmswap_end=self._vmswap(track.pid),
        )

    def final_snapshot(self, pids: list[int]) -> None:
        """Maps at the end, for the processes that will be reported."""
        with self._lock:
            for pid in pids:
                track = self.tracks.get(pid)
                if track is None or track.exited:
                    continue
                maps = self.procfs.maps(pid)
                if maps is not None:
                    if len(track.maps) >= MAX_SNAPSHOTS_PER_PROCESS:
                        track.maps.pop(1)
                    track.maps.append(maps)

    def ranked(self) -> list[ProcessTrack]:
        with self._lock:
            tracks = [t for t in self.tracks.values() if t.major_faults > 0]
        tracks.sort(key=lambda t: (-t.major_faults, t.pid))
        return tracks

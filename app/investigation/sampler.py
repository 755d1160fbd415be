"""Per-second sampling of every process's fault counters during the window.

A process is identified by (pid, starttime): a PID reused inside the window is a new process.
Processes that start during the window count all their faults (their baseline is 0); processes that
exit keep what was last seen of them.

Incremental scan: reading /proc/PID/stat of every process costs ~25 ms per 1,000 processes, 13-25% of
a core at 5,000 if done every second. So a tick lists /proc (the names that appeared and vanished since
the last tick: new processes and exits, ~1 ms per 1,000; not at all when /proc/loadavg says no task was
created since) and reads only the new processes and those whose majflt rose in the last HOT_TICKS ticks;
it reads
every process (a full scan) when one of these holds:
  - `full_every` ticks have passed since the last full scan (settings.investigation.scan_full_every_seconds);
  - the node's pgmajfault (/proc/vmstat) rose by more than the processes read explain (UNEXPLAINED_MIN
    faults and UNEXPLAINED_SHARE of the node's): someone not read faulted - an idle process woke up,
    a new one started, a hot one exited - so every process is read in this very tick and the faults
    land in the right second;
  - the caller asks for it (`tick(full=True)`: the engine's ticks at the end of the window, so the
    totals the ranking uses are those of a full scan).
A full scan parses only the lines whose (starttime, minflt, majflt) changed. What the incremental ticks
can miss is bounded: faults below the unexplained threshold per second, in a process that was idle when
last read (or whose PID was reused since) and exits before the next full scan. Every process still alive
at the window's end, and every one with more faults than that, has the full scan's counts: the same
ranks and rates (tests/test_sampler_incremental.py).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, KeysView
from dataclasses import dataclass, field
from pathlib import Path

from app.collectors.cgroupmem import read_cgroup_memory, read_refaults, refaults_file
from app.collectors.procfs import ProcFS
from app.models import CgroupMemory
from app.parsers.cgroup import host_view
from app.parsers.procfs import MapEntry, ProcStat, parse_stat_bytes, parse_stat_counters
from app.tracers.base import REAL_CLOCK, Clock

from .estimate import SwapEvidence
from .snapshot import ProcessSnapshot

# Bounds: how many processes get a maps/io snapshot when first seen faulting, per tick and in all.
MAX_SNAPSHOTS_PER_TICK = 64
MAX_SNAPSHOT_PROCESSES = 1024
MAX_SNAPSHOTS_PER_PROCESS = 4
MARK_FIRST = 16  # processes read first when the tracer starts and stops
FULL_SCAN_EVERY = 5  # ticks between full scans, the default of settings.investigation.scan_full_every_seconds
HOT_TICKS = 3  # a process whose majflt rose in one of the last HOT_TICKS ticks is read every tick
UNEXPLAINED_MIN = 32  # node major faults in a tick that the processes read do not explain: this many
UNEXPLAINED_SHARE = 0.02  # and this share of the node's: read every process in that tick
MAX_REFAULT_GROUPS = 8  # memory cgroups whose refaults are read every tick (those of the processes faulting now)
MAX_REFAULT_SAMPLES = 3600  # per group: an hour of ticks


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


@dataclass
class MarkInfo:
    """When a mark read the counters (monotonic s, before its first read), and the node's /proc/vmstat then."""

    time: float
    vmstat: dict[str, int] = field(default_factory=dict)


class Sampler:
    """Takes one sample a tick; thread-safe marks for the tracer's start and stop."""

    def __init__(self, procfs: ProcFS, pids: list[int] | None = None, cgroup_root: Path | None = None,
                 full_every: int = FULL_SCAN_EVERY, clock: Clock = REAL_CLOCK) -> None:
        self.procfs = procfs
        self.clock = clock  # the investigation's: what the read times below are on
        self.cgroup_root = cgroup_root  # None: no cgroup evidence for the procfs estimates
        self._cgroup_tick: tuple[int, dict[str, CgroupMemory | None]] = (-1, {})
        self.only = set(pids) if pids else None
        self.full_every = max(1, full_every)
        self.tracks: dict[int, ProcessTrack] = {}
        self.node_vmstat: list[dict[str, int]] = []
        self.ticks = 0
        self._lock = threading.Lock()
        self.marks: dict[str, dict[int, tuple[int, int]]] = {}  # name -> pid -> (starttime, majflt)
        self.mark_info: dict[str, MarkInfo] = {}  # name -> when it read, and the node's vmstat then
        self.first_time = 0.0  # monotonic time of first()'s read
        self.tick_times: list[float] = []  # monotonic time of each tick's read (tick k at [k - 1])
        self.snapshotted = 0
        self._hot: dict[int, int] = {}  # pid -> the last tick its majflt rose
        self._last_full = 0  # the last tick that read every process
        self._listed: set[str] = set()  # the names in the procfs root at the last listing
        self._last: int | None = None  # the last pid the kernel handed out then (/proc/loadavg): unchanged,
        # no process or thread was created since, and the tick need not list /proc
        self.full_scans = 0  # ticks that read every process
        self.stat_reads = 0  # /proc/PID/stat files read by the ticks
        # cgroup path -> (monotonic time, workingset_refault_file + _anon) each tick, for the groups of the
        # processes faulting then (recommend.refaults_rising: a growing scan, issue 22)
        self.refault_series: dict[str, list[tuple[float, int]]] = {}
        self._refault_files: dict[str, Path | None] = {}  # group path -> its memory.stat, found once a window

    @property
    def incremental(self) -> bool:
        """Whether ticks read only what changed: the node's processes through a real ProcFS (a caller's
        pid list is read in full every tick: it is short; test doubles of ProcFS without raw reads are
        always read in full)."""
        return self.only is None and all(hasattr(self.procfs, m) for m in ("stat_bytes", "listing", "names"))

    def _sample(self) -> dict[int, ProcStat]:
        if self.only is not None and hasattr(self.procfs, "stat_bytes"):
            return _parsed(self.procfs.stat_bytes(sorted(self.only)))
        stats = self.procfs.sample_all()
        if self.only is not None:
            stats = {pid: st for pid, st in stats.items() if pid in self.only}
        return stats

    def _counters(self, pids: list[int]) -> dict[int, tuple[int, int]]:
        """(starttime, majflt) of these processes, read now (only the two fields are parsed)."""
        out: dict[int, tuple[int, int]] = {}
        for pid, data in self.procfs.stat_bytes(pids).items():
            try:
                starttime, _minflt, majflt = parse_stat_counters(data)
            except ValueError:
                continue
            out[pid] = (starttime, majflt)
        return out

    def mark(self, name: str) -> float:
        """Record every process's majflt now (called from the tracer's thread at start/stop); returns when
        (monotonic s) the likeliest faulter's was read: a tracer bounds its samples' times there.

        Reading all of /proc takes a while on a busy node (0.1 s and more at 5,000 processes), and a
        process faulting 20,000 times a second moves meanwhile. So the likely faulters are read
        first, one by one: the processes with the most major faults so far. The mark's time is taken
        around the read of the likeliest one alone (the midpoint of a clock read just before and just
        after it), not before this method began: waiting for the sampler's lock behind a full scan, or for
        the CPU on a busy machine, took 0.1 s and more there, and a tracer whose bounds were taken before
        its two marks then counted a few % more or fewer faults than majflt over them (issue 27).
        """
        with self._lock:
            likely = sorted(self.tracks.values(), key=lambda t: -(t.last.majflt - t.baseline_majflt or t.last.majflt))
            first_pids = [t.pid for t in likely[:MARK_FIRST]]
        at = self.clock.monotonic()
        marks: dict[int, tuple[int, int]] = {}
        if hasattr(self.procfs, "stat_bytes") and hasattr(self.procfs, "listing"):
            if first_pids:
                before = self.clock.monotonic()
                marks.update(self._counters(first_pids[:1]))
                at = (before + self.clock.monotonic()) / 2
            marks.update(self._counters(first_pids[1:]))
            everyone = sorted(self.only) if self.only is not None else self.procfs.listing()
            for pid, counters in self._counters([p for p in everyone if p not in marks]).items():
                marks.setdefault(pid, counters)
        else:
            for pid in first_pids:
                st = self.procfs.stat(pid)
                if st is not None:
                    marks[pid] = (st.starttime, st.majflt)
            for pid, st in self._sample().items():
                marks.setdefault(pid, (st.starttime, st.majflt))
        info = MarkInfo(at, self.procfs.vmstat())  # after the processes: they are the ones that move fast
        with self._lock:
            self.marks[name] = marks
            self.mark_info[name] = info
        return at

    def interval(self) -> tuple[float, float] | None:
        """(start, stop), monotonic, of the tracer's own interval when both its marks were read."""
        s, e = self.mark_info.get("start"), self.mark_info.get("stop")
        if s is None or e is None or "start" not in self.marks or "stop" not in self.marks or e.time <= s.time:
            return None
        return s.time, e.time

    def interval_counts(self, track: ProcessTrack) -> tuple[int, list[int]]:
        """The process's majflt over the tracer's interval (from its start mark to its stop mark), and
        that interval's per-second series (cut at the ticks inside it, the last part-second last).

        A process the start mark did not see counts from the last tick before the start (or from 0 if it
        started later); one the stop mark did not see (it exited) counts to its last read. Needs interval()."""
        span = self.interval()
        assert span is not None, "interval_counts needs both marks"
        start, stop = span
        b, e = self.marks["start"].get(track.pid), self.marks["stop"].get(track.pid)
        with self._lock:
            cum = [track.baseline_majflt]  # majflt at first() and after each tick (idle ticks: unchanged)
            for d in track.series:
                cum.append(cum[-1] + d)
            times = [self.first_time, *self.tick_times]
            at = [min(i, len(cum) - 1) for i in range(len(times))]
            inside = [cum[at[i]] for i in range(len(times)) if start < times[i] < stop]
            before = max(0, bisect.bisect_right(times, start) - 1)  # the last read at or before the start
            lo = b[1] if b is not None and b[0] == track.starttime else cum[at[before]]
            hi = e[1] if e is not None and e[0] == track.starttime else track.last.majflt
        hi = max(hi, lo)
        points = [lo, *(min(max(c, lo), hi) for c in inside), hi]
        return hi - lo, [y - x for x, y in zip(points, points[1:], strict=False)]

    def interval_vmstat(self) -> list[dict[str, int]]:
        """The node's /proc/vmstat at the interval's start mark, at the ticks inside it and at its stop mark."""
        span = self.interval()
        assert span is not None, "interval_vmstat needs both marks"
        start, stop = span
        times = [self.first_time, *self.tick_times]
        inside = [vm for t, vm in zip(times, self.node_vmstat, strict=False) if start < t < stop]
        return [self.mark_info["start"].vmstat, *inside, self.mark_info["stop"].vmstat]

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
        if self.incremental:
            self._last = self._last_pid()  # first, then the listing, then the read: what starts in between
            self._listed = self.procfs.names()  # is read again at tick 1
        self.first_time = self.clock.monotonic()
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

    def tick(self, full: bool = False) -> None:
        """One sample. `full`: read every process this tick (see the module docstring)."""
        at = self.clock.monotonic()
        if not self.incremental:
            stats = self._sample()
            vm = self.procfs.vmstat()
            with self._lock:
                self.tick_times.append(at)
                self.ticks += 1
                self.stat_reads += len(stats)
                self.full_scans += 1
                self._fold(stats.items(), parse_all=True)
                self._gone(set(stats))
                self._pad()
            self.node_vmstat.append(vm)
            self._sample_refaults(at)
            return
        vm = self.procfs.vmstat()  # first: the processes read next explain its rise
        last = self._last_pid()
        listed: set[str] | None = None
        appeared: list[int] = []
        vanished: list[int] = []
        if last is None or last != self._last:  # a task was created since the last listing: list again
            listed = self.procfs.names()
            appeared = [int(n) for n in listed - self._listed if n.isdigit()]
            vanished = [int(n) for n in self._listed - listed if n.isdigit()]
            self._listed = listed
        self._last = last
        with self._lock:
            tick = self.ticks + 1
            self._hot = {pid: at for pid, at in self._hot.items() if tick - at <= HOT_TICKS}
            read = list(self._hot.keys() | appeared)
        raw = self.procfs.stat_bytes(read)
        with self._lock:
            self.ticks = tick
            self.tick_times.append(at)
            explained = self._fold(raw.items(), parse_all=True)
            for pid in (*vanished, *(p for p in read if p not in raw)):
                track = self.tracks.get(pid)
                if track is not None:
                    track.exited = True
            node = _rise(self.node_vmstat[-1] if self.node_vmstat else {}, vm, "pgmajfault")
            full = (full or tick - self._last_full >= self.full_every or node is None
                    or node - explained > max(UNEXPLAINED_MIN, UNEXPLAINED_SHARE * node))
        reads = len(read)
        if full:
            if listed is None:
                listed = self._listed = self.procfs.names()
            rest = [pid for pid in map(int, filter(str.isdigit, listed)) if pid not in raw]
            raw2 = self.procfs.stat_bytes(rest)
            reads += len(rest)
            with self._lock:
                self._fold(raw2.items(), parse_all=False)
                self._gone(raw.keys() | raw2.keys())
                self._last_full = tick
                self.full_scans += 1
        with self._lock:
            self.stat_reads += reads  # (the idle tracks' zeros are added when read: ranked(), pad_series())
        self.node_vmstat.append(vm)
        self._sample_refaults(at)

    def _sample_refaults(self, at: float) -> None:
        """The refaults of the memory cgroups of the processes faulting now (or the ones asked for), once per
        group, MAX_REFAULT_GROUPS groups a tick (the hottest processes' first): refault_series."""
        if self.cgroup_root is None:
            return
        with self._lock:
            pids = set(self._hot) | (self.only or set())
            tracks = sorted((t for pid in pids if (t := self.tracks.get(pid)) is not None
                             and t.cgroup_first is not None and not t.exited), key=lambda t: -t.major_faults)
        done: set[str] = set()
        for t in tracks:
            assert t.cgroup_first is not None
            if t.cgroup_first.path in done:
                continue
            if len(done) >= MAX_REFAULT_GROUPS:
                break
            done.add(t.cgroup_first.path)
            # by the group first seen, its memory.stat alone: no /proc/PID/cgroup nor the group's other files
            # read a tick (the snapshot reads those once, at the window's end)
            key = t.cgroup_first.path
            if key not in self._refault_files:  # (on v2 finding it reads cgroup.controllers: not every tick)
                self._refault_files[key] = refaults_file(self.cgroup_root, t.cgroup_first)
            stat_file = self._refault_files[key]
            refaults = read_refaults(stat_file) if stat_file is not None else None
            if refaults is None:
                continue
            series = self.refault_series.setdefault(t.cgroup_first.path, [])
            if len(series) >= MAX_REFAULT_SAMPLES:
                del series[0]
            series.append((at, refaults))

    def _last_pid(self) -> int | None:
        read = getattr(self.procfs, "read_text", None)
        text = read("loadavg") if read is not None else None
        fields = (text or "").split()
        return int(fields[4]) if len(fields) >= 5 and fields[4].isdigit() else None

    def _fold(self, items: Iterable[tuple[int, ProcStat | bytes]], parse_all: bool) -> int:
        """Fold what this tick read into the tracks (under the lock); the majflt rise it saw.

        bytes lines are parsed whole when `parse_all`, else only when their counters changed."""
        snaps = 0
        seen = 0
        tick = self.ticks
        for pid, line in items:
            track = self.tracks.get(pid)
            if isinstance(line, bytes):
                if parse_all or track is None:
                    st = _parse(line)
                else:
                    try:
                        starttime, minflt, majflt = parse_stat_counters(line)
                    except ValueError:
                        continue
                    if starttime == track.starttime and minflt == track.last.minflt and majflt == track.last.majflt:
                        track.exited = False  # (a read that failed once does not end a process)
                        continue
                    st = _parse(line)
                if st is None:
                    continue
            else:
                st = line
            if track is None or track.starttime != st.starttime:
                # New during the window (or a reused PID): every fault it has is in the window.
                track = ProcessTrack(
                    pid=pid, starttime=st.starttime, comm=st.comm, baseline_majflt=0,
                    baseline_minflt=0, last=st, started_during_window=True,
                    series=[0] * (tick - 1),
                )
                self.tracks[pid] = track
                delta = st.majflt
            else:
                delta = st.majflt - track.last.majflt
                track.last = st
                track.comm = st.comm
                track.exited = False
                if len(track.series) < tick - 1:  # the ticks it was not read in (idle): zeros
                    track.series.extend([0] * (tick - 1 - len(track.series)))
            track.series.append(max(0, delta))
            if delta > 0:
                seen += delta
                self._hot[pid] = tick
                if not track.maps and snaps < MAX_SNAPSHOTS_PER_TICK and self._snapshot(pid):
                    snaps += 1
        return seen

    def _gone(self, present: set[int] | KeysView[int]) -> None:
        """Every process not among `present` (listed, or read) has exited."""
        for pid, track in self.tracks.items():
            if pid not in present and not track.exited:
                track.exited = True

    def _pad(self, tracks: Iterable[ProcessTrack] | None = None) -> None:
        """The ticks a track was not read in (idle, or exited) get a 0 each (under the lock)."""
        tick = self.ticks
        for track in self.tracks.values() if tracks is None else tracks:
            if len(track.series) < tick:
                track.series.extend([0] * (tick - len(track.series)))

    def pad_series(self) -> None:
        """Every track's series as long as the ticks (the incremental ticks leave idle ones short)."""
        with self._lock:
            self._pad()

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

    def swap_evidence(self, track: ProcessTrack, end: ProcessSnapshot) -> SwapEvidence | None:
        """Counter deltas from the process's first snapshot to its snapshot at the window's end (`end`: its
        cgroup's counters and VmSwap, read once there), to tell swap-ins from file reads."""
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

        a, b = track.cgroup_first, end.cgroup_memory
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
            vmswap_end=end.vm_swap_bytes,
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
            self._pad(tracks)
        tracks.sort(key=lambda t: (-t.major_faults, t.pid))
        return tracks


def _parse(line: bytes) -> ProcStat | None:
    try:
        return parse_stat_bytes(line)
    except ValueError:
        return None


def _parsed(raw: dict[int, bytes]) -> dict[int, ProcStat]:
    out = {}
    for pid, line in raw.items():
        st = _parse(line)
        if st is not None:
            out[pid] = st
    return out


def _rise(before: dict[str, int], after: dict[str, int], key: str) -> int | None:
    if key not in before or key not in after:
        return None
    return max(0, after[key] - before[key])

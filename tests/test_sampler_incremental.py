"""The incremental scan gives the full scan's ranks, rates and series (app/investigation/sampler.py).

Both samplers read the same instant: a view over one full read of /proc per tick (every stat line and
/proc/vmstat, `Snapshot`), which the full-scan sampler reads whole and the incremental one only in part.
So the comparison is exact and independent of timing on a loaded machine; what each costs is measured in
bench/ (row 4, "incremental sample"). The scripted cases pin each rule down; the real one runs 5,000
sleeping processes (bench/idle.c) with faulting ones among them, one of them starting and exiting
inside the window.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.collectors.procfs import ProcFS
from app.investigation.sampler import HOT_TICKS, UNEXPLAINED_MIN, Sampler
from app.parsers.procfs import MapEntry, ProcStat, parse_stat_bytes, parse_stat_counters
from tests.workloads import WorkloadProcess, file_fault_workload, throttled

ROOT = Path(__file__).resolve().parent.parent


# --- views of one instant -----------------------------------------------------------------------------


class Snapshot:
    """Every process's raw stat line and the node's vmstat at one instant, served the way ProcFS serves
    them (listing, stat_bytes, vmstat); maps and io are not part of the comparison and come back empty."""

    def __init__(self) -> None:
        self.lines: dict[int, bytes] = {}
        self.vm: dict[str, int] = {}
        self.reads = 0

    def set(self, lines: dict[int, bytes], vm: dict[str, int]) -> None:
        self.lines, self.vm = lines, vm

    def listing(self) -> list[int]:
        return list(self.lines)

    def names(self) -> set[str]:
        return {str(p) for p in self.lines} | {"self", "vmstat"}

    def stat_bytes(self, pids: list[int]) -> dict[int, bytes]:
        self.reads += len(pids)
        return {p: self.lines[p] for p in pids if p in self.lines}

    def sample_all(self) -> dict[int, ProcStat]:
        self.reads += len(self.lines)
        return {p: parse_stat_bytes(line) for p, line in self.lines.items()}

    def stat(self, pid: int) -> ProcStat | None:
        line = self.lines.get(pid)
        return parse_stat_bytes(line) if line else None

    def vmstat(self) -> dict[str, int]:
        return dict(self.vm)

    def maps(self, pid: int) -> list[MapEntry] | None:
        return []

    def io(self, pid: int) -> dict[str, int] | None:
        return {"read_bytes": 0}


class FullOnly:
    """The same instant without raw reads: the sampler falls back to its original full scan
    (sample_all every tick), the reference the incremental scan must equal."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def sample_all(self) -> dict[int, ProcStat]:
        return self.snap.sample_all()

    def stat(self, pid: int) -> ProcStat | None:
        return self.snap.stat(pid)

    def vmstat(self) -> dict[str, int]:
        return self.snap.vmstat()

    def maps(self, pid: int) -> list[MapEntry] | None:
        return []

    def io(self, pid: int) -> dict[str, int] | None:
        return {"read_bytes": 0}


def line(pid: int, majflt: int, starttime: int = 100, minflt: int = 0, comm: str = "p") -> bytes:
    """A /proc/PID/stat line as the kernel writes it (fields of this machine's kernel)."""
    rest = ["S", "1", str(pid), str(pid), "0", "-1", "4194304", str(minflt), "0", str(majflt), "0", "3", "1", "0",
            "0", "20", "0", "1", "0", str(starttime), "2654208", "150", *["0"] * 28]
    return f"{pid} ({comm}) {' '.join(rest)}\n".encode()


def compare(full: Sampler, inc: Sampler, exact_series: set[int] | None = None) -> None:
    """Same ranking, the same totals for every process, and the same per-second series where asked."""
    full.pad_series()
    inc.pad_series()
    assert [(t.pid, t.major_faults) for t in inc.ranked()] == [(t.pid, t.major_faults) for t in full.ranked()]
    for pid, f in full.tracks.items():
        i = inc.tracks[pid]
        assert (i.starttime, i.major_faults, i.minor_faults, i.exited, i.started_during_window, sum(i.series)) == (
            f.starttime, f.major_faults, f.minor_faults, f.exited, f.started_during_window, sum(f.series)), pid
        assert len(i.series) == len(f.series) == full.ticks
        if exact_series is None or pid in exact_series:
            assert i.series == f.series, pid


def scripted(states: list[tuple[dict[int, bytes], int]], full_every: int = 5) -> tuple[Sampler, Sampler, Snapshot]:
    """Run the reference and the incremental sampler over per-tick (lines, node pgmajfault); the last
    tick is full, as the engine's is."""
    snap = Snapshot()
    full = Sampler(FullOnly(snap))  # type: ignore[arg-type]
    inc = Sampler(snap, full_every=full_every)  # type: ignore[arg-type]
    for n, (lines, pgmajfault) in enumerate(states):
        snap.set(lines, {"pgmajfault": pgmajfault})
        if n == 0:
            full.first()
            inc.first()
        else:
            full.tick()
            inc.tick(full=n == len(states) - 1)
    return full, inc, snap


def test_the_counters_parser_agrees_with_the_full_one_on_captured_lines() -> None:
    files = sorted((ROOT / "tests" / "fixtures").glob("proctree-*/**/stat"))
    assert len(files) > 10
    for f in files:
        data = f.read_bytes()
        st = parse_stat_bytes(data)
        assert parse_stat_counters(data) == (st.starttime, st.minflt, st.majflt), f
    for bad in (b"", b"12 no comm", b"1 (x) S 1 2"):
        with pytest.raises(ValueError):
            parse_stat_counters(bad)


# --- the rules, scripted --------------------------------------------------------------------------------


def test_idle_processes_are_not_read_between_full_scans() -> None:
    idle = {pid: line(pid, 5) for pid in range(100, 1100)}
    states = [({**idle, 1: line(1, 1000 * n)}, 1000 * n) for n in range(12)]
    full, inc, snap = scripted(states)
    compare(full, inc)
    assert [t.pid for t in inc.ranked()] == [1]
    assert inc.tracks[1].series == [1000] * 11
    # full scans: first(), ticks 5 and 10, and the last; in between only the hot process is read
    assert inc.full_scans == 3
    assert inc.stat_reads < 0.4 * full.stat_reads


def test_a_process_that_wakes_up_is_read_in_that_very_second() -> None:
    """The node's pgmajfault rose by more than the hot processes explain: every process is read."""
    idle = {pid: line(pid, 5) for pid in range(100, 600)}
    states = []
    for n in range(9):
        lines = {**idle, 1: line(1, 500 * n), 300: line(300, 5 + max(0, n - 2) * 200)}  # 300 wakes at tick 3
        states.append((lines, 500 * n + max(0, n - 2) * 200))
    full, inc, _ = scripted(states, full_every=60)
    compare(full, inc)  # the series too: its first 200 faults land in tick 3, not at the next full scan
    assert inc.tracks[300].series == [0, 0, 200, 200, 200, 200, 200, 200]


def test_start_exit_and_pid_reuse_inside_the_window() -> None:
    base = {pid: line(pid, 1) for pid in range(100, 400)}

    def at(n: int) -> tuple[dict[int, bytes], int]:
        lines = dict(base)
        node = 0
        if 2 <= n <= 5:  # 7 starts at tick 2, faults 300/s, exits after tick 5
            lines[7] = line(7, 300 * (n - 1), starttime=500)
        node += 300 * (min(n, 6) - 1) if n >= 2 else 0
        if n <= 3:  # 200 faults 100/s, exits; its PID is reused by a new process at tick 6
            lines[200] = line(200, 1 + 100 * n)
        node += 100 * min(n, 4)  # (it faulted once more after the last read, then exited)
        if n >= 6:
            lines[200] = line(200, 50 * (n - 5), starttime=900)
            node += 50 * (n - 5)
        return lines, node

    full, inc, _ = scripted([at(n) for n in range(10)], full_every=60)
    compare(full, inc)
    assert inc.tracks[7].started_during_window and inc.tracks[7].exited and inc.tracks[7].major_faults == 1200
    assert inc.tracks[200].starttime == 900 and inc.tracks[200].major_faults == 200


def test_slow_faulters_below_the_threshold_still_count_in_full() -> None:
    """A few faults a second that the node check cannot tell from noise: the series is caught up at
    the next full scan, the totals (ranks, rates) equal the full scan's."""
    idle = {pid: line(pid, 0) for pid in range(100, 200)}
    slow = UNEXPLAINED_MIN // 4
    # 1 is hot from tick 1 on; 150 starts faulting at tick 2, a few faults a second
    states = [({**idle, 1: line(1, 2000 * n), 150: line(150, slow * max(0, n - 1))}, 2000 * n + slow * max(0, n - 1))
              for n in range(13)]
    full, inc, _ = scripted(states)
    compare(full, inc, exact_series={1})
    assert inc.tracks[150].major_faults == 11 * slow
    # tick 1 read everyone (1 was not hot yet); 150 is caught by the next full scan, 5 ticks later, and
    # then stays hot (read every tick) while it keeps faulting
    assert inc.tracks[150].series == [0, 0, 0, 0, 0, 5 * slow] + [slow] * 6


def test_a_hot_process_turns_cold_after_a_few_quiet_seconds() -> None:
    idle = {pid: line(pid, 0) for pid in range(100, 400)}
    burst = [0, 100, 200, 300, 300, 300, 300, 300, 300, 300, 300]
    states = [({**idle, 1: line(1, burst[n])}, burst[n]) for n in range(len(burst))]
    full, inc, snap = scripted(states, full_every=60)
    compare(full, inc)
    snap.reads = 0
    snap.set({**idle, 1: line(1, 300)}, {"pgmajfault": 300})
    inc.tick()
    assert snap.reads == 0, f"read {snap.reads} stat files {HOT_TICKS}+ ticks after the last fault"


def test_without_a_node_counter_every_tick_is_a_full_scan() -> None:
    snap = Snapshot()
    inc = Sampler(snap, full_every=60)  # type: ignore[arg-type]
    snap.set({1: line(1, 0), 2: line(2, 0)}, {})
    inc.first()
    for n in range(1, 4):
        snap.set({1: line(1, 0), 2: line(2, 7 * n)}, {})
        inc.tick()
    assert inc.full_scans == 3 and inc.tracks[2].series == [7, 7, 7]


def test_no_listing_while_no_task_was_created() -> None:
    """/proc/loadavg's last pid unchanged: nothing new can have started, the tick does not list /proc."""

    class Counted(Snapshot):
        def __init__(self) -> None:
            super().__init__()
            self.listings = 0
            self.last_pid = 1000

        def names(self) -> set[str]:
            self.listings += 1
            return super().names()

        def read_text(self, rel: str) -> str | None:
            return f"0.50 0.40 0.30 1/300 {self.last_pid}\n" if rel == "loadavg" else None

    snap = Counted()
    inc = Sampler(snap, full_every=60)  # type: ignore[arg-type]
    idle = {pid: line(pid, 0) for pid in range(100, 300)}
    snap.set({**idle, 1: line(1, 0)}, {"pgmajfault": 0})
    inc.first()
    listed = snap.listings
    for n in range(1, 4):
        snap.set({**idle, 1: line(1, 50 * n)}, {"pgmajfault": 50 * n})
        inc.tick()
    assert snap.listings == listed + 1  # tick 1 read everyone (1 was not hot yet); ticks 2 and 3 did not list
    snap.last_pid = 1001  # a new process
    snap.set({**idle, 1: line(1, 200), 1001: line(1001, 3, starttime=777)}, {"pgmajfault": 203})
    inc.tick()
    assert snap.listings == listed + 2
    assert inc.tracks[1001].started_during_window and inc.tracks[1001].major_faults == 3
    assert inc.ranked()[0].series == [50, 50, 50, 50]


def test_the_tracer_marks_agree() -> None:
    snap = Snapshot()
    full, inc = Sampler(FullOnly(snap)), Sampler(snap)  # type: ignore[arg-type]
    idle = {pid: line(pid, 3) for pid in range(100, 300)}
    snap.set({**idle, 1: line(1, 0)}, {"pgmajfault": 0})
    full.first()
    inc.first()
    snap.set({**idle, 1: line(1, 40)}, {"pgmajfault": 40})
    full.mark("start")
    inc.mark("start")
    full.tick()
    inc.tick()
    snap.set({**idle, 1: line(1, 90), 5: line(5, 7, starttime=999)}, {"pgmajfault": 97})
    full.mark("stop")
    inc.mark("stop")
    assert inc.marks == full.marks
    full.tick()
    inc.tick(full=True)
    assert [inc.traced_window_majflt(p) for p in (1, 5, 100)] == [full.traced_window_majflt(p) for p in (1, 5, 100)]
    assert inc.traced_window_majflt(1) == 50


# --- 5,000 real processes ---------------------------------------------------------------------------


N_IDLE = 5000


@contextlib.contextmanager
def sleepers(n: int, tmp: Path) -> Iterator[int]:
    """n sleeping processes from bench/idle.c (one parent forks them; they die with it)."""
    exe = tmp / "pfi-bench-idle"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "bench" / "idle.c")], check=True, capture_output=True)
    proc = subprocess.Popen([str(exe), str(n)], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        r, _, _ = select.select([proc.stdout], [], [], 120)
        said = proc.stdout.readline() if r else b""
        assert said.startswith(b"ready"), said
        yield int(said.split()[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.root
@pytest.mark.workloads  # 5,000 sleepers and real faulting workloads
@pytest.mark.machine  # two scans of every process compared: nothing else may start or fault between
def test_equal_to_the_full_scan_among_5000_processes(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: cannot build bench/idle.c and the fault workloads")
    real = ProcFS()
    snap = Snapshot()
    full = Sampler(FullOnly(snap))  # type: ignore[arg-type]
    inc = Sampler(snap)  # type: ignore[arg-type]

    def take() -> None:
        snap.set(real.stat_bytes(real.listing()), real.vmstat())

    ticks = 12
    with contextlib.ExitStack() as stack:
        made = stack.enter_context(sleepers(N_IDLE, tmp_path))
        fast: WorkloadProcess = stack.enter_context(file_fault_workload(tmp_path / "fast.bin", 64))
        slow: WorkloadProcess = stack.enter_context(file_fault_workload(tmp_path / "slow.bin", 64))
        stack.enter_context(throttled(slow.pid, 0.25))
        time.sleep(1.0)
        take()
        assert len(snap.lines) >= made
        full.first()
        inc.first()
        short: WorkloadProcess | None = None
        with contextlib.ExitStack() as short_stack:
            for n in range(1, ticks + 1):
                if n == 3:  # starts and exits inside the window
                    short = short_stack.enter_context(file_fault_workload(tmp_path / "short.bin", 32))
                if n == 8:
                    short_stack.close()
                time.sleep(1.0)
                take()
                full.tick()
                inc.tick(full=n == ticks)
    assert short is not None
    # The machine is shared: other processes come and go. What the incremental ticks may miss is bounded
    # (a few faults of a process idle when last read that exits before the next full scan); so every
    # process alive at the end counts the same, every other one no more, and the ranking of everything
    # above that bound is the same.
    bound = UNEXPLAINED_MIN * inc.full_every
    full.pad_series()
    inc.pad_series()
    for pid, f in full.tracks.items():
        i = inc.tracks[pid]
        assert (i.starttime, i.exited, len(i.series)) == (f.starttime, f.exited, len(f.series)), pid
        if f.exited:
            assert i.major_faults <= f.major_faults, (pid, f.comm)
        else:
            assert (i.major_faults, i.minor_faults, sum(i.series)) == (f.major_faults, f.minor_faults, sum(f.series)), (
                pid, f.comm)
    top = [(t.pid, t.major_faults) for t in full.ranked() if t.major_faults >= bound]
    assert [(t.pid, t.major_faults) for t in inc.ranked()][: len(top)] == top
    # the three faulting ones second by second too (their rates: the same over the same window)
    for pid in (fast.pid, slow.pid, short.pid):
        assert inc.tracks[pid].series == full.tracks[pid].series, pid
    ranked = [t.pid for t in inc.ranked()]
    assert ranked.index(fast.pid) < ranked.index(slow.pid), [(t.pid, t.comm, t.major_faults) for t in inc.ranked()[:6]]
    s = inc.tracks[short.pid]
    assert s.started_during_window and s.exited and s.major_faults > 1000
    assert inc.tracks[slow.pid].major_faults > 1000
    print(f"\n[incremental scan, {len(snap.lines):,} processes, {ticks} ticks] stat reads: full {full.stat_reads:,}, "
          f"incremental {inc.stat_reads:,} ({inc.stat_reads / full.stat_reads:.2f}); full scans {inc.full_scans}")
    assert inc.stat_reads < full.stat_reads


def test_a_mark_is_timed_at_the_likeliest_faulters_read_not_before_its_wait() -> None:
    """A mark waits for the sampler's lock (behind a tick's full scan) and then reads 16 processes and all
    of /proc; a tracer bounds its samples at the time the mark returns (issue 27: the time taken before
    all that made a re-reader's traced count 3% under majflt on a busy machine). Here each read of stat
    files takes 0.2 s on the clock: the mark's time is the middle of the top faulter's read alone."""
    from tests.virtual_clock import VirtualClock

    clock = VirtualClock(start=100.0)
    snap = Snapshot()
    snap.set({1: line(1, 10), 2: line(2, 5_000), 3: line(3, 40)}, {"pgmajfault": 5_050})

    class Slow(Snapshot):
        def stat_bytes(self, pids: list[int]) -> dict[int, bytes]:
            import threading

            clock.wait(threading.Event(), 0.2)
            return super().stat_bytes(pids)

    slow = Slow()
    slow.set(snap.lines, snap.vm)
    sampler = Sampler(slow, None, clock=clock)  # type: ignore[arg-type]
    sampler.first()
    slow.set({1: line(1, 10), 2: line(2, 9_000), 3: line(3, 40)}, {"pgmajfault": 9_050})
    sampler.tick()
    began = clock.monotonic()
    at = sampler.mark("start")
    assert at == pytest.approx(began + 0.1)  # the top faulter (pid 2) read first, alone: 0.2 s, its middle
    assert sampler.mark_info["start"].time == at
    assert clock.monotonic() >= began + 0.6  # then the other likely ones and everyone, after the mark's time
    assert sampler.marks["start"][2] == (100, 9_000)

"""The per-second ranking: processes that start, exit or reuse a PID during the window."""

from __future__ import annotations

from app.investigation.sampler import Sampler
from app.parsers.procfs import ProcStat


def st(pid: int, majflt: int, starttime: int = 100, comm: str = "p") -> ProcStat:
    return ProcStat(pid=pid, comm=comm, state="S", ppid=1, minflt=0, majflt=majflt, utime=0, stime=0,
                    num_threads=1, starttime=starttime, rss_pages=0)


class ScriptedProcFS:
    """Each sample_all() returns the next scripted snapshot: the seam the sampler reads through."""

    def __init__(self, samples: list[dict[int, ProcStat]]) -> None:
        self.samples = samples
        self.i = 0

    def sample_all(self) -> dict[int, ProcStat]:
        out = self.samples[min(self.i, len(self.samples) - 1)]
        self.i += 1
        return out

    def stat(self, pid: int) -> ProcStat | None:
        return self.samples[min(self.i, len(self.samples) - 1)].get(pid)

    def vmstat(self) -> dict[str, int]:
        return {"pgmajfault": 10 * self.i}

    def maps(self, pid: int):
        return []

    def io(self, pid: int):
        return {"read_bytes": 0}


def run(samples):
    s = Sampler(ScriptedProcFS(samples))  # type: ignore[arg-type]
    s.first()
    for _ in samples[1:]:
        s.tick()
    return s


def test_start_exit_and_pid_reuse():
    s = run([
        {1: st(1, 50), 2: st(2, 7), 4: st(4, 1000, starttime=5)},
        {1: st(1, 60), 2: st(2, 9), 4: st(4, 1000, starttime=5)},
        {1: st(1, 80), 3: st(3, 40, starttime=300), 4: st(4, 3, starttime=400)},  # 2 exits; 3 starts; 4 reused
        {1: st(1, 81), 3: st(3, 90, starttime=300), 4: st(4, 5, starttime=400)},
    ])
    t = s.tracks
    assert (t[1].major_faults, t[1].series) == (31, [10, 20, 1])
    # started during the window: every fault it has is in the window, zeros before it existed
    assert t[3].started_during_window and t[3].major_faults == 90 and t[3].series == [0, 40, 50]
    # exited: keeps what was seen of it, the series goes on at zero
    assert t[2].exited and t[2].major_faults == 2 and t[2].series == [2, 0, 0]
    # a reused PID is a new process (other starttime), not a drop of 995 faults
    assert t[4].starttime == 400 and t[4].started_during_window and t[4].major_faults == 5
    assert [x.pid for x in s.ranked()] == [3, 1, 4, 2]
    assert all(len(x.series) == 3 for x in t.values())


def test_traced_window_uses_the_tracer_marks():
    s = Sampler(ScriptedProcFS([{1: st(1, 0)}, {1: st(1, 10)}, {1: st(1, 25)}]))  # type: ignore[arg-type]
    s.first()
    s.mark("start")  # reads the next snapshot: majflt 10
    s.tick()
    s.mark("stop")  # majflt 25
    assert s.traced_window_majflt(1) == 15
    assert s.traced_window_majflt(99) is None


def test_refault_series_of_the_faulting_groups(tmp_path):
    """Each tick reads the memory.stat of the groups of the processes faulting then, once a group (issue 22:
    recommend.refaults_rising): the series is the group's file + anon refaults, a process not faulting adds
    no sample. The counters are the captured growing scan's (tests/fixtures/refault-series/growing-scan.txt)."""
    from pathlib import Path

    from app.investigation.recommend import refaults_rising
    from app.parsers.cgroup import CgroupRef

    group = tmp_path / "memory/job"
    group.mkdir(parents=True)
    (tmp_path / "memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    (group / "memory.limit_in_bytes").write_text(str(64 << 20))
    (group / "memory.usage_in_bytes").write_text(str(64 << 20))
    fixture = Path(__file__).parent / "fixtures/refault-series/growing-scan.txt"
    counters = [line.split() for line in fixture.read_text().splitlines() if not line.startswith("#")][1:8]

    class WithCgroups(ScriptedProcFS):
        def cgroup(self, pid: int) -> CgroupRef | None:
            return CgroupRef("/job", 1, None, None, None, None) if pid == 1 else None

        def sample_all(self) -> dict[int, ProcStat]:  # the group's counters as of this sample
            _, file, anon, _ = counters[min(self.i, len(counters) - 1)]
            (group / "memory.stat").write_text(f"workingset_refault_file {file}\nworkingset_refault_anon {anon}\n")
            return super().sample_all()

    samples = [{1: st(1, 100 * i), 2: st(2, 0)} for i in range(len(counters))]
    procfs = WithCgroups(samples)
    s = Sampler(procfs, cgroup_root=tmp_path)  # type: ignore[arg-type]
    s.first()
    for _ in samples[1:]:
        s.tick()
    values = [v for _, v in s.refault_series["/job"]]
    assert values == [int(f) + int(a) for _, f, a, _ in counters[1:]]
    assert list(s.refault_series) == ["/job"]  # process 2 never faults: its group is not read
    assert refaults_rising([(float(i), v) for i, v in enumerate(values)]) is not None

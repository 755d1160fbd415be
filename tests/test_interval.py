"""Counts over the same interval (issue 27): the report's majflt, series and node counts come from the
tracer's own interval (its start and stop marks), and each process's traced count is checked against
majflt over that interval."""

from __future__ import annotations

from app.investigation.engine import check_exact
from app.investigation.sampler import Sampler
from app.models import ProcessReport
from app.tracers.base import TraceResult
from tests.test_sampler import ScriptedProcFS, st


def _sampler() -> Sampler:
    # one snapshot per read: first(), tick, mark start, tick, tick, mark stop, tick
    samples = [
        {1: st(1, 0), 3: st(3, 50), 4: st(4, 10)},
        {1: st(1, 100), 3: st(3, 70), 4: st(4, 20)},
        {1: st(1, 150), 4: st(4, 30)},  # start mark; 3 has exited before it
        {1: st(1, 300), 2: st(2, 40, starttime=300), 4: st(4, 45)},  # 2 starts inside the interval
        {1: st(1, 500), 2: st(2, 60, starttime=300)},  # 4 exits inside it
        {1: st(1, 600), 2: st(2, 90, starttime=300)},  # stop mark
        {1: st(1, 700), 2: st(2, 95, starttime=300)},  # after the interval
    ]
    s = Sampler(ScriptedProcFS(samples))  # type: ignore[arg-type]
    s.first()
    s.tick()
    s.mark("start")
    s.tick()
    s.tick()
    s.mark("stop")
    s.tick()
    return s


def test_interval_counts_are_the_marks_not_the_window() -> None:
    s = _sampler()
    t = s.tracks
    assert t[1].major_faults == 700  # the window's count: first() to the last tick
    count, series = s.interval_counts(t[1])
    assert count == 600 - 150 == s.traced_window_majflt(1)
    # cut at the ticks inside the interval (300, 500), from the start mark to the stop mark
    assert series == [150, 200, 100] and sum(series) == count


def test_interval_counts_of_processes_that_start_or_exit() -> None:
    s = _sampler()
    assert s.interval_counts(s.tracks[2]) == (90, [40, 20, 30])  # all its faults are inside
    assert s.interval_counts(s.tracks[3])[0] == 0  # exited before the interval: none of its faults
    count, series = s.interval_counts(s.tracks[4])
    assert count == 45 - 30 and sum(series) == count  # exited inside: from the start mark to its last read


def test_node_counts_over_the_interval() -> None:
    s = _sampler()
    vm = s.interval_vmstat()
    assert vm[0] is s.mark_info["start"].vmstat and vm[-1] is s.mark_info["stop"].vmstat
    assert len(vm) == 4  # the start mark, the two ticks inside, the stop mark
    assert s.node_vmstat[-1]["pgmajfault"] > vm[-1]["pgmajfault"]  # the window ran on past the stop


def _proc(pid: int, traced: int, majflt: int | None) -> ProcessReport:
    return ProcessReport(pid=pid, comm="w", major_faults=majflt or 0, major_faults_per_second=0.0,
                         traced_faults=traced, traced_majflt=majflt)


def test_exact_within_two_percent_per_process() -> None:
    ps = [_proc(1, 117_630, 141_020), _proc(2, 99_000, 100_000), _proc(3, 101_900, 100_000), _proc(4, 5, None),
          _proc(5, 9, 10), _proc(6, 102_500, 100_000)]
    lines = check_exact(ps, TraceResult(backend="bpftrace-major", exact=True))
    assert [p.exact for p in ps] == [False, True, True, None, True, False]
    # the 0.834: counted fewer than majflt rose over the same interval
    assert ps[0].exact_why.startswith("late attach") and "(0.834)" in ps[0].exact_why
    assert ps[5].exact_why.startswith("late stop") and "(1.025)" in ps[5].exact_why
    assert "not read at both ends" in ps[3].exact_why
    assert len(lines) == 2 and lines[0].startswith("pid 1 w: late attach")


def test_exact_says_dropped_and_past_window() -> None:
    lost = TraceResult(backend="perf-major", exact=True, lost=3000)
    late = TraceResult(backend="bpftrace-major", exact=True, counts_past_window=True)
    a, b = _proc(1, 90_000, 100_000), _proc(2, 130_000, 100_000)
    check_exact([a], lost)
    check_exact([b], late)
    assert a.exact is False and a.exact_why.startswith("dropped: the kernel lost 3,000")
    assert b.exact is False and "include faults after the interval" in b.exact_why


def test_terminal_report_says_the_interval_counted() -> None:
    import io

    from rich.console import Console

    from app.render_text import render
    from tests.test_ui import file_fault_report

    r = file_fault_report()
    r.tracer = r.tracer.model_copy(update={"exact": True, "counts_over": "tracer", "counted_seconds": 6.004})
    out = io.StringIO()
    render(r, Console(file=out, width=300))
    assert "(exact major faults; counts over its 6.0 s interval)" in out.getvalue()

"""One major fault in N on a node that faults too fast to record each one cheaply (issue 27): the period the
engine picks from the node's rate, what perf-major records with it, and what the report then says.
The real runs are in tests/test_engine.py (test_a_fast_node_is_sampled_and_says_so)."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from app.config import Settings
from app.investigation import engine
from app.investigation.engine import node_fault_rate, sample_period, sampled_note
from app.models import TracerInfo
from app.render_text import render
from app.tracers import perf_major
from app.tracers.base import TraceResult
from tests.service_support import make_report
from tests.virtual_clock import VirtualClock


@pytest.mark.parametrize(("rate", "limit", "period"), [
    (None, 4000, 1),  # unknown: every fault
    (0.0, 4000, 1),
    (4000.0, 4000, 1),  # at the limit: every fault
    (4001.0, 4000, 2),
    (15437.0, 4000, 4),  # a 64 MiB re-reader here
    (76089.0, 4000, 20),  # a zram swapper here
    (76089.0, 0, 1),  # 0: always every fault
])
def test_the_period_records_about_the_limit_a_second(rate, limit, period) -> None:
    assert sample_period(rate, limit) == period
    if period > 1:
        assert rate / period <= limit < rate / (period - 1)


class _VmstatTree:
    """A procfs whose /proc/vmstat pgmajfault rises by `per_read` between reads (None: no such line)."""

    def __init__(self, per_read: int | None) -> None:
        self.per_read, self.n = per_read, 0

    def vmstat(self) -> dict[str, int]:
        self.n += 1
        return {} if self.per_read is None else {"pgmajfault": 1_000_000 + self.n * self.per_read}


def test_the_node_rate_is_counted_over_the_probe_on_the_investigation_clock() -> None:
    """From the first read (before the window's set-up), until RATE_PROBE_SECONDS have passed: the set-up's
    own time counts, and only the rest is waited."""
    clock = VirtualClock(start=10.0)
    tree = _VmstatTree(8000)
    since = (tree.vmstat()["pgmajfault"], clock.monotonic())
    clock.wait(threading.Event(), 0.1)  # the set-up took 0.1 s
    rate = node_fault_rate(tree, clock, threading.Event(), since)  # type: ignore[arg-type]
    assert rate == pytest.approx(8000 / engine.RATE_PROBE_SECONDS)
    assert clock.monotonic() == pytest.approx(10.0 + engine.RATE_PROBE_SECONDS)
    late = VirtualClock(start=0.0)  # a set-up longer than the probe: no wait at all
    since = (tree.vmstat()["pgmajfault"], late.monotonic())
    late.wait(threading.Event(), 2.0)
    assert node_fault_rate(tree, late, threading.Event(), since) == pytest.approx(8000 / 2.0)  # type: ignore[arg-type]
    assert late.monotonic() == pytest.approx(2.0)
    blind = _VmstatTree(None)
    assert node_fault_rate(blind, VirtualClock(start=0.0), threading.Event(), (None, 0.0)) is None  # type: ignore[arg-type]


def test_perf_major_records_one_in_n_and_scales_its_counts_to_estimates() -> None:
    assert perf_major.sampled_args(7)[perf_major.sampled_args(7).index("-c") + 1] == "7"
    assert perf_major.EVENT_ARGS[perf_major.EVENT_ARGS.index("-c") + 1] == "1"  # the exact one unchanged
    r = TraceResult(backend="perf-major", exact=True, faults={42: {0x1000: 3, 0x2000: 1}}, totals={42: 4},
                    events=4, new_pages={42: {0: 2}})
    perf_major.scale(r, 5)
    assert (r.sample_period, r.faults, r.totals, r.events) == (5, {42: {0x1000: 15, 0x2000: 5}}, {42: 20}, 4)
    assert r.new_pages == {}  # the distinct pages of a sample say nothing about growth
    assert any("one major fault in 5" in n for n in r.notes)


def test_the_settings_default_samples_above_4000_a_second_and_a_named_tracer_never() -> None:
    s = Settings(kubelet_url=None)
    assert s.tracing.exact_max_rate == 4000
    assert Settings(kubelet_url=None, exact_max_rate=0).tracing.exact_max_rate == 0
    with pytest.raises(ValueError):
        Settings(kubelet_url=None, exact_max_rate=-1)


def test_a_sampled_report_says_so_in_the_terminal() -> None:
    note = sampled_note(4, 15437.0, 4000)
    assert note.startswith("sampled one major fault in 4: the node made 15,437 major faults/s")
    assert "majflt" in note and "procfs basis" in note
    report = make_report("n1")
    report.tracer = TracerInfo(backend="perf-major", exact=True, sample_period=4, notes=[note])
    out = io.StringIO()
    render(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "tracer: perf-major (major faults, one in 4 recorded: sources' counts estimated)" in text
    assert "exact major faults" not in text
    assert "sampled one major fault in 4" in text

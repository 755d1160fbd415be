"""Exact over the same interval, on real faults (issue 27): a 64 MiB file re-reader investigated for
6 s by each exact backend; the workload's traced count is within 2% of its majflt over the same
interval, on this machine as it is and with two busy loops beside it (a load average of twice the cores).

Before the fix, the report compared the tracer's 6.0 s of counts with majflt over the 7.0 s window
(bpftrace-major: 0.834-0.938 of majflt, 'exact: true' and no warning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.config import Settings
from app.investigation.engine import investigate
from tests.service_support import require_tracers
from tests.workloads import EXACT_TOLERANCE, WorkloadProcess, exact_enough

# Node-wide, but it finds its workload among the reported (below): it shares the suite's second pass with the
# other process's tests, whose faults are more load beside its own busy loops (tests/machine_lock.py).
pytestmark = [pytest.mark.root, pytest.mark.workloads]
SECONDS = 6.0


@pytest.fixture(params=[0, 2], ids=["as-is", "two-busy-loops"])
def busy(request: pytest.FixtureRequest) -> Iterator[int]:
    """0 or 2 processes spinning on the CPU beside the workload, started here and killed by their pid."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(request.param)]
    try:
        yield request.param
    finally:
        for p in loops:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.parametrize("backend", ["bpftrace-major", "perf-major"])
def test_top_process_exact_over_the_tracers_interval(backend: str, busy: int, root_required: None,
                                                     file_workload: WorkloadProcess) -> None:
    require_tracers(backend)
    settings = Settings(tracer=backend, kubelet_url=None, apiserver_fallback=False)
    report = investigate(settings, seconds=SECONDS)
    t = report.tracer
    assert t.backend == backend and t.exact, (t.backend, t.reason)
    # node-wide, as `investigate --seconds 6` runs: on this shared machine another run's workload may
    # fault more than this one, so ours is found among the reported, not required first
    top = next((p for p in report.processes if p.pid == file_workload.pid), None)
    assert top is not None, [(p.pid, p.comm, p.major_faults) for p in report.processes]
    # the counts the report gives are the tracer's interval's, and it says which interval
    assert t.counts_over == "tracer" and t.counted_seconds is not None and t.counted_from_seconds is not None
    # It covered the window: not cut short (0.3 s for the marks' own reads). How late its stop mark comes is
    # the machine's: 6.49 s once at a load average of 20-28 (the suite's three passes at once), so the upper
    # bound is only that it stopped at its deadline and not at the engine's hand-over grace.
    assert SECONDS - 0.3 < t.counted_seconds < SECONDS + 2.0, t.counted_seconds
    assert report.window_seconds == t.counted_seconds
    assert top.major_faults == top.traced_majflt, (top.major_faults, top.traced_majflt)
    assert sum(top.series) == top.major_faults and len(top.series) >= SECONDS - 1
    assert abs(top.major_faults_per_second * t.counted_seconds - top.major_faults) <= 0.001 * top.major_faults
    # what a user checks: the traced count is the kernel's count, within 2%, and the report says exact
    assert not t.counts_past_window, t.errors
    assert exact_enough(top.traced_faults, top.major_faults, tolerance=EXACT_TOLERANCE), (
        top.traced_faults, top.major_faults, round(top.traced_faults / max(1, top.major_faults), 4), os.getloadavg(),
        t.notes, t.errors)
    assert top.exact is True and top.exact_why == ""
    assert not any("not exact" in w for w in report.warnings), report.warnings
    assert top.major_faults_per_second > 500

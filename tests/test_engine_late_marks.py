"""A tracer whose majflt marks came too late to cover its interval (issue 24: in a TCG guest the
investigations said "no process reported").

bpftrace counts in the kernel from OPEN_AFTER after BEGIN for the window, and this side reads every
process's majflt when it reads the ready line. On a slow machine that line is read after the kernel's
interval has closed: the start and stop marks are read back to back, so the interval the report counts
over is a few milliseconds long, no process faulted in it, and the report listed none, although the
window's own samples saw the faulting processes. Such an attempt is a run-time failure: the next
candidate (here: procfs over the whole window) gives the report. No root: the captured procfs tree.
"""

from __future__ import annotations

from app.config import Settings
from app.investigation.engine import Edges, investigate
from app.models import SourceKind
from app.tracers.base import TraceRequest, TraceResult
from tests.proctree import ReplayTracer, ReplayTree

REPLAY_STEP = 0.4  # the 7 recorded steps are in by 2.4 s of a 3 s window


class _LateMarks(ReplayTracer):
    """The captured trace, counted by the kernel over the window, but both marks read after it closed
    (as bpftrace's ready line read seconds late under TCG)."""

    def run(self, request: TraceRequest) -> TraceResult:
        on_start, on_stop = request.on_start, request.on_stop
        request.on_start = request.on_stop = None
        request.clock.wait(request.cancel, request.seconds)  # the kernel's interval passes unread
        result = super().run(TraceRequest(seconds=0.0, pids=request.pids, cancel=request.cancel, clock=request.clock))
        if on_start:
            on_start()
        if on_stop:
            on_stop()
        result.notes.append(f"majflt was read {request.seconds * 1000:.0f} ms after bpftrace's interval opened")
        return result


def test_marks_read_after_the_interval_closed_fall_back_to_the_window(captured_tree: ReplayTree) -> None:
    tree = captured_tree
    settings = Settings(kubelet_url=None, apiserver_fallback=False, proc_root=tree.proc_root,
                        cgroup_root=tree.cgroup_root)
    late = _LateMarks(tree)
    late.name = "bpftrace-major"
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[late]))
    fpid, spid = tree.pid("file"), tree.pid("swap")
    # The faulting processes are reported, with the majflt the window saw, as procfs estimates.
    assert [p.pid for p in report.processes] == [fpid, spid], (report.warnings, report.tracer)
    f, s = report.processes
    assert f.major_faults == tree.counter(fpid, "majflt", -1) - tree.counter(fpid, "majflt", 0)
    assert (f.sources[0].kind, f.sources[0].estimated) == (SourceKind.FILE, True)
    assert s.sources[0].kind is SourceKind.SWAP
    t = report.tracer
    assert (t.backend, t.exact) == ("procfs", False), t
    assert [(sk.backend, sk.failed_at_run_time) for sk in t.skipped] == [("bpftrace-major", True)]
    assert "read majflt over" in t.skipped[0].reason and "of its 3.0 s" in t.skipped[0].reason, t.skipped
    assert any("bpftrace-major failed at run time" in w for w in report.warnings), report.warnings


def test_a_tracer_whose_marks_cover_its_interval_is_used(captured_tree: ReplayTree) -> None:
    """The same trace with its marks on time: it gives the report (the rule above does not fire)."""
    tree = captured_tree
    settings = Settings(kubelet_url=None, apiserver_fallback=False, proc_root=tree.proc_root,
                        cgroup_root=tree.cgroup_root)
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[ReplayTracer(tree)]))
    assert report.tracer.backend == "replay-perf-major" and not report.tracer.skipped
    assert [p.pid for p in report.processes] == [tree.pid("file"), tree.pid("swap")]


"""perf-tracepoint: the article's perf method, the `exceptions:page_fault_user` tracepoint.

    perf record -e exceptions:page_fault_user  (-a | -p PID,PID);  perf script -F pid,comm,trace

Not exact: the tracepoint fires on every user page fault, minor ones too (6x to 200x more events
than major faults were measured on this project's test machine), so the engine has to narrow it by
the procfs majflt counts. x86 only: arm64 has no such tracepoint. Used only when no exact backend
works.
"""

from __future__ import annotations

from app.tracers import _perf
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

TRACEPOINT = "exceptions:page_fault_user"
EVENT_ARGS = ["-e", TRACEPOINT]


class PerfTracepointTracer:
    name = "perf-tracepoint"
    exact = False

    def __init__(self, settings: TracerSettings) -> None:
        self.settings = settings

    def _tracepoint_missing(self) -> str | None:
        roots = [self.settings.tracing.tracefs_root, self.settings.node.sysfs_root / "kernel/debug/tracing"]
        mounted = [r for r in roots if (r / "events").is_dir()]
        if mounted and not any((r / "events/exceptions/page_fault_user").is_dir() for r in mounted):
            return f"no tracepoint {TRACEPOINT} in {mounted[0]}/events (e.g. arm64 has none)"
        return None  # tracefs not mounted yet: perf mounts it; the probe record decides

    def available(self) -> tuple[bool, str]:
        if missing := self._tracepoint_missing():
            return False, missing
        ok, why = _perf.available(self.settings, EVENT_ARGS)
        if ok:
            why += " (records minor faults too: narrowed by procfs majflt counts)"
        return ok, why

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=self.exact)
        return _perf.run(self.settings, request, result, EVENT_ARGS, "pid,comm,trace")

"""bpftrace-major: exact major faults with addresses from the `software:major-faults:1` perf event,
counted per (pid, page) in the kernel (programs/major_faults.bt). Needs root, bpftrace and BTF; no
kprobes. Aggregating in the kernel costs the faulting process nothing measurable, where printing one
line per fault slowed it by 38% on this project's test machine.
"""

from __future__ import annotations

from app.tracers import _bpftrace
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

PROGRAM = "major_faults.bt"


class BpftraceMajorTracer:
    name = "bpftrace-major"
    exact = True

    def __init__(self, settings: TracerSettings) -> None:
        self.settings = settings

    def available(self) -> tuple[bool, str]:
        return _bpftrace.available(self.settings, PROGRAM, needs_btf=True)

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=self.exact)
        return _bpftrace.run(self.settings, request, result, PROGRAM)

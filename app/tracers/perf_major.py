"""perf-major: exact major faults with their data addresses, from perf's software event.

    perf record -e major-faults -c 1 -d --clockid monotonic -a --synth=task

Always the whole node (per-CPU events); for some processes only theirs are kept while reading, as
per-task events cost the traced task a lot at every context switch (see _perf). `major-faults` is counted in mm_account_fault(), where /proc/PID/stat majflt is counted too, so
the two agree; `-c 1` samples every event, `-d` puts the faulting address into each sample. Only
major faults are recorded. Needs perf and root (or CAP_PERFMON / perf_event_paranoid <= 0).
"""

from __future__ import annotations

from app.tracers import _perf
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

# --clockid monotonic: sample times on CLOCK_MONOTONIC (time.monotonic_ns()), so the live reader counts only the
# samples between the window's two majflt marks (_perf._Tail bounds): traced and majflt cover one interval
EVENT_ARGS = ["-e", "major-faults", "-c", "1", "-d", "--clockid", "monotonic"]


class PerfMajorTracer:
    name = "perf-major"
    exact = True

    def __init__(self, settings: TracerSettings) -> None:
        self.settings = settings

    def available(self) -> tuple[bool, str]:
        return _perf.available(self.settings, EVENT_ARGS, system_wide=True)

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=self.exact)
        return _perf.run(self.settings, request, result, EVENT_ARGS, None, system_wide=True)  # perf.data read natively

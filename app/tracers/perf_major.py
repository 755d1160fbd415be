"""perf-major: exact major faults with their data addresses, from perf's software event.

    perf record -e major-faults -c 1 -d --clockid monotonic -a --synth=task

Always the whole node (per-CPU events); for some processes only theirs are kept while reading, as
per-task events cost the traced task a lot at every context switch (see _perf). `major-faults` is counted in mm_account_fault(), where /proc/PID/stat majflt is counted too, so
the two agree; `-c 1` samples every event (`-c N` when the engine asks for one in N on a node that
faults too fast to record each one cheaply: TraceRequest.sample_period), `-d` puts the faulting address
into each sample. Only major faults are recorded. Needs perf and root (or CAP_PERFMON / perf_event_paranoid <= 0).
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
        n = max(1, request.sample_period)
        args = EVENT_ARGS if n == 1 else sampled_args(n)
        _perf.run(self.settings, request, result, args, None, system_wide=True)  # perf.data read natively
        if n > 1:
            scale(result, n)
        return result


def sampled_args(n: int) -> list[str]:
    """EVENT_ARGS recording one major fault in n: the kernel counts every one and writes a sample at every
    n-th (per CPU), so the faulting task pays the sample's cost once in n faults."""
    args = list(EVENT_ARGS)
    args[args.index("-c") + 1] = str(n)
    return args


def scale(result: TraceResult, n: int) -> None:
    """A 1-in-n recording's counts as estimates of every fault: each sample stands for n faults. The
    distinct pages undercount (most pages were faulted between two samples): new_pages is dropped, and
    the result says it was sampled (the engine sizes limits on the procfs basis then)."""
    result.sample_period = n
    result.faults = {pid: {page: c * n for page, c in pages.items()} for pid, pages in result.faults.items()}
    result.totals = {pid: c * n for pid, c in result.totals.items()}
    result.new_pages = {}
    result.notes.append(f"sampled: one major fault in {n} recorded (perf -c {n}); per-source counts are "
                        f"{n} x samples, estimates")

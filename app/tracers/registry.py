"""Which tracer backend to use: a small ordered list, preferring exact major faults.

`select()` takes the first available backend in ORDER (settings.tracer "auto"), or the forced one;
a forced backend that does not work here falls back to the others in ORDER and says why. Every
backend not used is returned in `skipped` with its reason, for the report.
"""

from __future__ import annotations

from collections.abc import Callable

from app.config import Settings
from app.models import SkippedBackend
from app.tracers.base import Tracer
from app.tracers.bpftrace_kprobe import BpftraceKprobeTracer
from app.tracers.bpftrace_major import BpftraceMajorTracer
from app.tracers.perf_major import PerfMajorTracer
from app.tracers.perf_tracepoint import PerfTracepointTracer
from app.tracers.procfs_only import ProcfsTracer

ORDER = ["perf-major", "bpftrace-major", "bpftrace-kprobe", "perf-tracepoint", "procfs"]

_BACKENDS: dict[str, Callable[[Settings], Tracer]] = {
    "perf-major": PerfMajorTracer,
    "bpftrace-major": BpftraceMajorTracer,
    "bpftrace-kprobe": BpftraceKprobeTracer,
    "perf-tracepoint": PerfTracepointTracer,
    "procfs": ProcfsTracer,
}


def make_tracer(name: str, settings: Settings) -> Tracer:
    try:
        return _BACKENDS[name](settings)
    except KeyError:
        raise ValueError(f"unknown tracer {name!r}; one of {', '.join(ORDER)}") from None


def _check(tracer: Tracer) -> tuple[bool, str]:
    try:
        return tracer.available()
    except Exception as e:  # a probe must never take the investigation down
        return False, f"availability check failed: {e!r}"


def probe(settings: Settings) -> list[tuple[str, bool, str]]:
    """Every backend, in ORDER: (name, works here?, what works or why not)."""
    return [(name, *_check(make_tracer(name, settings))) for name in ORDER]


def select(settings: Settings) -> tuple[Tracer, str, list[SkippedBackend]]:
    """(the tracer to use, why it, every other backend with why not)."""
    forced = settings.tracer if settings.tracer != "auto" else None
    candidates = ORDER if forced is None else [forced, *(n for n in ORDER if n != forced)]
    chosen: Tracer | None = None
    reason = ""
    skipped: list[SkippedBackend] = []
    forced_failure = ""
    for name in candidates:
        tracer = make_tracer(name, settings)
        ok, why = _check(tracer)
        if chosen is None and ok:
            chosen = tracer
            if forced is None:
                reason = f"auto: first available of {', '.join(ORDER)}: {why}"
            elif name == forced:
                reason = f"forced by settings (tracer={forced}): {why}"
            else:
                reason = f"forced tracer {forced} unavailable ({forced_failure}); fell back to {name}: {why}"
            continue
        if not ok:
            skipped.append(SkippedBackend(backend=name, reason=why))
            if name == forced:
                forced_failure = why
        else:
            assert chosen is not None
            skipped.append(SkippedBackend(backend=name, reason=f"available, but {chosen.name} comes first"))
    assert chosen is not None, "procfs is always available"
    return chosen, reason, skipped

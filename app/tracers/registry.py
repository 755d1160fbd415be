"""Which tracer backend to use: a small ordered list, preferring exact major faults.

`select()` takes the first available backend in ORDER (settings.tracing.tracer "auto"), or the forced one;
a forced backend that does not work here falls back to the others in ORDER and says why. Every
backend not used is returned in `skipped` with its reason, for the report.

This is the one list of backends. Each backend's name is its class's `name`; the settings keep the
names as a literal (app.config.TRACER_NAMES, so that they need not import the backends) and this module
refuses to load when the two lists differ.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from app.config import TRACER_AUTO, TRACER_NAMES
from app.models import SkippedBackend
from app.tracers._supervise import kill_started_by
from app.tracers.base import Tracer, TracerSettings
from app.tracers.bpftrace_kprobe import BpftraceKprobeTracer
from app.tracers.bpftrace_major import BpftraceMajorTracer
from app.tracers.perf_major import PerfMajorTracer
from app.tracers.perf_tracepoint import PerfTracepointTracer
from app.tracers.procfs_only import ProcfsTracer

__all__ = ["AUTO", "CHOICES", "ORDER", "candidates", "check_names", "kill_started_by", "make_tracer", "mark_failed", "probe", "select"]

AUTO = TRACER_AUTO  # settings.tracing.tracer: the first backend in ORDER that works here

# Every backend, in the order "auto" tries them: exact major faults first, estimates last, and among the
# exact ones by measured cost (bench/tracer_cost.py and rows 1-3 of `python -m bench`, docs/bench.md): per
# fault, both cost the faulting task about 0.2 us of CPU (perf-major writes a sample, bpftrace-major runs
# its BPF program), and neither anything per context switch since perf-major records with per-CPU events;
# perf-major has its counts ~10 ms after the window (perf.data read while it records) where bpftrace-major
# needs ~0.2-0.5 s to print and parse its maps, and perf's process stays ~40 MiB where bpftrace compiles
# with LLVM (~90 MiB, a few hundred on big programs) and holds per-CPU maps of tracer_max_pages keys.
_BACKENDS: dict[str, Callable[[TracerSettings], Tracer]] = {
    backend.name: backend
    for backend in (PerfMajorTracer, BpftraceMajorTracer, BpftraceKprobeTracer, PerfTracepointTracer, ProcfsTracer)
}
ORDER: list[str] = list(_BACKENDS)
# Why auto puts each exact backend where it is (for the report's tracer line).
WHY_FIRST = {
    "perf-major": "exact; measured cheapest: ~0.2 us per fault in the faulting task, nothing per context switch, "
                  "counts ~10 ms after the window, ~40 MiB",
    "bpftrace-major": "exact; measured as cheap per fault as perf-major, but 0.2-0.5 s to hand over its maps after "
                      "the window and LLVM's memory to compile",
}
CHOICES: tuple[str, ...] = (AUTO, *ORDER)  # what settings.tracing.tracer (PFI_TRACER, --tracer) accepts


def check_names(order: list[str], names: tuple[str, ...]) -> None:
    """The backends here and the names the settings accept are one list, in one order."""
    if tuple(order) != names:
        raise RuntimeError(f"tracer backends {order} differ from app.config.TRACER_NAMES {list(names)}")


check_names(ORDER, TRACER_NAMES)


def make_tracer(name: str, settings: TracerSettings) -> Tracer:
    try:
        return _BACKENDS[name](settings)
    except KeyError:
        raise ValueError(f"unknown tracer {name!r}; one of {', '.join(ORDER)}") from None


# Probing test-runs every backend (perf record, bpftrace loading its program): about a second in all.
# The service investigates many times in its life, so what a probe found is kept for a while.
PROBE_CACHE_SECONDS = 300.0
_probe_cache: dict[tuple[str, ...], tuple[float, tuple[bool, str]]] = {}
_probe_lock = threading.Lock()


def _check(tracer: Tracer, settings: TracerSettings, fresh: bool = False) -> tuple[bool, str]:
    key = (tracer.name, settings.tracing.perf_path, settings.tracing.bpftrace_path, str(settings.tracing.tracefs_root))
    now = time.monotonic()
    with _probe_lock:
        hit = _probe_cache.get(key)
    if hit is not None and not fresh and now - hit[0] < PROBE_CACHE_SECONDS:
        return hit[1]
    try:
        result = tracer.available()
    except Exception as e:  # a probe must never take the investigation down
        result = (False, f"availability check failed: {e!r}")
    with _probe_lock:
        _probe_cache[key] = (time.monotonic(), result)
    return result


def mark_failed(tracer: Tracer, settings: TracerSettings, why: str) -> None:
    """A backend that passed its probe but failed in a window: the next investigations within
    PROBE_CACHE_SECONDS skip it with this reason instead of failing the same way."""
    key = (tracer.name, settings.tracing.perf_path, settings.tracing.bpftrace_path, str(settings.tracing.tracefs_root))
    with _probe_lock:
        _probe_cache[key] = (time.monotonic(), (False, f"failed at run time: {why}"))


def candidates(settings: TracerSettings, *, fresh: bool = False) -> tuple[list[Tracer], str, list[SkippedBackend]]:
    """(select()'s choice, then the other exact backends that work here in ORDER: the run-time
    fallbacks; why the first; every backend but the first with why not, as select() gives them)."""
    chosen, reason, skipped = select(settings, fresh=fresh)
    out: list[Tracer] = [chosen]
    for s in skipped:
        if s.reason.startswith("available, but "):
            tracer = make_tracer(s.backend, settings)
            if tracer.exact:
                out.append(tracer)
    return out, reason, skipped


def probe(settings: TracerSettings) -> list[tuple[str, bool, str]]:
    """Every backend, in ORDER: (name, works here?, what works or why not)."""
    return [(name, *_check(make_tracer(name, settings), settings, fresh=True)) for name in ORDER]


def select(settings: TracerSettings, *, fresh: bool = False) -> tuple[Tracer, str, list[SkippedBackend]]:
    """(the tracer to use, why it, every other backend with why not). Probes are reused for
    PROBE_CACHE_SECONDS unless `fresh`."""
    forced = settings.tracing.tracer if settings.tracing.tracer != AUTO else None
    candidates = ORDER if forced is None else [forced, *(n for n in ORDER if n != forced)]
    chosen: Tracer | None = None
    reason = ""
    skipped: list[SkippedBackend] = []
    forced_failure = ""
    for name in candidates:
        tracer = make_tracer(name, settings)
        ok, why = _check(tracer, settings, fresh)
        if chosen is None and ok:
            chosen = tracer
            if forced is None:
                why_first = WHY_FIRST.get(name)
                reason = (f"auto: first available of {', '.join(ORDER)} (ordered by measured cost)"
                          + (f"; {name}: {why_first}" if why_first else "") + f": {why}")
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

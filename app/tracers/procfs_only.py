"""procfs: no tracer at all. Always available; traces no addresses.

It still honours the window (on_start/on_stop, request.cancel) so the engine's majflt sampling and
its smaps-based estimate of the sources run over the same time as with a real tracer.
"""

from __future__ import annotations

from app.tracers.base import TraceRequest, TraceResult, TracerSettings


class ProcfsTracer:
    name = "procfs"
    exact = False

    def __init__(self, settings: TracerSettings) -> None:
        self.settings = settings

    def available(self) -> tuple[bool, str]:
        return True, "always available: ranks by /proc majflt, estimates sources from smaps (no addresses)"

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=self.exact)
        if request.on_start:
            request.on_start()
        clock = request.clock
        t0 = clock.monotonic()
        try:
            clock.wait(request.cancel, request.seconds)
        finally:
            result.duration_seconds = clock.monotonic() - t0
            if request.on_stop:
                request.on_stop()
        if request.cancel.is_set():
            result.errors.append("cancelled: the window was cut short")
        return result

"""bpftrace-kprobe: the article's BottleRocket method, kprobe + kretprobe on handle_mm_fault(),
keeping faults whose return value has VM_FAULT_MAJOR (4); the address is arg1. Counted per
(pid, page) in the kernel (programs/handle_mm_fault.bt). Exact, but needs kprobes: kernels built
without CONFIG_KPROBES (like this project's test machine) or where handle_mm_fault is not traceable
report why and are skipped.
"""

from __future__ import annotations

import gzip

from app.tracers import _bpftrace
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

PROGRAM = "handle_mm_fault.bt"


class BpftraceKprobeTracer:
    name = "bpftrace-kprobe"
    exact = True

    def __init__(self, settings: TracerSettings) -> None:
        self.settings = settings

    def _no_kprobes(self) -> str | None:
        """Why kprobes cannot work here, from the kernel's own files; None when they may."""
        try:
            with gzip.open(self.settings.node.proc_root / "config.gz", "rt") as f:
                for line in f:
                    if line.startswith("# CONFIG_KPROBES is not set"):
                        config = self.settings.node.proc_root / "config.gz"
                        return f"no kprobes: kernel built without CONFIG_KPROBES ({config})"
                    if line.startswith("CONFIG_KPROBES=y"):
                        break
        except OSError:
            pass
        roots = [self.settings.tracing.tracefs_root, self.settings.node.sysfs_root / "kernel/debug/tracing"]
        mounted = [r for r in roots if (r / "events").is_dir()]
        if mounted and not any((r / "kprobe_events").exists() for r in mounted):
            return f"no kprobes: {mounted[0]}/kprobe_events missing (CONFIG_KPROBES off)"
        return None

    def available(self) -> tuple[bool, str]:
        bt, why = _bpftrace.find_bpftrace(self.settings)
        if bt is None:
            return False, why
        if no := self._no_kprobes():
            return False, no
        return _bpftrace.available(self.settings, PROGRAM, needs_btf=False)

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=self.exact)
        if no := self._no_kprobes():
            result.errors.append(no)
            if request.on_start:
                request.on_start()
            if request.on_stop:
                request.on_stop()
            return result
        return _bpftrace.run(self.settings, request, result, PROGRAM)

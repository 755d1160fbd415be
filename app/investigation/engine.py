"""The timed investigation of one node: rank, trace, resolve, attribute, diagnose.

Blocking; the CLI calls it directly and the service in a worker thread. The tracer runs in its own
thread for the window while this thread samples procfs once a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.collectors.cgroupmem import cgroup_memory_problem, read_cgroup_memory
from app.collectors.kubelet import PodResolver
from app.collectors.procfs import ProcFS
from app.config import Settings
from app.models import (
    Attribution,
    CgroupMemory,
    NodeStats,
    ProcessReport,
    Report,
    SkippedBackend,
    TracerInfo,
    Trigger,
    utcnow,
)
from app.parsers.cgroup import CgroupRef
from app.parsers.procfs import redact_argv
from app.tracers.base import TraceRequest, TraceResult
from app.tracers.registry import select

from .diagnose import diagnose_process, diagnose_report
from .estimate import estimate_sources
from .resolve import resolve_pages
from .sampler import ProcessTrack, Sampler

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
TRACER_GRACE_SECONDS = 15.0  # how long after the window a tracer may take to stop and hand over


def investigate(
    settings: Settings,
    *,
    seconds: float | None = None,
    pids: list[int] | None = None,
    top: int | None = None,
    trigger: Trigger | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    procfs: ProcFS | None = None,
    resolver: PodResolver | None = None,
) -> Report:
    window = float(seconds if seconds is not None else settings.investigation_seconds)
    top_n = top or settings.top
    cancel = cancel or threading.Event()
    procfs = procfs or ProcFS(settings.proc_root)
    report_progress = progress or (lambda _f, _m: None)
    started_at = utcnow()
    warnings: list[str] = []

    tracer, reason, skipped = select(settings)
    report_progress(0.0, f"tracing with {tracer.name}")
    sampler = Sampler(procfs, pids, cgroup_root=settings.cgroup_root)
    sampler.first()

    result_box: list[TraceResult] = []
    error_box: list[str] = []
    tracer_stop = threading.Event()  # set on cancel, or when the tracer overruns the window
    request = TraceRequest(
        seconds=window, pids=pids, cancel=tracer_stop,
        on_start=lambda: sampler.mark("start"), on_stop=lambda: sampler.mark("stop"),
        max_output_bytes=settings.tracer_max_output_bytes, max_pages=settings.tracer_max_pages,
    )

    def run_tracer() -> None:
        try:
            result_box.append(tracer.run(request))
        except Exception as exc:  # a broken tracer must not take the investigation with it
            log.exception("tracer %s failed", tracer.name)
            error_box.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run_tracer, name=f"tracer-{tracer.name}", daemon=True)
    t0 = time.monotonic()
    thread.start()
    next_tick = t0 + 1.0
    while True:
        now = time.monotonic()
        if now - t0 >= window or cancel.is_set():
            break
        cancel.wait(max(0.0, min(next_tick, t0 + window) - now))
        if cancel.is_set():
            break
        if time.monotonic() >= next_tick:
            sampler.tick()
            next_tick += 1.0
            elapsed = time.monotonic() - t0
            report_progress(min(elapsed / window, 1.0) * 0.9, f"{elapsed:.0f}/{window:.0f} s")
    if cancel.is_set():
        tracer_stop.set()
    elif sampler.ticks == 0 or time.monotonic() - t0 - sampler.ticks > 0.5:
        sampler.tick()  # the last part-second (or a window under a second) gets its sample too
    # Rates are over the sampled window, not the time the tracer then takes to stop and hand over.
    elapsed = max(time.monotonic() - t0, 1e-3)
    thread.join(TRACER_GRACE_SECONDS)
    if thread.is_alive():
        # The backend did not stop on its own at its deadline: the stop event makes it kill its tracer.
        tracer_stop.set()
        thread.join(TRACER_GRACE_SECONDS)
        if thread.is_alive():
            warnings.append(f"tracer {tracer.name} did not stop within {2 * TRACER_GRACE_SECONDS:.0f} s")
    report_progress(0.92, "resolving")

    trace = result_box[0] if result_box else TraceResult(backend=tracer.name, exact=tracer.exact)
    trace.errors.extend(error_box)
    tracer_info = TracerInfo(
        backend=tracer.name, exact=tracer.exact, reason=reason, skipped=skipped,
        events=trace.events, dropped=trace.dropped, output_bytes=trace.output_bytes,
        truncated=trace.truncated, duration_seconds=round(trace.duration_seconds, 3), errors=trace.errors[:20],
    )
    if trace.errors:
        warnings.append(f"tracer {tracer.name} reported errors; sources were estimated from procfs where it saw nothing")
    if trace.dropped:
        warnings.append(f"tracer {tracer.name} dropped {trace.dropped:,} of {trace.events:,} events: shares are from the rest")
    if not tracer.exact and tracer.name != "procfs":
        warnings.append(f"{tracer.name} records minor faults too: source shares include them; fault counts come from procfs")

    ranked = sampler.ranked()
    chosen = ranked[:top_n]
    sampler.final_snapshot([t.pid for t in chosen])

    node_stats = collect_node_stats(procfs, sampler, elapsed)
    resolver = resolver or PodResolver(settings)
    attribution = Attribution()
    need_pods = False
    refs: dict[int, CgroupRef | None] = {}
    for t in chosen:
        refs[t.pid] = procfs.cgroup(t.pid)
        need_pods = need_pods or bool(refs[t.pid] and refs[t.pid].pod_uid)
    if need_pods:
        _, attribution = resolver.index()
        if attribution.error:
            warnings.append(f"pod names: {attribution.error}")

    my_mnt_ns = _mnt_ns(procfs, "self")
    mem_cache: dict[str, CgroupMemory | None] = {}
    processes: list[ProcessReport] = []
    for t in chosen:
        processes.append(
            build_process(settings, procfs, sampler, t, trace, refs.get(t.pid), resolver, mem_cache,
                          elapsed, my_mnt_ns)
        )
    for p in processes:
        p.verdict = diagnose_process(
            p, node_stats, cgroup_memory_problem(settings.cgroup_root, refs.get(p.pid), p.cgroup_memory))
    report_progress(0.98, "diagnosing")
    status = "cancelled" if cancel.is_set() else "complete"
    if status == "cancelled":
        warnings.append("the investigation was cancelled before the window ended")
    return Report(
        node=settings.node_name,
        status=status,
        started_at=started_at,
        finished_at=utcnow(),
        window_seconds=round(elapsed, 3),
        trigger=trigger or Trigger(),
        tracer=tracer_info,
        node_stats=node_stats,
        processes=processes,
        verdict=diagnose_report(processes, node_stats, elapsed),
        attribution=attribution,
        warnings=warnings,
    )


def build_process(
    settings: Settings,
    procfs: ProcFS,
    sampler: Sampler,
    t: ProcessTrack,
    trace: TraceResult,
    ref: CgroupRef | None,
    resolver: PodResolver,
    mem_cache: dict[str, CgroupMemory | None],
    elapsed: float,
    my_mnt_ns: str | None,
) -> ProcessReport:
    argv = procfs.cmdline(t.pid) if not t.exited else None
    pages = trace.faults.get(t.pid, {})
    traced = trace.totals.get(t.pid, sum(pages.values()))
    io_now = procfs.io(t.pid) if not t.exited else None
    read_bytes = None
    read_rate = None
    if io_now is not None and t.io_first is not None:
        read_bytes = max(0, io_now.get("read_bytes", 0) - t.io_first.get("read_bytes", 0))
        read_rate = read_bytes / max(elapsed - t.io_first_tick, 1.0)
    smaps = None
    if pages:
        sources = resolve_pages(pages, t.maps)
    else:
        smaps = procfs.smaps(t.pid) if not t.exited else None
        sources = estimate_sources(t.major_faults, read_bytes, smaps, sampler.swap_evidence(t))
    pod = resolver.resolve(ref) if ref is not None and ref.pod_uid else None
    mem = None
    if ref is not None and ref.path not in ("", "/"):
        key = f"{ref.version}:{ref.path}"
        if key not in mem_cache:
            mem_cache[key] = read_cgroup_memory(settings.cgroup_root, _host_cgroup_ref(ref))
        mem = mem_cache[key]
    rss = swap = None
    if smaps is not None:
        rss = sum(e.rss_bytes for e in smaps)
        swap = sum(e.swap_bytes for e in smaps)
    else:
        status = procfs.read_text(f"{t.pid}/status") if not t.exited else None
        if status:
            rss, swap = _status_kib(status, "VmRSS"), _status_kib(status, "VmSwap")
    mnt = _mnt_ns(procfs, str(t.pid))
    return ProcessReport(
        pid=t.pid,
        comm=t.comm,
        cmdline=redact_argv(argv) if argv else "",
        major_faults=t.major_faults,
        major_faults_per_second=round(t.major_faults / elapsed, 2),
        minor_faults=t.minor_faults,
        series=list(t.series),
        traced_faults=traced,
        traced_majflt=sampler.traced_window_majflt(t.pid),
        started_during_window=t.started_during_window,
        exited_during_window=t.exited,
        host_process=pod is None,
        pod=pod,
        cgroup=ref.path if ref else None,
        paths_in_container=bool(mnt and my_mnt_ns and mnt != my_mnt_ns),
        sources=sources,
        cgroup_memory=mem,
        rss_bytes=rss,
        swap_bytes=swap,
        read_bytes_per_second=round(read_rate, 1) if read_rate is not None else None,
    )


def _status_kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _host_cgroup_ref(ref: CgroupRef) -> CgroupRef:
    """A cgroup path as seen from the host's root cgroup.

    Read from inside a pod's cgroup namespace, other processes' paths start with "/../": the
    kubepods hierarchy sits at the root of the host's cgroup tree, so cut the path there.
    """
    path = ref.path
    if "/.." in path:
        idx = path.find("/kubepods")
        if idx >= 0:
            path = path[idx:]
        else:
            parts = [p for p in path.split("/") if p and p != ".."]
            path = "/" + "/".join(parts)
    if path == ref.path:
        return ref
    return CgroupRef(path=path, version=ref.version, pod_uid=ref.pod_uid, qos=ref.qos,
                     container_id=ref.container_id, runtime=ref.runtime)


def _mnt_ns(procfs: ProcFS, pid: str) -> str | None:
    try:
        return os.readlink(Path(procfs.root) / pid / "ns" / "mnt")
    except OSError:
        return None


def collect_node_stats(procfs: ProcFS, sampler: Sampler, elapsed: float) -> NodeStats:
    vm = sampler.node_vmstat
    first, last = (vm[0], vm[-1]) if vm else ({}, {})

    def rate(key: str) -> float:
        return round(max(0, last.get(key, 0) - first.get(key, 0)) / elapsed, 2)

    def rate_opt(key: str) -> float | None:
        return rate(key) if key in last else None

    series = [max(0, b.get("pgmajfault", 0) - a.get("pgmajfault", 0)) for a, b in zip(vm, vm[1:], strict=False)]
    mem = procfs.meminfo()
    return NodeStats(
        pgmajfault=max(0, last.get("pgmajfault", 0) - first.get("pgmajfault", 0)),
        pgmajfault_per_second=rate("pgmajfault"),
        pswpin_per_second=rate("pswpin"),
        pswpout_per_second=rate("pswpout"),
        workingset_refault_file_per_second=rate_opt("workingset_refault_file"),
        workingset_refault_anon_per_second=rate_opt("workingset_refault_anon"),
        series=series,
        mem_total_bytes=mem.get("MemTotal"),
        mem_available_bytes=mem.get("MemAvailable"),
        swap_total_bytes=mem.get("SwapTotal"),
        swap_free_bytes=mem.get("SwapFree"),
        psi_memory=procfs.pressure("memory"),
        psi_io=procfs.pressure("io"),
        pgscan_kswapd_per_second=rate_opt("pgscan_kswapd"),
        pgscan_direct_per_second=rate_opt("pgscan_direct"),
        allocstall_per_second=round(sum(rate(k) for k in last if k.startswith("allocstall_")), 2) if last else None,
    )


__all__ = ["investigate", "SkippedBackend"]

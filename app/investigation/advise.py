"""Wiring for the recommendation (issue 16): gathers what app.investigation.recommend needs from one
investigation (the tracer's pages and their growth, the process's maps, smaps for procfs estimates, the
pod's owner chain, the node's allocatable memory) and puts a Recommendation on each limit verdict."""

from __future__ import annotations

import logging

from app.collectors.procfs import ProcFS
from app.models import NodeStats, ProcessReport
from app.parsers.procfs import SmapsEntry
from app.tracers.base import TraceResult

from .recommend import Group, advise_number, blames_limit, limit_key, recommend
from .sampler import ProcessTrack
from .sources import DistinctPages, distinct_pages, mapping_kind

log = logging.getLogger(__name__)


def faulting_bound(smaps: list[SmapsEntry] | None, kinds: set[str]) -> tuple[int | None, int]:
    """procfs: (the size of the memory that can fault with the kinds that do (file and code: the file
    mappings' size; anonymous: resident + swapped; shmem: the shmem mappings' size), an upper bound on
    the distinct pages the faults can have read; how much of it is resident now (smaps Rss))."""
    if not smaps:
        return None, 0
    total = resident = 0
    for e in smaps:
        kind = mapping_kind(e.mapping).value
        if kind not in kinds:
            continue
        total += e.rss_bytes + e.swap_bytes if kind == "swap" else max(e.size_bytes, e.rss_bytes + e.swap_bytes)
        resident += e.rss_bytes
    return total or None, resident


def _smaps(procfs: ProcFS, p: ProcessReport) -> list[SmapsEntry] | None:
    """The process's smaps at the window's end; read only where a rule uses it (it can be large)."""
    return procfs.smaps(p.pid) if not p.exited_during_window else None


def add_recommendations(
    processes: list[ProcessReport],
    tracks: dict[int, ProcessTrack],
    trace: TraceResult,
    node: NodeStats,
    procfs: ProcFS,
    *,
    seconds: float,
    owners: object | None = None,
    node_name: str = "",
) -> None:
    """Set verdict.recommendation on every process whose verdict blames a limit (in place)."""
    limited = [p for p in processes if blames_limit(p)]
    if not limited:
        return
    resolver = owners
    if resolver is not None:
        try:
            resolver.resolve([p.pod for p in limited if p.pod is not None])  # type: ignore[attr-defined]
        except Exception:  # owner names are a nicety: never lose the report over them
            log.exception("owner resolution failed")
    allocatable = None
    if resolver is not None and any(p.pod is not None for p in limited):
        allocatable, _ = resolver.allocatable(node_name)  # type: ignore[attr-defined]
    span = trace.duration_seconds or seconds
    groups: dict[str, Group] = {}
    keys = {limit_key(q.cgroup_memory) for q in limited if q.cgroup_memory is not None}
    for p in processes:  # every process under a binding limit adds its pages to that limit's group
        if p.cgroup_memory is None or limit_key(p.cgroup_memory) not in keys:
            continue
        key = limit_key(p.cgroup_memory)
        t = tracks.get(p.pid)
        pages = trace.faults.get(p.pid)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(pages=None, faults=0, growth={})
        g.faults += p.major_faults
        if pages and t is not None and trace.exact:  # perf-tracepoint's pages include minor faults: not used
            mine = distinct_pages(p.pid, pages, t.maps)
            if smaps := _smaps(procfs, p):  # at the window's end, like the cgroup usage resident is taken from
                g.smaps[p.pid] = smaps
            if g.pages is None:
                g.pages = DistinctPages(set(), set(), set(), set(), names={})
            g.pages.merge(mine)
            for sec, n in trace.new_pages.get(p.pid, {}).items():
                g.growth[sec] = g.growth.get(sec, 0) + n
        elif not trace.faults or not trace.exact:
            kinds = {s.kind.value for s in p.sources if s.faults}
            bound, rss = faulting_bound(_smaps(procfs, p), kinds)
            g.bound_bytes = (g.bound_bytes or 0) + bound if bound else g.bound_bytes
            g.bound_resident_bytes = (g.bound_resident_bytes or 0) + rss
    for p in limited:
        assert p.verdict is not None and p.cgroup_memory is not None
        g = groups[limit_key(p.cgroup_memory)]
        p.verdict.recommendation = recommend(p, g, node, seconds=span, backend=trace.backend,
                                             allocatable_bytes=allocatable)
        advise_number(p.verdict)

"""Wiring for the recommendation (issue 16): gathers what app.investigation.recommend needs from one
investigation (the tracer's pages and their growth, the process's maps, smaps and pagemap from its snapshot
at the window's end, the pod's owner chain, the node's allocatable memory) and puts a Recommendation on
each limit verdict. (Words: a verdict's `advice` is its lines of what to do; a `recommendation` is the limit
to set, with its number and command; put_in_advice writes the number into the advice.)"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.models import NodeStats, ProcessReport
from app.parsers.pagemap import WINDOW_PAGES, present_pages, windows
from app.parsers.procfs import SmapsEntry
from app.tracers.base import TraceResult

from .estimate import MemoryKey, faulting_memory, merge_memory
from .recommend import Group, blames_limit, limit_key, put_in_advice, recommend
from .sampler import ProcessTrack
from .snapshot import ProcessSnapshot
from .sources import DistinctPages, distinct_pages

log = logging.getLogger(__name__)


MAX_PAGEMAP_WINDOWS = 4096  # pagemap reads per process (2 MiB of address space each: 8 GiB spread out)


def resident_now(snap: ProcessSnapshot | None, p: ProcessReport, pages: dict[int, int]) -> set[int] | None:
    """Which of the process's faulted pages are resident at the window's end (pagemap's present bit), so a
    page read back and resident counts once (issue 22); None when not known (gone, refused, too spread)."""
    if p.exited_during_window or not pages or snap is None:
        return None
    starts = windows(list(pages))
    if len(starts) > MAX_PAGEMAP_WINDOWS:
        return None
    data = snap.pagemap(starts, WINDOW_PAGES)
    if data is None:
        return None
    present: set[int] = set()
    for first, chunk in data.items():
        present |= present_pages(chunk, first)
    return present & pages.keys()


def _smaps(snap: ProcessSnapshot | None, p: ProcessReport) -> list[SmapsEntry] | None:
    """The process's smaps at the window's end (its snapshot's: read once, only where a rule uses it)."""
    return snap.smaps() if snap is not None and not p.exited_during_window else None


@dataclass(frozen=True)
class WindowSeen:
    """What the window saw besides each process's faults: its length (s; the tracer's interval when it has
    one), the sampler's refault series per cgroup path (Sampler.refault_series), and per limit path (bytes
    read() re-readers under it read back, the size of their files) (rereaders.reread_bytes)."""

    seconds: float
    refaults: Mapping[str, list[tuple[float, int]]] = field(default_factory=dict)
    reread: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def add_recommendations(
    processes: list[ProcessReport],
    tracks: dict[int, ProcessTrack],
    trace: TraceResult,
    node: NodeStats,
    snapshots: dict[int, ProcessSnapshot],
    window: WindowSeen,
    *,
    owners: object | None = None,
    node_name: str = "",
) -> None:
    """Set verdict.recommendation on every process whose verdict blames a limit (in place); `snapshots`:
    each process as read at the window's end (its smaps and pagemap come from there)."""
    seconds, refaults, reread = window.seconds, window.refaults, window.reread
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
    # Every fault's page (an exact backend, not sampled): the distinct pages size the limit. A sampled
    # recording's pages undercount the memory that faulted: the procfs basis then, like a backend that is not exact.
    every = trace.exact and trace.sample_period == 1
    backend = trace.backend if trace.sample_period == 1 else f"{trace.backend} sampled one fault in {trace.sample_period}"
    groups: dict[str, Group] = {}
    memory: dict[str, dict[MemoryKey, tuple[int, int]]] = {}  # procfs: the faulting memory per group
    keys = {limit_key(q.cgroup_memory) for q in limited if q.cgroup_memory is not None}
    for p in processes:  # every process under a binding limit adds its pages to that limit's group
        if p.cgroup_memory is None or limit_key(p.cgroup_memory) not in keys:
            continue
        key = limit_key(p.cgroup_memory)
        t = tracks.get(p.pid)
        pages = trace.faults.get(p.pid)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(pages=None, faults=0, growth={}, reread=reread.get(key))
        g.faults += p.major_faults
        if not g.refaults and refaults:  # the group's refaults each tick (its processes' cgroup, the first sampled)
            g.refaults = list(refaults.get(p.cgroup_memory.path, ()))
        if pages and t is not None and every:  # perf-tracepoint's pages include minor faults: not used
            mine = distinct_pages(p.pid, pages, t.maps, resident_now(snapshots.get(p.pid), p, pages))
            kept = sum(pages.values())
            seen = trace.totals.get(p.pid, kept)
            g.dropped += max(0, seen - kept)
            g.events += seen
            g.map_full = g.map_full or trace.map_full
            g.lost, g.lost_of = trace.lost, trace.events
            if smaps := _smaps(snapshots.get(p.pid), p):  # at the window's end, like the cgroup usage resident is taken from
                g.smaps[p.pid] = smaps
            if g.pages is None:
                g.pages = DistinctPages(set(), set(), set(), set(), names={})
            g.pages.merge(mine)
            for sec, n in trace.new_pages.get(p.pid, {}).items():
                g.growth[sec] = g.growth.get(sec, 0) + n
        elif not trace.faults or not every:
            kinds = {s.kind.value for s in p.sources if s.faults}
            g.kinds = frozenset(kinds) if key not in memory else g.kinds | kinds
            merge_memory(memory.setdefault(key, {}), faulting_memory(p.pid, _smaps(snapshots.get(p.pid), p), kinds))
    for key, mem in memory.items():  # a file the group's processes share is bounded once (issue 22)
        g = groups[key]
        g.bound_bytes = sum(size for size, _ in mem.values()) or None
        g.bound_resident_bytes = sum(rss for _, rss in mem.values())
    for p in limited:
        assert p.verdict is not None and p.cgroup_memory is not None
        g = groups[limit_key(p.cgroup_memory)]
        p.verdict.recommendation = recommend(p, g, node, seconds=span, backend=backend,
                                             allocatable_bytes=allocatable)
        put_in_advice(p.verdict)

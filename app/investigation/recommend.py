"""The memory limit that makes a limit's faults stop, and the command that sets it (issue 16). Pure.

How (docs/diagnosis.md, "The recommendation"): the memory a group is missing is what it had to read back
in. With an exact tracer that is the group's distinct faulted pages (file, code and shmem pages by file and
offset, so a page two processes fault counts once; anonymous pages by process and address); with procfs
alone it is estimated from the major-fault count, bounded by the size of the memory that faults (smaps),
and the margin is wider. File pages that came back through read-ahead (no fault each) are counted from
the cgroup's workingset_refault_file, bounded by the faulting files' mapped size; anonymous and shmem pages
that came back by swap readahead (vm.page-cluster) or from the swap cache from its workingset_refault_anon,
bounded by the faulting mappings' Rss + Swap (issue 22). The pages read back and the pages resident now are
largely the same memory, so they are united, not added: per faulting file (once across processes) or
anonymous mapping (sources.faulting_units, from smaps at the window's end; pages both read back and
resident now, by pagemap's present bit, counted once),

    need = min(extent, read back + resident of it - both);  other = resident - resident in those units
    limit = round_up_16MiB((sum of need + other) x (1 + margin)),  margin 10% exact, 15% estimated

at least 16 MiB above the current limit, capped at what the node can give (allocatable when known, else
MemTotal), saying so when capped. `at_least` when the window did not see the whole working set: new
distinct pages still appeared in its last quarter (perf's sample times; without times, bpftrace, that is
not known) and fewer than half the pages were faulted again (the access never came around to them), or,
with procfs, the faults (or the cgroup's refaults) could not cover the memory that faults. Never "seen
whole" when the tracer's page map was full or dropped events (then at_least, confidence not high), nor when
a cold tail of pages read once still arrives at the window's end beside a hot set (no limit below the
memory's size removes those reads). Also at_least, exact or procfs, when the group's refault rate is still
rising in the window's last third (a growing scan: refaults_rising, from the sampler's per-tick series),
unless every page that can fault is counted already (exact) or the faults covered it twice (procfs). procfs bounds a file the group's processes share once (device + inode)
and leaves out what is mapped resident beyond the group's usage (charged to another group). The group's
unmapped swap cache is part of the swapped memory, not other resident memory.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from app.models import (
    Cause,
    CgroupMemory,
    Confidence,
    NodeStats,
    OwnerRef,
    PodRef,
    ProcessReport,
    Recommendation,
    Verdict,
)
from app.parsers.procfs import SmapsEntry

from .diagnose import high_binds, mib, near_limit
from .sources import DistinctPages, Unit, faulting_units

PAGE = 4096
MIB = 1 << 20
ROUND = 16 * MIB  # a size people write
MARGIN_EXACT = 0.10
MARGIN_ESTIMATED = 0.15  # was 25%: at 256 MiB that alone broke R <= 1.2 L* + 16 MiB (issue 22)
GROWTH_TAIL = 0.25  # the last quarter of the window...
GROWTH_SHARE = 0.05  # ...bringing more than 5% of the distinct pages: still growing
READAHEAD_RATIO = 4  # cgroup file refaults per major fault above which read-ahead brought most pages in
# cgroup anon refaults per swap-in fault above which swap readahead (vm.page-cluster: 8 pages a fault at 3) or
# the swap cache brought most anonymous and shmem pages back: more than half came back without a fault each
SWAP_READAHEAD_RATIO = 2
LOST_SHARE = 0.01  # lost samples (ring buffer full) up to this share of the events: their pages are left out
CAME_BACK = 0.5  # share of distinct pages faulted again at which the window saw the access come around
MIN_STEP = 16 * MIB  # never recommend less than the current limit plus this
MAX_UNIT_LINES = 3  # basis lines for the biggest faulting mappings


def round_up(n: int, step: int = ROUND) -> int:
    return max(step, -(-n // step) * step)


def blames_limit(p: ProcessReport) -> bool:
    """The verdict puts the faults on a memory limit (container, pod, host cgroup, memory.high)."""
    v, mem = p.verdict, p.cgroup_memory
    return bool(v and mem and v.cause in (Cause.CONTAINER_MEMORY_LIMIT, Cause.SHMEM_SWAP)
                and (near_limit(mem) or high_binds(mem)))


def limit_key(mem: CgroupMemory) -> str:
    """The cgroup whose limit binds: processes under it share one recommendation."""
    if high_binds(mem):
        return mem.high_path or mem.path
    return mem.limit_path or mem.path


@dataclass
class Group:
    """What was measured for one limited cgroup (its processes' evidence merged)."""

    pages: DistinctPages | None  # None: no fault addresses (procfs)
    faults: int  # major faults of its processes over the window
    growth: dict[int, int]  # second of the window -> distinct pages first seen then (empty: unknown)
    bound_bytes: int | None = None  # procfs: size of the memory that faults (smaps), an upper bound
    smaps: dict[int, list[SmapsEntry]] = field(default_factory=dict)  # pid -> smaps at the window's end
    bound_resident_bytes: int | None = None  # procfs: how much of the memory that faults is resident (Rss)
    # The tracer's evidence of pages it did not keep (issue 22): events of the group's processes whose page the
    # map did not keep (it was full), all events of them, and samples the kernel lost for the whole trace.
    dropped: int = 0
    events: int = 0
    map_full: bool = False
    lost: int = 0
    lost_of: int = 0  # the whole trace's events, lost ones included
    # procfs: the kinds of memory that fault ("file", "code", "swap", "shmem"), to know which refaults count
    kinds: frozenset[str] = frozenset({"file", "code", "swap", "shmem"})
    # (monotonic time, the cgroup's workingset_refault_file + _anon) each tick of the window (empty: not known)
    refaults: list[tuple[float, int]] = field(default_factory=list)
    # read() re-readers under this limit (rereaders.py): (bytes they read back in the window, their files' size)
    reread: tuple[int, int] | None = None

    @property
    def file_faulting(self) -> bool:
        return bool(self.kinds & {"file", "code"})

    @property
    def swap_faulting(self) -> bool:
        return bool(self.kinds & {"swap", "shmem"})


def still_growing(growth: Mapping[int, int], seconds: float, distinct: int) -> bool:
    """New distinct pages in the window's last quarter (at least its last second) > 5% of them all."""
    if distinct <= 0:
        return True
    tail_from = int(max(0.0, seconds - max(1.0, GROWTH_TAIL * seconds)))
    tail = sum(n for s, n in growth.items() if s >= tail_from)
    return tail > GROWTH_SHARE * distinct


COVERED = 0.97  # distinct pages over the memory that can fault from which the window saw it whole
RISING_MIN_SECONDS = 3.0  # a shorter series has no thirds worth comparing
RISING_LATE = 1.3  # the last third's refault rate over the middle third's: still rising late in the window
RISING_WHOLE = 1.6  # ...and over the first third's (a steady rate moves +-30% here: both, not one)
RISING_MIN_RATE = 64.0  # pages/s in the last third below which a rise is a quiet group's noise


# What a rising refault rate means when nothing else explains it; a caller that knows the memory is all counted
# already (exact: every page; procfs: faults of twice the memory that can fault) says so instead.
GROWING_SCAN = ": a growing scan, so the window did not see all it will need"


def refaults_rising(series: Sequence[tuple[float, int]]) -> str | None:
    """The basis line when the group's refault rate is still rising in the window's last third (a growing
    scan: the window saw less than the group will read back), else None. `series`: (time, the cgroup's
    refaults) samples, oldest first; the rates are over the window's thirds, the counters interpolated at
    their edges (a group not sampled in a tick leaves a gap, not a zero)."""
    points = sorted(series)
    if len(points) < 4 or points[-1][0] - points[0][0] < RISING_MIN_SECONDS:
        return None
    t0, span = points[0][0], points[-1][0] - points[0][0]

    def at(t: float) -> float:
        for (ta, a), (tb, b) in zip(points, points[1:], strict=False):
            if ta <= t <= tb:
                return a + (b - a) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
        return float(points[-1][1])

    third = span / 3
    rates = [(at(t0 + (i + 1) * third) - at(t0 + i * third)) / third for i in range(3)]
    first, middle, last = rates
    if last < RISING_MIN_RATE or last < RISING_LATE * middle or last < RISING_WHOLE * first or middle < first:
        return None
    return (f"refaults still rising late in the window: the cgroup read back {first:,.0f}, {middle:,.0f} and "
            f"{last:,.0f} pages/s in its thirds (workingset_refault){GROWING_SCAN}")


def swap_cache(mem: CgroupMemory) -> int:
    """The group's swap cache (bytes; 0 when not known): pages of the swapped memory read back by swap
    readahead and not yet touched, or on their way out; charged to the group, in no mapping's Rss, so
    part of the swapped memory, not other memory (issue 22)."""
    return mem.swapcache_bytes or 0


COLD_ONCE = 0.05  # pages faulted once, as a share of the distinct pages, from which a cold tail is looked for
COLD_TAIL = 0.15  # ...and the share of them first seen in the window's last quarter (a steady stream: 25%)


def cold_tail(growth: Mapping[int, int], seconds: float, distinct: int, once: int) -> str | None:
    """A hot set the access keeps coming around to, and beside it a steady stream of pages read once, still
    arriving at the window's end (a Zipf-like or hot/cold access with a long cold tail): the window cannot
    bound the tail, and no limit below the faulting memory's size removes its reads. The basis line, or None."""
    if not growth or distinct <= 0 or once < COLD_ONCE * distinct:
        return None
    tail_from = int(max(0.0, seconds - max(1.0, GROWTH_TAIL * seconds)))
    tail = sum(n for s, n in growth.items() if s >= tail_from)
    if tail < COLD_TAIL * once:
        return None
    return (f"a cold tail: {mib(once * PAGE)} of pages read once in the window, still arriving at its end ({tail:,} new "
            "in its last quarter): the window did not see the whole working set, and no limit below the size of the "
            "memory that faults removes those reads")


def union_need(units: list[Unit], resident: int) -> tuple[int, int]:
    """(bytes the faulting memory needs, bytes of the group's resident memory that are part of it). Each
    unit needs min(extent, read back + resident of it); the resident pages of the units are taken out of
    the group's resident memory (never more than it) so that no page counts twice."""
    return sum(u.need_bytes() for u in units), min(resident, sum(u.resident_bytes for u in units))


def unit_line(u: Unit) -> str:
    read, res, ext = u.distinct * PAGE, u.resident_bytes, u.extent_bytes
    what = "touched (Rss + Swap)" if u.kind == "anon" else "mapped"
    if ext is None:
        return (f"{u.name} needs {mib(u.need_bytes())}: {mib(read)} of its pages read back"
                + (f" + {mib(res)} resident now (smaps Rss)" if res else "; its size is not known (no smaps)"))
    if u.need_bytes() < read + res:
        return (f"{u.name} needs {mib(u.need_bytes())}: {mib(read)} of its pages read back and {mib(res)} of it "
                f"resident now (smaps Rss) are pages of the same {mib(ext)} {what}, counted once")
    return (f"{u.name} needs {mib(u.need_bytes())}: {mib(read)} of its pages read back + {mib(res)} resident now "
            f"(smaps Rss), of {mib(ext)} {what}")


def _kinds_line(pages: DistinctPages, seconds: float, backend: str) -> list[str]:
    out = []
    names = pages.names or {}

    def top_files(keys: set[tuple[str, int, int]]) -> str:
        per: dict[tuple[str, int], int] = {}
        for dev, ino, _ in keys:
            per[(dev, ino)] = per.get((dev, ino), 0) + 1
        ordered = sorted(per.items(), key=lambda kv: -kv[1])
        shown = ", ".join(names.get(k, f"inode {k[1]}") for k, _ in ordered[:2])
        return shown + (f" and {len(ordered) - 2} more" if len(ordered) > 2 else "")

    for label, keys in (("file", pages.file), ("program code", pages.code), ("shared memory", pages.shmem)):
        if keys:
            out.append(f"{mib(len(keys) * PAGE)} of distinct {label} pages of {top_files(keys)} read back in "
                       f"{seconds:.0f} s, exact ({backend})")
    if pages.anon:
        procs = len({pid for pid, _ in pages.anon})
        out.append(f"{mib(len(pages.anon) * PAGE)} of distinct anonymous pages swapped back in by {procs} "
                   f"process{'es' if procs > 1 else ''} in {seconds:.0f} s, exact ({backend})")
    return out


def _dropped_line(group: Group) -> tuple[str, bool] | None:
    """(the basis line, whether it makes the recommendation at_least) when the tracer did not keep every
    fault's page; None when it kept them all. A full page map never says the working set was seen whole."""
    if group.dropped or group.map_full:
        of = f" of {group.events:,}" if group.events else ""
        return (f"the tracer's page map was full: {group.dropped:,}{of} fault events of the group had pages it did not "
                "keep, so the distinct pages undercount what came back", True)
    if group.lost:
        share = group.lost / max(group.lost_of, group.lost)
        if share > LOST_SHARE:
            return (f"the kernel lost {group.lost:,} of {group.lost_of:,} fault samples (ring buffer full, "
                    f"{share:.0%}): pages of those faults are not counted", True)
        return (f"the kernel lost {group.lost:,} of {group.lost_of:,} fault samples ({share:.1%}, under "
                f"{LOST_SHARE:.0%}): their pages are left out", False)
    return None


def _readahead_pages(units: list[Unit], refaults: int, group: Group, basis: list[str]) -> list[Unit]:
    """Read-ahead below READAHEAD_RATIO (issue 22, anon + file at swappiness 200): the cgroup's file
    refaults exceed the faults on file pages, so some pages came back without a fault of their own: in
    order, read-ahead brings the next pages in with each fault, and under a tight limit some of them go
    again before the window's end, neither faulted nor resident then (the union undercounts: 76 of the
    96 MiB of a file the group walks whole, R 192 where 200 works). Those pages are counted with the
    faulting files, up to what each maps; read() re-readers' refaults are not theirs. The window's
    "seen whole" check is left as it is: this only adds pages that were read back."""
    assert group.pages is not None
    reread = (group.reread[0] // PAGE) if group.reread else 0
    extra = refaults - reread - group.pages.file_faults
    files = [u for u in units if u.kind in ("file", "code") and u.extent_bytes is not None]
    if not group.pages.file_faults or extra * PAGE < MIB or not files:
        return units
    left, added = extra, 0
    out = []
    ours = {id(u) for u in files}
    for u in sorted(units, key=lambda u: -(u.extent_bytes or 0)):
        room = max(0, ((u.extent_bytes or 0) - u.need_bytes()) // PAGE) if id(u) in ours else 0
        take = min(left, room)
        left, added = left - take, added + take
        out.append(replace(u, distinct=u.distinct + take) if take else u)
    if added * PAGE >= MIB:
        basis.append(f"the cgroup read back {mib(refaults * PAGE)} of file pages (workingset_refault_file) for "
                     f"{group.pages.file_faults:,} faults on file pages"
                     + (f" and {mib(reread * PAGE)} read() by re-readers" if reread else "")
                     + f": read-ahead brought pages in without a fault each, so {mib(added * PAGE)} more of the "
                     "faulting files is counted (up to what they map)")
    return out


def _came_back(p: ProcessReport, group: Group, units: list[Unit], basis: list[str],
               short: list[str]) -> tuple[list[Unit], list[Unit]]:
    """Count the pages that came back without a major fault each (issue 16 for file pages, issue 22 for
    anonymous and shmem ones): read-ahead and fault-around bring file pages in, swap readahead
    (vm.page-cluster) and the swap cache bring swapped pages back, so the faulted pages undercount what the
    group read back. The cgroup's refaults say how much came back; the faulting memory's size bounds it.
    Also used when the tracer dropped pages. Returns the units with the corrected ones merged, and the merged
    ones (for them the refaults, not the page growth, say whether the window saw it all; the page growth
    still judges the others: a file side the window did not see whole beside corrected anonymous memory)."""
    pages = group.pages
    assert pages is not None
    dropping = group.map_full or group.dropped > 0
    corrected: list[Unit] = []
    file_pages = len(pages.file) + len(pages.code)
    refaults = p.cgroup_file_refaults
    mapped = pages.mapped_bytes()
    if file_pages and refaults is not None and mapped and (
            refaults > READAHEAD_RATIO * max(group.faults, 1) or dropping):
        # (program code: hundreds of pages a fault here)
        counted = max(file_pages * PAGE, min(refaults * PAGE, mapped))
        files = [u for u in units if u.kind in ("file", "code")]
        # seen: all of it came back, or what came back and what is resident cover it (the union is bounded)
        seen = refaults * PAGE >= mapped or counted + sum(u.resident_bytes for u in files) >= mapped
        why = ("read-ahead brings pages in without a fault each" if not dropping
               else "the tracer did not keep every faulted page")
        basis.append(f"the cgroup read back {mib(refaults * PAGE)} of file pages (workingset_refault_file) for "
                     f"{group.faults:,} major faults: {why}, so "
                     f"{mib(counted)} of the faulting files' {mib(mapped)} mapped is counted"
                     + ("" if seen else "; the window did not see all of it come back"))
        if not seen:
            short.append("not all of the faulting files came back in the window")
        extent = sum(u.extent_bytes if u.extent_bytes is not None else (pages.mapped or {}).get(
            (str(u.key[1]), int(u.key[2])), 0) for u in files)
        merged = Unit(
            ("file", "", 0), "the faulting files" if len(files) > 1 else files[0].name, "file", counted // PAGE,
            sum(u.resident_bytes for u in files), max(extent, counted), sum(u.overlap for u in files))
        units = [u for u in units if u.kind not in ("file", "code")] + [merged]
        corrected.append(merged)
    elif file_pages and refaults is not None:
        units = _readahead_pages(units, refaults, group, basis)
    swap_pages = len(pages.anon) + len(pages.shmem)
    anon_back = p.cgroup_anon_refaults
    if swap_pages and anon_back is not None and (
            anon_back > SWAP_READAHEAD_RATIO * max(pages.swap_faults, 1) or dropping):
        swapped = [u for u in units if u.kind in ("anon", "shmem")]
        known = [u for u in swapped if u.extent_bytes is not None]
        extent = sum(u.extent_bytes or 0 for u in known)
        why = ("swap readahead and the swap cache bring pages back without a fault each" if not dropping
               else "the tracer did not keep every faulted page")
        if not extent or len(known) < len(swapped):
            basis.append(f"the cgroup read back {mib(anon_back * PAGE)} of anonymous and shmem pages "
                         f"(workingset_refault_anon) for {pages.swap_faults:,} swap-in faults: {why}, and the size "
                         "of the swapped memory is not known (no smaps)")
            short.append("more anonymous memory came back than faulted, and its size is not known")
            corrected += swapped  # the refaults said what they could: the growth is not asked about them
        else:
            counted = max(swap_pages * PAGE, min(anon_back * PAGE, extent))
            seen = anon_back * PAGE >= extent or counted + sum(u.resident_bytes for u in swapped) >= extent
            basis.append(f"the cgroup read back {mib(anon_back * PAGE)} of anonymous and shmem pages "
                         f"(workingset_refault_anon) for {pages.swap_faults:,} swap-in faults: {why}, so "
                         f"{mib(counted)} of the faulting memory's {mib(extent)} (touched: Rss + Swap) is counted"
                         + ("" if seen else "; the window did not see all of it come back"))
            if not seen:
                short.append("not all of the swapped memory came back in the window")
            merged = Unit(
                ("swap", "", 0), swapped[0].name if len(swapped) == 1 else "the swapped memory",
                "shmem" if all(u.kind == "shmem" for u in swapped) else "anon", counted // PAGE,
                sum(u.resident_bytes for u in swapped), max(extent, counted), sum(u.overlap for u in swapped))
            units = [u for u in units if u.kind not in ("anon", "shmem")] + [merged]
            corrected.append(merged)
    units.sort(key=lambda u: -u.need_bytes())
    return units, corrected


@dataclass
class _Need:
    """What the memory that faults needs under the limit, and how sure that is."""

    needed: int  # bytes for the memory that faults
    in_units: int  # of the group's resident bytes, those that are the memory that faults
    at_least: bool  # the window did not see it all: the number is a floor
    confidence: Confidence
    margin: float


def _counted_whole(units: list[Unit], incomplete: bool, union: bool = True) -> bool:
    """What the units count covers (COVERED) all the memory that can fault: every extent known, no page
    dropped. `union`: their need (read back and resident, counted once); else their pages read back only."""
    extents = [u.extent_bytes for u in units]
    seen = sum(u.need_bytes() if union else u.distinct * PAGE for u in units)
    return not incomplete and bool(units) and all(extents) and seen >= COVERED * sum(e or 0 for e in extents)


def _exact_need(p: ProcessReport, group: Group, mem: CgroupMemory, resident: int, seconds: float, backend: str,
                basis: list[str]) -> _Need:
    """From the tracer's distinct pages (exact): the faulting mappings, what came back, the swap cache, and
    the pages read back that pagemap says are resident (charged to this group). Adds its lines to `basis`."""
    assert group.pages is not None
    distinct = group.pages.count()
    margin = MARGIN_EXACT
    basis += _kinds_line(group.pages, seconds, backend)
    units = faulting_units(group.pages, group.smaps)
    short: list[str] = []  # why the window did not see the whole working set (at_least)
    units, corrected = _came_back(p, group, units, basis, short)
    incomplete = _dropped_line(group)
    if incomplete:
        basis.append(incomplete[0])
        if incomplete[1]:
            short.append("the tracer did not keep every page")
    # The page growth judges the units the refaults did not correct (all of them when none was corrected).
    if rest := [u for u in units if all(u is not c for c in corrected)]:
        came_back = group.pages.again / max(distinct, 1)
        growing = still_growing(group.growth, seconds, distinct) if group.growth else None
        # Seen whole: no new pages at the end, or most pages faulted again (the access came around to
        # them: in a group thrashing at its limit, pages that stayed resident a while trickle in as new).
        # Never when the tracer dropped pages: the pages it did not keep may be new ones.
        # ...or its distinct pages cover (nearly) all the memory that can fault (Rss + Swap, the files mapped):
        # there is no more to see, however the new pages arrived (a scattered walk finds its last pages late).
        # What the window saw of each: its pages read back, and, where pagemap told which of them are
        # resident (the union is then exact), its resident pages too: a mapping read back in part and
        # resident for the rest is counted whole already, whatever new pages arrive (the zoo's anon + file at
        # swappiness 60: 44 of 96 MiB anon read back, all 96 resident; the file all read back; "a cold tail"
        # for a recommendation that already counts every page that can fault).
        known = group.pages.present is not None
        covered = _counted_whole(rest, incomplete is not None, union=known)
        seen = covered or not (came_back < CAME_BACK and growing is not False)
        # (a cold tail is a floor only when the window did not cover the whole memory that can fault; beside
        # corrected memory the pages faulted once are mostly its own, brought back by read-ahead: not told)
        tail_line = (cold_tail(group.growth, seconds, distinct, distinct - group.pages.again)
                     if seen and not covered and not corrected else None)
        again = f"{came_back:.0%} of them were faulted again in the window"
        if growing is None:
            basis.append(f"{again} (no sample times): " + ("it saw the working set come around" if seen
                                                           else "the window may not have seen them all"))
        elif growing:
            basis.append("new distinct pages still appeared in the window's last quarter and " + again + (
                f", but they{' and the resident pages' if known else ''} cover {COVERED:.0%} or more of the memory "
                "that can fault: it saw the working set whole"
                if covered else ": it saw the working set come around" if seen
                else ": it did not see the whole working set"))
        elif not incomplete and not tail_line:
            basis.append("no new distinct pages in the window's last quarter: the working set was seen whole")
        elif incomplete:
            basis.append("no new distinct pages in the window's last quarter among the pages kept")
        if not seen:
            short.append("the window did not see the whole working set")
        elif tail_line:
            basis.append(tail_line)
            short.append("a cold tail")
    rising = refaults_rising(group.refaults)
    if rising and _counted_whole(units, incomplete is not None):
        # A rising rate cannot ask for more than all the memory that can fault, and that is counted already
        # (the zoo's anon + file at swappiness 200 beside two busy loops: both sides read back whole, the
        # refaults rising 16k -> 20k -> 27k pages/s as the machine's load moved): the number stands, less sure.
        basis.append(rising.removesuffix(GROWING_SCAN) + ", but "
                     "every page of the memory that can fault is counted already: the limit does not grow with it")
    elif rising:
        basis.append(rising)
        short.append("refaults still rising")
    at_least = bool(short)
    confidence: Confidence = "medium" if at_least or incomplete or rising else "high"
    needed, in_units = union_need(units, resident)
    cached = min(swap_cache(mem), sum(max(0, (u.extent_bytes or 0) - u.resident_bytes)
                                              for u in units if u.kind in ("anon", "shmem")), resident - in_units)
    if cached > 0:
        in_units += cached
        basis.append(f"{mib(cached)} of the group's memory is swap cache (memory.stat): pages "
                     "of the swapped memory, not other memory")
    basis += [unit_line(u) for u in units[:MAX_UNIT_LINES]]
    if len(units) > MAX_UNIT_LINES:
        rest = units[MAX_UNIT_LINES:]
        basis.append(f"{len(rest)} more faulting mappings need {mib(sum(u.need_bytes() for u in rest))}")
    if group.pages.present is not None:
        # pagemap said which pages read back are resident now: those are charged to this group (it read
        # them). The limit then holds the pages read back + the group's other resident pages; resident
        # pages of a faulting file that another group read first (charged there) do not count against it.
        read = sum(u.distinct for u in units) * PAGE
        both = min(resident, sum(u.overlap for u in units) * PAGE)
        alt = read + resident - both
        if alt < needed + resident - in_units:
            mapped_res = sum(u.resident_bytes for u in units)
            basis.append(f"{mib(both)} of the group's {mib(resident)} resident are pages it read back (pagemap): "
                         f"it needs {mib(read)} read back + {mib(resident - both)} other resident"
                         + (f"; at least {mib(mapped_res - resident)} of the faulting memory mapped resident (smaps "
                            "Rss) is charged to another group, not to this limit" if mapped_res > resident else ""))
            needed, in_units = read, both
    return _Need(needed, in_units, at_least, confidence, margin)


def _estimated_need(p: ProcessReport, group: Group, mem: CgroupMemory, resident: int, seconds: float, backend: str,
                    basis: list[str]) -> _Need:
    """From the major faults and the cgroup's refaults (no addresses: procfs, or a tracer that is not exact),
    bounded by the memory that faults (smaps). Adds its lines to `basis`."""
    faulted = group.faults * PAGE
    bound = group.bound_bytes
    # Pages that came back without a major fault each (read-ahead, swap readahead, the swap cache):
    # the cgroup's refaults, file and anon, count them; bounded by the memory that faults like the faults.
    came = ((p.cgroup_file_refaults or 0) if group.file_faulting else 0) + (
        (p.cgroup_anon_refaults or 0) if group.swap_faulting else 0)
    seen_bytes = max(faulted, came * PAGE)
    read = min(seen_bytes, bound) if bound else seen_bytes
    at_least = bound is None or seen_bytes < bound
    margin = MARGIN_ESTIMATED
    how = "procfs" if backend == "procfs" else backend if " sampled " in backend else f"{backend} is not exact"
    basis.append(f"estimate ({how}, no fault addresses used): {group.faults:,} major faults ({mib(faulted)}) in "
                 f"{seconds:.0f} s" + (f" and {mib(came * PAGE)} refaulted by the cgroup (workingset_refault)"
                                       if came * PAGE > faulted else "")
                 + (f", bounded by the {mib(bound)} of memory that faults (smaps, shared files once)"
                    if bound else "") + f"; margin widened to {MARGIN_ESTIMATED:.0%}")
    if at_least:
        basis.append(f"the faults and the cgroup's refaults cover {mib(read)}"
                     + (f" of the {mib(bound)} that can fault" if bound else " (the memory that faults is not known)")
                     + ": the window did not see the whole working set")
    if (rising := refaults_rising(group.refaults)) and bound and seen_bytes >= 2 * bound:
        # Faults and refaults of twice all the memory that can fault: a rising rate is the machine's load
        # moving, not memory the window missed (the suite's /dev/shm row when the CPUs it shared came free:
        # 72,477 faults of a 32,768-page segment, and at_least). procfs cannot tell pages apart, so once over
        # is not enough (a hot part faulted again and again covers the rest as often as not).
        basis.append(rising.removesuffix(GROWING_SCAN)
                     + f", but the faults and the cgroup's refaults cover {mib(seen_bytes)}, twice the memory that "
                     "can fault or more: the limit does not grow with it")
    elif rising:
        basis.append(rising)
        at_least = True
    in_units = min(group.bound_resident_bytes or 0, resident)
    if group.swap_faulting and bound:
        cached = min(swap_cache(mem), max(0, bound - (group.bound_resident_bytes or 0)),
                     resident - in_units)
        if cached > 0:
            in_units += cached
            basis.append(f"{mib(cached)} of the group's memory is swap cache (memory.stat): "
                         "pages of the swapped memory, not other memory")
    needed = read + in_units
    if bound:
        needed = min(bound, needed)
        # More of the faulting memory mapped resident (smaps Rss) than the group holds in all: the rest is
        # charged to another group (it read those pages first), stays resident, and is not this limit's.
        elsewhere = max(0, (group.bound_resident_bytes or 0) - resident)
        if elsewhere and needed > bound - elsewhere:
            needed = max(in_units, bound - elsewhere)
            basis.append(f"at least {mib(elsewhere)} of the memory that faults is resident (smaps Rss) beyond the "
                         f"group's {mib(resident)}: charged to another group, not to this limit; it needs "
                         f"{mib(needed)}")
    if in_units:
        basis.append(f"the memory that faults needs {mib(needed)}: {mib(read)} read back + {mib(in_units)} of it "
                     "resident now (smaps Rss)" + (f", at most its {mib(bound)}" if bound else "")
                     + ": the pages read back and the resident ones are pages of the same memory")
    return _Need(needed, in_units, at_least, "low", margin)


def recommend(
    p: ProcessReport,
    group: Group,
    node: NodeStats,
    *,
    seconds: float,
    backend: str,
    allocatable_bytes: int | None = None,
) -> Recommendation | None:
    """The limit for the cgroup whose limit binds on p (None when p's verdict blames no limit)."""
    if not blames_limit(p):
        return None
    mem = p.cgroup_memory
    assert mem is not None
    high = high_binds(mem)
    current = mem.high_bytes if high else mem.max_bytes
    # What is resident at the level whose limit binds (the pod's usage for a pod-level limit).
    if high:
        resident = mem.high_usage_bytes if mem.high_usage_bytes is not None else mem.current_bytes or 0
    elif mem.usage_ratio is not None and mem.max_bytes:
        resident = int(mem.usage_ratio * mem.max_bytes)
    else:
        resident = mem.current_bytes or 0
    basis: list[str] = []
    if group.pages is not None:
        need = _exact_need(p, group, mem, resident, seconds, backend, basis)
    else:
        need = _estimated_need(p, group, mem, resident, seconds, backend, basis)
    needed, in_units, at_least, confidence, margin = need.needed, need.in_units, need.at_least, need.confidence, need.margin
    if p.cgroup_file_refaults is not None:
        basis.append(f"the cgroup's workingset_refault_file rose by {p.cgroup_file_refaults:,} pages "
                     f"({mib(p.cgroup_file_refaults * PAGE)}) in the window")
    if p.cgroup_anon_refaults:
        basis.append(f"the cgroup's workingset_refault_anon rose by {p.cgroup_anon_refaults:,} pages "
                     f"({mib(p.cgroup_anon_refaults * PAGE)}) in the window")
    if group.reread is not None:
        # read() re-readers share the limit: their files need what came back plus what of them is resident (in
        # the other resident memory: the group's page cache outside the faulting memory), at most their size
        read_b, size_b = group.reread
        theirs = min(resident - in_units, max(0, (mem.file_bytes or 0) - in_units))
        extra = max(0, min(size_b, read_b + theirs) - theirs)
        if extra:
            needed += extra
            basis.append(f"processes under this limit re-read {mib(size_b)} of files by read() (no major faults): "
                         f"{mib(read_b)} of their pages came back in the window; they need {mib(extra)} more than "
                         "their page cache resident now")
    other = resident - in_units
    basis.append(f"resident now: {mib(resident)} in cgroup {limit_key(mem)}, limit {mib(current)}"
                 + (" (memory.high)" if high else "") + f"; {mib(other)} of it outside the memory that faults")
    wanted = round_up(int((needed + other) * (1 + margin)))
    if current is not None and wanted < current + MIN_STEP:
        wanted = round_up(current + MIN_STEP)
    capped = None
    cap, cap_what = ((allocatable_bytes, "the node's allocatable memory") if allocatable_bytes
                     else (node.mem_total_bytes, "the node's MemTotal"))
    if cap and wanted > cap:
        capped = f"capped at {cap_what} ({mib(cap)}); it needs about {mib(wanted)}: move it to a larger node"
        wanted = cap // ROUND * ROUND or cap
    basis.append(f"({mib(needed)} for the memory that faults + {mib(other)} other resident) x {1 + margin:.2f}, "
                 "rounded up to 16 MiB" + (f" = {mib(wanted)}" if not capped else ""))
    subject, knob = _subject(p, mem, high)
    rec = Recommendation(
        subject=subject, knob=knob, cgroup=limit_key(mem), current_limit_bytes=current,
        recommended_limit_bytes=wanted, at_least=at_least, capped=capped, basis=basis, confidence=confidence,
        owner=p.pod.owner if p.pod else None,
    )
    rec.command, rec.command_reason = command(p.pod, rec, mem.version)
    return rec


def reread_limit(mem: CgroupMemory, *, refaults: int, file_bytes: int, node: NodeStats,
                 seconds: float, pod: PodRef | None = None) -> Recommendation:
    """The limit that stops a read() re-reader's page cache from thrashing (issue 22; rereaders.py): no fault
    addresses, so estimated like procfs's: the pages read back without a fault (its refaults), bounded by the
    files its processes hold open and read, united with its page cache resident now, plus its other memory,
    x (1 + 15%). at_least when what came back and the cache resident now do not cover the files (the window did
    not see them all)."""
    high = high_binds(mem)
    current = mem.high_bytes if high else mem.max_bytes
    resident = mem.current_bytes or 0
    cache = min(mem.file_bytes or 0, resident)
    read = refaults * PAGE
    needed = min(file_bytes, read + cache) if file_bytes else read + cache
    other = max(0, resident - cache)
    at_least = not file_bytes or read + cache < file_bytes  # what came back and what is resident cover the files
    basis = [f"estimate (read() re-reads: no fault addresses): the cgroup read back {mib(read)} of file pages "
             f"(workingset_refault_file, less its major faults) in {seconds:.0f} s, bounded by the {mib(file_bytes)} of "
             "files its processes hold open and do not map" + (": the window did not see them all come back"
                                                                if at_least else ""),
             f"the files read need {mib(needed)}: {mib(read)} read back + {mib(cache)} of page cache resident now"
             + (f", at most the files' {mib(file_bytes)}" if file_bytes else ""),
             f"resident now: {mib(resident)} in cgroup {limit_key(mem)}, limit {mib(current)}; {mib(other)} of it "
             "not page cache"]
    wanted = round_up(int((needed + other) * (1 + MARGIN_ESTIMATED)))
    if current is not None and wanted < current + MIN_STEP:
        wanted = round_up(current + MIN_STEP)
    capped = None
    if node.mem_total_bytes and wanted > node.mem_total_bytes:
        capped = f"capped at the node's MemTotal ({mib(node.mem_total_bytes)}); it needs about {mib(wanted)}"
        wanted = node.mem_total_bytes // ROUND * ROUND or node.mem_total_bytes
    basis.append(f"({mib(needed)} for the files read + {mib(other)} other) x {1 + MARGIN_ESTIMATED:.2f}, rounded up "
                 "to 16 MiB" + (f" = {mib(wanted)}" if not capped else ""))
    knob = "memory.high" if high else "memory.max" if mem.version == 2 else "memory.limit_in_bytes"
    rec = Recommendation(subject="cgroup", knob=knob, cgroup=limit_key(mem), current_limit_bytes=current,
                         recommended_limit_bytes=wanted, at_least=at_least, capped=capped, basis=basis,
                         confidence="low")
    if pod is None:
        rec.command, rec.command_reason = command(None, rec, mem.version)
    else:
        # A pod's group: its limit is in the pod's spec (the owner is not looked up for a re-reader)
        where = f"on container {pod.container} of" if pod.container and limit_key(mem) == mem.path else "on"
        rec.subject = "container" if pod.container and limit_key(mem) == mem.path else "pod"
        rec.knob = "resources.limits.memory" if rec.subject == "container" else "spec.resources.limits.memory"
        rec.command_reason = (f"set {rec.knob}: {wanted // MIB}Mi {where} pod {pod.namespace or '?'}/"
                              f"{pod.name or pod.uid} (in its owner's pod template)")
    return rec


def _subject(p: ProcessReport, mem: CgroupMemory, high: bool) -> tuple[Literal["container", "pod", "cgroup"], str]:
    where = (mem.high_path or mem.path) if high else (mem.limit_path or mem.path)
    if p.pod is not None:
        if where == mem.path:
            return "container", "resources.limits.memory"
        return "pod", "spec.resources.limits.memory"
    if high:
        return "cgroup", "memory.high"
    return "cgroup", "memory.max" if mem.version == 2 else "memory.limit_in_bytes"


_SET_RESOURCES = {"Deployment": "deployment", "StatefulSet": "statefulset", "DaemonSet": "daemonset",
                  "ReplicaSet": "replicaset", "ReplicationController": "replicationcontroller"}
_TEMPLATE = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
             "DaemonSet": ("spec", "template"), "CronJob": ("spec", "jobTemplate", "spec", "template")}


def _nest(path: tuple[str, ...], leaf: object) -> object:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def _kubectl(*args: str) -> str:
    return shlex.join(["kubectl", *args])


def command(pod: PodRef | None, rec: Recommendation, version: int) -> tuple[str | None, str | None]:
    """(the command that sets rec, None) or (None, why there is none / what to do instead). Quoted with
    shlex for a POSIX shell: names come from the cluster and a cgroup path from the node."""
    n = rec.recommended_limit_bytes
    qty = f"{n // MIB}Mi"
    if pod is None:
        path = rec.cgroup or "/"
        unit = path.rstrip("/").rsplit("/", 1)[-1]
        prop = "MemoryHigh" if rec.knob == "memory.high" else "MemoryMax"
        if unit.endswith((".service", ".scope", ".slice")):
            return shlex.join(["systemctl", "set-property", unit, f"{prop}={n // MIB}M"]), None
        file = f"/sys/fs/cgroup{'/memory' if version == 1 else ''}{path.rstrip('/')}/{rec.knob}"
        return f"echo {n} > {shlex.quote(file)}", (
            "not a systemd unit: written to the cgroup file, lost when whatever made the group re-creates it")
    if not pod.name or not pod.namespace:
        return None, (f"the pod (uid {pod.uid}) could not be named (no kubelet or API server answer): set "
                      f"{rec.knob}: {qty} where it is defined")
    container = pod.container
    if pod.static:
        return None, (f"static pod {pod.namespace}/{pod.name}: edit its manifest on the node (the kubelet's "
                      "staticPodPath, usually /etc/kubernetes/manifests/) and set "
                      + (f"resources.limits.memory: {qty} on container {container}" if rec.subject == "container"
                         else f"spec.resources.limits.memory: {qty}"))
    owner = pod.owner
    if owner is None:
        return None, (f"bare pod {pod.namespace}/{pod.name} (no owner): its resources cannot be changed in "
                      f"place; re-create it with {rec.knob}: {qty}")
    ns = pod.namespace
    kind = owner.kind
    note = None if owner.resolved else owner.note
    if rec.subject == "container" and container and kind in _SET_RESOURCES:
        cmd = _kubectl("-n", ns, "set", "resources", f"{_SET_RESOURCES[kind]}/{owner.name}", "-c", container,
                       f"--limits=memory={qty}")
        if kind in ("ReplicaSet", "ReplicationController"):
            note = (note + "; " if note else "") + (f"a {kind} does not replace its running pods: delete pod "
                                                    f"{pod.name} after this (or change its Deployment)")
        return cmd, note
    if kind in _TEMPLATE:
        import json

        if rec.subject == "container":
            if not container:
                return None, f"the container's name is not known: set resources.limits.memory: {qty} on it in {kind}/{owner.name}"
            spec: object = {"containers": [{"name": container, "resources": {"limits": {"memory": qty}}}]}
        else:
            # A pod-level limit (PodLevelResources, Kubernetes 1.32+): spec.resources of the pod template.
            spec = {"resources": {"limits": {"memory": qty}}}
        patch = json.dumps(_nest((*_TEMPLATE[kind], "spec"), spec), separators=(",", ":"))
        return _kubectl("-n", ns, "patch", kind.lower(), owner.name, "-p", patch), note
    if kind == "Job":
        return None, (f"Job {ns}/{owner.name}: a Job's pod template cannot be changed; set {rec.knob}: {qty} in its "
                      "manifest (or its CronJob's jobTemplate) and re-create it" + (f" ({note})" if note else ""))
    return None, f"owned by {kind} {owner.name}: set {rec.knob}: {qty} in its pod template"


def owner_text(owner: OwnerRef | None) -> str | None:
    """`Deployment/web (via ReplicaSet/web-5d8f)`, for the pages and the terminal."""
    if owner is None:
        return None
    text = f"{owner.kind}/{owner.name}"
    if owner.via is not None:
        text += f" (via {owner.via.kind}/{owner.via.name})"
    if not owner.resolved and owner.note:
        text += f"; {owner.note}"
    return text


def headline(rec: Recommendation) -> str:
    """One line, in MiB, for the terminal, the pages and the sinks' summaries."""
    what = {"container": "the container's memory limit", "pod": "the pod's memory limit"}.get(
        rec.subject, f"{rec.knob} of cgroup {rec.cgroup}")
    size = f"{'at least ' if rec.at_least else ''}{mib(rec.recommended_limit_bytes)}"
    now = f" (now {mib(rec.current_limit_bytes)})" if rec.current_limit_bytes is not None else ""
    line = f"set {what} to {size}{now}"
    if rec.owner is not None:
        line += f" on {rec.owner.kind} {rec.owner.name}"
    if rec.capped:
        line += f"; {rec.capped}"
    return line


_ABOVE = re.compile(r" above (?:its|the) working set \(now ([^)]*)\)")
_POD_KNOB = re.compile(r"^(raise the pod's (?:memory limit|memory\.high))")


def put_in_advice(v: Verdict) -> None:
    """Put the recommendation's number into the verdict's "raise ..." advice (in place): "raise X of cgroup
    Y to 160 MiB (the recommendation; usage now 64 MiB) so code and hot data stay cached"."""
    rec = v.recommendation
    if rec is None:
        return
    to = f" to {'at least ' if rec.at_least else ''}{mib(rec.recommended_limit_bytes)}"
    for i, a in enumerate(v.advice):
        if not a.startswith("raise "):
            continue
        new, n = _ABOVE.subn(lambda m: f"{to} (the recommendation; usage now {m.group(1)})", a, count=1)
        if not n:
            new, n = _POD_KNOB.subn(lambda m: m.group(1) + to + " (the recommendation)", a, count=1)
        v.advice[i] = new
        return


def verdict_text(v: Verdict) -> str:
    """A verdict's summary with its recommendation, for the Alertmanager, Events and Slack summaries."""
    rec = v.recommendation
    if rec is None:
        return v.summary
    return f"{v.summary}. Fix: {headline(rec)}" + (f": {rec.command}" if rec.command else "")


def command_line(rec: Recommendation) -> str:
    return rec.command if rec.command else f"no command: {rec.command_reason or 'unknown'}"

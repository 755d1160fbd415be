"""Fault addresses -> what backs them (a file, swap, shared memory, program code).

Pure: takes the traced pages of one process and the maps snapshots taken of it, newest tried first
(an address must be looked up in a snapshot that held it: a mapping may have been unmapped since).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from app.models import OffsetRange, Source, SourceKind
from app.parsers.procfs import MapEntry, SmapsEntry, find_mapping

HOT_RANGE_BYTES = 1 << 20  # hot ranges are reported at 1 MiB granularity
MAX_HOT_RANGES = 5
MAX_SOURCES = 20

# tmpfs-backed shared memory: its pages come back from swap, not from a disk file.
_SHMEM_PREFIXES = ("/dev/shm/", "/memfd:", "/SYSV", "/run/shm/")


def mapping_kind(entry: MapEntry | None) -> SourceKind:
    """The kind of memory a mapping is. Anonymous memory can only fault major when swapped out."""
    if entry is None:
        return SourceKind.UNKNOWN
    path = entry.path
    if path.startswith(_SHMEM_PREFIXES):
        return SourceKind.SHMEM
    if path == "" or path in ("[heap]", "[stack]") or path.startswith(("[anon", "[stack:")):
        return SourceKind.SWAP
    if path.startswith("["):  # [vdso], [vvar], [vsyscall], [uprobes]: kernel-provided pages
        return SourceKind.UNKNOWN
    if entry.is_exec:
        return SourceKind.CODE
    return SourceKind.FILE


# What one source is: (kind, path, device, inode); anonymous memory leaves device and inode out.
_SourceKey = tuple[SourceKind, str | None, str | None, int | None]


@dataclass
class _Acc:
    kind: SourceKind
    path: str | None
    device: str | None
    inode: int | None
    faults: int = 0


def lookup(newest_first: list[list[MapEntry]], page: int) -> MapEntry | None:
    """The mapping that held `page` in the newest maps snapshot that had one."""
    for snap in newest_first:
        entry = find_mapping(snap, page)
        if entry is not None:
            return entry
    return None


class _Resolver:
    """lookup() and mapping_kind() of many pages: a page inside the mapping the previous page was found in,
    in the newest snapshot, takes neither the search nor the kind again (traced pages come in runs: 83,000
    pages of one file cost 1.1 s of a loaded core in lookup and kind, one at a time)."""

    def __init__(self, snapshots: list[list[MapEntry]]) -> None:
        self.newest_first = list(reversed(snapshots))
        self.last: MapEntry | None = None  # found in the newest snapshot: no other snapshot can win over it
        self.kind = SourceKind.UNKNOWN

    def __call__(self, page: int) -> tuple[MapEntry | None, SourceKind]:
        last = self.last
        if last is not None and last.start <= page < last.end:
            return last, self.kind
        entry = lookup(self.newest_first, page)
        kind = mapping_kind(entry)
        if entry is not None and self.newest_first and find_mapping(self.newest_first[0], page) is entry:
            self.last, self.kind = entry, kind
        return entry, kind


def sources_from_pages(pages: dict[int, int], snapshots: list[list[MapEntry]]) -> list[Source]:
    """Group one process's traced pages ({page address: faults}) into sources, biggest first."""
    total = sum(pages.values())
    if total <= 0:
        return []
    accs: dict[_SourceKey, _Acc] = {}
    offsets: dict[_SourceKey, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    resolve = _Resolver(snapshots)
    for page, count in pages.items():
        entry, kind = resolve(page)
        if entry is None:
            key: _SourceKey = (kind, None, None, None)
        elif kind is SourceKind.SWAP:
            # One source for all anonymous memory, named after the region when it has a name.
            key = (kind, entry.path or None, None, None)
        else:
            key = (kind, entry.path, entry.dev, entry.inode)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc(kind, key[1], key[2], key[3])
        acc.faults += count
        if entry is not None and kind in (SourceKind.FILE, SourceKind.CODE, SourceKind.SHMEM):
            offset = entry.offset + (page - entry.start)
            offsets[key][offset // HOT_RANGE_BYTES] += count
    ordered = sorted(accs.items(), key=lambda kv: (-kv[1].faults, str(kv[1].path)))
    sources = []
    for key, acc in ordered[:MAX_SOURCES]:
        sources.append(
            Source(
                kind=acc.kind, path=acc.path, device=acc.device, inode=acc.inode,
                faults=acc.faults, share=round(acc.faults / total, 4),
                hot_ranges=hot_ranges(offsets.get(key, {})),
            )
        )
    rest = ordered[MAX_SOURCES:]
    if rest:
        faults = sum(a.faults for _, a in rest)
        sources.append(Source(kind=SourceKind.UNKNOWN, path=None, faults=faults,
                              share=round(faults / total, 4), note=f"{len(rest)} smaller sources folded"))
    return sources


def hot_ranges(buckets: dict[int, int]) -> list[OffsetRange]:
    """The busiest 1 MiB buckets, adjacent ones merged, in file order."""
    if not buckets:
        return []
    top = sorted(buckets.items(), key=lambda kv: -kv[1])[:MAX_HOT_RANGES]
    top.sort()
    merged: list[OffsetRange] = []
    for bucket, faults in top:
        start, end = bucket * HOT_RANGE_BYTES, (bucket + 1) * HOT_RANGE_BYTES
        if merged and merged[-1].end == start:
            merged[-1] = OffsetRange(start=merged[-1].start, end=end, faults=merged[-1].faults + faults)
        else:
            merged.append(OffsetRange(start=start, end=end, faults=faults))
    return merged


# A distinct page, by what backs it: (dev, inode, page offset in the file) for file, code and shmem pages
# (the same page of a file is one page whichever process maps it), (pid, page address) for anonymous memory.
PageKey = tuple[str, int, int]


@dataclass
class DistinctPages:
    """One process's (or, merged, one cgroup's) distinct faulted pages, by kind (issue 16: how much memory
    the group was missing). Bounded by the tracer's page map (TraceRequest.max_pages)."""

    file: set[PageKey]
    code: set[PageKey]
    shmem: set[PageKey]
    anon: set[tuple[int, int]]
    unknown: int = 0
    names: dict[tuple[str, int], str] | None = None  # (dev, inode) -> path, for the basis lines
    again: int = 0  # pages faulted more than once in the window: the access came around to them again
    mapped: dict[tuple[str, int], int] | None = None  # (dev, inode) -> the largest mapping of it that faulted, bytes
    swap_faults: int = 0  # faults on anonymous and shmem pages (swap-ins), to set against the cgroup's anon refaults
    file_faults: int = 0  # faults on file and program pages, to set against the cgroup's file refaults
    # The distinct pages (keys as above) that are resident now, at the window's end (/proc/PID/pagemap):
    # read back and resident at once, so counted once in the union (issue 22). None: not known.
    present: set[tuple[str, int, int] | tuple[int, int]] | None = None

    def mapped_bytes(self) -> int:
        return sum((self.mapped or {}).values())

    def count(self) -> int:
        return len(self.file) + len(self.code) + len(self.shmem) + len(self.anon) + self.unknown

    def merge(self, other: DistinctPages) -> None:
        self.file |= other.file
        self.code |= other.code
        self.shmem |= other.shmem
        self.anon |= other.anon
        self.unknown += other.unknown
        self.again += other.again
        self.swap_faults += other.swap_faults
        self.file_faults += other.file_faults
        if other.present is not None:
            self.present = (self.present or set()) | other.present
        for k, size in (other.mapped or {}).items():
            self.mapped = self.mapped or {}
            self.mapped[k] = max(size, self.mapped.get(k, 0))
        if other.names:
            self.names = {**(self.names or {}), **other.names}


def distinct_pages(pid: int, pages: dict[int, int], snapshots: list[list[MapEntry]],
                   present: set[int] | None = None) -> DistinctPages:
    """The distinct pages behind one process's traced faults ({page address: faults}); `present`: the
    page addresses of them that are resident now (pagemap), None when not known."""
    out = DistinctPages(set(), set(), set(), set(), names={}, mapped={}, present=None if present is None else set())
    resolve = _Resolver(snapshots)
    for page, count in pages.items():
        out.again += count > 1
        entry, kind = resolve(page)
        if entry is None or kind is SourceKind.UNKNOWN:
            out.unknown += 1
        elif kind is SourceKind.SWAP:
            out.anon.add((pid, page))
            out.swap_faults += count
            if out.present is not None and present is not None and page in present:
                out.present.add((pid, page))
        else:
            key = (entry.dev, entry.inode, (entry.offset + page - entry.start) >> 12)
            {SourceKind.FILE: out.file, SourceKind.CODE: out.code, SourceKind.SHMEM: out.shmem}[kind].add(key)
            if kind is SourceKind.SHMEM:
                out.swap_faults += count
            else:
                out.file_faults += count
            if out.present is not None and present is not None and page in present:
                out.present.add(key)
            if out.names is not None:
                out.names.setdefault((entry.dev, entry.inode), entry.path)
            if out.mapped is not None and kind is not SourceKind.SHMEM:
                fid = (entry.dev, entry.inode)
                out.mapped[fid] = max(out.mapped.get(fid, 0), entry.end - entry.start)
    return out


@dataclass(frozen=True)
class Unit:
    """One piece of memory that faulted (issue 16's union bound): a file, program file or shmem file by
    (dev, inode), counted once across the group's processes; an anonymous mapping of one process; or the
    pages no mapping explained. What the group needs of it is at most min(extent, distinct + resident):
    the pages read back and the pages resident now overlap (both are pages of the same memory)."""

    key: tuple[str, str | int, int]
    name: str
    kind: str  # "file" | "code" | "shmem" | "anon" | "unknown"
    distinct: int  # distinct faulted pages of it in the window
    resident_bytes: int = 0  # resident now (smaps Rss; for a file the most any one process maps)
    extent_bytes: int | None = None  # the most of it the group can need (None: not known, no smaps)
    overlap: int = 0  # of the distinct pages, those resident now too (pagemap): in both counts, counted once

    def need_bytes(self) -> int:
        union = self.distinct * 4096 + max(0, self.resident_bytes - self.overlap * 4096)
        return union if self.extent_bytes is None else min(self.extent_bytes, union)


def _covered(ranges: list[tuple[int, int]]) -> int:
    """Bytes covered by the union of [start, end) ranges."""
    total, reach = 0, -1
    for start, end in sorted(ranges):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def faulting_units(pages: DistinctPages, smaps: Mapping[int, list[SmapsEntry]]) -> list[Unit]:
    """The group's distinct faulted pages by the memory they belong to, each with what smaps (read at the
    end of the window, per live process) says is resident of it now and how big it can get:
    a file (file, code or shmem pages by dev and inode): resident = the most any one process has of it
    mapped (Rss; a page of a shared file is one page however many map it: the larger of the processes'
    counts, never their sum), extent = the file ranges the processes map, counted once;
    an anonymous mapping (per process and mapping): resident = Rss, extent = Rss + Swap (every page it
    touched is resident or swapped out). A unit smaps cannot place keeps extent None."""
    fids: dict[tuple[str, int], list[int]] = {}  # (dev, inode) -> [file, code, shmem] page counts
    for i, keys in enumerate((pages.file, pages.code, pages.shmem)):
        for dev, ino, _ in keys:
            fids.setdefault((dev, ino), [0, 0, 0])[i] += 1
    both: dict[tuple[str, int], int] = {}  # (dev, inode) -> its distinct pages resident now too
    anon_both: set[tuple[int, int]] = set()
    for k in pages.present or ():
        if len(k) == 3:
            fid3 = (str(k[0]), int(k[1]))
            both[fid3] = both.get(fid3, 0) + 1
        else:
            anon_both.add((int(k[0]), int(k[1])))
    resident: dict[tuple[str, int], int] = {}
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    anon_entries: dict[int, tuple[list[MapEntry], dict[int, SmapsEntry]]] = {}
    for pid, entries in smaps.items():
        mine: dict[tuple[str, int], int] = {}
        for e in entries:
            m = e.mapping
            fid = (m.dev, m.inode)
            if fid in fids and m.inode:
                mine[fid] = mine.get(fid, 0) + e.rss_bytes
                ranges.setdefault(fid, []).append((m.offset, m.offset + (m.end - m.start)))
        for fid, rss in mine.items():
            resident[fid] = max(resident.get(fid, 0), rss)
        anon_entries[pid] = ([e.mapping for e in entries], {e.mapping.start: e for e in entries})
    names = pages.names or {}
    units = []
    for fid, (nf, nc, ns) in fids.items():
        kind = "shmem" if ns >= max(nf, nc) else "code" if nc >= nf else "file"
        span = _covered(ranges[fid]) if fid in ranges else None
        units.append(Unit(("file", fid[0], fid[1]), names.get(fid, f"inode {fid[1]}"), kind, nf + nc + ns,
                          resident.get(fid, 0), span, both.get(fid, 0)))
    anon: dict[tuple[str, int, int], list[int]] = {}  # key -> [distinct, resident, extent or -1, overlap]
    for pid, page in pages.anon:
        found = anon_entries.get(pid)
        hit = find_mapping(found[0], page) if found else None
        if found is None or hit is None:
            key, res, ext = ("anon", pid, -1), 0, -1
        else:
            e = found[1][hit.start]
            key, res, ext = ("anon", pid, hit.start), e.rss_bytes, e.rss_bytes + e.swap_bytes
        acc = anon.setdefault(key, [0, res, ext, 0])
        acc[0] += 1
        acc[3] += (pid, page) in anon_both
    for key, (n, res, ext, ov) in anon.items():
        name = f"anonymous memory of pid {key[1]}" + ("" if ext >= 0 else " (no longer mapped)")
        units.append(Unit(key, name, "anon", n, res, ext if ext >= 0 else None, ov))
    if pages.unknown:
        units.append(Unit(("unknown", "", 0), "pages no mapping explained", "unknown", pages.unknown))
    units.sort(key=lambda u: -u.need_bytes())
    return units

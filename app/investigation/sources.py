"""Fault addresses -> what backs them (a file, swap, shared memory, program code).

Pure: takes the traced pages of one process and the maps snapshots taken of it, newest tried first
(an address must be looked up in a snapshot that held it: a mapping may have been unmapped since).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from app.models import OffsetRange, Source, SourceKind
from app.parsers.procfs import MapEntry, find_mapping

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


def sources_from_pages(pages: dict[int, int], snapshots: list[list[MapEntry]]) -> list[Source]:
    """Group one process's traced pages ({page address: faults}) into sources, biggest first."""
    total = sum(pages.values())
    if total <= 0:
        return []
    accs: dict[_SourceKey, _Acc] = {}
    offsets: dict[_SourceKey, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    newest_first = list(reversed(snapshots))
    for page, count in pages.items():
        entry = lookup(newest_first, page)
        kind = mapping_kind(entry)
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
        for k, size in (other.mapped or {}).items():
            self.mapped = self.mapped or {}
            self.mapped[k] = max(size, self.mapped.get(k, 0))
        if other.names:
            self.names = {**(self.names or {}), **other.names}


def distinct_pages(pid: int, pages: dict[int, int], snapshots: list[list[MapEntry]]) -> DistinctPages:
    """The distinct pages behind one process's traced faults ({page address: faults})."""
    out = DistinctPages(set(), set(), set(), set(), names={}, mapped={})
    newest_first = list(reversed(snapshots))
    for page, count in pages.items():
        out.again += count > 1
        entry = lookup(newest_first, page)
        kind = mapping_kind(entry)
        if entry is None or kind is SourceKind.UNKNOWN:
            out.unknown += 1
        elif kind is SourceKind.SWAP:
            out.anon.add((pid, page))
        else:
            key = (entry.dev, entry.inode, (entry.offset + page - entry.start) >> 12)
            {SourceKind.FILE: out.file, SourceKind.CODE: out.code, SourceKind.SHMEM: out.shmem}[kind].add(key)
            if out.names is not None:
                out.names.setdefault((entry.dev, entry.inode), entry.path)
            if out.mapped is not None and kind is not SourceKind.SHMEM:
                fid = (entry.dev, entry.inode)
                out.mapped[fid] = max(out.mapped.get(fid, 0), entry.end - entry.start)
    return out

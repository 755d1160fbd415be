"""What a process faults on when no tracer could record addresses (the procfs backend).

Pure. Two pieces of evidence, both from procfs:
- /proc/PID/io `read_bytes` counts what the process made the kernel fetch from storage, page faults on
  file mappings included; swap-ins are not counted there. So read_bytes/4096 bounds the file faults.
- /proc/PID/smaps `Swap` per mapping says where the swapped-out memory lives (anonymous or shmem).
The rest of the major faults is put on swap when the process has swapped-out memory.
"""

from __future__ import annotations

from app.models import Source, SourceKind
from app.parsers.procfs import SmapsEntry

from .resolve import classify

PAGE = 4096
MAX_LISTED = 5


def estimate_sources(major_faults: int, read_bytes: int | None, smaps: list[SmapsEntry] | None) -> list[Source]:
    if major_faults <= 0:
        return []
    file_faults = min(major_faults, (read_bytes or 0) // PAGE) if read_bytes is not None else 0
    rest = major_faults - file_faults
    swapped = [e for e in (smaps or []) if e.swap_bytes > 0]
    swap_total = sum(e.swap_bytes for e in swapped)
    sources: list[Source] = []
    if rest > 0 and swap_total > 0:
        by_kind: dict[tuple[SourceKind, str | None], int] = {}
        for e in swapped:
            kind = classify(e.mapping)
            if kind not in (SourceKind.SWAP, SourceKind.SHMEM):
                kind = SourceKind.SWAP
            key = (kind, e.mapping.path or None if kind is SourceKind.SHMEM else None)
            by_kind[key] = by_kind.get(key, 0) + e.swap_bytes
        for (kind, path), swap_bytes in sorted(by_kind.items(), key=lambda kv: -kv[1])[:MAX_LISTED]:
            faults = round(rest * swap_bytes / swap_total)
            sources.append(Source(
                kind=kind, path=path, faults=faults, share=0.0, estimated=True,
                note=f"{swap_bytes // 1024:,} KiB of it is swapped out",
            ))
    elif rest > 0:
        file_faults = major_faults  # nothing swapped out: the faults can only be file reads
    if file_faults > 0:
        big = sorted(
            (e for e in (smaps or []) if classify(e.mapping) in (SourceKind.FILE, SourceKind.CODE)),
            key=lambda e: -(e.mapping.end - e.mapping.start),
        )
        names = []
        for e in big:
            if e.mapping.path not in names:
                names.append(e.mapping.path)
            if len(names) == MAX_LISTED:
                break
        note = "read_bytes from /proc/PID/io; largest file mappings: " + ", ".join(names) if names else None
        sources.append(Source(kind=SourceKind.FILE, path=None, faults=file_faults, share=0.0,
                              estimated=True, note=note))
    total = sum(s.faults for s in sources) or 1
    for s in sources:
        s.share = round(s.faults / total, 4)
    sources.sort(key=lambda s: -s.faults)
    return sources

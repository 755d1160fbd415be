"""What a process faults on when no tracer could record addresses (the procfs backend).

Pure. The question is how many of the process's major faults were swap-ins and how many file reads.
`/proc/PID/io` read_bytes cannot answer it: on current kernels every read bio is charged to the task,
swap-ins included. The evidence used instead, strongest first (each over the same part of the window):

1. the process's memory cgroup: v2 `pswpin` + `zswpin` (newer kernels; a load from zswap counts only
   zswpin) against the group's `pgmajfault`; else `workingset_refault_anon` (anon and shmem pages read back from swap) against `pgmajfault`, with
   `workingset_refault_file` said alongside. The cgroup may hold other processes: a share, not a count.
2. the node: `pswpin` + `zswpin` against `pgmajfault` in /proc/vmstat, used only when this process
   causes most of the node's major faults.
3. the process itself: `VmSwap` falling over the window (at least that much came back from swap), or
   swapped-out memory in smaps with nothing better to go on (then the faults are put on swap, and the
   source says it could not be told apart from file reads).

/proc/PID/smaps `Swap` per mapping says where the swapped-out memory lives (anonymous or shmem); the
file share goes on the largest file mappings. Every source is `estimated` and lists its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.models import Source, SourceKind
from app.parsers.procfs import SmapsEntry

from .sources import mapping_kind

PAGE = 4096
MAX_LISTED = 5
NODE_DOMINANT = 0.8  # share of the node's major faults at which node counters describe the process


@dataclass(frozen=True, slots=True)
class SwapEvidence:
    """Counter deltas over the part of the window the process was watched (see Sampler.swap_evidence)."""

    seconds: float = 0.0
    process_majflt: int | None = None  # the process's major faults over the same interval
    cgroup_path: str | None = None
    cgroup_pgmajfault: int | None = None
    cgroup_refault_anon: int | None = None
    cgroup_refault_file: int | None = None
    cgroup_pswpin: int | None = None  # v2 memory.stat on kernels that have it
    cgroup_zswpin: int | None = None  # zswap loads: swap-ins that pswpin does not count
    node_pgmajfault: int | None = None
    node_pswpin: int | None = None
    node_zswpin: int | None = None
    vmswap_start: int | None = None  # bytes (VmSwap: anonymous memory only)
    vmswap_end: int | None = None


def _readahead_split(ra: int | None, rf: int | None) -> float | None:
    """The swap share from the group's anon and file refaults, when read-ahead inflates them both."""
    if ra is None or rf is None or ra + rf <= 0:
        return None
    return ra / (ra + rf)


def swap_share(ev: SwapEvidence | None, smaps_swap: int) -> tuple[float | None, list[str]]:
    """The share of the major faults that were swap-ins (None: no evidence), and what it rests on."""
    notes: list[str] = []
    if ev is None:
        return None, notes
    cg = f"cgroup {ev.cgroup_path}"
    over = f" over {ev.seconds:.0f} s" if ev.seconds else ""
    ra, rf = ev.cgroup_refault_anon, ev.cgroup_refault_file
    if ev.cgroup_pswpin is not None and ev.cgroup_pgmajfault:
        # A swap-in served by zswap counts zswpin, not pswpin: both are major faults.
        swapins = ev.cgroup_pswpin + (ev.cgroup_zswpin or 0)
        share = min(1.0, swapins / ev.cgroup_pgmajfault)
        if swapins > ev.cgroup_pgmajfault and (split := _readahead_split(ra, rf)) is not None:
            share = split  # pswpin counts the pages swap readahead read too: split by the refaults
        notes.append(f"{cg} memory.stat: pswpin +{ev.cgroup_pswpin:,}"
                     + (f", zswpin +{ev.cgroup_zswpin:,}" if ev.cgroup_zswpin is not None else "")
                     + f" for pgmajfault +{ev.cgroup_pgmajfault:,}{over}")
        return share, notes
    base = ev.cgroup_pgmajfault or 0
    # A swap-in finds the page's shadow entry and counts as an anon refault; so the group's major
    # faults without anon refaults were file reads (cold ones are no refaults at all). Swap readahead
    # counts an anon refault for every page it brings back, not one a fault: with more anon refaults than
    # major faults the share comes from the two kinds' refaults (issue 22: 96 MiB anon + 96 MiB file at
    # swappiness 200, 273,949 anon and 53,215 file refaults for 87,893 faults, read as 100% swap, so the
    # file side was left out of the limit).
    if ra is not None and (base > 0 or ra > 0 or (rf or 0) > 0):
        split = base <= 0 or ra > base
        share = (_readahead_split(ra, rf) or 1.0) if split else ra / base
        notes.append(f"{cg} memory.stat: workingset_refault_anon +{ra:,}, workingset_refault_file +{rf or 0:,}, "
                     f"pgmajfault +{base:,}{over}"
                     + ("; more anon refaults than major faults (swap readahead): split by the refaults"
                        if base > 0 and ra > base else ""))
        return share, notes
    mine, node = ev.process_majflt or 0, ev.node_pgmajfault or 0
    if node > 0 and mine >= NODE_DOMINANT * node and ev.node_pswpin is not None:
        share = min(1.0, (ev.node_pswpin + (ev.node_zswpin or 0)) / node)
        zs = f", zswpin +{ev.node_zswpin:,}" if ev.node_zswpin is not None else ""
        notes.append(f"node /proc/vmstat: pswpin +{ev.node_pswpin:,}{zs} for pgmajfault +{node:,}{over}; "
                     f"this process caused {min(mine / node, 1):.0%} of them")
        return share, notes
    if ev.vmswap_start is not None and ev.vmswap_end is not None and ev.vmswap_start > ev.vmswap_end:
        back = (ev.vmswap_start - ev.vmswap_end) // PAGE
        notes.append(f"VmSwap fell from {ev.vmswap_start // 1024:,} to {ev.vmswap_end // 1024:,} KiB{over}: "
                     f"at least {back:,} pages came back from swap")
        return (min(1.0, back / mine) if mine else None), notes
    if smaps_swap > 0:
        notes.append(f"{smaps_swap // 1024:,} KiB of the process is swapped out (smaps Swap) and nothing "
                     "separates swap-ins from file reads (read_bytes counts both)")
        return None, notes
    return None, notes


def estimate_sources(
    major_faults: int,
    read_bytes: int | None,
    smaps: list[SmapsEntry] | None,
    evidence: SwapEvidence | None = None,
) -> list[Source]:
    if major_faults <= 0:
        return []
    swapped = [e for e in (smaps or []) if e.swap_bytes > 0]
    swap_total = sum(e.swap_bytes for e in swapped)
    share, notes = swap_share(evidence, swap_total)
    if share is None:
        # No counter separates them: faults can only be swap-ins when something is swapped out.
        share = 1.0 if swap_total > 0 else 0.0
        if swap_total == 0:
            notes.append("nothing of the process is swapped out: the faults can only be file reads")
    swap_faults = round(major_faults * share)
    file_faults = major_faults - swap_faults
    if read_bytes is not None:
        notes.append(f"read_bytes +{read_bytes // 1024:,} KiB (/proc/PID/io; counts swap-ins too)")
    sources: list[Source] = []
    if swap_faults > 0:
        by_kind: dict[tuple[SourceKind, str | None], int] = {}
        for e in swapped:
            kind = mapping_kind(e.mapping)
            if kind not in (SourceKind.SWAP, SourceKind.SHMEM):
                kind = SourceKind.SWAP
            key = (kind, e.mapping.path or None if kind is SourceKind.SHMEM else None)
            by_kind[key] = by_kind.get(key, 0) + e.swap_bytes
        ranked = sorted(by_kind.items(), key=lambda kv: -kv[1])[:MAX_LISTED]
        listed = sum(b for _, b in ranked) or 1
        if not ranked:
            sources.append(Source(kind=SourceKind.SWAP, faults=swap_faults, share=0.0, estimated=True,
                                  note="nothing is swapped out at the end of the window", evidence=list(notes)))
        for (kind, path), swap_bytes in ranked:
            sources.append(Source(
                kind=kind, path=path, faults=round(swap_faults * swap_bytes / listed), share=0.0, estimated=True,
                note=f"{swap_bytes // 1024:,} KiB of it is swapped out", evidence=list(notes),
            ))
    if file_faults > 0:
        big = sorted(
            (e for e in (smaps or []) if mapping_kind(e.mapping) in (SourceKind.FILE, SourceKind.CODE)),
            key=lambda e: -(e.mapping.end - e.mapping.start),
        )
        names: list[str] = []
        for e in big:
            if e.mapping.path not in names:
                names.append(e.mapping.path)
            if len(names) == MAX_LISTED:
                break
        note = "largest file mappings: " + ", ".join(names) if names else None
        sources.append(Source(kind=SourceKind.FILE, path=None, faults=file_faults, share=0.0,
                              estimated=True, note=note, evidence=list(notes)))
    total = sum(s.faults for s in sources) or 1
    for s in sources:
        s.share = round(s.faults / total, 4)
    sources.sort(key=lambda s: -s.faults)
    return sources


# One piece of memory that can fault, for the procfs bound of the recommendation (issue 22): a file (file,
# code or shmem) by (device, inode), the same for every process that maps it; an anonymous mapping by
# process and start address.
MemoryKey = tuple[str, str | int, int]


def faulting_memory(pid: int, smaps: list[SmapsEntry] | None, kinds: set[str]) -> dict[MemoryKey, tuple[int, int]]:
    """procfs: the memory of one process that can fault with the kinds that do, per piece of memory:
    key -> (its size, an upper bound on the distinct pages the faults can have read: file and code, the
    mappings' size; shmem, the same; anonymous, resident + swapped; how much of it is resident now, smaps Rss).
    A file mapped twice by the process counts its mappings' sizes together (at most the file's ranges)."""
    out: dict[MemoryKey, tuple[int, int]] = {}
    for e in smaps or ():
        kind = mapping_kind(e.mapping).value
        if kind not in kinds:
            continue
        m = e.mapping
        if kind == "swap" or not m.inode:
            key: MemoryKey = ("anon", pid, m.start)
            size = e.rss_bytes + e.swap_bytes
        else:
            key = ("file", m.dev, m.inode)
            size = max(e.size_bytes, e.rss_bytes + e.swap_bytes)
        size0, rss0 = out.get(key, (0, 0))
        out[key] = (size0 + size, rss0 + e.rss_bytes)
    return out


def merge_memory(into: dict[MemoryKey, tuple[int, int]], more: dict[MemoryKey, tuple[int, int]]) -> None:
    """Add one process's faulting memory to its group's (in place): a file two processes map is one file,
    the larger of their sizes and of their resident pages (a page of a shared file is one page), never the sum."""
    for key, (size, rss) in more.items():
        size0, rss0 = into.get(key, (0, 0))
        into[key] = (max(size0, size), max(rss0, rss))


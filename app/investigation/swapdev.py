"""zram or disk: which swap the node's swap-ins come from, on the report's swap sources, and what zram
means for the verdict (issue 27). BottleRocket swaps on zram by default: its compressed pages live in
node RAM, outside the cgroup that swapped them out, so swapping there costs the node memory too.

I/O at the edge (`read_swap`: /proc/swaps, /sys/block/zramN/mm_stat); the rest works on the report."""

from __future__ import annotations

from pathlib import Path

from app.collectors.procfs import ProcFS
from app.models import NodeStats, ProcessReport, SourceKind
from app.parsers.swaps import parse_mm_stat, parse_swaps, swap_backing

from .diagnose import mib

SWAPISH = (SourceKind.SWAP, SourceKind.SHMEM)


def read_swap(procfs: ProcFS, sysfs_root: Path, node: NodeStats) -> None:
    """Fill the node's swap_backing fields and its zram devices' memory from /proc/swaps and mm_stat."""
    text = procfs.read_text("swaps")
    if text is None:
        return
    devices = parse_swaps(text)
    backing = swap_backing(devices)
    if backing is None:
        return
    node.swap_backing, node.swap_backing_basis = backing.kind, backing.basis
    node.swap_backing_confidence = backing.confidence
    ram = stored = 0
    seen = False
    for d in devices:
        if not d.zram:
            continue
        try:
            st = parse_mm_stat((sysfs_root / "block" / Path(d.path).name / "mm_stat").read_text())
        except OSError:
            st = None
        if st is not None:
            seen = True
            ram, stored = ram + st.ram_bytes, stored + st.orig_bytes
    if seen:
        node.zram_ram_bytes, node.zram_stored_bytes = ram, stored


def zram_line(node: NodeStats) -> str:
    held = (f": {mib(node.zram_ram_bytes)} of node RAM hold {mib(node.zram_stored_bytes)} of swapped pages"
            if node.zram_ram_bytes is not None and node.zram_stored_bytes is not None else "")
    return f"swap is {node.swap_backing} ({node.swap_backing_basis}){held}"


def apply(processes: list[ProcessReport], node: NodeStats) -> None:
    """Name the swap on every swap and shmem source, and, where a process's faults are mostly swap-ins
    from zram, say so in its verdict: where they come from, and that zram's pages cost node memory."""
    if node.swap_backing is None:
        return
    for p in processes:
        for s in p.sources:
            if s.kind in SWAPISH:
                s.swap_device = node.swap_backing
        v = p.verdict
        top = p.sources[0] if p.sources else None
        if v is None or top is None or top.kind not in SWAPISH or node.swap_backing == "disk":
            continue
        where = "zram" if node.swap_backing == "zram" else "zram and disk"
        summary = v.summary.replace("swapped back in at", f"swapped back in from {where} at", 1)
        summary = summary.replace("is swapped in at", f"is swapped in from {where} at", 1)
        v.summary = summary
        v.evidence.append(zram_line(node))
        v.advice.append(
            "swap here is zram: swapped-out pages stay in node RAM, compressed, outside this container's memory "
            "limit, so the node pays for them too; size the limit for the working set rather than rely on swap")

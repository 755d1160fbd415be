"""/proc/swaps and zram's mm_stat: which swap a node's swap-ins come from, zram or disk (issue 27).

BottleRocket turns on swap on zram by default (1 GiB, swappiness 200, page-cluster 0): a swap-in
from zram is a decompression of a few microseconds, and the compressed pages live in RAM, outside
the memory cgroup that swapped them out. So a report must say which swap it saw.

Pure: text in, values out.

/proc/swaps (header, then one line per active device; sizes in KiB; a path with spaces is escaped
as \\040):
    Filename                                Type            Size            Used            Priority
    /dev/zram0                              partition       1048572         524         100
    /var/tmp/pfi-test-swap                  file            524284          131080          -2

/sys/block/zramN/mm_stat: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max
same_pages pages_compacted huge_pages [huge_pages_since] (bytes, and counts)
    2547712 190417 385024 0 385024 20 0 0 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_ZRAM = re.compile(r"^/dev/zram\d+$")

SwapKind = Literal["zram", "disk", "zram+disk"]
MIXED_SURE = 0.9  # zram holds at least this share of the used swap (or at most 1 - it): call it one kind


@dataclass(frozen=True)
class SwapDevice:
    path: str
    type: str  # "partition" or "file"
    size_bytes: int
    used_bytes: int
    priority: int

    @property
    def zram(self) -> bool:
        return bool(_ZRAM.match(self.path))


def parse_swaps(text: str) -> list[SwapDevice]:
    """The active swap devices, highest priority first (the order the kernel swaps out to them)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            size, used, prio = int(parts[-3]), int(parts[-2]), int(parts[-1])
        except ValueError:
            continue
        path = " ".join(parts[:-4]).replace("\\040", " ")
        out.append(SwapDevice(path, parts[-4], size * 1024, used * 1024, prio))
    out.sort(key=lambda d: -d.priority)
    return out


@dataclass(frozen=True)
class SwapBacking:
    kind: SwapKind
    basis: str  # how it was decided
    confidence: Literal["high", "medium"]
    zram_share: float  # of the used swap (of the total when none is used)


def swap_backing(devices: list[SwapDevice]) -> SwapBacking | None:
    """Where this node's swap-ins come from, and how sure: None without active swap. All zram or all
    disk is sure. With both, a swapped page is read back from where it was written: the kernel writes
    to the highest priority device first (and round-robin among equals), the next when that is full,
    so the share of the used swap each holds is the share of the swap-ins to expect from it."""
    if not devices:
        return None
    names = ", ".join(f"{d.path} (priority {d.priority}, {d.used_bytes >> 20} of {d.size_bytes >> 20} MiB used)"
                      for d in devices)
    if all(d.zram for d in devices):
        return SwapBacking("zram", f"all active swap is zram: {names}", "high", 1.0)
    if not any(d.zram for d in devices):
        return SwapBacking("disk", f"no zram among the active swap: {names}", "high", 0.0)
    used = sum(d.used_bytes for d in devices)
    zram = sum(d.used_bytes for d in devices if d.zram)
    if used:
        share = zram / used
        held = f"zram holds {share:.0%} of the used swap"
    else:
        share = sum(d.size_bytes for d in devices if d.zram) / max(1, sum(d.size_bytes for d in devices))
        held = "no swap is used yet"
    first = devices[0]
    order = (f"by priority order ({first.path} is written first)" if first.priority > devices[1].priority
             else "by priority order (the first devices share a priority: round-robin)")
    kind: SwapKind = "zram" if share >= MIXED_SURE else "disk" if share <= 1 - MIXED_SURE else "zram+disk"
    return SwapBacking(kind, f"zram and disk swap both active, decided {order} and by what each holds: {held}; "
                             f"{names}", "medium", round(share, 3))


@dataclass(frozen=True)
class ZramStat:
    orig_bytes: int  # what the swapped pages would take uncompressed
    compressed_bytes: int
    ram_bytes: int  # memory zram takes to hold them (mem_used_total: compressed data + allocator overhead)


def parse_mm_stat(text: str) -> ZramStat | None:
    parts = text.split()
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        return None
    return ZramStat(int(parts[0]), int(parts[1]), int(parts[2]))

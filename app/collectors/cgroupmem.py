"""A container's cgroup memory: usage, limit, page cache vs anon, refaults, PSI (cgroup v1 and v2).

v2 files (under <root>/<path>, or <root>/unified/<path> on hybrid hosts):
  memory.current, memory.max ("max" = no limit), memory.high, memory.stat, memory.swap.current,
  memory.pressure
v1 files (under <root>/memory/<path>):
  memory.usage_in_bytes, memory.limit_in_bytes (PAGE_COUNTER_MAX rounded to pages = no limit),
  memory.stat (total_* = hierarchical), memory.memsw.usage_in_bytes (memory + swap, when swap
  accounting is on)
"""

from __future__ import annotations

from pathlib import Path

from app.models import CgroupMemory
from app.parsers.cgroup import CgroupRef, parse_memory_stat
from app.parsers.procfs import parse_pressure

__all__ = ["read_cgroup_memory"]

# Quirk: v1 prints "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, e.g. 9223372036854771712 with 4 KiB
# pages (LONG_MAX rounded down to a page); other page sizes give other values. Anything this close
# to 2^63 is "no limit".
_V1_UNLIMITED = 1 << 62


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None  # missing file (controller off, group removed) or not readable


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _safe_rel(path: str) -> str | None:
    """The cgroup path relative to a root, or None when it could escape it ('..')."""
    parts = [p for p in path.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        # Quirk: read from inside a cgroup namespace, other processes' paths start with "/../";
        # we do not know where that is in our tree, and joining it would leave the cgroup root.
        return None
    return "/".join(parts)


def _ratio(current: int | None, limit: int | None) -> float | None:
    if current is None or not limit:
        return None
    return round(current / limit, 4)


def _v2(group: Path, path: str) -> CgroupMemory | None:
    current = _int(group / "memory.current")
    if current is None:
        return None
    max_bytes = _int(group / "memory.max")
    stat = parse_memory_stat(_read(group / "memory.stat") or "")
    pressure_text = _read(group / "memory.pressure")
    try:
        pressure = parse_pressure(pressure_text) if pressure_text else None
    except ValueError:
        pressure = None
    return CgroupMemory(
        path=path,
        version=2,
        current_bytes=current,
        max_bytes=max_bytes,
        high_bytes=_int(group / "memory.high"),
        usage_ratio=_ratio(current, max_bytes),
        file_bytes=stat.get("file"),
        anon_bytes=stat.get("anon"),
        swap_bytes=_int(group / "memory.swap.current"),
        # Quirk: kernels before 5.9 have one workingset_refault (file pages only).
        workingset_refault_file=stat.get("workingset_refault_file", stat.get("workingset_refault")),
        workingset_refault_anon=stat.get("workingset_refault_anon"),
        pgmajfault=stat.get("pgmajfault"),
        pressure=pressure,
    )


def _v1(group: Path, path: str) -> CgroupMemory | None:
    usage = _int(group / "memory.usage_in_bytes")
    if usage is None:
        return None
    limit = _int(group / "memory.limit_in_bytes")
    if limit is not None and limit >= _V1_UNLIMITED:
        limit = None
    stat = parse_memory_stat(_read(group / "memory.stat") or "")

    def hier(key: str) -> int | None:
        # total_* counts the group and its children (a pod's group holds its containers).
        return stat.get(f"total_{key}", stat.get(key))

    memsw = _int(group / "memory.memsw.usage_in_bytes")
    swap = max(0, memsw - usage) if memsw is not None else hier("swap")
    refault_file = hier("workingset_refault_file")
    if refault_file is None:
        refault_file = hier("workingset_refault")
    return CgroupMemory(
        path=path,
        version=1,
        current_bytes=usage,
        max_bytes=limit,
        high_bytes=None,
        usage_ratio=_ratio(usage, limit),
        # v1 "cache" is page cache including shmem; "rss" is anonymous memory (and swap cache).
        file_bytes=hier("cache"),
        anon_bytes=hier("rss"),
        swap_bytes=swap,
        workingset_refault_file=refault_file,
        workingset_refault_anon=hier("workingset_refault_anon"),
        pgmajfault=hier("pgmajfault"),
        pressure=None,  # v1 has no per-group PSI
    )


def read_cgroup_memory(cgroup_root: Path, ref: CgroupRef) -> CgroupMemory | None:
    """The memory state of the cgroup `ref` names, read under `cgroup_root` (/sys/fs/cgroup)."""
    rel = _safe_rel(ref.path)
    if rel is None:
        return None
    root = Path(cgroup_root)
    path = "/" + rel
    if ref.version == 2:
        # Pure v2 hosts mount the unified tree at the root; hybrid hosts at <root>/unified.
        for base in (root, root / "unified"):
            mem = _v2(base / rel if rel else base, path)
            if mem is not None:
                return mem
        return None
    return _v1(root / "memory" / rel if rel else root / "memory", path)

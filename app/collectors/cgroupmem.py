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

import errno
import time
from collections.abc import Callable
from pathlib import Path

from app.models import CgroupMemory
from app.parsers.cgroup import CgroupRef, host_view, parse_memory_stat
from app.parsers.procfs import parse_pressure

__all__ = ["cgroup_memory_problem", "memory_hierarchy", "read_cgroup_memory", "read_cgroup_memory_why",
           "read_group_memory", "rmdir_when_free"]

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


MAX_DEPTH = 32  # ancestors walked to find a pod-level limit


def _ancestors(base: Path, rel: str) -> list[tuple[Path, str]]:
    """(directory, cgroup path) from the group itself up to the level below the hierarchy's root."""
    parts = [p for p in rel.split("/") if p][:MAX_DEPTH]
    return [(base.joinpath(*parts[:n]), "/" + "/".join(parts[:n])) for n in range(len(parts), 0, -1)]


def _binding(levels: list[tuple[str, int | None, int | None]]) -> tuple[str, int, int | None] | None:
    """Of (path, usage, limit) from the group upwards, the limited level closest to its limit."""
    best: tuple[str, int, int | None] | None = None
    best_ratio = -1.0
    for path, usage, limit in levels:
        if limit is None:
            continue
        ratio = (usage or 0) / limit if limit else 1.0
        if ratio > best_ratio:
            best, best_ratio = (path, limit, usage), ratio
    return best


def _v2(base: Path, rel: str, path: str) -> CgroupMemory | None:
    group = base / rel if rel else base
    current = _int(group / "memory.current")
    if current is None:
        return None
    stat = parse_memory_stat(_read(group / "memory.stat") or "")
    pressure_text = _read(group / "memory.pressure")
    try:
        pressure = parse_pressure(pressure_text) if pressure_text else None
    except ValueError:
        pressure = None
    # The limit that binds may be the pod's (containers without a limit of their own), or a
    # memory.high below memory.max anywhere up the tree.
    levels = []
    highs = []
    for d, p in _ancestors(base, rel):
        usage = current if d == group else _int(d / "memory.current")
        levels.append((p, usage, _int(d / "memory.max")))
        highs.append((p, usage, _int(d / "memory.high")))
    limit = _binding(levels)
    high = _binding(highs)
    limit_path, max_bytes, limit_usage = limit if limit else (None, None, None)
    return CgroupMemory(
        path=path,
        version=2,
        current_bytes=current,
        max_bytes=max_bytes,
        high_bytes=high[1] if high else None,
        usage_ratio=_ratio(limit_usage, max_bytes),
        file_bytes=stat.get("file"),
        anon_bytes=stat.get("anon"),
        swap_bytes=_int(group / "memory.swap.current"),
        # Quirk: kernels before 5.9 have one workingset_refault (file pages only).
        workingset_refault_file=stat.get("workingset_refault_file", stat.get("workingset_refault")),
        workingset_refault_anon=stat.get("workingset_refault_anon"),
        pgmajfault=stat.get("pgmajfault"),
        pressure=pressure,
        limit_path=limit_path,
        high_path=high[0] if high else None,
        high_usage_bytes=high[2] if high else None,
        pswpin=stat.get("pswpin"),
        pswpout=stat.get("pswpout"),
        zswpin=stat.get("zswpin"),
        swapcache_bytes=_unmapped_swapcache(stat.get),
    )


def _v1(base: Path, rel: str, path: str) -> CgroupMemory | None:
    group = base / rel if rel else base
    usage = _int(group / "memory.usage_in_bytes")
    if usage is None:
        return None
    stat = parse_memory_stat(_read(group / "memory.stat") or "")

    def hier(key: str) -> int | None:
        # total_* counts the group and its children (a pod's group holds its containers).
        return stat.get(f"total_{key}", stat.get(key))

    def v1_limit(d: Path) -> int | None:
        limit = _int(d / "memory.limit_in_bytes")
        return None if limit is not None and limit >= _V1_UNLIMITED else limit

    levels = [(p, usage if d == group else _int(d / "memory.usage_in_bytes"), v1_limit(d))
              for d, p in _ancestors(base, rel)]
    limit = _binding(levels)
    limit_path, max_bytes, limit_usage = limit if limit else (None, None, None)

    memsw = _int(group / "memory.memsw.usage_in_bytes")
    swap = max(0, memsw - usage) if memsw is not None else hier("swap")
    refault_file = hier("workingset_refault_file")
    if refault_file is None:
        refault_file = hier("workingset_refault")
    return CgroupMemory(
        path=path,
        version=1,
        current_bytes=usage,
        max_bytes=max_bytes,
        high_bytes=None,
        usage_ratio=_ratio(limit_usage, max_bytes),
        # v1 "cache" is page cache including shmem; "rss" is mapped anonymous memory (the swap cache too before 5.8).
        file_bytes=hier("cache"),
        anon_bytes=hier("rss"),
        swap_bytes=swap,
        workingset_refault_file=refault_file,
        workingset_refault_anon=hier("workingset_refault_anon"),
        pgmajfault=hier("pgmajfault"),
        pressure=None,  # v1 has no per-group PSI
        limit_path=limit_path,
        swapcache_bytes=_unmapped_swapcache(hier),
    )


def _unmapped_swapcache(stat: Callable[[str], int | None]) -> int | None:
    """Swap cache in no process's page tables (swapcached counts mapped swap-cache pages too, all of them
    while swap is less than half full): the anon LRU lists hold mapped anonymous pages (v2 "anon", v1 "rss"
    on kernels since 5.8), shmem and unmapped swap cache, so that is what is left."""
    anon = stat("anon")
    lru = [stat("inactive_anon"), stat("active_anon"), stat("rss") if anon is None else anon, stat("shmem")]
    if any(v is None for v in lru):
        return None
    ia, aa, rss, shmem = (v or 0 for v in lru)
    return max(0, ia + aa - rss - shmem)


def _v2_bases(root: Path) -> list[Path]:
    """Where a v2 tree with the memory controller is: the root (pure v2) or <root>/unified (hybrid)."""
    out = []
    for base in (root, root / "unified"):
        controllers = _read(base / "cgroup.controllers")
        if controllers is not None and "memory" in controllers.split():
            out.append(base)
    return out


def memory_hierarchy(cgroup_root: Path) -> tuple[int, Path] | None:
    """Where new memory cgroups go on this machine: (1, <root>/memory) when the memory controller is on
    v1 (v1 and hybrid hosts: a controller is bound to one hierarchy), else (2, the v2 tree whose
    cgroup.controllers lists memory: <root>, or <root>/unified). None: no memory controller."""
    root = Path(cgroup_root)
    if (root / "memory" / "memory.limit_in_bytes").exists():
        return 1, root / "memory"
    bases = _v2_bases(root)
    return (2, bases[0]) if bases else None


def refaults_file(cgroup_root: Path, mem: CgroupMemory) -> Path | None:
    """The memory.stat of the group `mem` was read from (its path and version), for read_refaults each tick;
    None for the root group or no hierarchy of its version."""
    rel = _safe_rel(mem.path)
    if not rel:
        return None
    root = Path(cgroup_root)
    if mem.version == 2:
        bases = _v2_bases(root)
        return bases[0] / rel / "memory.stat" if bases else None
    return root / "memory" / rel / "memory.stat"


def read_refaults(stat_file: Path) -> int | None:
    """workingset_refault_file + _anon of one memory.stat (v1: the hierarchical total_*; kernels before 5.9:
    workingset_refault), one file read: the sampler's per-tick refault series. None: not readable."""
    text = _read(stat_file)
    if text is None:
        return None
    stat = parse_memory_stat(text)

    def get(key: str) -> int | None:
        return stat.get(f"total_{key}", stat.get(key))

    file_ = get("workingset_refault_file")
    if file_ is None:
        file_ = get("workingset_refault")
    anon = get("workingset_refault_anon")
    return None if file_ is None and anon is None else (file_ or 0) + (anon or 0)


def rmdir_when_free(d: Path, tries: int) -> None:
    """Remove an empty cgroup folder, waiting (tries x 50 ms at most) while the kernel says EBUSY: a
    killed task takes a moment to leave its group. Already gone is fine; other errors raise; still
    busy after the tries, it is left (the caller checks whether it exists)."""
    for _ in range(tries):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.05)


def read_cgroup_memory(cgroup_root: Path, ref: CgroupRef) -> CgroupMemory | None:
    """The memory state of the cgroup `ref` names, read under `cgroup_root` (/sys/fs/cgroup).

    max_bytes/usage_ratio are the limit that binds: the group's own, or (containers without one) the
    nearest limited ancestor's, e.g. the pod's; `limit_path` says which.
    """
    return read_cgroup_memory_why(cgroup_root, ref)[0]


def read_cgroup_memory_why(cgroup_root: Path, ref: CgroupRef) -> tuple[CgroupMemory | None, str | None]:
    """read_cgroup_memory, and when it finds nothing, why (for the verdict to say)."""
    rel = _safe_rel(ref.path)
    if rel is None:
        return None, f"the cgroup path {ref.path!r} is outside this cgroup namespace"
    root = Path(cgroup_root)
    path = "/" + rel
    if ref.version == 2:
        bases = _v2_bases(root)
        if not bases:
            return None, (f"no cgroup v2 hierarchy under {root} has the memory controller "
                          "(cgroup.controllers does not list memory)")
        for base in bases:
            mem = _v2(base, rel, path)
            if mem is not None:
                return mem, None
        return None, f"cannot read memory.current of {path} under {', '.join(str(b) for b in bases)}"
    base = root / "memory"
    if not base.is_dir():
        return None, f"no cgroup v1 memory hierarchy at {base}"
    mem = _v1(base, rel, path)
    if mem is None:
        return None, f"cannot read {base / rel / 'memory.usage_in_bytes'} (group gone or not readable)"
    return mem, None


def cgroup_memory_problem(cgroup_root: Path, ref: CgroupRef | None, mem: CgroupMemory | None) -> str | None:
    """Why a process in a memory cgroup has no cgroup memory in its report; None when it has it,
    or when it is in the root group (no cgroup limit applies there)."""
    if mem is not None or ref is None or ref.path in ("", "/"):
        return None
    return read_cgroup_memory_why(cgroup_root, ref)[1] or "its cgroup's memory files could not be read"


def read_group_memory(cgroup_root: Path, ref: CgroupRef) -> tuple[CgroupMemory | None, str | None]:
    """The memory state of a process's group as the host sees it (host_view) and, when there is none,
    cgroup_memory_problem's answer, in one read of its files; (None, None) for the root group."""
    if ref.path in ("", "/"):
        return None, None
    seen = host_view(ref)
    mem, why = read_cgroup_memory_why(cgroup_root, seen)
    if mem is not None:
        return mem, None
    if seen is not ref:  # a "/../" path from inside a cgroup namespace: the reason names it (no read)
        why = read_cgroup_memory_why(cgroup_root, ref)[1]
    return None, why or "its cgroup's memory files could not be read"

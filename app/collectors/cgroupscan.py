"""Every memory cgroup's page-cache refaults and major faults, for the read() re-readers (issue 22).

A group re-reading its files through read()/pread() at its limit evicts and reads back its page cache
without a major fault: no process's majflt shows it, only the group's memory.stat does. So the whole
memory hierarchy is read at the window's start and end (bounded: MAX_GROUPS folders, MAX_DEPTH deep).

v1 (<root>/memory/...): memory.stat's plain keys are the group's own (total_* add its children):
  workingset_refault_file (kernels before 5.9: workingset_refault), pgmajfault
v2 (<root> or <root>/unified, the tree whose cgroup.controllers lists memory): memory.stat counts the
  group and its children; the caller keeps the deepest groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.parsers.cgroup import parse_memory_stat

from .cgroupmem import memory_hierarchy

MAX_GROUPS = 4096  # folders read per scan
MAX_DEPTH = 12
MAX_PIDS = 64  # pids read from a group's cgroup.procs


@dataclass(frozen=True, slots=True)
class GroupCounters:
    refault_file: int
    pgmajfault: int


def scan_refaults(cgroup_root: Path) -> tuple[int, dict[str, GroupCounters]]:
    """(the memory controller's version, cgroup path -> its counters now); (0, {}) without a controller."""
    found = memory_hierarchy(cgroup_root)
    if found is None:
        return 0, {}
    version, base = found
    out: dict[str, GroupCounters] = {}
    stack: list[tuple[Path, int]] = [(base, 0)]
    while stack and len(out) < MAX_GROUPS:
        d, depth = stack.pop()
        try:
            text = (d / "memory.stat").read_text()
        except OSError:
            continue
        stat = parse_memory_stat(text)
        refaults = stat.get("workingset_refault_file", stat.get("workingset_refault"))
        if refaults is not None:
            rel = d.relative_to(base).as_posix()
            out["/" + ("" if rel == "." else rel)] = GroupCounters(refaults, stat.get("pgmajfault", 0))
        if depth >= MAX_DEPTH:
            continue
        try:
            with os.scandir(d) as it:
                stack.extend((Path(e.path), depth + 1) for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return version, out


def group_pids(cgroup_root: Path, path: str) -> list[int]:
    """Up to MAX_PIDS processes of the group (its cgroup.procs), [] when not readable."""
    found = memory_hierarchy(cgroup_root)
    if found is None or ".." in path.split("/"):
        return []
    try:
        text = (found[1] / path.strip("/") / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()[:MAX_PIDS] if x.isdigit()]


MAX_FDS = 256  # open files looked at per process


def open_files(proc_root: Path, pids: list[int]) -> dict[tuple[int, int], tuple[str, int]]:
    """The regular files the processes hold open: (st_dev, st_ino) -> (a path, size in bytes); a file two
    processes hold is one. MAX_FDS per process; a process gone or refused adds nothing."""
    out: dict[tuple[int, int], tuple[str, int]] = {}
    for pid in pids:
        fd_dir = Path(proc_root) / str(pid) / "fd"
        try:
            names = sorted(os.listdir(fd_dir), key=lambda n: int(n) if n.isdigit() else 0)[:MAX_FDS]
        except OSError:
            continue
        for name in names:
            try:
                st = os.stat(fd_dir / name)
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if (st.st_mode & 0o170000) == 0o100000 and st.st_size > 0:
                out[(st.st_dev, st.st_ino)] = (target, st.st_size)
    return out

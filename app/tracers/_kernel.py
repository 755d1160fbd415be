"""What the kernel lets this process lock, map and see, read from the configured roots
(settings.node.proc_root, settings.node.sysfs_root, settings.node.cgroup_root), for sizing the tracers' buffers.

perf's ring buffer (kernel/events/core.c, perf_mmap): each mmap of (pages + 1) pages is charged
first to the user's allowance, `perf_event_mlock_kb` x online CPUs (per uid: every root process on
the node shares it), then the rest to the process's pinned memory, which must stay under
RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (or perf_event_paranoid is -1). `perf record`
maps one buffer per CPU.

bpftrace's maps are preallocated and charged to the memory cgroup (kernel >= 5.11): measured here
(kernel 6.18, bpftrace 0.17, 2 CPUs) the three maps of major_faults.bt cost 256 B per key
(17.2 MB at 65,536 keys, 67.5 MB at 262,144), i.e. about 224 B + 16 B per CPU (two per-CPU counts).
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

PAGE = 4096
CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def parse_cpu_list(text: str) -> int:
    """Count the CPUs of a list like "0-3,8,10-11"; 0 when unparsable."""
    n = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            n += (int(hi) - int(lo) + 1) if hi else 1
        except ValueError:
            return 0
    return n


def online_cpus(sysfs_root: Path = Path("/sys")) -> int:
    text = _read(sysfs_root / "devices/system/cpu/online")
    n = parse_cpu_list(text) if text else 0
    return n or os.cpu_count() or 1


def lockdown(sysfs_root: Path = Path("/sys")) -> str | None:
    """The kernel lockdown mode when it is on ("integrity", "confidentiality"), else None."""
    text = _read(sysfs_root / "kernel/security/lockdown")
    if not text:
        return None
    mode = text[text.find("[") + 1 : text.find("]")] if "[" in text else ""
    return None if mode in ("", "none") else mode


def sysctl_int(proc_root: Path, name: str) -> int | None:
    text = _read(proc_root / "sys" / name)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def effective_caps(proc_root: Path = Path("/proc")) -> int | None:
    """This process's CapEff bit mask, or None when unreadable."""
    text = _read(proc_root / "self/status") or _read(Path("/proc/self/status"))
    for line in (text or "").splitlines():
        if line.startswith("CapEff:"):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1], 16)
    return None


def has_cap(cap: int, proc_root: Path = Path("/proc")) -> bool:
    mask = effective_caps(proc_root)
    return mask is not None and bool(mask >> cap & 1)


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None: unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def _meminfo_available(proc_root: Path) -> int | None:
    for line in (_read(proc_root / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1]) * 1024
    return None


def _int_file(path: Path) -> int | None:
    text = _read(path)
    if text is None or text.strip() == "max":
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def own_memory_headroom(
    proc_root: Path, cgroup_root: Path, sysfs_root: Path = Path("/sys")
) -> tuple[int | None, str]:
    """How much more memory this process's cgroups let it use (limit - usage, the tightest of the v1
    memory group, the v2 group and the namespace's own root view), and the node's MemAvailable:
    (bytes or None when nothing limits, where it came from)."""
    best: tuple[int, str] | None = None

    def consider(limit: int | None, usage: int | None, where: str) -> None:
        nonlocal best
        if limit is None or usage is None or limit >= 1 << 62:  # v1 "no limit" is ~2^63
            return
        room = max(0, limit - usage)
        if best is None or room < best[0]:
            best = (room, f"{where}: limit {limit >> 20} MiB, using {usage >> 20} MiB")

    for line in (_read(proc_root / "self/cgroup") or "").splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) != 3 or ".." in parts[2]:
            continue
        rel = parts[2].strip("/")
        if "memory" in parts[1].split(","):
            group = cgroup_root / "memory" / rel
            consider(_int_file(group / "memory.limit_in_bytes"), _int_file(group / "memory.usage_in_bytes"),
                     f"cgroup v1 memory {parts[2]}")
        elif parts[0] == "0":
            for base in (cgroup_root, cgroup_root / "unified"):
                group = base / rel
                consider(_int_file(group / "memory.max"), _int_file(group / "memory.current"),
                         f"cgroup v2 {parts[2]}")
    # Inside a cgroup namespace the container's own group is the root of its cgroup mount.
    for own in dict.fromkeys((cgroup_root, sysfs_root / "fs/cgroup")):
        consider(_int_file(own / "memory.max"), _int_file(own / "memory.current"), f"cgroup v2 {own}")
    avail = _meminfo_available(proc_root)
    if avail is not None and (best is None or avail < best[0]):
        best = (avail, f"node MemAvailable {avail >> 20} MiB")
    return (best[0], best[1]) if best else (None, "no memory limit found")

"""Workloads of the diagnosis scenario matrix (tests/test_scenarios.py, bench row "diagnosis accuracy").

Each one faults for a single known reason, in cgroups made for it and removed afterwards:

    with scenario_workload("reread", cgroup=unique_parent() + "/job", limit_mb=64, data=tmp / "d.bin") as p:
        ...   # a 128 MiB file re-read through mmap inside a 64 MiB memory cgroup

Cgroups are made in one place, scenario_cgroups(): v1 memory groups through memory_cgroup() of
tests/workloads (every directory it made is removed, deepest first) and, for the hybrid layout, the
same path in the unified tree at /sys/fs/cgroup/unified. Kubepods-shaped paths always sit under a
unique parent, pfi-test-<pid>-<n>/..., never at a hierarchy root (on a real node that is the kubelet's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    CGROUP_MEMORY_ROOT,
    CGROUP_ROOT,
    WorkloadProcess,
    _counter,
    _kill,
    _register,
    _release,
    _start,
    _unregister,
    binary,
    forget,
    majflt,
    memory_cgroup,
    memory_hierarchy,
    no_memory_controller_reason,
    record,
    remove_groups,
    swap_enabled,
    zram_swap,
)

UNIFIED_ROOT = Path("/sys/fs/cgroup/unified")
# How much slower than its host the VM tier's guest runs (scripts/vm/guest.sh measures it; 1 elsewhere):
# the waits for a workload's pass scale by it.
SLOWDOWN = max(1.0, float(os.environ.get("PFI_VM_SLOWDOWN", "1") or 1))
FILE_MB = 128
LIMIT_MB = 64
KINDS = ("reread", "reread-swapped", "text", "text-drop", "shm", "anon", "trickle")
TRICKLE_PER_SECOND = 10  # trickle: cold code pages read a second, a few programs starting on an idle node
SWAPPED_ANON_MB = 24  # reread-swapped: anonymous memory touched once, swapped out by the file reads
# The matrix's rows: a 64 MiB workload at a 32 MiB limit. Each row's time goes with its size (the first
# pass, the window that sees a whole pass, the warm-up after the recommendation): at 128 MiB and 64 MiB
# the rows were ~300 s of the suite's second pass under its load (issue 25: the suite within 10 minutes).
# Every verdict and check is relative to the size (the limit in MiB, the cap at 2x the workload + 32, the
# tightness check at 3/4 of it). The helpers' defaults above stay 128 and 64 for their other users.
MATRIX_FILE_MB = 64
MATRIX_LIMIT_MB = 32

POD_UID = "b5812e37-ce78-41e2-9d8d-d93a88e481d6"  # a pod of tests/fixtures/kubelet/podlist-minikube-...json
CONTAINER_ID = "bcbcd3972a517ab0ed8df77d0a07d082c529278f206d0f4a29ebbe940996e9e5"


def unique_parent() -> str:
    return f"pfi-test-{os.getpid()}-{next(_counter)}"


def pod_path(layout: str) -> str:
    """A kubepods-shaped container path under a unique parent: 'cgroupfs' (v1 driver shape) or
    'systemd' (the systemd driver's slices, as on hybrid hosts)."""
    if layout == "cgroupfs":
        return f"{unique_parent()}/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"
    uid = POD_UID.replace("-", "_")
    return (f"{unique_parent()}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
            f"cri-containerd-{CONTAINER_ID}.scope")


@contextlib.contextmanager
def _unified_group(name: str) -> Iterator[Path]:
    """The same path in the unified (v2, no controllers) tree; directories made here removed afterwards."""
    if not (UNIFIED_ROOT / "cgroup.procs").exists():
        raise RuntimeError(f"no unified cgroup tree at {UNIFIED_ROOT}")
    created: list[Path] = []
    cur = UNIFIED_ROOT
    for part in Path(name.strip("/")).parts:
        cur = cur / part
        if not cur.exists():
            cur.mkdir()
            created.append(cur)

    key = _register(lambda: remove_groups(created))
    try:
        yield cur
    finally:
        _unregister(key)
        remove_groups(created)


@contextlib.contextmanager
def scenario_cgroups(
    name: str, limit_mb: int | None, pod_limit_mb: int | None = None, unified: bool = False
) -> Iterator[list[Path]]:
    """The groups a scenario process goes into: v1 memory `name` (limit_mb on it; pod_limit_mb on its
    parent, the pod level), and with unified=True the same path in the unified tree (hybrid layout).
    Yields the groups' cgroup.procs directories."""
    with contextlib.ExitStack() as stack:
        if pod_limit_mb is not None:
            stack.enter_context(memory_cgroup(str(Path(name).parent), pod_limit_mb))
        groups = [stack.enter_context(memory_cgroup(name, limit_mb))]
        if unified:
            groups.append(stack.enter_context(_unified_group(name)))
        yield groups


def _data_file(path: Path, size_mb: int, fill: bytes | None) -> None:
    """size_mb of real data (random, or `fill` repeated), written back so fadvise can drop it. Refused in
    memory (tmpfs): its pages are never read from a disk, so the workload makes no major faults at all
    (the VM guest's /tmp was tmpfs, and its file rows reported no process)."""
    from app.demo import _fstype

    if (kind := _fstype(path.parent.resolve())) in ("tmpfs", "ramfs"):
        raise RuntimeError(f"{path.parent} is {kind}: a workload file there makes no major faults")
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20) if fill is None else fill * (1 << 20))
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def scenario_workload(
    kind: str,
    *,
    cgroup: str | None,
    limit_mb: int | None = LIMIT_MB,
    pod_limit_mb: int | None = None,
    unified: bool = False,
    data: Path | None = None,
    size_mb: int = FILE_MB,
    swap: str = "disk",
) -> Iterator[WorkloadProcess]:
    """One scenario process (kind in KINDS), moved into its cgroups (cgroup=None: stays where the test
    runs, no limit) before it touches memory. `data`: the file for reread/text (made here, removed).
    swap: "disk" (the test swap file) or "zram" (a device as BottleRocket sets it up: zram_swap())."""
    if kind not in KINDS:
        raise ValueError(kind)
    with contextlib.ExitStack() as stack:
        if kind in ("shm", "anon", "reread-swapped"):
            stack.enter_context(zram_swap() if swap == "zram" else swap_enabled())
        if kind == "anon":
            exe, args = binary("swap_faults"), [str(size_mb), "anon"]
        else:
            exe = binary("scenario_faults")
            if kind == "shm":
                shm = Path(f"/dev/shm/pfi-test-{os.getpid()}-{next(_counter)}")
                shm_record = record("shm", str(shm))  # a killed run's file is removed by cleanup
                stack.callback(forget, shm_record)
                stack.callback(shm.unlink, missing_ok=True)
                args = ["shm", str(shm), str(size_mb)]
            else:
                assert data is not None, "reread/text need a data file"
                _data_file(data, size_mb, b"\xc3" if kind in ("text", "text-drop", "trickle") else None)  # 0xC3: x86 "ret"
                stack.callback(data.unlink, missing_ok=True)
                args = (["text", str(data), "drop"] if kind == "text-drop" else
                        ["text", str(data), "drop", str(TRICKLE_PER_SECOND)] if kind == "trickle" else
                        ["reread", str(data), str(SWAPPED_ANON_MB)] if kind == "reread-swapped" else [kind, str(data)])
        groups = stack.enter_context(scenario_cgroups(cgroup, limit_mb, pod_limit_mb, unified)) if cgroup else []
        proc = _start(f"pfi-workload-{kind}", exe, args, wait_for_go=True)
        proc.kind = kind
        proc.cgroup = groups[0] if groups else None
        key = _register(lambda: _kill(proc))
        stack.callback(_kill, proc)
        stack.callback(_unregister, key)
        _release(proc, groups)
        yield proc


NODE_FILES = ("vmstat", "meminfo", "pressure/memory", "pressure/io")
PID_FILES = ("stat", "status", "io", "smaps", "maps", "cmdline", "cgroup")
CGROUP_FILES = ("memory.stat", "memory.usage_in_bytes", "memory.limit_in_bytes")


def capture_proc_tree(pid: int, out: Path, ticks: int = 5, cgroup: Path | None = None) -> None:
    """Copy the procfs files the engine reads (node: vmstat, meminfo, PSI; the process's stat, status,
    io, smaps, maps, cmdline, cgroup) once a second into out/tick<N>/ as a procfs-shaped tree; with
    `cgroup` (a v1 memory group) also its memory.{stat,usage_in_bytes,limit_in_bytes} into
    out/tick<N>/cgroupfs/memory/<its path>. Used to record tests/fixtures/proc-captures (SOURCES.md)."""
    for n in range(ticks):
        t0 = time.monotonic()
        d = out / f"tick{n}"
        files = [(Path(f"/proc/{rel}"), d / rel) for rel in [*NODE_FILES, *(f"{pid}/{f}" for f in PID_FILES)]]
        if cgroup is not None:
            rel = cgroup.relative_to(CGROUP_MEMORY_ROOT)
            files += [(cgroup / f, d / "cgroupfs" / "memory" / rel / f) for f in CGROUP_FILES]
        for src, dst in files:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


# --- the matrix ----------------------------------------------------------------------------------------

WINDOW = 3.0
CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc-captures"


@dataclass(frozen=True)
class Row:
    """One labelled scenario: the workload, where it runs, and the verdict it must get."""

    name: str
    kind: str  # "cold" (file_fault_workload), one of KINDS, or "replay" (a captured procfs tree)
    tracer: str  # "auto" (an exact tracer here) or "procfs"
    cause: str
    source: str  # the dominant source kind of the process
    subject: str  # "host" or "pod"
    layout: str = "host"  # "none" (the test's own cgroup), "host" (pfi-test-*/job), "cgroupfs", "hybrid",
    # "systemd" (kubepods.slice on a v2-only node's unified tree: runs in the VM tier's guest)
    limit_mb: int | None = MATRIX_LIMIT_MB
    pod_limit_mb: int | None = None
    say: str = ""  # must be in the verdict's summary
    cgroup_root_broken: bool = False  # PFI_CGROUP_ROOT points at an empty folder: the limit is unreadable
    capture: str = ""  # replay rows: tests/fixtures/proc-captures/<capture>
    derive: tuple[str, ...] = ()  # replay rows: SYNTHETIC changes to the capture (see _derive)
    report_cause: str = ""  # when set, the report's headline verdict must have this cause (quiet rows)
    swap: str = "disk"  # "zram": swaps on a zram device as BottleRocket sets it up (its sources must say zram)
    noise_floor: float | None = None  # this row's PFI_NOISE_FLOOR (None: the default); the table prints both


ROWS = [
    Row("cold mmap reads, no limit", "cold", "auto", "cold_file_reads", "file", "host", layout="none",
        limit_mb=None, say="cold reads of"),
    Row("cold mmap reads, no limit", "cold", "procfs", "cold_file_reads", "file", "host", layout="none",
        limit_mb=None),
    Row(f"file re-read at {MATRIX_LIMIT_MB} MiB", "reread", "auto", "container_memory_limit", "file", "host",
        say="its memory cgroup /pfi-test-"),
    Row(f"file re-read at {MATRIX_LIMIT_MB} MiB", "reread", "procfs", "container_memory_limit", "file", "host"),
    Row(f"file at {MATRIX_LIMIT_MB} MiB, {SWAPPED_ANON_MB} MiB anon swapped out", "reread-swapped", "procfs", "container_memory_limit", "file",
        "host"),
    Row(f"anon swapping at {MATRIX_LIMIT_MB} MiB", "anon", "auto", "container_memory_limit", "swap", "host",
        say="its memory cgroup /pfi-test-"),
    Row(f"anon swapping at {MATRIX_LIMIT_MB} MiB", "anon", "procfs", "container_memory_limit", "swap", "host"),
    Row(f"/dev/shm swapping at {MATRIX_LIMIT_MB} MiB", "shm", "auto", "shmem_swap", "shmem", "host", say="/dev/shm/pfi-test-"),
    Row(f"/dev/shm swapping at {MATRIX_LIMIT_MB} MiB", "shm", "procfs", "shmem_swap", "shmem", "host"),
    # Read-ahead brings program text in many pages a fault: this workload made 43-113 faults/s here, around
    # the default 50/s floor (a busy machine made it "quiet"). The row is about the cause, not the rate: its
    # floor is 5/s, under a tenth of the slowest rate seen.
    Row(f"program text at {MATRIX_LIMIT_MB} MiB", "text", "auto", "container_memory_limit", "code", "host",
        say="its own program code", noise_floor=5.0),
    Row("program text, no limit", "text-drop", "auto", "code_refaults", "code", "host", layout="none",
        limit_mb=None, noise_floor=5.0),  # 68/s seen here: as near the default floor as the row above
    Row("pod v1: anon at container limit", "anon", "auto", "container_memory_limit", "swap", "pod",
        layout="cgroupfs", say="the container runs at"),
    Row("pod v1: anon at container limit", "anon", "procfs", "container_memory_limit", "swap", "pod",
        layout="cgroupfs", say="the container runs at"),
    Row("pod hybrid: file at pod limit", "reread", "auto", "container_memory_limit", "file", "pod",
        layout="hybrid", limit_mb=None, pod_limit_mb=MATRIX_LIMIT_MB, say="pod-level memory limit"),
    Row("pod hybrid: anon at container limit", "anon", "procfs", "container_memory_limit", "swap", "pod",
        layout="hybrid", say="the container runs at"),
    Row("pod v2: file at pod limit", "reread", "auto", "container_memory_limit", "file", "pod",
        layout="systemd", limit_mb=None, pod_limit_mb=MATRIX_LIMIT_MB, say="pod-level memory limit"),
    Row("pod v2: anon at container limit", "anon", "procfs", "container_memory_limit", "swap", "pod",
        layout="systemd", say="the container runs at"),
    Row("anon at limit, cgroup unreadable", "anon", "auto", "swap", "swap", "host", cgroup_root_broken=True,
        say="could not be read"),
    # Captured procfs trees (PFI_PROC_ROOT), replayed a tick a second; see tests/fixtures/SOURCES.md.
    Row("captured: file at limit, anon swapped out", "replay", "procfs", "container_memory_limit", "file", "host",
        capture="mixed-at-limit", say="its memory cgroup /pfi-test-"),
    Row("captured: swap-in after the limit went", "replay", "procfs", "swap", "swap", "host",
        capture="limit-raised", derive=("no-limit",), say="swapped out earlier"),
    Row("captured node: MemAvailable 3%", "replay", "procfs", "node_memory_pressure", "swap", "host",
        capture="anon-at-limit", derive=("no-limit", "available-3%"), say="of the node's memory is available"),
    Row("captured node: kswapd reclaiming", "replay", "procfs", "node_memory_pressure", "swap", "host",
        capture="anon-at-limit", derive=("no-limit", "available-12%", "kswapd"), say="reclaims node-wide"),
    Row("captured: file, anon swapped out, quiet node", "replay", "procfs", "cold_file_reads", "file", "host",
        capture="mixed-at-limit", derive=("no-limit", "quiet-node"), say="cold reads of"),
]

# The swap rows on zram as BottleRocket sets it up (issue 27: 1 GiB, lz4, swappiness 200, page-cluster 0).
# Not /dev/shm on zram: its tightness check (the v1 limit lowered to 96 MiB under a shmem writer swapping
# from zram) blocked in the limit write for 300 s, twice: reclaim never got ahead of swap-ins that fast.
ROWS += [
    Row(f"anon swapping at {MATRIX_LIMIT_MB} MiB, zram", "anon", "auto", "container_memory_limit", "swap", "host",
        say="swapped back in from zram", swap="zram"),
    Row(f"anon swapping at {MATRIX_LIMIT_MB} MiB, zram", "anon", "procfs", "container_memory_limit", "swap", "host",
        say="swapped back in from zram", swap="zram"),
]

# Quiet rows (issue 17): under the noise floor (a tenth of the alert's 500/s) nothing gets a cause. The live
# row checks the process (the node is whatever the other test runs make it); the replayed ones, whose node
# counters hold only the captured process's faults, check the report's headline too.
ROWS += [
    Row("quiet: trickle of cold code reads, 10/s", "trickle", "auto", "quiet", "code", "host", layout="none",
        limit_mb=None, say="under the noise floor of 50/s"),
    Row("captured quiet node: trickle, 10/s", "replay", "procfs", "quiet", "file", "host", capture="trickle",
        derive=("no-limit", "quiet-node"), say="under the noise floor", report_cause="quiet"),
    Row("captured quiet node: nothing faults", "replay", "procfs", "no_major_faults", "-", "-", capture="idle",
        derive=("no-limit", "quiet-node"), report_cause="no_major_faults"),
]


@dataclass
class Outcome:
    row: Row
    cause: str = "-"
    source: str = "-"
    subject: str = "-"
    tracer: str = "-"
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # issue 16: the recommended limit, and for proved rows the process's major faults/s before and after it
    recommended_mib: int | None = None
    at_least: bool = False
    rate_before: float | None = None
    rate_after: float | None = None
    command: str | None = None
    tight_mib: int | None = None  # the limit below the working set the tightness check applied
    rate: float | None = None  # the top process's major faults/s in the window
    floor: float | None = None  # the noise floor the row ran with
    rate_tight: float | None = None  # the process's major faults/s at it

    @property
    def ok(self) -> bool:
        return not self.problems


def _derive(src: Path, dst: Path, derive: tuple[str, ...], first: Path) -> None:
    """One captured tick `src` into `dst`, with the row's SYNTHETIC changes (`first`: tick 0):
    'no-limit': the process's cgroup lines set to "/" (a process without a memory limit of its own);
    'available-N%': MemAvailable set to N% of MemTotal (MemFree to half of that);
    'kswapd': pgscan_kswapd/pgsteal_kswapd rising by 2x/1x what the node swapped out since tick 0;
    'quiet-node': the node's pgmajfault rising by the process's own majflt only and pswpin flat (the
    faults of the other test runs on the machine taken out: a node where this process is the faulter).
    Everything else is the capture as it was."""
    import shutil

    shutil.copytree(src, dst, dirs_exist_ok=True)
    if "no-limit" in derive:
        for cg in dst.glob("[0-9]*/cgroup"):
            cg.write_text("".join(f"{line.rsplit(':', 1)[0]}:/\n" for line in cg.read_text().splitlines()))
    for d in derive:
        if d.startswith("available-"):
            pct = int(d.removeprefix("available-").rstrip("%"))
            mem = (dst / "meminfo").read_text().splitlines()
            total = next(int(line.split()[1]) for line in mem if line.startswith("MemTotal:"))
            avail = total * pct // 100
            (dst / "meminfo").write_text("".join(
                f"MemAvailable:   {avail} kB\n" if line.startswith("MemAvailable:") else
                f"MemFree:        {avail // 2} kB\n" if line.startswith("MemFree:") else line + "\n"
                for line in mem))
    if "quiet-node" in derive:
        def majflt_of(tick: Path) -> int:
            stat = next(tick.glob("[0-9]*/stat")).read_text()
            return int(stat[stat.rindex(")") + 2:].split()[9])

        vm0 = dict(line.split() for line in (first / "vmstat").read_text().splitlines())
        vm = dict(line.split() for line in (dst / "vmstat").read_text().splitlines())
        vm["pgmajfault"] = str(int(vm0["pgmajfault"]) + majflt_of(dst) - majflt_of(first))
        vm["pswpin"] = vm0["pswpin"]
        (dst / "vmstat").write_text("".join(f"{k} {v}\n" for k, v in vm.items()))
    if "kswapd" in derive:
        vm0 = dict(line.split() for line in (first / "vmstat").read_text().splitlines())
        vm = dict(line.split() for line in (dst / "vmstat").read_text().splitlines())
        out = int(vm["pswpout"]) - int(vm0["pswpout"])
        vm["pgscan_kswapd"] = str(int(vm["pgscan_kswapd"]) + 2 * out)
        vm["pgsteal_kswapd"] = str(int(vm["pgsteal_kswapd"]) + out)
        (dst / "vmstat").write_text("".join(f"{k} {v}\n" for k, v in vm.items()))


@contextlib.contextmanager
def _replay(tmp: Path, row: Row) -> Iterator[Path]:
    """A procfs-shaped tree (with the captured cgroup files under <tree>/cgroupfs) that steps through
    the capture's ticks (a second apart when captured) on the engine's own samples: tick k is written
    whole just before the sampler's k-th sample (tests.proctree.sampler_clock), so a loaded machine
    that delays a sample cannot make it read one tick's stat with another's io (this row once said
    "source swap" under load when it replayed on the wall clock)."""
    from tests.proctree import sampler_clock

    ticks = sorted((CAPTURES / row.capture).glob("tick*"), key=lambda p: int(p.name[4:]))
    if not ticks:
        raise RuntimeError(f"no capture at {CAPTURES / row.capture}")
    root = tmp / "proc"
    _derive(ticks[0], root, row.derive, ticks[0])

    def step(n: int) -> None:
        if n >= len(ticks):
            return  # held at the last tick
        staged = tmp / f"stage-{n}"
        _derive(ticks[n], staged, row.derive, ticks[0])
        for f in staged.rglob("*"):
            if f.is_file():
                os.replace(f, root / f.relative_to(staged))  # whole files at once: no half-written reads

    with sampler_clock(step):
        yield root


def _past_first_pass(proc: Any, timeout: float = 20.0) -> None:
    """Wait until a reread (or text) workload has faulted in every page of its file once: the first pass
    is cold reads (nothing refaults, the group just fills with page cache), only later passes re-read
    what the limit evicted (the cgroup's workingset_refault_file rises): what the limit rows are about."""
    pages = (proc.end - proc.start) // os.sysconf("SC_PAGE_SIZE")
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if int(stat[stat.rindex(")") + 2:].split()[9]) >= pages:
            return
        time.sleep(0.1)


def run_row(row: Row, tmp: Path, settings_kw: dict[str, Any] | None = None, window: float = WINDOW) -> Outcome:
    """Run one scenario and check the verdict against the row: cause, source, subject, wording, and
    that the node is not blamed when the node's own evidence says it is fine."""
    from app.config import Settings
    from app.investigation.diagnose import dominant, node_pressure
    from app.investigation.engine import investigate

    from . import file_fault_workload

    kw: dict[str, Any] = {"kubelet_url": None, "apiserver_fallback": False, **(settings_kw or {})}
    kw["tracer"] = row.tracer
    if row.noise_floor is not None:
        kw["noise_floor"] = row.noise_floor
    out = Outcome(row)
    t0 = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pids: list[int] | None
        if row.kind == "replay":
            kw["proc_root"] = stack.enter_context(_replay(tmp, row))
            kw["cgroup_root"] = kw["proc_root"] / "cgroupfs"
            # No tool to probe: a replayed row needs none (procfs), and as root the registry would run the
            # real perf and bpftrace to list them (a real tracer in the fast tier: tests/needs.py).
            kw["perf_path"] = kw["bpftrace_path"] = "/nonexistent/pfi-replay-row"
            pids = None
        else:
            if row.kind == "cold":
                proc = stack.enter_context(file_fault_workload(tmp / "cold.bin", size_mb=64))
            elif row.kind == "trickle":
                proc = stack.enter_context(scenario_workload("trickle", cgroup=None, data=tmp / "trickle.bin",
                                                             size_mb=1))
            else:
                cgroup = (None if row.layout == "none" else f"{unique_parent()}/job" if row.layout == "host"
                          else pod_path("cgroupfs" if row.layout == "cgroupfs" else "systemd"))
                proc = stack.enter_context(scenario_workload(
                    row.kind, cgroup=cgroup, limit_mb=row.limit_mb, pod_limit_mb=row.pod_limit_mb,
                    unified=row.layout == "hybrid", data=tmp / f"{row.kind}.bin", swap=row.swap,
                    size_mb=MATRIX_FILE_MB))
                # Not "text": it faults 50-100 pages/s here (an instruction fetch per page), so its
                # 32,768-page first pass takes minutes and the wait only ran into its 20 s timeout;
                # measured: the row's verdict is the same without it (its group is at the limit at once).
                if row.kind in ("reread", "reread-swapped") and (row.limit_mb or row.pod_limit_mb):
                    _past_first_pass(proc)
            if row.cgroup_root_broken:
                (tmp / "empty-cgroupfs").mkdir(exist_ok=True)
                kw["cgroup_root"] = tmp / "empty-cgroupfs"
            pids = [proc.pid]
            if proves(row) and row.kind != "text":  # text: read-ahead, a pass is many pages a fault
                window = max(window, whole_pass_window(proc.pid))
        report = investigate(Settings(**kw), seconds=window, pids=pids)
        if report.processes:
            check_recommendation(row, None if row.kind == "replay" else proc, report.processes[0], out)
    out.seconds = time.monotonic() - t0
    out.tracer = report.tracer.backend
    if report.tracer.sample_period > 1:  # auto on a node faulting above PFI_EXACT_MAX_RATE: one fault in N
        out.tracer += f" 1/{report.tracer.sample_period}"
    if row.tracer == "auto" and not report.tracer.exact:
        out.problems.append(f"auto ran {out.tracer}, not an exact tracer: {report.tracer.reason}")
    elif row.tracer != "auto" and out.tracer != row.tracer:
        out.problems.append(f"ran {out.tracer}, not {row.tracer}: {report.tracer.reason}")
    if row.report_cause:
        got = report.verdict.cause.value
        if got != row.report_cause:
            out.problems.append(f"report cause {got}, expected {row.report_cause}: {report.verdict.summary}")
        if any("memory" in a for a in report.verdict.advice):
            out.problems.append(f"a quiet node gets advice about memory: {report.verdict.advice}")
        if not report.processes and row.cause == "no_major_faults":
            out.cause, out.summary = got, report.verdict.summary
            return out
    if not report.processes:
        out.problems.append(f"no process reported (warnings: {report.warnings})")
        return out
    top = report.processes[0]
    out.rate = top.major_faults / max(report.window_seconds, 1e-3)
    out.floor = Settings(**kw).investigation.noise_floor
    kind, _, _ = dominant(top)
    v = top.verdict
    out.cause = v.cause.value if v else "-"
    out.source = kind.value if kind else "-"
    out.subject = "pod" if top.pod is not None else "host"
    out.summary = v.summary if v else ""
    for what, want, got in (("cause", row.cause, out.cause), ("source", row.source, out.source),
                            ("subject", row.subject, out.subject)):
        if want != got:
            out.problems.append(f"{what} {got}, expected {want}")
    if row.say and row.say not in out.summary:
        out.problems.append(f"summary lacks {row.say!r}")
    if row.swap == "zram" and not (top.sources and (top.sources[0].swap_device or "").startswith("zram")):
        out.problems.append(f"swap on zram, but the source says {top.sources[0].swap_device if top.sources else '-'}")
    if row.cause == "quiet" and any(p.verdict and p.verdict.cause.value not in ("quiet", "no_major_faults")
                                    for p in report.processes):
        out.problems.append("a process under the noise floor got a cause")
    if row.tracer == "procfs" and not all(s.estimated and s.evidence for s in top.sources):
        out.problems.append("procfs sources must be estimated and list their evidence")
    if row.cause != "node_memory_pressure":
        if node_pressure(report.node_stats) is not None:
            out.problems.append(f"the node itself is under pressure now: {node_pressure(report.node_stats)}")
        elif out.cause == "node_memory_pressure" or "node is short" in out.summary:
            out.problems.append("blames the node although the node's evidence says it is fine")
    version = 2 if row.layout == "systemd" else 1  # systemd: a v2-only node's kubepods.slice (the VM tier)
    if row.subject == "pod" and (top.cgroup_memory is None or top.cgroup_memory.version != version):
        out.problems.append(f"pod's memory not read from the v{version} memory hierarchy")
    return out


def rate_cell(o: Outcome) -> str:
    """The top process's rate next to the floor the row ran with ("43:50" says why a row went quiet)."""
    if o.rate is None or o.floor is None:
        return "-"
    return f"{o.rate:,.0f}:{o.floor:,.0f}"


def table(outcomes: list[Outcome]) -> str:
    """The accuracy table: one line per row, expected vs got."""
    lines = [f"{'scenario':44} {'tracer':16} {'cause':24} {'source':7} {'subject':7} {'faults/s:floor':15} "
             f"{'limit (faults/s)':42} ok", "-" * 165]
    for o in outcomes:
        r = o.row
        def cell(want: str, got: str) -> str:
            return got if want == got else f"{got}!={want}"
        lines.append(f"{r.name:44} {o.tracer:16} {cell(r.cause, o.cause):24} {cell(r.source, o.source):7} "
                     f"{cell(r.subject, o.subject):7} {rate_cell(o):15} {recommendation_cell(o):42} "
                     f"{'yes' if o.ok else 'NO: ' + '; '.join(o.problems)}")
    good = sum(o.ok for o in outcomes)
    lines.append(f"diagnosis accuracy {good}/{len(outcomes)}")
    return "\n".join(lines)


# --- issue 16: the recommended limit, proved by applying it ------------------------------------------

LIMIT_CAUSES = ("container_memory_limit", "shmem_swap")
PROVED_KINDS = ("reread", "anon", "shm", "text")
WHOLE_PASS_MAX = 24.0  # the longest window a proved row investigates for
WARMUP_MAX = 30.0  # the longest wait for the warm-up pass after the limit is raised
AFTER_SECONDS = 1.5  # the major-fault rate after is measured over this long (10,000+/s before: ample)


def proves(row: Row) -> bool:
    """Rows whose recommendation the matrix applies: a real workload at a readable limit."""
    return (row.kind in PROVED_KINDS and row.cause in LIMIT_CAUSES and row.layout != "none"
            and not row.cgroup_root_broken)


def workload_mb(row: Row) -> int:
    return MATRIX_FILE_MB + (SWAPPED_ANON_MB if row.kind == "reread-swapped" else 0)


def whole_pass_window(pid: int, mb: int = MATRIX_FILE_MB) -> float:
    """A window that sees one whole pass over the workload's memory at its current fault rate (measured
    over 1 s; 2.5x that, WINDOW to WHOLE_PASS_MAX): a user told `at_least` investigates longer too."""
    f0 = majflt(pid)
    time.sleep(1.0)
    rate = max(1.0, float(majflt(pid) - f0))
    return min(WHOLE_PASS_MAX * SLOWDOWN, max(WINDOW, 2.5 * (mb << 20) / 4096 / rate))


def recommendation_cell(o: Outcome) -> str:
    if o.recommended_mib is None:
        return "-"
    cell = f"{'>=' if o.at_least else ''}{o.recommended_mib} MiB"
    if o.rate_before is not None and o.rate_after is not None:
        cell += f" ({o.rate_before:,.0f}->{o.rate_after:,.0f}"
        if o.tight_mib is not None and o.rate_tight is not None:
            cell += f"; {o.tight_mib} MiB: {o.rate_tight:,.0f}"
        cell += ")"
    return cell


def check_recommendation(row: Row, proc: Any, top: Any, out: Outcome) -> None:
    """A limit verdict carries a recommendation (and nothing else does); on proved rows, apply it to the
    cgroup whose limit binds, wait out one warm-up pass, and check the major faults fell by >= 90% and
    the limit is not wasteful (<= 2x the workload + 32 MiB)."""
    rec = top.verdict.recommendation if top.verdict else None
    cause = top.verdict.cause.value if top.verdict else "-"
    if cause not in LIMIT_CAUSES or row.cgroup_root_broken:
        if rec is not None:
            out.problems.append(f"a {cause} verdict carries a recommendation")
        return
    if rec is None:
        out.problems.append("a limit verdict without a recommendation")
        return
    out.recommended_mib, out.at_least, out.command = rec.recommended_limit_bytes >> 20, rec.at_least, rec.command
    if not proves(row):
        return
    cap = 2 * workload_mb(row) + 32
    if out.recommended_mib > cap:
        out.problems.append(f"recommends {out.recommended_mib} MiB: more than 2x the workload + 32 MiB ({cap} MiB)")
    # A window whose faults covered the workload's pages twice saw it whole (load on a shared machine can
    # slow the faults below the rate measured before the window: then at_least is the honest answer).
    if rec.at_least and top.major_faults >= 2 * (workload_mb(row) << 20) // 4096:
        out.problems.append(f"at_least although the window's {top.major_faults:,} faults covered the workload twice")
    # The memory controller's hierarchy: v1 (this host) or the unified tree (cgroup v2 only, the VM tier).
    hierarchy = memory_hierarchy()
    assert hierarchy is not None, "a proved row runs in a memory cgroup"
    group = hierarchy.root / (rec.cgroup or "").strip("/")
    ours = hierarchy.root / proc.cgroup.relative_to(hierarchy.root).parts[0]  # pfi-test-<pid>-<n>
    if not group.is_relative_to(ours) or not (group / hierarchy.limit_file).exists():
        out.problems.append(f"the recommendation names cgroup {rec.cgroup}, not one this test made")
        return
    out.rate_before = top.major_faults_per_second
    (group / hierarchy.limit_file).write_text(str(rec.recommended_limit_bytes))
    t0 = time.monotonic()
    start = last = majflt(proc.pid)
    pages = (workload_mb(row) << 20) // 4096
    while time.monotonic() - t0 < WARMUP_MAX * SLOWDOWN:  # one warm-up pass: it has read its memory back once
        time.sleep(0.25)
        now = majflt(proc.pid)
        if now - start >= pages or now - last <= 0.0025 * out.rate_before:  # 1% of the rate, per 0.25 s
            break
        last = now
    f0 = majflt(proc.pid)
    time.sleep(AFTER_SECONDS)
    out.rate_after = (majflt(proc.pid) - f0) / AFTER_SECONDS
    if out.rate_after > 0.1 * out.rate_before:
        out.problems.append(f"at the recommended {out.recommended_mib} MiB the process still faults "
                            f"{out.rate_after:,.0f}/s (before: {out.rate_before:,.0f}/s): less than a 90% drop")
        return
    if row.tracer != "procfs":  # how much the workload needs is the workload's: checked once, on the exact row
        check_tight(row, proc, group / hierarchy.limit_file, out)


TIGHT_SHARE = 0.75  # the tightness check's limit, as a share of the workload: clearly below its working set
TIGHT_SETTLE = 1.0  # seconds for the lower limit's reclaim before the rate is measured


TIGHT_TRIES = 6  # writes of the lower limit, 0.5 s apart: each is one more reclaim pass over the group


def check_tight(row: Row, proc: Any, limit_file: Path, out: Outcome) -> None:
    """The recommendation is not vacuous: at 0.75x the workload's size (below its working set) the faults
    come back, to at least a tenth of the rate before (the mirror of the 90% drop): the group really needs
    about what was recommended, and the drop above was the limit's doing, not the workload's."""
    assert out.rate_before is not None and out.rate_after is not None
    out.tight_mib = int(TIGHT_SHARE * workload_mb(row))
    # The workload is stopped for the write: lowering a v1 limit reclaims inside the write, and a process
    # that brings its pages back as fast as they go (swap-ins from zram take microseconds) kept that write
    # in the kernel past the test's timeout. Stopped, it cannot refault, and the reclaim ends.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for attempt in range(TIGHT_TRIES):
            try:
                limit_file.write_text(str(out.tight_mib << 20))
                break
            except OSError as e:  # EBUSY: the kernel could not reclaim down to it (yet: a loaded machine)
                if attempt == TIGHT_TRIES - 1:
                    out.problems.append(f"could not lower the limit to {out.tight_mib} MiB for the tightness "
                                        f"check ({TIGHT_TRIES} tries): {e}")
                    return
                time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    time.sleep(TIGHT_SETTLE)
    f0 = majflt(proc.pid)
    time.sleep(AFTER_SECONDS)
    out.rate_tight = (majflt(proc.pid) - f0) / AFTER_SECONDS
    if out.rate_tight < 0.1 * out.rate_before or out.rate_tight <= out.rate_after:
        out.problems.append(f"at {out.tight_mib} MiB (0.75x the workload) the process faults only "
                            f"{out.rate_tight:,.0f}/s (before: {out.rate_before:,.0f}/s, at the recommended "
                            f"{out.recommended_mib} MiB: {out.rate_after:,.0f}/s): the tightness check did not "
                            "bring the faults back")


def skip_reason(row: Row) -> str | None:
    """Why this row cannot run on this machine (the test skips with it; the bench leaves the row out), or None."""
    if row.kind == "replay":
        return None
    if os.geteuid() != 0:
        return "needs root (cgroups, swap, tracers)"
    for tool in ("gcc", *(("mkswap", "swapon", "swapoff") if row.kind in ("anon", "shm") else ())):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if row.layout in ("cgroupfs", "hybrid") and not (CGROUP_MEMORY_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}: the v1 path (a {row.layout}-layout pod)"
    if row.layout == "hybrid" and not (UNIFIED_ROOT / "cgroup.procs").exists():
        return f"no unified cgroup tree at {UNIFIED_ROOT}: the v1 path (a hybrid-layout pod)"
    if row.layout == "host" and memory_hierarchy() is None:
        return no_memory_controller_reason()
    if row.layout == "systemd" and getattr(memory_hierarchy(), "version", None) != 2:
        return f"no memory controller on the unified tree at {CGROUP_ROOT}: the v2 path (a systemd-layout pod)"
    return None

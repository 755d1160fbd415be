"""Section 10 "investigation cost" (issue 27): what the whole default investigation costs the workload it
watches - perf (or bpftrace) recording, the live perf.data reader, the per-second sampler, the engine's
Python - on the workloads a node that pages has:

  a  sequential swapper: anonymous memory written in order in a memory cgroup at half its size, disk
     swap, page-cluster 3 (most pages come back by swap read-ahead: one major fault brings 8)
  b  scattered swapper: the same in a scattered order, disk swap
  c  file re-reader: tests/workloads file_fault_workload (every page read from disk again)
  d  a sequential and a scattered swapper on zram swap as BottleRocket sets it (tests/workloads
     zram_swap: 1 GiB, lz4, swappiness 200, page-cluster 0): swap-ins of microseconds, where a fixed
     cost per fault weighs most
  e  a file re-reader with two threads, faulting on both cores

Each case: untraced, investigated, untraced, ... in turns (ROUNDS investigated runs between ROUNDS + 1
untraced ones); each investigated run's major-fault rate, over the whole investigate() call, against the
mean of the untraced runs around it (each as long as the investigation); the median of the rounds.

Where the cost goes, per case (the bench prints each part's share of the CPU the investigation added):
  tracer       the tracer processes' CPU (perf/bpftrace, reaped children: getrusage)
  reader       the live perf.data reader and the final read (thread CPU inside perf's _Tail.read)
  sampler      the per-second procfs ticks and the tracer's two marks (thread CPU inside them)
  engine       the rest of this process's CPU (Python: hand-over, resolving, diagnosis, report)
  in-task      what the workload itself spent more per fault while traced (schedstat CPU per fault,
               traced - untraced, x faults): the event code in the kernel's fault path
and the wakeups (voluntary context switches) of the tracer and this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from app.investigation import sampler as sampler_mod
from app.investigation.engine import investigate
from app.tracers import _perf
from tests import workloads

from .common import Results, Row, build, log

SECTION = "10 investigation cost"
TARGET = 0.97
PARTS = ("tracer", "reader", "sampler", "engine", "in-task")


@dataclass
class Measure:
    seconds: float
    majflt: int
    task_ns: int  # the workload's CPU (schedstat), all threads
    parts: dict[str, float] = field(default_factory=dict)  # CPU seconds by part (investigated runs)
    wakeups: dict[str, int] = field(default_factory=dict)
    backend: str = ""

    @property
    def rate(self) -> float:
        return self.majflt / self.seconds if self.seconds > 0 else 0.0

    @property
    def ns_per_fault(self) -> float:
        return self.task_ns / self.majflt if self.majflt else 0.0


def _task_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


class _ThreadCPU:
    """Thread CPU spent inside some functions (wrapped while measuring): the sampler's, the reader's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, part: str) -> None:
        fn = getattr(owner, name)

        def timed(*a: object, **kw: object) -> object:
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                with self._lock:
                    self.seconds[part] = self.seconds.get(part, 0.0) + time.thread_time() - t

        self._saved.append((owner, name, fn))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()


def untraced(pid: int, seconds: float) -> Measure:
    a, ca, t = workloads.majflt(pid), _task_ns(pid), time.monotonic()
    time.sleep(seconds)
    b, cb = workloads.majflt(pid), _task_ns(pid)
    return Measure(time.monotonic() - t, b - a, cb - ca)


def investigated(pid: int, window: float) -> Measure:
    cpu = _ThreadCPU()
    cpu.wrap(sampler_mod.Sampler, "tick", "sampler")
    cpu.wrap(sampler_mod.Sampler, "mark", "sampler")
    cpu.wrap(_perf._Tail, "read", "reader")
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    a, ca, t = workloads.majflt(pid), _task_ns(pid), time.monotonic()
    try:
        report = investigate(Settings(kubelet_url=None, apiserver_fallback=False), seconds=window)
    finally:
        cpu.restore()
    b, cb = workloads.majflt(pid), _task_ns(pid)
    m = Measure(time.monotonic() - t, b - a, cb - ca, backend=report.tracer.backend)
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime)
    m.parts = {
        "tracer": (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime),
        "reader": cpu.seconds.get("reader", 0.0),
        "sampler": cpu.seconds.get("sampler", 0.0),
    }
    m.parts["engine"] = max(0.0, own - m.parts["reader"] - m.parts["sampler"])
    m.wakeups = {"tracer": c1.ru_nvcsw - c0.ru_nvcsw, "inspector": s1.ru_nvcsw - s0.ru_nvcsw}
    return m


@contextlib.contextmanager
def _sysctls_pinned(page_cluster: int) -> Iterator[None]:
    """vm.page-cluster set for the case, under the lock zram_swap() takes (the sysctls are the machine's:
    nobody's zram device changes them meanwhile), and restored."""
    with open(workloads._ZRAM_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = workloads._SYSCTL["page_cluster"]
        saved = path.read_text().strip()
        try:
            path.write_text(str(page_cluster))
            yield
        finally:
            path.write_text(saved)
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _cost_process(args: list[str], groups: list[Path]) -> Iterator[workloads.WorkloadProcess]:
    proc = workloads._start("pfi-workload-cost", build("cost_faults"), args, wait_for_go=True)
    key = workloads._register(lambda: workloads._kill(proc))
    try:
        workloads._release(proc, groups)
        yield proc
    finally:
        workloads._unregister(key)
        workloads._kill(proc)


@contextlib.contextmanager
def _swapper(order: str, swap: str) -> Iterator[workloads.WorkloadProcess]:
    name = f"pfi-bench-cost-{os.getpid()}-{order}-{swap}"
    outer: contextlib.AbstractContextManager[object] = (
        workloads.zram_swap() if swap == "zram" else contextlib.ExitStack())
    with outer:
        pin = _sysctls_pinned(3) if swap == "disk" else contextlib.nullcontext()
        with pin, (workloads.swap_enabled() if swap == "disk" else contextlib.nullcontext()), \
                workloads.memory_cgroup(name, 64) as group, _cost_process([order, "128"], [group]) as proc:
            yield proc


@contextlib.contextmanager
def _file(workdir: Path) -> Iterator[workloads.WorkloadProcess]:
    with workloads.file_fault_workload(workdir / "cost-file.bin", 64) as proc:
        yield proc


@contextlib.contextmanager
def _threads(workdir: Path) -> Iterator[workloads.WorkloadProcess]:
    path = workdir / "cost-threads.bin"
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(64):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        with _cost_process(["threads", str(path), "2"], []) as proc:
            yield proc
    finally:
        path.unlink(missing_ok=True)


def cases(workdir: Path) -> list[tuple[str, str, Callable[[], contextlib.AbstractContextManager[workloads.WorkloadProcess]]]]:
    return [
        ("a", "sequential swapper, disk swap, page-cluster 3", lambda: _swapper("seq", "disk")),
        ("b", "scattered swapper, disk swap", lambda: _swapper("scatter", "disk")),
        ("c", "file re-reader", lambda: _file(workdir)),
        ("d", "sequential swapper, zram (BottleRocket)", lambda: _swapper("seq", "zram")),
        ("d", "scattered swapper, zram (BottleRocket)", lambda: _swapper("scatter", "zram")),
        ("e", "file re-reader, 2 threads on both cores", lambda: _threads(workdir)),
    ]


def shares(traced: list[Measure], base: list[Measure]) -> dict[str, float]:
    """CPU seconds per investigation by part (medians), in-task included."""
    out = {p: statistics.median(m.parts.get(p, 0.0) for m in traced) for p in PARTS if p != "in-task"}
    untraced_ns = statistics.median(m.ns_per_fault for m in base)
    out["in-task"] = statistics.median(max(0.0, (m.ns_per_fault - untraced_ns) * m.majflt / 1e9) for m in traced)
    return out


def run_case(res: Results, letter: str, what: str, make: Callable[[], contextlib.AbstractContextManager[workloads.WorkloadProcess]],
             window: float, rounds: int) -> None:
    name = f"{letter}: {what}"
    try:
        with make() as proc:
            time.sleep(1.0)  # let it reach its steady rate
            base = [untraced(proc.pid, window + 1.5)]
            traced: list[Measure] = []
            ratios = []
            for _ in range(rounds):
                t = investigated(proc.pid, window)
                traced.append(t)
                base.append(untraced(proc.pid, t.seconds))
                ref = (base[-2].rate + base[-1].rate) / 2
                ratios.append(t.rate / ref if ref else 0.0)
                log(f"    {letter} {what}: untraced {base[-2].rate:,.0f}/s, investigated ({t.backend}) {t.rate:,.0f}/s,"
                    f" untraced {base[-1].rate:,.0f}/s: {ratios[-1]:.3f}")
    except Exception as e:  # noqa: BLE001 - one case that cannot run (no zram, no swap) leaves the others
        res.failed(SECTION, name, e, target=f">= {TARGET}")
        return
    ratio = statistics.median(ratios)
    cpu = shares(traced, base)
    total = sum(cpu.values()) or 1e-9
    load = os.getloadavg()[0]
    parts = ", ".join(f"{p} {cpu[p] / total:.0%}" for p in PARTS)
    wake = traced[len(traced) // 2].wakeups
    res.add(Row(
        SECTION, name, round(statistics.median(t.rate for t in traced)), "faults/s",
        baseline=round(statistics.median(m.rate for m in base)), ratio=round(ratio, 3), target=f">= {TARGET}",
        status="PASS" if ratio >= TARGET else "MISS",
        note=(f"{traced[0].backend}, {window:.0f} s windows, median of {rounds} paired rounds "
              f"({' / '.join(f'{r:.3f}' for r in ratios)}), load {load:.1f}; CPU the investigation added "
              f"{total:.2f} s: {parts}; wakeups: tracer {wake.get('tracer', 0):,}, inspector {wake.get('inspector', 0):,}"),
        extra={"ratios": ratios, "cpu_seconds": cpu, "load": load, "backend": traced[0].backend,
               "untraced_ns_per_fault": statistics.median(m.ns_per_fault for m in base),
               "traced_ns_per_fault": statistics.median(m.ns_per_fault for m in traced)},
    ))


def section_cost(res: Results, window: float, rounds: int) -> None:
    log(f"section 10: the whole investigation's cost ({window:.0f} s windows, {rounds} rounds)")
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-cost-", dir="/var/tmp"))
    try:
        for letter, what, make in cases(workdir):
            run_case(res, letter, what, make, window, rounds)
    finally:
        with contextlib.suppress(OSError):
            for p in workdir.iterdir():
                p.unlink()
            workdir.rmdir()

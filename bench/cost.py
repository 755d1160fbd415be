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

Each case: WARMUP_SECONDS untraced (its steady rate), then untraced, investigated, untraced, ... in turns
(rounds investigated runs between rounds + 1 untraced ones; 5 rounds in the full bench); each investigated run's major-fault rate, over the whole investigate() call, against the
mean of the untraced runs around it (each as long as the investigation); the median of the rounds.

Where the cost goes, per case (the bench prints each part's share of the CPU the investigation added):
  tracer       the tracer processes' CPU (perf/bpftrace, reaped children: getrusage)
  reader       the live perf.data reader and the final read (thread CPU inside perf's _Tail.read)
  sampler      the per-second procfs ticks and the tracer's two marks (thread CPU inside them)
  engine       the rest of this process's CPU (Python: hand-over, resolving, diagnosis, report)
  in-task      what the workload itself spent more per fault while traced (schedstat CPU per fault,
               traced - untraced, x faults): the event code in the kernel's fault path
and the wakeups (voluntary context switches) of the tracer and this process.

Before/after in one run (the default; `--cost-before exact`): each round also runs the investigation
recording every fault (exact_max_rate 0: the default before auto sampled one fault in N above
PFI_EXACT_MAX_RATE), the two in turns with untraced runs between them, so both are compared under the
same load; the row's note gives both ratios and both CPU splits. `--cost-before records`: every fault with
the reader before the column reader (perf.data read record by record, one Python call per sample, the
thread not niced: `_record_by_record_read`); `--cost-before none`: the default alone. The "reader" rows
time the two readers alone on the same synthetic
perf.data (a real capture's records, 600,000 samples over 16,384 pages, the shape of a 10 s zram
window), CPU per sample, the older one as the baseline.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from app.investigation import sampler as sampler_mod
from app.investigation.engine import investigate
from app.parsers import perfdata
from app.parsers.perf import FaultCounts
from app.tracers import _perf
from tests import workloads

from .common import Results, Row, build, log

SECTION = "10 investigation cost"
WARMUP_SECONDS = 8.0  # each workload runs untraced this long before the first measurement
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


def _record_by_record_read(self: _perf._Tail, final: perfdata.PerfData | None = None) -> None:
    """_perf._Tail.read as it was before the column reader (main at 00ca26d): one Python call per sample
    (iter_timed_samples + FaultCounts.add_sample). The bench's "before"; it never cancels."""
    if _perf._size(self.data) <= self.off and final is None:
        return
    with open(self.data, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if self.info is None:
            self.info = perfdata.read_header(buf)  # type: ignore[arg-type]
            self.off = self.info.data_offset
        info = self.info
        end = len(buf) if final is None else min(len(buf), final.data_offset + final.data_size)
        info.data_offset, info.data_size = self.off, max(0, end - self.off)
        keep, add = self.keep, self.counts.add_sample
        for n, (pid, _tid, when, addr) in enumerate(perfdata.iter_timed_samples(buf, info)):  # type: ignore[arg-type]
            if keep is None or pid in keep:
                add(pid, "", addr, when)
            if n & 0xFFFF == 0xFFFF and final is None and self._stop.is_set():
                break
        self.off = info.read_to
    self.rounds += 1


@contextlib.contextmanager
def _reader(kind: str) -> Iterator[None]:
    """The live reader to investigate with: the app's, or for "records" the one before it (KINDS)."""
    if kind != "records":
        yield
        return
    saved_read, saved_nice = _perf._Tail.read, _perf._nice_this_thread
    _perf._Tail.read = _record_by_record_read  # type: ignore[method-assign]
    _perf._nice_this_thread = lambda nice: None
    try:
        yield
    finally:
        _perf._Tail.read = saved_read  # type: ignore[method-assign]
        _perf._nice_this_thread = saved_nice


# What an investigated run runs: "columns" the default investigation as shipped (one fault in N above
# PFI_EXACT_MAX_RATE); "exact" the same recording every fault (exact_max_rate 0: the default before issue
# 27's sampling); "records" every fault with the record-by-record reader before the column reader.
KINDS = {"columns": "the default (sampled above exact_max_rate)", "exact": "every fault recorded",
         "records": "every fault, record-by-record reader"}


def investigated(pid: int, window: float, reader: str = "columns") -> Measure:
    with _reader(reader):
        return _investigated(pid, window, exact_max_rate=None if reader == "columns" else 0)


def _investigated(pid: int, window: float, exact_max_rate: int | None = None) -> Measure:
    cpu = _ThreadCPU()
    cpu.wrap(sampler_mod.Sampler, "tick", "sampler")
    cpu.wrap(sampler_mod.Sampler, "mark", "sampler")
    cpu.wrap(_perf._Tail, "read", "reader")
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    a, ca, t = workloads.majflt(pid), _task_ns(pid), time.monotonic()
    try:
        kw = {} if exact_max_rate is None else {"exact_max_rate": exact_max_rate}
        report = investigate(Settings(kubelet_url=None, apiserver_fallback=False, **kw), seconds=window)
    finally:
        cpu.restore()
    b, cb = workloads.majflt(pid), _task_ns(pid)
    n = report.tracer.sample_period
    m = Measure(time.monotonic() - t, b - a, cb - ca, backend=report.tracer.backend + (f" 1/{n}" if n > 1 else ""))
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
    """vm.page-cluster set for the case, with the machine's swap set-up held as zram_swap() holds it (the
    sysctls are the machine's: nobody's zram device changes them meanwhile), and restored."""
    with workloads.swap_config_held():
        path = workloads._SYSCTL["page_cluster"]
        saved = path.read_text().strip()
        try:
            path.write_text(str(page_cluster))
            yield
        finally:
            path.write_text(saved)


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
             window: float, rounds: int, before: str | None = "exact") -> None:
    """`before` (a KINDS key, or None): each round also investigates that way (by default recording every
    fault, as before the sampling), the two in turns (which goes first alternates), each against the
    untraced runs beside it."""
    name = f"{letter}: {what}"
    kinds = ["columns", before] if before else ["columns"]
    traced: dict[str, list[Measure]] = {k: [] for k in kinds}
    ratios: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        with make() as proc:
            # Its steady rate first: in the first seconds a swapper still fills its cgroup and the swap area
            # takes its layout (measured: every case's first investigated round came 3-9% under the others).
            untraced(proc.pid, WARMUP_SECONDS)
            base = [untraced(proc.pid, window + 1.5)]
            for i in range(rounds):
                for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                    t = investigated(proc.pid, window, kind)
                    traced[kind].append(t)
                    base.append(untraced(proc.pid, t.seconds))
                    ref = (base[-2].rate + base[-1].rate) / 2
                    ratios[kind].append(t.rate / ref if ref else 0.0)
                    log(f"    {letter} {what}: untraced {base[-2].rate:,.0f}/s, investigated ({t.backend}"
                        f"{', ' + KINDS[kind] if before else ''}) {t.rate:,.0f}/s, untraced {base[-1].rate:,.0f}/s: "
                        f"{ratios[kind][-1]:.3f}")
    except Exception as e:  # noqa: BLE001 - one case that cannot run (no zram, no swap) leaves the others
        res.failed(SECTION, name, e, target=f">= {TARGET}")
        return
    now = traced["columns"]
    ratio = statistics.median(ratios["columns"])
    cpu = shares(now, base)
    total = sum(cpu.values()) or 1e-9
    load = os.getloadavg()[0]
    parts = ", ".join(f"{p} {cpu[p] / total:.0%}" for p in PARTS)
    wake = now[len(now) // 2].wakeups
    faults = statistics.median(m.majflt for m in now) or 1
    note = (f"{now[0].backend}, {window:.0f} s windows, median of {rounds} paired rounds "
            f"({' / '.join(f'{r:.3f}' for r in ratios['columns'])}), load {load:.1f}; CPU the investigation added "
            f"{total:.2f} s: {parts}; reader {cpu['reader'] * 1e9 / faults:,.0f} ns a fault; "
            f"wakeups: tracer {wake.get('tracer', 0):,}, inspector {wake.get('inspector', 0):,}")
    extra = {"ratios": ratios["columns"], "cpu_seconds": cpu, "load": load, "backend": now[0].backend,
             "untraced_ns_per_fault": statistics.median(m.ns_per_fault for m in base),
             "traced_ns_per_fault": statistics.median(m.ns_per_fault for m in now)}
    if before:
        old = traced[before]
        old_cpu = shares(old, base)
        old_total = sum(old_cpu.values()) or 1e-9
        old_faults = statistics.median(m.majflt for m in old) or 1
        note += (f"; BEFORE ({KINDS[before]}, {old[0].backend}, same run): {statistics.median(ratios[before]):.3f} "
                 f"({' / '.join(f'{r:.3f}' for r in ratios[before])}), added {sum(old_cpu.values()):.2f} s: "
                 + ", ".join(f"{p} {old_cpu[p] / old_total:.0%}" for p in PARTS)
                 + f"; reader {old_cpu['reader'] * 1e9 / old_faults:,.0f} ns a fault")
        extra |= {"before": before, "before_ratios": ratios[before], "before_cpu_seconds": old_cpu,
                  "before_backend": old[0].backend}
    res.add(Row(
        SECTION, name, round(statistics.median(t.rate for t in now)), "faults/s",
        baseline=round(statistics.median(m.rate for m in base)), ratio=round(ratio, 3), target=f">= {TARGET}",
        status="PASS" if ratio >= TARGET else "MISS", note=note, extra=extra,
    ))


READER_SAMPLES = 600_000  # a 10 s window at 60,000 faults/s
READER_PAGES = 16_384


def _synthetic_perf_data(samples: int, pages: int) -> bytes:
    """tests/fixtures/tracers/perf-major-two-workloads.data's header and first sample record, repeated with
    the address walking `pages` pages (and the time rising 10 us a sample)."""
    real = (Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tracers"
            / "perf-major-two-workloads.data").read_bytes()
    info = perfdata.read_header(real)
    off = info.data_offset
    while True:
        rtype, _misc, size = struct.unpack_from("<IHH", real, off)
        if rtype == perfdata.RECORD_SAMPLE:
            break
        off += size
    template = bytearray(real[off:off + size])
    st = info.default_sample_type
    at = perfdata._offsets(st)
    assert at is not None and at[1] is not None
    _pid_at, time_at, addr_at = at
    base_addr = struct.unpack_from("<Q", template, addr_at)[0] & ~0xFFFFFF
    base_time = struct.unpack_from("<Q", template, time_at)[0]
    body = bytearray()
    for i in range(samples):
        struct.pack_into("<Q", template, addr_at, base_addr + ((i * 7919 % pages) << 12))
        struct.pack_into("<Q", template, time_at, base_time + i * 10_000)
        body += template
    head = bytearray(real[: info.data_offset])
    struct.pack_into("<Q", head, 48, len(body))
    return bytes(head + body)


def _reader_cpu(buf: bytes, kind: str) -> tuple[float, FaultCounts]:
    counts = FaultCounts()
    t = time.thread_time()
    info = perfdata.read_header(buf)
    if kind == "records":
        for pid, _tid, when, addr in perfdata.iter_timed_samples(buf, info):
            counts.add_sample(pid, "", addr, when)
    else:
        for batch in perfdata.iter_sample_batches(buf, info):
            counts.add_batch(batch.pids, batch.addrs, batch.times)
        counts.settle()
    return time.thread_time() - t, counts


def reader_rows(res: Results, reps: int = 3) -> None:
    """The two readers alone on one perf.data, in turns: CPU per sample, median of `reps`."""
    buf = _synthetic_perf_data(READER_SAMPLES, READER_PAGES)
    cpu: dict[str, list[float]] = {"records": [], "columns": []}
    counts: dict[str, FaultCounts] = {}
    for _ in range(reps):
        for kind in cpu:
            s, counts[kind] = _reader_cpu(buf, kind)
            cpu[kind].append(s)
    same = counts["records"].faults == counts["columns"].faults and counts["records"].new_pages == counts["columns"].new_pages
    old, new = statistics.median(cpu["records"]), statistics.median(cpu["columns"])
    res.add(Row(
        SECTION, f"reader alone: perf.data of {READER_SAMPLES:,} samples over {READER_PAGES:,} pages",
        round(new * 1e9 / READER_SAMPLES), "ns CPU a sample", baseline=round(old * 1e9 / READER_SAMPLES),
        ratio=round(new / old, 3) if old else None, target="< 1 (baseline: record by record)",
        status=("PASS" if new < old else "MISS") if same else "MISS",
        note=(f"columns (iter_sample_batches + FaultCounts.add_batch) against record by record (iter_timed_samples "
              f"+ add_sample), {reps} turns each, thread CPU, load {os.getloadavg()[0]:.1f}; same counts: {same}"),
        extra={"records_seconds": cpu["records"], "columns_seconds": cpu["columns"]},
    ))


def section_cost(res: Results, window: float, rounds: int, before: str | None = "exact") -> None:
    log(f"section 10: the whole investigation's cost ({window:.0f} s windows, {rounds} rounds"
        f"{', against ' + KINDS[before] + ' in turns' if before else ''})")
    try:
        reader_rows(res)
    except Exception as e:  # noqa: BLE001
        res.failed(SECTION, "reader alone", e)
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-cost-", dir="/var/tmp"))
    try:
        for letter, what, make in cases(workdir):
            run_case(res, letter, what, make, window, rounds, before)
    finally:
        with contextlib.suppress(OSError):
            for p in workdir.iterdir():
                p.unlink()
            workdir.rmdir()

"""What the two perf backends share: `perf record` with an exactly aligned window, then reading its output
(perf-major: perf.data read natively, app.parsers.perfdata; perf-tracepoint: `perf script`).

The window: perf starts with its counters disabled (`-D -1`) and a control fifo
(`--control=fifo:ctl,ack`, perf >= 5.10). We send `enable`, wait for perf's `ack`, call on_start;
at the end send `disable`, wait for the ack, call on_stop, then SIGINT so perf writes its file.
So the events counted are exactly those between the two markers, where the engine reads majflt.

Reading (perf-major): perf.data is read while perf writes it (`_Tail`: perf is pinged every TAIL_EVERY
seconds to write out its ring buffers), so when the window ends only the last half second is left to read
and the report is ready about as soon as perf has exited. It is read in columns (perfdata.iter_sample_batches,
FaultCounts.add_batch: no Python call per sample; 0.4x the CPU of reading record by record, bench section
10), by a thread at nice 10, below the workloads it watches. Fewer sample fields cannot be asked of perf
6.1: `-d` brings ADDR and DATA_SRC, `-a` CPU and ID (its dummy side-band event); only TIME could go
(`--no-timestamp`), and the new-pages series needs it: 64 bytes a sample.

Bounds: `--max-size` (perf stops itself at the output bound), the window deadline (perf is stopped
SIGINT -> SIGTERM -> SIGKILL; what was written is still parsed), CPU (nice 10), the ring buffer
(`-m`, sized by CPU count; samples it loses are PERF_RECORD_LOST records, counted as dropped), and a
deadline on `perf script` too.

Whom perf records (`system_wide`): perf-major always records the whole node (`-a`, one event per CPU)
and, when the request names processes, keeps only theirs while reading perf.data. Per-task events
(`-p PID`) are switched in and out with their task at every context switch, and every major fault
blocks its task once (a context switch per fault): measured here (KVM guest, kernel 6.18), a per-task
software event added 9-17 us of the traced task's CPU per context switch, a per-CPU one ~0 (bench/
perf_cost.py, the "context switch" rows), i.e. ~6% of a swap-in fault's ~150 us. The price of `-a`: other
processes' major faults are written too (about 250 ns each, where they already wait for a disk read) and
count against `--max-size`. `--synth=task`: of the processes already running perf writes only their
names (COMM), not every mapping (measured at 5,000 processes: 1.3 MB instead of 17 MB); the reader
needs the samples and the names.

Lockable memory (`plan_ring`): without CAP_IPC_LOCK the ring buffers must fit perf_event_mlock_kb
and RLIMIT_MEMLOCK (8 MiB in most containers), or `perf record` fails at window start with
"Permission error mapping pages". With CAP_SYS_RESOURCE the child's RLIMIT_MEMLOCK is raised to what
the buffers need; otherwise `-m` shrinks to fit, and the report says so (and how many samples the
smaller buffer lost). The probe records with the same `-m` and limit as the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import select
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import cast

from app.parsers.perf import FaultCounts
from app.parsers.perfdata import PerfData, iter_sample_batches, read_header
from app.tracers import _kernel, leftovers
from app.tracers._supervise import SupervisedProcess, WindowMarks, first_error_line, hold_window, run_quick
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

ACK_TIMEOUT = 5.0
STOP_GRACE = 10.0  # SIGINT -> perf writes its header and exits
CANCEL_PARSE_SECONDS = 5.0  # after a cancel, parse at most this much longer


def find_perf(path: str) -> str | None:
    """The perf binary to run (a PATH lookup of `path`), or None when there is none."""
    return shutil.which(path)


def lockdown(settings: TracerSettings | None = None) -> str | None:
    """The kernel lockdown mode when it is on ("integrity", "confidentiality"), else None."""
    return _kernel.lockdown(settings.node.sysfs_root if settings else Path("/sys"))


def paranoid_problem(settings: TracerSettings) -> str | None:
    """Why perf may not trace the whole node as this user, or None."""
    if os.geteuid() == 0:
        return None
    level = _kernel.sysctl_int(settings.node.proc_root, "kernel/perf_event_paranoid")
    if level is not None and level > 0:
        return f"perf_event_paranoid={level} and not root (needs root, CAP_PERFMON or paranoid <= 0)"
    return None


def mmap_pages(ncpu: int | None = None) -> int:
    """Ring buffer pages per CPU wanted: 8 MiB each, at most 128 MiB in all (a power of two)."""
    ncpu = ncpu or os.cpu_count() or 1
    pages = 2048
    while pages > 64 and pages * 4096 * ncpu > 128 * 1024 * 1024:
        pages //= 2
    return pages


MIN_RING_PAGES = 8  # below this perf loses most samples at a few thousand faults/s
MEMLOCK_SLACK = 1 << 20  # perf maps a few more pages (e.g. for its control events)


@dataclass
class RingPlan:
    pages: int  # -m: pages per CPU
    wanted: int  # what mmap_pages() wanted
    ncpu: int
    memlock_bytes: int | None  # raise the child's RLIMIT_MEMLOCK to this (CAP_SYS_RESOURCE), or None
    note: str  # why it is smaller than wanted, or how it fits

    @property
    def shrunk(self) -> bool:
        return self.pages < self.wanted


def plan_ring(settings: TracerSettings) -> RingPlan:
    """How big `-m` may be here: the ring buffers (ncpu x (pages + 1) pages) must fit what this
    process may lock. The user's perf_event_mlock_kb allowance is shared by every perf and bpftrace
    of the same uid on the node, so only RLIMIT_MEMLOCK is counted on when shrinking."""
    ncpu = _kernel.online_cpus(settings.node.sysfs_root)
    wanted = mmap_pages(ncpu)
    need = ncpu * (wanted + 1) * _kernel.PAGE
    paranoid = _kernel.sysctl_int(settings.node.proc_root, "kernel/perf_event_paranoid")
    if paranoid is not None and paranoid < 0:
        return RingPlan(wanted, wanted, ncpu, None, "perf_event_paranoid=-1: no lock limit")
    if _kernel.has_cap(_kernel.CAP_IPC_LOCK, settings.node.proc_root):
        return RingPlan(wanted, wanted, ncpu, None, "CAP_IPC_LOCK: no lock limit")
    limit = _kernel.memlock_limit()
    if limit is None or need + MEMLOCK_SLACK <= limit:
        return RingPlan(wanted, wanted, ncpu, None, "fits RLIMIT_MEMLOCK")
    if _kernel.has_cap(_kernel.CAP_SYS_RESOURCE, settings.node.proc_root):
        return RingPlan(wanted, wanted, ncpu, need + MEMLOCK_SLACK,
                        f"RLIMIT_MEMLOCK raised from {limit >> 10} KiB to {(need + MEMLOCK_SLACK) >> 10} KiB"
                        " for perf (CAP_SYS_RESOURCE, no CAP_IPC_LOCK)")
    allowance = (_kernel.sysctl_int(settings.node.proc_root, "kernel/perf_event_mlock_kb") or 516) * 1024 * ncpu
    pages = wanted
    while pages > MIN_RING_PAGES and ncpu * (pages + 1) * _kernel.PAGE > max(limit - MEMLOCK_SLACK, 0):
        pages //= 2
    if ncpu * (pages + 1) * _kernel.PAGE > limit + allowance:
        pages = MIN_RING_PAGES
    return RingPlan(pages, wanted, ncpu, None,
                    f"perf ring buffer shrunk from {wanted} to {pages} pages per CPU ({ncpu} CPUs) to fit "
                    f"RLIMIT_MEMLOCK {limit >> 10} KiB (no CAP_IPC_LOCK, no CAP_SYS_RESOURCE)")


def _mapping_refused(stderr: str) -> bool:
    low = stderr.lower()
    return "mapping pages" in low or "mmap" in low and ("permission" in low or "cannot allocate" in low)


SYSTEM_WIDE_ARGS = ["--synth=task"]  # recording -a: the running processes' names, not their mappings


def probe_record(settings: TracerSettings, perf: str, event_args: list[str], system_wide: bool = False) -> tuple[bool, str]:
    """Record `true` with the event and the ring buffer and lock limit the run will use: proves the
    binary runs, the event opens and the buffers can be mapped here."""
    plan = plan_ring(settings)
    tmp = leftovers.make_workdir("pfi-perf-probe-")
    extra = SYSTEM_WIDE_ARGS if system_wide else []
    try:
        rc, _, err = run_quick(
            [perf, "record", *event_args, *extra, "-m", str(plan.pages), "-B", "-N", "--no-bpf-event", "-q",
             "-o", f"{tmp}/probe.data", "--", "true"],
            workdir=tmp, memlock_bytes=plan.memlock_bytes,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc == 0:
        return True, "" if not plan.shrunk and plan.memlock_bytes is None else plan.note
    line = first_error_line(err) or f"exit status {rc}"
    mode = lockdown(settings)
    return False, f"perf record -m {plan.pages} failed: {line}" + (f" (kernel lockdown: {mode})" if mode else "")


def available(settings: TracerSettings, event_args: list[str], system_wide: bool = False) -> tuple[bool, str]:
    perf = find_perf(settings.tracing.perf_path)
    if perf is None:
        return False, f"perf binary not found: {settings.tracing.perf_path!r} (settings.tracing.perf_path / PFI_PERF_PATH)"
    if problem := paranoid_problem(settings):
        return False, problem
    ok, why = probe_record(settings, perf, event_args, system_wide)
    if not ok:
        return False, why
    args = [*event_args, "-a", *SYSTEM_WIDE_ARGS] if system_wide else event_args
    return True, f"{perf} records {' '.join(args)}" + (f" ({why})" if why else "")


_ctl_lock = threading.Lock()  # one command and its ack at a time (the window's thread, the tail's pings)


def _command(rec: SupervisedProcess, ctl_fd: int, ack_fd: int, cmd: str, timeout: float) -> bool:
    """Send a control command to perf and wait for its ack (perf writes "ack\\n", sometimes with a
    NUL before it)."""
    with _ctl_lock:
        return _command_locked(rec, ctl_fd, ack_fd, cmd, timeout)


def _command_locked(rec: SupervisedProcess, ctl_fd: int, ack_fd: int, cmd: str, timeout: float) -> bool:
    with contextlib.suppress(BlockingIOError, OSError):
        os.read(ack_fd, 4096)  # a late ack of an earlier command must not answer this one
    os.write(ctl_fd, f"{cmd}\n".encode())
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([ack_fd], [], [], 0.1)
        if r:
            with contextlib.suppress(BlockingIOError):
                buf += os.read(ack_fd, 64)
            if b"ack" in buf:
                return True
        elif rec.poll() is not None:
            return False
    return False


def _live_pids(pids: list[int], proc_root: Path) -> list[int]:
    return [p for p in pids if (proc_root / str(p)).exists()]


MAX_SHRINK_RETRIES = 3  # halve -m this often when the kernel still refuses to map the buffers


def _target(settings: TracerSettings, request: TraceRequest, result: TraceResult, system_wide: bool,
            script_fields: str | None) -> tuple[list[str], set[int] | None] | None:
    """perf's target (-a, or -p the live pids) and the pids whose samples are kept (None: all); None when
    none of request.pids is alive any more (said in result, the window's markers called)."""
    target: list[str] = ["-a", *(SYSTEM_WIDE_ARGS if system_wide else [])]
    if request.pids is None:
        return target, None
    live = _live_pids(request.pids, settings.node.proc_root)
    if not live:
        result.errors.append(f"none of the pids {request.pids} exist any more")
        _markers(request)
        return None
    if system_wide and script_fields is None:
        return target, set(live)
    return ["-p", ",".join(map(str, live))], None


@dataclass
class _Control:
    """perf's control and ack fifos (--control=fifo:ctl,ack), open O_RDWR | O_NONBLOCK."""

    ctl_fd: int
    ack_fd: int

    def command(self, rec: SupervisedProcess, cmd: str, timeout: float) -> bool:
        return _command(rec, self.ctl_fd, self.ack_fd, cmd, timeout)


def _start(argv: Callable[[int], list[str]], plan: RingPlan, workdir: str, control: _Control, start_timeout: float,
           result: TraceResult) -> tuple[SupervisedProcess, int] | None:
    """perf record started and enabled with the planned ring, halved (down to MIN_RING_PAGES) while the
    kernel refuses to map it: (the recorder, its pages per CPU); None when it did not start (said in result)."""
    pages = plan.pages
    for attempt in range(MAX_SHRINK_RETRIES + 1):
        rec = SupervisedProcess(argv(pages), max_output_bytes=1024 * 1024, workdir=workdir,
                                memlock_bytes=plan.memlock_bytes)
        try:
            rec.start()
            enabled = control.command(rec, "enable", start_timeout)
        except BaseException:
            rec.stop(grace=1)
            raise
        if enabled:
            return rec, pages
        why = first_error_line(rec.stderr_text()) if rec.poll() is not None else ""
        rec.stop(grace=2)
        err = rec.stderr_text()
        why = why or first_error_line(err) or f"no ack within {start_timeout:.0f}s (PFI_PERF_START_TIMEOUT_SECONDS)"
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(control.ack_fd, 4096)  # a stale ack must not answer the next attempt
        if _mapping_refused(err) and pages > MIN_RING_PAGES and attempt < MAX_SHRINK_RETRIES:
            result.notes.append(f"perf could not map {pages} pages per CPU ({why}): retried with {pages // 2}")
            pages //= 2
            continue
        result.errors.append(f"perf record -m {pages} did not start: {why}")
        return None
    return None


def _hold(rec: SupervisedProcess, control: _Control, request: TraceRequest, result: TraceResult, data: str,
          tail: _Tail | None, marks: WindowMarks) -> None:
    """Hold the window with perf recording (the live reader beside it), then disable and stop perf; what
    went wrong on the way is said in result."""
    bounded = tail is not None and "--clockid" in rec.argv
    if bounded:
        assert tail is not None
        tail.bounded = True
        # the bounds on the samples' clock are when the marks read majflt (the time a marker returns: the
        # likeliest faulter's read), else taken just before each mark; nothing is read live before lo_ns
        marker = request.on_start

        def on_start() -> float | None:
            assert tail is not None
            before = time.monotonic_ns()
            at = marker() if marker is not None else None
            tail.lo_ns = round(at * 1e9) if at is not None else before
            return at

        request = dataclasses.replace(request, on_start=on_start)
    with rec, contextlib.ExitStack() as reading:
        marks.started = True
        if tail is not None:
            tail.start()
            reading.callback(tail.stop)
        marks.t_start = hold_window(rec, request)
        if tail is not None:
            tail.halt()
        if rec.poll() is not None:  # perf stopped itself: --max-size, or it failed
            err = rec.stderr_text()
            if "size limit" in err or _size(data) >= request.max_output_bytes:
                result.truncated = True
                result.errors.append(
                    f"perf output reached {request.max_output_bytes} bytes: the window was cut short"
                )
            else:
                result.exited_early = True
                result.errors.append(f"perf record exited early: {first_error_line(err) or rec.poll()}")
        def stop_mark(at: float) -> float:
            marks.t_stop, marks.stopped = at, True
            read = request.on_stop() if request.on_stop else None
            if read is not None:
                marks.t_stop = read
            return marks.t_stop

        if bounded:  # the stop mark, then disable: samples from the bound (its majflt read) on are not counted
            assert tail is not None
            tail.hi_ns = time.monotonic_ns()  # meanwhile (the live reader's last round may be under way)
            tail.hi_ns = max(tail.hi_ns, round(stop_mark(tail.hi_ns / 1e9) * 1e9))
        if rec.poll() is None and not control.command(rec, "disable", ACK_TIMEOUT):
            result.errors.append("perf did not acknowledge 'disable': stopped it with a signal")
        if not bounded:
            stop_mark(time.monotonic())
        if tail is not None:
            tail.stop()
        rec.stop(grace=STOP_GRACE)
        if rec.killed_with in ("SIGTERM", "SIGKILL"):
            result.errors.append(
                f"perf record had to be stopped with {rec.killed_with}: output may be partial"
            )


def run(
    settings: TracerSettings,
    request: TraceRequest,
    result: TraceResult,
    event_args: list[str],
    script_fields: str | None,
    system_wide: bool = False,
) -> TraceResult:
    """Record event_args for the window, then read perf.data natively (script_fields None) or parse
    `perf script -F script_fields` into result. `system_wide`: record -a even for request.pids and
    keep only their samples while reading (native reader only)."""
    start_timeout = settings.tracing.perf_start_timeout_seconds  # perf reads /proc for every task first
    perf = find_perf(settings.tracing.perf_path)
    if perf is None:
        result.errors.append(f"perf binary not found: {settings.tracing.perf_path!r}")
        return result
    aimed = _target(settings, request, result, system_wide, script_fields)
    if aimed is None:
        return result
    target, keep = aimed
    marks = WindowMarks()
    plan = plan_ring(settings)
    result.ring_pages_wanted = plan.wanted
    if plan.memlock_bytes is not None:
        result.memlock_raised_bytes = plan.memlock_bytes
        result.notes.append(plan.note)
    tmp = leftovers.make_workdir("pfi-perf-")
    fds: list[int] = []
    try:
        ctl, ack, data = f"{tmp}/ctl", f"{tmp}/ack", f"{tmp}/perf.data"
        os.mkfifo(ctl, 0o600)
        os.mkfifo(ack, 0o600)
        # O_RDWR: neither open blocks, and perf finds a reader on its ack fifo.
        ack_fd = os.open(ack, os.O_RDWR | os.O_NONBLOCK)
        fds.append(ack_fd)
        ctl_fd = os.open(ctl, os.O_RDWR | os.O_NONBLOCK)
        fds.append(ctl_fd)
        control = _Control(ctl_fd, ack_fd)

        def argv(m: int) -> list[str]:
            return [
                perf, "record", *event_args,
                "-D", "-1", f"--control=fifo:{ctl},{ack}",
                "-m", str(m),
                "--max-size", f"{max(1, request.max_output_bytes // 1024)}K",
                "-B", "-N",  # no build-id pass at the end: it reads every DSO and is slow
                "--no-bpf-event",  # no BPF program records: saves ~1 s of startup, not needed
                "-o", data, *target,
            ]  # fmt: skip

        begun = _start(argv, plan, tmp, control, start_timeout, result)
        if begun is None:
            return result
        rec, pages = begun
        result.ring_pages = pages
        if pages < plan.wanted:
            result.notes.append(
                plan.note if pages == plan.pages else
                f"perf ring buffer shrunk from {plan.wanted} to {pages} pages per CPU to fit the lockable memory"
            )
        tail = None
        if script_fields is None:
            tail = _Tail(data, FaultCounts(max_pages=request.max_pages), keep,
                         lambda: control.command(rec, "ping", TAIL_PING_TIMEOUT), request.cancel)
        _hold(rec, control, request, result, data, tail, marks)
        result.duration_seconds = marks.t_stop - marks.t_start
        result.output_bytes = _size(data)
        if request.cancel.is_set():
            result.errors.append("cancelled: the window was cut short")
        if script_fields is None:
            _read_native(data, request, result, keep, tail)
        else:
            _script(perf, data, script_fields, request, result)
        if pages < plan.wanted:
            result.notes.append(
                f"with the smaller ring buffer the kernel lost {result.lost:,} samples" if result.lost
                else "no samples were lost with the smaller ring buffer"
            )
        return result
    finally:
        if marks.started and not marks.stopped and request.on_stop:
            request.on_stop()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


TAIL_EVERY = 0.5  # s: during the window perf is pinged to write out its ring buffers, and perf.data read
TAIL_PING_TIMEOUT = 1.0  # a perf that does not ack "ping" (older than 5.11) is not pinged again
TAIL_NICE = 10  # the live reader thread runs at perf's nice: below the workloads it watches (the final read does not)


def _nice_this_thread(nice: int) -> None:
    """Lower the calling thread's priority to `nice` (Linux: a thread is a task with its own nice value);
    never raises it, and a failure leaves it as it was."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)


class _Tail:
    """perf.data read while perf writes it (perf-major), so that little is left when the window ends.

    perf drains its ring buffers only when woken: by the kernel at half a buffer (4 MiB per CPU here,
    ~75,000 faults), or by a control command. So every TAIL_EVERY seconds this thread sends "ping"
    (perf acks it and writes out what the rings hold) and counts the complete records written so far;
    a record cut short at the end of the file waits for the next round. After the window, `finish`
    reads only the rest: measured, 553,000 events of a 30 s window took 0.6 s to read afterwards, the
    last half second of them about 10 ms."""

    def __init__(self, data: str, counts: FaultCounts, keep: set[int] | None, ping: Callable[[], bool],
                 cancel: threading.Event) -> None:
        self.data, self.counts, self.keep, self._ping, self.cancel = data, counts, keep, ping, cancel
        self.info: PerfData | None = None
        self.off = 0  # the first record not read yet
        self.error: str | None = None
        self.rounds = 0
        self.cut = False  # a cancelled run stopped reading after CANCEL_PARSE_SECONDS
        # The window's bounds on the samples' clock (perf --clockid monotonic: time.monotonic_ns()), set at
        # its start and stop marks: samples before lo_ns or from hi_ns on are not counted (`outside`), so the
        # counts cover the interval the majflt marks do, however late perf acts on enable and disable (on
        # zram under two busy loops: 2.5% of the faults between perf's disable and a late stop mark). Set
        # only for a recording with sample times on that clock (`bounded`: nothing is read live before lo_ns).
        self.bounded = False
        self.lo_ns: int | None = None
        self.hi_ns: int | None = None
        self.outside = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perf-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """No more pings or rounds after the one under way (the window is ending)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop reading; returns once the thread has."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        _nice_this_thread(TAIL_NICE)
        pinging = True
        while not self._stop.wait(TAIL_EVERY):
            if pinging and not self._ping():
                pinging = False  # this perf does not answer pings: the kernel's wakeups still write
            try:
                self.read()
            except (OSError, ValueError) as exc:  # finish() reads it all again and says what is wrong
                self.error = f"perf.data unreadable while recording: {exc}"
                return

    def read(self, final: PerfData | None = None) -> None:
        """Count the complete records after `off`; with `final` (the header perf wrote at exit), up to
        the end of its data section."""
        size = _size(self.data)
        if final is None and (size <= self.off or (self.bounded and self.lo_ns is None)):
            return
        with open(self.data, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = cast(bytes, mapped)
            if self.info is None:
                self.info = read_header(buf)
                self.off = self.info.data_offset
            info = self.info
            end = len(buf) if final is None else min(len(buf), final.data_offset + final.data_size)
            info.data_offset, info.data_size = self.off, max(0, end - self.off)
            keep, add = self.keep, self.counts.add_batch
            lo, hi = self.lo_ns, self.hi_ns
            t0 = time.monotonic()
            # Columns of up to MAX_BATCH samples, counted in bulk (no Python call per sample).
            with contextlib.closing(iter_sample_batches(buf, info)) as batches:  # its views released at once
                for batch in batches:
                    pids, addrs, times = batch.pids, batch.addrs, batch.times
                    if lo is not None and times and None not in times:
                        inside = _inside(cast(Sequence[int], times), lo, hi)
                        if inside is not None:
                            self.outside += len(inside) - sum(inside)
                            pids, addrs, times = (list(compress(pids, inside)), list(compress(addrs, inside)),
                                                  list(compress(times, inside)))
                    if keep is None:
                        add(pids, addrs, times)
                    else:
                        mine = list(map(keep.__contains__, pids))
                        add(list(compress(pids, mine)), list(compress(addrs, mine)),
                            None if times is None else list(compress(times, mine)))
                    if final is None and self._stop.is_set():
                        break  # the window ended: finish() reads the rest
                    if final is not None and self.cancel.is_set() and time.monotonic() - t0 > CANCEL_PARSE_SECONDS:
                        self.cut = True
                        break
            self.off = info.read_to
        self.rounds += 1

    def finish(self) -> PerfData | None:
        """After perf exited: read the rest of the data section; the reader's state (comms, lost)."""
        with open(self.data, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            final = read_header(cast(bytes, mapped))
        self.read(final)
        return self.info


def _inside(times: Sequence[int], lo: int, hi: int | None) -> list[bool] | None:
    """Which samples fall in [lo, hi) (hi None: no upper bound yet); None when all do (the common batch:
    one min and max, no per-sample work)."""
    top = hi if hi is not None else max(times) + 1
    if min(times) >= lo and max(times) < top:
        return None
    return [lo <= t < top for t in times]


def _markers(request: TraceRequest) -> None:
    if request.on_start:
        request.on_start()
    if request.on_stop:
        request.on_stop()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _fill(result: TraceResult, counts: FaultCounts, t0: float) -> None:
    """Hand the aggregated counts over to the result (both readers end here)."""
    counts.settle()
    result.faults = counts.faults
    result.totals = counts.totals
    result.comms = counts.comms
    result.events = counts.events
    result.dropped = counts.dropped
    result.lost = counts.lost
    result.new_pages = counts.new_pages
    if counts.lost:
        result.errors.append(f"the kernel lost {counts.lost} samples (ring buffer full)")
    result.parse_seconds = time.monotonic() - t0


def _read_native(data: str, request: TraceRequest, result: TraceResult, keep: set[int] | None = None,
                 tail: _Tail | None = None) -> None:
    """Read perf.data ourselves (app.parsers.perfdata): no `perf script`, whose perf 6.1 aborts the whole
    run on one sample it cannot resolve on newer kernels; a bad record is skipped and counted.
    `keep`: only these pids' samples count (a system-wide recording for some processes). `tail`: what
    was read while perf recorded; only the rest is read here."""
    if _size(data) == 0:
        result.errors.append("perf wrote no data")
        return
    if tail is None:
        tail = _Tail(data, FaultCounts(max_pages=request.max_pages), keep, lambda: False, request.cancel)
    counts = tail.counts
    t0 = time.monotonic()
    info = None
    try:
        info = tail.finish()
    except (OSError, ValueError) as exc:
        result.errors.append(f"perf.data unreadable: {exc}")
        info = tail.info
    if tail.cut:
        result.truncated = True
        result.errors.append("cancelled while reading perf.data: parsed only part of it")
    if info is not None:
        counts.comms.update({pid: comm for pid, comm in info.comms.items() if pid in counts.totals})
        if info.lost:
            counts.lost += info.lost
            counts.events += info.lost
            counts.dropped += info.lost
        if info.malformed:
            counts.dropped += info.malformed
            result.errors.append(f"{info.malformed} malformed sample records in perf.data were skipped")
    _fill(result, counts, t0)
    if tail.rounds > 1:
        result.notes.append(f"perf.data read while recording ({tail.rounds - 1} rounds); "
                            f"{result.parse_seconds:.2f} s to read the rest after the window")


def _script(perf: str, data: str, fields: str, request: TraceRequest, result: TraceResult) -> None:
    """`perf script` the data file into result, streaming, bounded in output and time."""
    if _size(data) == 0:
        result.errors.append("perf wrote no data")
        return
    counts = FaultCounts(max_pages=request.max_pages)
    t0 = time.monotonic()
    argv = [perf, "script", "-i", data, "-F", fields, "--show-lost-events"]
    limit = max(60.0, 2 * request.seconds)
    with SupervisedProcess(
        argv,
        max_output_bytes=request.max_output_bytes,
        on_line=lambda b: counts.feed(b.decode("utf-8", "replace")),
    ) as script:
        deadline = t0 + limit
        while script.wait(0.2) is None:
            if request.cancel.is_set():  # cancelled (or overran): a little longer for what is there
                deadline = min(deadline, time.monotonic() + CANCEL_PARSE_SECONDS)
            if time.monotonic() >= deadline:
                result.truncated = True
                why = "cancelled" if request.cancel.is_set() else f"took over {limit:.0f}s"
                result.errors.append(f"perf script {why}: parsed only what it printed so far")
                break
        script.stop(grace=2)
        script.wait_stdout_closed(5)
        if script.truncated:
            result.truncated = True
            result.errors.append(
                f"perf script output over {request.max_output_bytes} bytes: the rest was not parsed"
            )
        if script.callback_error is not None:
            result.errors.append(f"perf script parse error: {script.callback_error!r}")
        if script.proc is not None and script.proc.returncode not in (0, None) and counts.events == 0:
            result.errors.append(f"perf script failed: {first_error_line(script.stderr_text())}")
    _fill(result, counts, t0)

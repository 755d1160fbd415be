"""What the two perf backends share: `perf record` with an exactly aligned window, then reading its output
(perf-major: perf.data read natively, app.parsers.perfdata; perf-tracepoint: `perf script`).

The window: perf starts with its counters disabled (`-D -1`) and a control fifo
(`--control=fifo:ctl,ack`, perf >= 5.10). We send `enable`, wait for perf's `ack`, call on_start;
at the end send `disable`, wait for the ack, call on_stop, then SIGINT so perf writes its file.
So the events counted are exactly those between the two markers, where the engine reads majflt.

Bounds: `--max-size` (perf stops itself at the output bound), the window deadline (perf is stopped
SIGINT -> SIGTERM -> SIGKILL; what was written is still parsed), CPU (nice 10), the ring buffer
(`-m`, sized by CPU count; samples it loses are PERF_RECORD_LOST records, counted as dropped), and a
deadline on `perf script` too.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import shutil
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.parsers.perf import FaultCounts
from app.parsers.perfdata import iter_samples, read_header
from app.tracers._proc import Managed, first_error_line, hold_window, run_quick
from app.tracers.base import TraceRequest, TraceResult

STARTUP_TIMEOUT = 15.0  # perf reading /proc for every task of a big node takes a while
ACK_TIMEOUT = 5.0
STOP_GRACE = 10.0  # SIGINT -> perf writes its header and exits
CANCEL_PARSE_SECONDS = 5.0  # after a cancel, parse at most this much longer


def resolve_binary(path: str) -> str | None:
    return shutil.which(path)


def lockdown() -> str | None:
    """The kernel lockdown mode when it is on ("integrity", "confidentiality"), else None."""
    try:
        text = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return None
    mode = text[text.find("[") + 1 : text.find("]")] if "[" in text else ""
    return None if mode in ("", "none") else mode


def paranoid_problem() -> str | None:
    """Why perf may not trace the whole node as this user, or None."""
    if os.geteuid() == 0:
        return None
    try:
        level = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None
    if level > 0:
        return f"perf_event_paranoid={level} and not root (needs root, CAP_PERFMON or paranoid <= 0)"
    return None


def mmap_pages() -> int:
    """Ring buffer pages per CPU: 8 MiB each, at most 128 MiB in all (a power of two)."""
    ncpu = os.cpu_count() or 1
    pages = 2048
    while pages > 64 and pages * 4096 * ncpu > 128 * 1024 * 1024:
        pages //= 2
    return pages


def probe_record(perf: str, event_args: list[str]) -> tuple[bool, str]:
    """Record `true` with the event: proves the binary runs and the event opens here."""
    with tempfile.TemporaryDirectory(prefix="pfi-perf-probe-") as tmp:
        rc, _, err = run_quick(
            [
                perf,
                "record",
                *event_args,
                "-B",
                "-N",
                "--no-bpf-event",
                "-q",
                "-o",
                f"{tmp}/probe.data",
                "--",
                "true",
            ]
        )
    if rc == 0:
        return True, ""
    line = first_error_line(err) or f"exit status {rc}"
    mode = lockdown()
    return False, f"perf record failed: {line}" + (f" (kernel lockdown: {mode})" if mode else "")


def available(settings: Settings, event_args: list[str]) -> tuple[bool, str]:
    perf = resolve_binary(settings.perf_path)
    if perf is None:
        return False, f"perf binary not found: {settings.perf_path!r} (settings.perf_path / PFI_PERF_PATH)"
    if problem := paranoid_problem():
        return False, problem
    ok, why = probe_record(perf, event_args)
    if not ok:
        return False, why
    return True, f"{perf} records {' '.join(event_args)}"


def _command(rec: Managed, ctl_fd: int, ack_fd: int, cmd: str, timeout: float) -> bool:
    """Send a control command to perf and wait for its ack (perf writes "ack\\n", sometimes with a
    NUL before it)."""
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


def _live_pids(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def run(
    settings: Settings,
    request: TraceRequest,
    result: TraceResult,
    event_args: list[str],
    script_fields: str | None,
) -> TraceResult:
    """Record event_args for the window, then parse `perf script -F script_fields` into result."""
    perf = resolve_binary(settings.perf_path)
    if perf is None:
        result.errors.append(f"perf binary not found: {settings.perf_path!r}")
        return result
    target: list[str] = ["-a"]
    if request.pids is not None:
        live = _live_pids(request.pids)
        if not live:
            result.errors.append(f"none of the pids {request.pids} exist any more")
            _markers(request)
            return result
        target = ["-p", ",".join(map(str, live))]

    started = stopped = False
    t_start = t_stop = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="pfi-perf-")
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
        argv = [
            perf, "record", *event_args,
            "-D", "-1", f"--control=fifo:{ctl},{ack}",
            "-m", str(mmap_pages()),
            "--max-size", f"{max(1, request.max_output_bytes // 1024)}K",
            "-B", "-N",  # no build-id pass at the end: it reads every DSO and is slow
            "--no-bpf-event",  # no BPF program records: saves ~1 s of startup, not needed
            "-o", data, *target,
        ]  # fmt: skip
        with Managed(argv, max_output_bytes=1024 * 1024) as rec:
            if not _command(rec, ctl_fd, ack_fd, "enable", STARTUP_TIMEOUT):
                why = first_error_line(rec.stderr_text()) if rec.poll() is not None else ""
                rec.stop(grace=2)
                why = why or first_error_line(rec.stderr_text()) or f"no ack within {STARTUP_TIMEOUT:.0f}s"
                result.errors.append(f"perf record did not start: {why}")
                return result
            started = True
            t_start = hold_window(rec, request)
            if rec.poll() is not None:  # perf stopped itself: --max-size, or it failed
                err = rec.stderr_text()
                if "size limit" in err or _size(data) >= request.max_output_bytes:
                    result.truncated = True
                    result.errors.append(
                        f"perf output reached {request.max_output_bytes} bytes: the window was cut short"
                    )
                else:
                    result.errors.append(f"perf record exited early: {first_error_line(err) or rec.poll()}")
            if rec.poll() is None and not _command(rec, ctl_fd, ack_fd, "disable", ACK_TIMEOUT):
                result.errors.append("perf did not acknowledge 'disable': stopped it with a signal")
            t_stop = time.monotonic()
            stopped = True
            if request.on_stop:
                request.on_stop()
            rec.stop(grace=STOP_GRACE)
            if rec.killed_with in ("SIGTERM", "SIGKILL"):
                result.errors.append(
                    f"perf record had to be stopped with {rec.killed_with}: output may be partial"
                )
        result.duration_seconds = t_stop - t_start
        result.output_bytes = _size(data)
        if request.cancel.is_set():
            result.errors.append("cancelled: the window was cut short")
        if script_fields is None:
            _read_native(data, request, result)
        else:
            _script(perf, data, script_fields, request, result)
        return result
    finally:
        if started and not stopped and request.on_stop:
            request.on_stop()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


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
    result.faults = counts.faults
    result.totals = counts.totals
    result.comms = counts.comms
    result.events = counts.events
    result.dropped = counts.dropped
    if counts.lost:
        result.errors.append(f"the kernel lost {counts.lost} samples (ring buffer full)")
    result.parse_seconds = time.monotonic() - t0


def _read_native(data: str, request: TraceRequest, result: TraceResult) -> None:
    """Read perf.data ourselves (app.parsers.perfdata): no `perf script`, whose perf 6.1 aborts the whole
    run on one sample it cannot resolve on newer kernels; a bad record is skipped and counted."""
    if _size(data) == 0:
        result.errors.append("perf wrote no data")
        return
    counts = FaultCounts(max_pages=request.max_pages)
    t0 = time.monotonic()
    info = None
    try:
        with open(data, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            info = read_header(buf)
            for n, (pid, _tid, addr) in enumerate(iter_samples(buf, info)):
                counts.add_sample(pid, "", addr)
                if n & 0xFFFF == 0 and request.cancel.is_set() and time.monotonic() - t0 > CANCEL_PARSE_SECONDS:
                    result.truncated = True
                    result.errors.append("cancelled while reading perf.data: parsed only part of it")
                    break
    except (OSError, ValueError) as exc:
        result.errors.append(f"perf.data unreadable: {exc}")
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


def _script(perf: str, data: str, fields: str, request: TraceRequest, result: TraceResult) -> None:
    """`perf script` the data file into result, streaming, bounded in output and time."""
    if _size(data) == 0:
        result.errors.append("perf wrote no data")
        return
    counts = FaultCounts(max_pages=request.max_pages)
    t0 = time.monotonic()
    argv = [perf, "script", "-i", data, "-F", fields, "--show-lost-events"]
    limit = max(60.0, 2 * request.seconds)
    with Managed(
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

"""Rows 1-3 on real workloads: the faulting process's rate untraced and while each method traces it,
events recorded per true major fault, raw bytes and the time to turn them into counts.

Every method is bracketed the same way: majflt of the workload is read at the instant tracing really
starts and really stops, so `events / majflt delta` compares the same interval.
  ours             Tracer.run(TraceRequest(pids=[pid], on_start=..., on_stop=...))
  article perf     `perf record -e exceptions:page_fault_user -p PID` as printed, plus -o FILE and
                   `-D -1 --control fifo:` so that enable/disable are acknowledged (they do not change
                   what is recorded), then `perf script` as printed
  article bpftrace one printf per fault; the article's kprobe script needs kprobes, which are off
                   here, so the same one-line-per-fault output comes from `software:major-faults:1`
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from app.tracers.base import TraceRequest
from app.tracers.registry import make_tracer

from .common import kill_group, log


@dataclass
class Run:
    method: str
    seconds: float = 0.0  # the traced (or untraced) interval
    majflt: int = 0  # the workload's true major faults over it
    minflt: int = 0  # and its minor faults
    events: int | None = None  # events the method recorded for the workload's pid
    dropped: int | None = None
    raw_bytes: int | None = None  # what the tracer wrote
    post_seconds: float | None = None  # from the end of the interval to counts in hand
    parse_seconds: float | None = None  # the parsing part of it
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.majflt / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_fault(self) -> float | None:
        if self.events is None or self.majflt <= 0:
            return None
        return self.events / self.majflt


def _faults(pid: int) -> tuple[int, int]:
    """(majflt, minflt) of a process: fields 12 and 10 of /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2 :].split()
    return int(f[9]), int(f[7])


def _set(run: Run, t0: float, f0: tuple[int, int], t1: float, f1: tuple[int, int]) -> None:
    run.seconds, run.majflt, run.minflt = t1 - t0, f1[0] - f0[0], f1[1] - f0[1]


def untraced(pid: int, seconds: float) -> Run:
    t0, f0 = time.monotonic(), _faults(pid)
    time.sleep(seconds)
    t1, f1 = time.monotonic(), _faults(pid)
    run = Run("untraced")
    _set(run, t0, f0, t1, f1)
    return run


# --- our backends -----------------------------------------------------------------------------------


def ours(backend: str, pid: int, seconds: float) -> Run:
    run = Run(backend)
    tracer = make_tracer(backend, Settings())
    ok, why = tracer.available()
    if not ok:
        run.error = f"unavailable: {why}"
        return run
    marks: dict[str, tuple[float, tuple[int, int]]] = {}

    def mark(which: str) -> None:
        marks[which] = (time.monotonic(), _faults(pid))

    req = TraceRequest(seconds=seconds, pids=[pid], on_start=lambda: mark("start"), on_stop=lambda: mark("stop"))
    result = tracer.run(req)
    done = time.monotonic()
    if "start" not in marks or "stop" not in marks:
        run.error = f"tracer never marked start/stop; errors: {result.errors[:2]}"
        return run
    (t0, f0), (t1, f1) = marks["start"], marks["stop"]
    _set(run, t0, f0, t1, f1)
    run.events = result.totals.get(pid, sum(result.faults.get(pid, {}).values()))
    run.dropped = result.dropped
    run.raw_bytes = result.output_bytes
    run.post_seconds = done - t1
    run.parse_seconds = result.parse_seconds
    if result.errors:
        run.notes.append("; ".join(result.errors)[:200])
    if result.truncated:
        run.notes.append("output truncated")
    return run


# --- the article's perf method ------------------------------------------------------------------------


def _open_fifo_writer(path: str, deadline: float) -> int:
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _ctl(ctl_fd: int, ack_fd: int, cmd: str, timeout: float = 10.0) -> None:
    os.write(ctl_fd, cmd.encode() + b"\n")
    r, _, _ = select.select([ack_fd], [], [], timeout)
    if not r:
        raise TimeoutError(f"perf did not ack {cmd!r}")
    os.read(ack_fd, 64)


def article_perf(pid: int, seconds: float, workdir: Path) -> Run:
    run = Run("article perf")
    d = Path(tempfile.mkdtemp(prefix="perf-", dir=workdir))
    ctl, ack, data = str(d / "ctl"), str(d / "ack"), str(d / "perf.data")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    argv = ["perf", "record", "-e", "exceptions:page_fault_user", "-p", str(pid),
            "-o", data, "-D", "-1", "--control", f"fifo:{ctl},{ack}"]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ctl_fd = ack_fd = -1
    try:
        ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        ctl_fd = _open_fifo_writer(ctl, time.monotonic() + 15)
        time.sleep(0.2)  # let perf open the per-thread events before enabling them
        _ctl(ctl_fd, ack_fd, "enable")
        t0, f0 = time.monotonic(), _faults(pid)
        time.sleep(seconds)
        _ctl(ctl_fd, ack_fd, "disable")
        t1, f1 = time.monotonic(), _faults(pid)
        _set(run, t0, f0, t1, f1)
        os.killpg(proc.pid, signal.SIGINT)  # "pressed Ctrl-C"
        _, err = proc.communicate(timeout=60)
        run.raw_bytes = os.path.getsize(data)
        t2 = time.monotonic()
        script = subprocess.run(["perf", "script", "-i", data], capture_output=True, check=False)
        t3 = time.monotonic()
        lines = script.stdout.count(b"exceptions:page_fault_user")
        t4 = time.monotonic()
        run.events = lines
        lost = 0
        for line in err.decode(errors="replace").splitlines():
            if "lost" in line.lower():
                run.notes.append(line.strip()[:120])
                with contextlib.suppress(ValueError, IndexError):
                    lost += int(line.split("Lost")[1].split()[0])
        run.dropped = lost
        run.post_seconds = t4 - t1
        run.parse_seconds = t4 - t2
        run.notes.append(f"perf script {t3 - t2:.2f}s, {len(script.stdout):,} text bytes")
    except Exception as e:  # noqa: BLE001 - reported in the row
        run.error = f"{type(e).__name__}: {e}"
    finally:
        for fd in (ctl_fd, ack_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        kill_group(proc)
        for p in d.iterdir():
            p.unlink(missing_ok=True)
        d.rmdir()
    return run


# --- the article's bpftrace method: one printed line per fault -------------------------------------------


def article_bpftrace(pid: int, seconds: float) -> Run:
    run = Run("article bpftrace")
    prog = (
        'BEGIN { printf("PFI-START\\n"); }\n'
        f"software:major-faults:1 /pid == {pid}/ {{\n"
        '  printf("major page fault at 0x%lx\\n", ((struct bpf_perf_event_data *)ctx)->addr);\n'
        "}\n"
        f'interval:ms:{int(seconds * 1000)} {{ printf("PFI-STOP\\n"); exit(); }}\n'
    )
    proc = subprocess.Popen(["bpftrace", "-e", prog], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err_box: list[bytes] = []
    t_err = threading.Thread(target=lambda: err_box.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    t_err.start()
    try:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        buf = b""
        lines = 0
        nbytes = 0
        start = stop = None
        deadline = time.monotonic() + seconds + 60
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 1.0)
            if not r:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            nbytes += len(chunk)
            if start is None and b"PFI-START" in chunk:
                start = (time.monotonic(), _faults(pid))
                buf = chunk.split(b"PFI-START\n", 1)[1]
            elif start is not None:
                buf += chunk
            if start is not None and stop is None:
                if b"PFI-STOP" in buf:
                    stop = (time.monotonic(), _faults(pid))
                    lines += buf.split(b"PFI-STOP", 1)[0].count(b"major page fault at")
                    buf = b""
                else:
                    cut = buf.rfind(b"\n") + 1
                    lines += buf[:cut].count(b"major page fault at")
                    buf = buf[cut:]
        proc.wait(timeout=30)
        t_end = time.monotonic()
        t_err.join(timeout=5)
        if start is None or stop is None:
            run.error = f"no start/stop markers; stderr: {b''.join(err_box).decode(errors='replace')[:200]}"
            return run
        _set(run, start[0], start[1], stop[0], stop[1])
        run.events = lines
        run.raw_bytes = nbytes
        run.post_seconds = t_end - stop[0]
        run.parse_seconds = 0.0  # counted while it ran
        lost = 0
        for line in b"".join(err_box).decode(errors="replace").splitlines():
            if "Lost" in line:
                with contextlib.suppress(ValueError, IndexError):
                    lost += int(line.split("Lost")[1].split()[0])
        run.dropped = lost
    except Exception as e:  # noqa: BLE001
        run.error = f"{type(e).__name__}: {e}"
    finally:
        kill_group(proc)
        for s in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                s.close()  # type: ignore[union-attr]
    return run


METHODS = ["perf-major", "bpftrace-major", "perf-tracepoint", "article perf", "article bpftrace"]
EXACT = {"perf-major", "bpftrace-major"}


def trace(method: str, pid: int, seconds: float, workdir: Path) -> Run:
    log(f"    tracing pid {pid} with {method} for {seconds:.0f}s")
    try:
        if method == "article perf":
            return article_perf(pid, seconds, workdir)
        if method == "article bpftrace":
            return article_bpftrace(pid, seconds)
        return ours(method, pid, seconds)
    except Exception as e:  # noqa: BLE001 - one broken backend must not stop the run
        return Run(method, error=f"{type(e).__name__}: {e}")


# --- a third workload: major faults among many minor ones ------------------------------------------------


@contextlib.contextmanager
def mixed_workload(path: Path, size_mb: int = 64, drop_every: int = 20):
    """bench/mixed_faults.c on a file of size_mb: 1 page in drop_every re-read from disk (major), the
    others from the page cache (minor), as in the article's file workload. Killed and removed after."""
    from .common import build, group

    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size_mb):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        with group(["pfi-workload-mixed", str(path), str(drop_every)], executable=str(build("mixed_faults")),
                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
            fd = proc.stdout.fileno()  # type: ignore[union-attr]
            r, _, _ = select.select([fd], [], [], 60)
            line = os.read(fd, 200) if r else b""
            if not line.startswith(b"ready"):
                raise RuntimeError(f"mixed workload said {line!r}")
            yield proc
    finally:
        path.unlink(missing_ok=True)

"""Row 1 "cost": where a tracer's overhead on the traced task comes from, in CPU time, which a loaded
machine disturbs far less than a fault rate (a major fault waits for the disk, and the disk is shared).

Two CPU-bound stand-ins, each measured untraced and traced in turns (untraced, A, untraced, B, ...;
every traced run against the mean of the untraced runs around it; medians over the rounds):
  context switch  bench/pingpong.c: the traced task blocks and wakes ~100,000 times a second, as a
                  faulting task blocks once per major fault. CPU ns per voluntary context switch.
  fault event     bench/minor_faults.c: ~400,000 minor faults a second. The backends trace the
                  `minor-faults` event the same way they trace `major-faults` (the same software event
                  code in the kernel), so the extra CPU ns per fault is their cost per event.
For each: perf-major as it records now (per-CPU events, `-a`), perf with per-task events (`-p PID`, as
perf-major recorded before), and bpftrace-major (its program, the event swapped). The tracer process's
own CPU per event is measured too (getrusage of the child).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.tracers import _bpftrace as bt_backend
from app.tracers import _perf as perf_backend
from app.tracers.perf_major import EVENT_ARGS

from .common import build, group, log

PERF_EVENT = [a if a != "major-faults" else "minor-faults" for a in EVENT_ARGS]


def _counters(pid: int, what: str) -> tuple[float, int, int]:
    """(time, events, CPU ns) of the task: voluntary switches or minor faults, and its schedstat runtime."""
    ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    if what == "switch":
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return time.monotonic(), int(line.split()[1]), ns
        raise RuntimeError("no voluntary_ctxt_switches")
    text = Path(f"/proc/{pid}/stat").read_text()
    return time.monotonic(), int(text[text.rindex(")") + 2 :].split()[7]), ns


def _measure(pid: int, what: str, seconds: float) -> dict:
    a = _counters(pid, what)
    time.sleep(seconds)
    b = _counters(pid, what)
    n = max(1, b[1] - a[1])
    return {"events": b[1] - a[1], "ns": (b[2] - a[2]) / n, "rate": (b[1] - a[1]) / (b[0] - a[0])}


def _perf(pid: int, what: str, seconds: float, per_task: bool, workdir: Path) -> dict:
    """perf record of the event as perf-major runs it (control fifo, enable/disable acknowledged)."""
    d = Path(tempfile.mkdtemp(prefix="cost-", dir=workdir))
    ctl, ack, data = str(d / "ctl"), str(d / "ack"), str(d / "perf.data")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    ack_fd = os.open(ack, os.O_RDWR | os.O_NONBLOCK)
    ctl_fd = os.open(ctl, os.O_RDWR | os.O_NONBLOCK)
    plan = perf_backend.plan_ring(Settings())
    target = ["-p", str(pid)] if per_task else ["-a", *perf_backend.SYSTEM_WIDE_ARGS]
    argv = ["perf", "record", *PERF_EVENT, "-D", "-1", f"--control=fifo:{ctl},{ack}", "-m", str(plan.pages),
            "--max-size", "256M", "-B", "-N", "--no-bpf-event", "-q", "-o", data, *target]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        os.setpriority(os.PRIO_PROCESS, proc.pid, 10)  # as the backend runs it
        if not _ctl(ctl_fd, ack_fd, "enable"):
            raise RuntimeError(f"perf did not start: {proc.stderr.read().decode()[:200] if proc.poll() is not None else 'no ack'}")  # type: ignore[union-attr]
        out = _measure(pid, what, seconds)
        _ctl(ctl_fd, ack_fd, "disable")
        return _reap(proc, out)
    finally:
        _kill(proc)
        for fd in (ack_fd, ctl_fd):
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def _reap(proc: subprocess.Popen, out: dict, drain: bool = False) -> dict:  # type: ignore[type-arg]
    """SIGINT the tracer, wait for it, add its CPU per event and its peak RSS to `out`."""
    proc.send_signal(signal.SIGINT)
    if drain:
        proc.stdout.read()  # type: ignore[union-attr]
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    out["tracer_ns"] = (ru.ru_utime + ru.ru_stime) * 1e9 / max(1, out["events"])
    out["tracer_rss_mib"] = ru.ru_maxrss / 1024
    return out


def _kill(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.returncode is None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _ctl(ctl_fd: int, ack_fd: int, cmd: str) -> bool:
    os.write(ctl_fd, f"{cmd}\n".encode())
    deadline, buf = time.monotonic() + 15, b""
    while time.monotonic() < deadline and b"ack" not in buf:
        r, _, _ = select.select([ack_fd], [], [], 0.1)
        if r:
            buf += os.read(ack_fd, 64)
    return b"ack" in buf


def _bpftrace(pid: int, what: str, seconds: float, workdir: Path) -> dict:
    """bpftrace-major's program (its pid predicate, its map sizes), the event swapped to minor-faults."""
    d = Path(tempfile.mkdtemp(prefix="cost-bt-", dir=workdir))
    prog = d / "major_faults.bt"
    prog.write_text(bt_backend.program_text("major_faults.bt", [pid], exit_after=seconds + 30)
                    .replace("software:major-faults:1", "software:minor-faults:1"))
    keys, _ = bt_backend.plan_keys(Settings(), Settings().tracing.tracer_max_pages)
    proc = subprocess.Popen(["bpftrace", "-f", "json", str(prog)], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=bt_backend.bpftrace_env(keys))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"bpftrace did not start: {proc.stderr.read().decode()[:200]}")  # type: ignore[union-attr]
            if b"pfi-ready" in line:
                break
        out = _measure(pid, what, seconds)
        return _reap(proc, out, drain=True)
    finally:
        _kill(proc)
        for s in (proc.stdout, proc.stderr):
            s.close()  # type: ignore[union-attr]
        shutil.rmtree(d, ignore_errors=True)


METHODS = {
    "perf-major (-a, per-CPU events)": lambda pid, what, s, w: _perf(pid, what, s, False, w),
    "perf, per-task events (-p PID)": lambda pid, what, s, w: _perf(pid, what, s, True, w),
    "bpftrace-major": lambda pid, what, s, w: _bpftrace(pid, what, s, w),
}


def measure(rounds: int, seconds: float, workdir: Path) -> dict:
    """{what: {"untraced_ns": .., method: {"extra_ns": median, "extra_all": [...], "tracer_ns": median,
    "ratio": median of rate ratios}}} for what in ("switch", "fault")."""
    out: dict = {}
    for what, prog in (("switch", "pingpong"), ("fault", "minor_faults")):
        log(f"[1 cost] {what}: bench/{prog}.c, {rounds} rounds of {seconds:.0f} s windows")
        with group([str(build(prog))], stdout=subprocess.PIPE) as proc:
            fd = proc.stdout.fileno()  # type: ignore[union-attr]
            r, _, _ = select.select([fd], [], [], 30)
            if not r or not os.read(fd, 100).startswith(b"ready"):
                raise RuntimeError(f"bench/{prog}.c did not start")
            time.sleep(0.5)
            runs: dict[str, list[dict]] = {m: [] for m in METHODS}
            base = [_measure(proc.pid, what, seconds)]
            for _ in range(rounds):
                for m, fn in METHODS.items():
                    try:
                        r = fn(proc.pid, what, seconds, workdir)
                    except Exception as e:  # noqa: BLE001 - one missing tool must not end the row
                        log(f"    {m}: {e}")
                        r = {"error": str(e)[:160]}
                    base.append(_measure(proc.pid, what, seconds))
                    if "error" not in r:
                        b = (base[-2]["ns"] + base[-1]["ns"]) / 2
                        r["extra_ns"] = r["ns"] - b
                        r["ratio"] = r["rate"] / ((base[-2]["rate"] + base[-1]["rate"]) / 2)
                        log(f"    {m}: {r['extra_ns']:+.0f} ns CPU per {what} (untraced {b:.0f} ns)")
                    runs[m].append(r)
        res: dict = {"untraced_ns": statistics.median(b["ns"] for b in base),
                     "untraced_rate": statistics.median(b["rate"] for b in base)}
        for m, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                res[m] = {"error": rs[0]["error"] if rs else "not run"}
                continue
            res[m] = {"extra_ns": statistics.median(r["extra_ns"] for r in ok),
                      "extra_all": [r["extra_ns"] for r in ok],
                      "tracer_ns": statistics.median(r["tracer_ns"] for r in ok),
                      "tracer_rss_mib": max(r["tracer_rss_mib"] for r in ok),
                      "ratio": statistics.median(r["ratio"] for r in ok)}
        out[what] = res
    return out

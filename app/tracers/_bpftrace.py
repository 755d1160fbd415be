"""What the two bpftrace backends share: run a .bt program from programs/ with `-f json` for the
window, aggregated in the kernel, and parse the maps it prints at SIGINT.

Window: on_start when bpftrace reports its probes attached; on_stop just before SIGINT. Bounds:
BPFTRACE_MAP_KEYS_MAX = request.max_pages (the default 4,096 keys would silently drop the rest; an
exact per-pid total makes drops visible), the deadline (SIGINT so END runs and the maps print, then
SIGTERM/SIGKILL after a grace), stdout size, CPU (nice 10).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.parsers.bpftrace import BpftraceFaults, is_ready
from app.tracers._perf import lockdown
from app.tracers._proc import Managed, first_error_line, hold_window, run_quick
from app.tracers.base import TraceRequest, TraceResult

PROGRAMS = Path(__file__).resolve().parent / "programs"
PID_FILTER = "/* PID_FILTER */"
MAX_PREDICATE_PIDS = 64  # above this, trace all and filter here (a long predicate costs per fault)
STARTUP_TIMEOUT = 30.0  # compiling and loading: ~0.3 s here, seconds on a busy node
EXIT_GRACE = 30.0  # printing a map of 262,144 keys after SIGINT takes a while
BTF = Path("/sys/kernel/btf/vmlinux")
READY_PRINTF = 'printf("pfi-ready\\n");'  # in every program's BEGIN


def program_text(program: str, pids: list[int] | None) -> str:
    """The program with its pid predicate filled in (none: every process)."""
    text = (PROGRAMS / program).read_text()
    if pids:
        text = text.replace(PID_FILTER, "/" + " || ".join(f"pid == {int(p)}" for p in pids) + "/", 1)
    return text


def bpftrace_env(max_pages: int) -> dict[str, str]:
    return {**os.environ, "BPFTRACE_MAP_KEYS_MAX": str(max_pages)}


def resolve(settings: Settings) -> tuple[str | None, str]:
    bt = shutil.which(settings.bpftrace_path)
    if bt is None:
        return (
            None,
            f"bpftrace binary not found: {settings.bpftrace_path!r} (settings.bpftrace_path / PFI_BPFTRACE_PATH)",
        )
    if os.geteuid() != 0:
        return None, "bpftrace needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for its maps)"
    return bt, ""


def test_load(bt: str, program: str) -> tuple[bool, str]:
    """Load the real program into the kernel and exit at once: proves parsing, BTF, the verifier
    and attaching, not just the syntax (bpftrace 0.17's -d dry run does not load anything)."""
    with tempfile.TemporaryDirectory(prefix="pfi-bt-probe-") as tmp:
        path = Path(tmp) / program
        text = program_text(program, None)
        if READY_PRINTF not in text:
            return False, f"{program} has no {READY_PRINTF} in BEGIN"
        path.write_text(text.replace(READY_PRINTF, READY_PRINTF + " exit();", 1))
        rc, _, err = run_quick([bt, "-f", "json", str(path)], timeout=30, env=bpftrace_env(4096))
    if rc == 0:
        return True, ""
    line = first_error_line(err) or f"exit status {rc}"
    mode = lockdown()
    return False, f"bpftrace test load of {program} failed: {line}" + (
        f" (kernel lockdown: {mode})" if mode else ""
    )


def available(settings: Settings, program: str, needs_btf: bool) -> tuple[bool, str]:
    bt, why = resolve(settings)
    if bt is None:
        return False, why
    if needs_btf and not BTF.exists():
        return False, f"no BTF: {BTF} missing (needed for struct bpf_perf_event_data)"
    ok, why = test_load(bt, program)
    if not ok:
        return False, why
    return True, f"{bt} loads {program}"


def run(settings: Settings, request: TraceRequest, result: TraceResult, program: str) -> TraceResult:
    bt, why = resolve(settings)
    if bt is None:
        result.errors.append(why)
        return result
    pid_set: set[int] | None = None
    kernel_pids: list[int] | None = None
    if request.pids is not None:
        pid_set = {p for p in request.pids if Path(f"/proc/{p}").exists()}
        if not pid_set:
            result.errors.append(f"none of the pids {request.pids} exist any more")
            _markers(request)
            return result
        if len(pid_set) <= MAX_PREDICATE_PIDS:
            kernel_pids = sorted(pid_set)

    started = stopped = False
    t_start = t_stop = time.monotonic()
    parsed = BpftraceFaults()
    tmp = tempfile.mkdtemp(prefix="pfi-bt-")
    try:
        path = Path(tmp) / program
        path.write_text(program_text(program, kernel_pids))
        argv = [bt, "-f", "json", str(path)]
        with Managed(
            argv, env=bpftrace_env(request.max_pages), max_output_bytes=request.max_output_bytes
        ) as rec:
            if (
                rec.wait_for_line(
                    lambda b: is_ready(b.decode("utf-8", "replace")), STARTUP_TIMEOUT, request.cancel
                )
                is None
            ):
                cancelled = request.cancel.is_set()
                rec.stop(grace=2)
                if cancelled:
                    result.errors.append("cancelled before bpftrace attached its probes")
                else:
                    why = rec.stderr_head() or f"no probes attached within {STARTUP_TIMEOUT:.0f}s"
                    result.errors.append(f"bpftrace did not start: {why}")
                return result
            started = True
            t_start = hold_window(rec, request)
            if rec.poll() is not None:
                result.errors.append(f"bpftrace exited early: {rec.stderr_head() or rec.poll()}")
            t_stop = time.monotonic()
            stopped = True
            if request.on_stop:
                request.on_stop()
            rec.stop(grace=EXIT_GRACE)  # SIGINT: bpftrace detaches and prints its maps
            if rec.killed_with in ("SIGTERM", "SIGKILL"):
                result.errors.append(
                    f"bpftrace did not exit within {EXIT_GRACE:.0f}s of SIGINT: killed with {rec.killed_with}"
                )
        t0 = time.monotonic()
        for line in rec.lines:
            parsed.feed(line.decode("utf-8", "replace"))
        result.parse_seconds = time.monotonic() - t0
        result.output_bytes = rec.output_bytes
        result.truncated = rec.truncated
        if rec.truncated:
            result.errors.append(
                f"bpftrace output over {request.max_output_bytes} bytes: the rest was not parsed"
            )
        if not parsed.saw_total_map:
            result.errors.append("bpftrace printed no maps: no fault addresses")
        if request.cancel.is_set():
            result.errors.append("cancelled: the window was cut short")
    finally:
        if started and not stopped and request.on_stop:
            request.on_stop()
        shutil.rmtree(tmp, ignore_errors=True)

    if pid_set is not None and kernel_pids is None:  # filter here what the kernel did not
        parsed.faults = {p: v for p, v in parsed.faults.items() if p in pid_set}
        parsed.totals = {p: v for p, v in parsed.totals.items() if p in pid_set}
        parsed.comms = {p: v for p, v in parsed.comms.items() if p in pid_set}
    result.duration_seconds = t_stop - t_start
    result.faults, result.totals, result.comms = parsed.faults, parsed.totals, parsed.comms
    result.events = parsed.events
    result.dropped = parsed.dropped
    if parsed.dropped:
        result.errors.append(
            f"{parsed.dropped} faults counted but their pages not kept (map of {request.max_pages} keys full"
            + (f", {parsed.lost_events} events lost" if parsed.lost_events else "")
            + ")"
        )
    result.errors.extend(parsed.errors)
    return result


def _markers(request: TraceRequest) -> None:
    if request.on_start:
        request.on_start()
    if request.on_stop:
        request.on_stop()

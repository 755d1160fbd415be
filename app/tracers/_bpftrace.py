"""What the two bpftrace backends share: run a .bt program from programs/ with `-f json` for the
window, aggregated in the kernel, and parse the maps it prints at SIGINT.

Window: timed in the kernel. BEGIN prints the time it ran (CLOCK_MONOTONIC ns, once every probe is
attached); the program counts only the faults from OPEN_AFTER later for request.seconds, and this side
calls on_start and on_stop (the engine reads majflt) at those two instants, then sends SIGINT. So the
counts and majflt cover one interval, however late bpftrace acts on SIGINT. Bounds:
BPFTRACE_MAP_KEYS_MAX = request.max_pages (the default 4,096 keys would silently drop the rest; an
exact per-pid total makes drops visible), the deadline (SIGINT so END runs and the maps print, then
SIGTERM/SIGKILL after a grace), stdout size, CPU (nice 10).

Memory (`plan_keys`): the maps are preallocated, about 224 B + 16 B per CPU for each key (measured,
see _kernel), charged to the container's memory cgroup. The key count is cut so the maps take at
most a quarter of what the container (or the node) has left; the report says when it was cut and
when the cut bound was reached. The probe loads the program with the same key count.

Lifetime: every program ends itself (`interval:s:N { exit(); }`, N = window + the exit grace), so a
bpftrace whose owner was killed before it could stop it detaches within that time on its own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from app.parsers.bpftrace import READY, BpftraceFaults, is_ready
from app.tracers import _kernel, leftovers
from app.tracers._supervise import SupervisedProcess, WindowMarks, first_error_line, hold_window, run_quick
from app.tracers.base import TraceRequest, TraceResult, TracerSettings

PROGRAMS = Path(__file__).resolve().parent / "programs"
PID_FILTER = "/* PID_FILTER */"
INTERVAL = "/* INTERVAL */"
OPEN_AFTER = 0.3  # s after BEGIN that counting starts: time for this side to read the ready line first
EXIT_AFTER = "/* EXIT_AFTER */"
MAX_PREDICATE_PIDS = 64  # above this, trace all and filter here (a long predicate costs per fault)
STOP_LAG_SECONDS = 3.0  # longer than this from SIGINT to exit: the counts cover more than the window
EXIT_GRACE = 30.0  # printing a map of 262,144 keys after SIGINT takes a while
READY_PRINTF = 'printf("pfi-ready %llu\\n", nsecs);'  # in every program's BEGIN
BYTES_PER_KEY = 224  # + BYTES_PER_KEY_PER_CPU x CPUs: the maps of major_faults.bt, measured (_kernel)
BYTES_PER_KEY_PER_CPU = 16
MAP_MEMORY_SHARE = 4  # the maps may take 1/4 of the memory left to this container (or node)
MIN_MAP_KEYS = 4096  # bpftrace's own default


def program_text(program: str, pids: list[int] | None, exit_after: float | None = None,
                 interval: tuple[float, float] | None = None) -> str:
    """The program with its pid predicate filled in (none: every process), with exit_after, a probe
    that ends it after that many seconds and, with interval (open, close: seconds after BEGIN), counting
    only in that interval (None: from BEGIN to END)."""
    text = (PROGRAMS / program).read_text()
    if interval is not None:
        lo, hi = (int(x * 1e9) for x in interval)
        text = text.replace(INTERVAL, f"&& $t >= {lo} && $t < {hi}", 1)
    if pids:
        text = text.replace(PID_FILTER, "/" + " || ".join(f"pid == {int(p)}" for p in pids) + "/", 1)
    if exit_after is not None:
        n = max(1, math.ceil(exit_after))
        text = text.replace(EXIT_AFTER, f"interval:s:{n} {{ exit(); }}", 1)
    return text


def bpftrace_env(max_pages: int) -> dict[str, str]:
    return {**os.environ, "BPFTRACE_MAP_KEYS_MAX": str(max_pages)}


def plan_keys(settings: TracerSettings, wanted: int) -> tuple[int, str]:
    """(BPFTRACE_MAP_KEYS_MAX to use, why it is below `wanted` or "")."""
    ncpu = _kernel.online_cpus(settings.node.sysfs_root)
    per_key = BYTES_PER_KEY + BYTES_PER_KEY_PER_CPU * ncpu
    room, where = _kernel.own_memory_headroom(settings.node.proc_root, settings.node.cgroup_root, settings.node.sysfs_root)
    if room is None:
        return wanted, ""
    fit = room // MAP_MEMORY_SHARE // per_key
    if fit >= wanted:
        return wanted, ""
    keys = max(MIN_MAP_KEYS, fit // 1024 * 1024)
    return keys, (
        f"bpftrace maps sized to {keys:,} keys instead of {wanted:,}: at {per_key} B per key ({ncpu} CPUs) they "
        f"may take a quarter of the {room >> 20} MiB left ({where})"
    )


def btf_path(settings: TracerSettings) -> Path:
    return settings.node.sysfs_root / "kernel/btf/vmlinux"


def find_bpftrace(settings: TracerSettings) -> tuple[str | None, str]:
    """The bpftrace binary to run (a PATH lookup of settings.tracing.bpftrace_path) and "", or None and why it
    cannot run (not found, or not root)."""
    bt = shutil.which(settings.tracing.bpftrace_path)
    if bt is None:
        return (
            None,
            f"bpftrace binary not found: {settings.tracing.bpftrace_path!r} (settings.tracing.bpftrace_path / PFI_BPFTRACE_PATH)",
        )
    if os.geteuid() != 0:
        return None, "bpftrace needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN for its maps)"
    return bt, ""


def test_load(settings: TracerSettings, bt: str, program: str) -> tuple[bool, str]:
    """Load the real program, with the map size a run will use, into the kernel and exit at once:
    proves parsing, BTF, the verifier, the maps' memory and attaching, not just the syntax
    (bpftrace 0.17's -d dry run does not load anything). ("", or the map-size note) on success."""
    keys, note = plan_keys(settings, settings.tracing.tracer_max_pages)
    tmp = leftovers.make_workdir("pfi-bt-probe-")
    try:
        path = Path(tmp) / program
        text = program_text(program, None, exit_after=30)
        if READY_PRINTF not in text:
            return False, f"{program} has no {READY_PRINTF} in BEGIN"
        path.write_text(text.replace(READY_PRINTF, READY_PRINTF + " exit();", 1))
        # Loading is most of a start: the same deadline (a TCG guest's test load took over 30 s).
        rc, _, err = run_quick([bt, "-f", "json", str(path)], timeout=settings.tracing.bpftrace_start_timeout_seconds,
                               env=bpftrace_env(keys), workdir=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc == 0:
        return True, note
    line = first_error_line(err) or f"exit status {rc}"
    mode = _kernel.lockdown(settings.node.sysfs_root)
    return False, f"bpftrace test load of {program} ({keys} map keys) failed: {line}" + (
        f" (kernel lockdown: {mode})" if mode else ""
    )


def available(settings: TracerSettings, program: str, needs_btf: bool) -> tuple[bool, str]:
    bt, why = find_bpftrace(settings)
    if bt is None:
        return False, why
    btf = btf_path(settings)
    if needs_btf and not btf.exists():
        return False, f"no BTF: {btf} missing (needed for struct bpf_perf_event_data)"
    ok, why = test_load(settings, bt, program)
    if not ok:
        return False, why
    return True, f"{bt} loads {program}" + (f" ({why})" if why else "")


def _pids(settings: TracerSettings, request: TraceRequest, result: TraceResult) -> tuple[set[int] | None, list[int] | None] | None:
    """(the live pids asked for, those the kernel filters: at most MAX_PREDICATE_PIDS, else None and the
    reader filters); (None, None) for the whole node; None when none is alive (said in result)."""
    if request.pids is None:
        return None, None
    pid_set = {p for p in request.pids if (settings.node.proc_root / str(p)).exists()}
    if not pid_set:
        result.errors.append(f"none of the pids {request.pids} exist any more")
        _markers(request)
        return None
    return pid_set, sorted(pid_set) if len(pid_set) <= MAX_PREDICATE_PIDS else None


def _window(rec: SupervisedProcess, request: TraceRequest, result: TraceResult, start_timeout: float,
            marks: WindowMarks) -> bool:
    """Wait for bpftrace's probes, hold its interval (the window), stop it, and say in result how the counts
    relate to the window; False when it did not start."""
    ready = rec.wait_for_line(lambda b: is_ready(b.decode("utf-8", "replace")), start_timeout, request.cancel)
    if ready is None:
        cancelled = request.cancel.is_set()
        rec.stop(grace=2)
        if cancelled:
            result.errors.append("cancelled before bpftrace attached its probes")
        else:
            why = rec.stderr_head() or f"no probes attached within {start_timeout:.0f}s (PFI_BPFTRACE_START_TIMEOUT_SECONDS)"
            result.errors.append(f"bpftrace did not start: {why}")
        return False
    marks.started = True
    begin = ready_time(ready.decode("utf-8", "replace"))
    if begin is None:
        marks.t_start = hold_window(rec, request)
        marks.t_stop = time.monotonic()
    else:
        marks.t_start, marks.t_stop = begin + OPEN_AFTER, begin + OPEN_AFTER + request.seconds
        late = hold_interval(rec, request, marks.t_start, marks.t_stop)
        if late > LATE_NOTE_SECONDS:
            result.notes.append(f"majflt was read {late * 1000:.0f} ms after bpftrace's interval opened")
    if rec.poll() is not None:
        result.exited_early = True
        result.errors.append(f"bpftrace exited early: {rec.stderr_head() or rec.poll()}")
    # Cut short (cancel, or it exited): the interval ends now; the kernel counted to its close, or END.
    cut = time.monotonic() < marks.t_stop
    marks.t_stop = min(marks.t_stop, time.monotonic())
    marks.stopped = True
    if request.on_stop:
        request.on_stop()
    rec.stop(grace=EXIT_GRACE)  # SIGINT: bpftrace prints its maps, then detaches
    lag = time.monotonic() - marks.t_stop
    if begin is not None and not cut and rec.killed_with == "SIGINT":
        pass  # the kernel stopped counting at the interval's close: a late SIGINT changes nothing
    elif rec.killed_with == "SIGINT" and lag > STOP_LAG_SECONDS:
        # Its probes stay attached until it has printed: the counts run past the window's end.
        result.counts_past_window = True
        result.errors.append(
            f"bpftrace took {lag:.1f}s to stop after the window: its counts include faults after it"
        )
    if rec.killed_with in ("SIGTERM", "SIGKILL"):
        # It kept its probes attached all that time: its counts run past the window's end.
        result.counts_past_window = True
        result.errors.append(
            f"bpftrace did not exit within {EXIT_GRACE:.0f}s of SIGINT: killed with {rec.killed_with};"
            " its counts include faults after the window"
        )
    return True


def _read_output(rec: SupervisedProcess, parsed: BpftraceFaults, request: TraceRequest, result: TraceResult) -> None:
    """Parse what bpftrace printed (its maps) into `parsed`; truncation and missing maps said in result."""
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


def _fill(result: TraceResult, parsed: BpftraceFaults, keys: int, max_pages: int) -> None:
    """The parsed counts into result, with what the map could not keep."""
    result.faults, result.totals, result.comms = parsed.faults, parsed.totals, parsed.comms
    result.events = parsed.events
    result.dropped = parsed.dropped
    if parsed.dropped:
        result.map_full = True
        result.errors.append(
            f"{parsed.dropped} faults counted but their pages not kept (map of {keys} keys full"
            + (f", {parsed.lost_events} events lost" if parsed.lost_events else "")
            + ")"
        )
        if keys < max_pages:
            result.notes.append(f"the memory-sized map bound of {keys:,} keys was reached")
    result.errors.extend(parsed.errors)


def run(settings: TracerSettings, request: TraceRequest, result: TraceResult, program: str) -> TraceResult:
    start_timeout = settings.tracing.bpftrace_start_timeout_seconds  # compiling, loading and attaching
    bt, why = find_bpftrace(settings)
    if bt is None:
        result.errors.append(why)
        return result
    aimed = _pids(settings, request, result)
    if aimed is None:
        return result
    pid_set, kernel_pids = aimed
    marks = WindowMarks()
    parsed = BpftraceFaults()
    keys, note = plan_keys(settings, request.max_pages)
    result.map_keys, result.map_keys_wanted = keys, request.max_pages
    if note:
        result.notes.append(note)
    tmp = leftovers.make_workdir("pfi-bt-")
    try:
        path = Path(tmp) / program
        # Ends itself if nobody stops it (its owner was killed): the window + the grace after attaching.
        path.write_text(program_text(program, kernel_pids, exit_after=request.seconds + settings.tracing.tracer_exit_grace_seconds,
                                     interval=(OPEN_AFTER, OPEN_AFTER + request.seconds)))
        argv = [bt, "-f", "json", str(path)]
        with SupervisedProcess(
            argv, env=bpftrace_env(keys), max_output_bytes=request.max_output_bytes, workdir=tmp,
            # Not niced: the counting runs in the kernel in the faulting task; bpftrace itself only reports
            # "attached" and handles SIGINT, and a niced bpftrace on a busy node did both seconds late, so
            # it counted faults outside [on_start, on_stop] (3x the majflt of a 2 s window, measured).
            nice=0,
        ) as rec:
            if not _window(rec, request, result, start_timeout, marks):
                return result
        _read_output(rec, parsed, request, result)
    finally:
        if marks.started and not marks.stopped and request.on_stop:
            request.on_stop()
        shutil.rmtree(tmp, ignore_errors=True)

    if pid_set is not None and kernel_pids is None:  # filter here what the kernel did not
        parsed.faults = {p: v for p, v in parsed.faults.items() if p in pid_set}
        parsed.totals = {p: v for p, v in parsed.totals.items() if p in pid_set}
        parsed.comms = {p: v for p, v in parsed.comms.items() if p in pid_set}
    result.duration_seconds = marks.t_stop - marks.t_start
    _fill(result, parsed, keys, request.max_pages)
    return result


LATE_NOTE_SECONDS = 0.05  # majflt read this late after the kernel's interval opened: the report says so


def ready_time(line: str) -> float | None:
    """The monotonic time (s) BEGIN ran, from its ready line (`pfi-ready NSECS`), or None (an older program)."""
    try:
        data = str(json.loads(line).get("data", ""))
    except (ValueError, AttributeError):
        return None
    parts = data.split()
    return int(parts[1]) / 1e9 if len(parts) >= 2 and parts[0] == READY and parts[1].isdigit() else None


def hold_interval(rec: SupervisedProcess, request: TraceRequest, open_at: float, close_at: float) -> float:
    """Call on_start at open_at and return at close_at (monotonic), earlier on cancel or if the tracer
    exits; how late on_start was called (0 if on time)."""
    while (left := open_at - time.monotonic()) > 0:
        if request.cancel.wait(min(left, 0.2)) or rec.poll() is not None:
            break
    late = max(0.0, time.monotonic() - open_at)
    if request.on_start:
        request.on_start()
    while (left := close_at - time.monotonic()) > 0:
        if request.cancel.wait(min(left, 0.2)) or rec.poll() is not None:
            break
    return late


def _markers(request: TraceRequest) -> None:
    if request.on_start:
        request.on_start()
    if request.on_stop:
        request.on_stop()

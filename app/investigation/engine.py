"""The timed investigation of one node: rank, trace, find the sources, attribute, diagnose.

Blocking; the CLI calls it directly and the service in a worker thread. The tracer runs in its own
thread for the window while this thread samples procfs once a second.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.collectors.kubelet import PodDirectory
from app.collectors.procfs import ProcFS
from app.config import Settings
from app.models import (
    Attribution,
    NodeStats,
    ProcessReport,
    Report,
    SkippedBackend,
    TracerInfo,
    Trigger,
    utcnow,
)
from app.parsers.redact import redact_argv, redact_comm
from app.tracers import leftovers
from app.tracers.base import REAL_CLOCK, Clock, Tracer, TraceRequest, TraceResult
from app.tracers.registry import candidates, kill_started_by, make_tracer, mark_failed

from . import rereaders
from .diagnose import diagnose_process, diagnose_report
from .estimate import estimate_sources
from .recommendations import WindowSeen, add_recommendations
from .sampler import MarkInfo, ProcessTrack, Sampler
from .snapshot import ProcessSnapshot, WindowEnd
from .sources import sources_from_pages
from .swapdev import apply as apply_swap_devices
from .swapdev import read_swap

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
TRACER_GRACE_SECONDS = 15.0  # how long after the window a tracer may take to stop and hand over
MIN_FALLBACK_SECONDS = 2.0  # a fallback tracer gets at least this long; with less left, a fresh window
FALLBACK_SECONDS_MAX = 10.0  # a fresh window is half the window, between the two
SILENT_MIN_FAULTS = 20  # majflt rise in the traced processes that a working tracer cannot have missed
# The report counts over the tracer's marks: marks that span less than this share of the seconds asked
# (read late, after the kernel's interval had closed: bpftrace's ready line on a slow machine) are no
# interval to count over, and the attempt failed.
MARKED_MIN_SHARE = 0.5
KILL_JOIN_SECONDS = 5.0  # after killing an overrunning tracer's processes, how long its thread may take to end
STRAGGLER_WAIT_SECONDS = 30.0  # how long an investigation waits for a previous run's tracer thread
# An exact backend's per-process count is exact when it is within this share of majflt over the same
# interval (and EXACT_SLACK_FAULTS: a fault or two at either edge of a short, slow interval is no error).
EXACT_TOLERANCE = 0.02
EXACT_SLACK_FAULTS = 2
# Before an automatic choice's window, the node's major faults are counted this long: above the tracing
# settings' exact_max_rate a second, perf-major records one fault in N (sample_period).
RATE_PROBE_SECONDS = 0.3  # from before the set-up (the re-reader scan, the first sample): most of it overlaps them
SAMPLING_BACKENDS = ("perf-major",)  # the backends that honour TraceRequest.sample_period
# Tracer threads of earlier runs still running after their processes were killed: the next
# investigation waits (bounded) for them, so two runs' tracers never trace side by side.
_stragglers: list[threading.Thread] = []
_stragglers_lock = threading.Lock()


def _wait_for_stragglers(limit: float) -> str | None:
    """Wait up to limit s for the tracer threads of earlier runs; a report warning, or None."""
    with _stragglers_lock:
        threads = [t for t in _stragglers if t.is_alive()]
    if not threads:
        return None
    t0 = time.monotonic()
    for t in threads:
        t.join(max(0.0, t0 + limit - time.monotonic()))
    with _stragglers_lock:
        _stragglers[:] = [t for t in _stragglers if t.is_alive()]
        left = len(_stragglers)
    waited = time.monotonic() - t0
    if left:
        return f"the tracer thread of a previous investigation still runs after waiting {waited:.1f} s for it"
    return f"waited {waited:.1f} s for the tracer of a previous investigation to end"


@dataclass
class _Window:
    end: float = 0.0  # monotonic; a fallback's fresh window moves it


@dataclass
class _Attempt:
    tracer: Tracer
    result: TraceResult
    failure: str | None
    marks: dict[str, dict[int, tuple[int, int]]]
    info: dict[str, MarkInfo] = field(default_factory=dict)


@dataclass
class _TracerRun:
    """The tracer side of the window: try the candidates in order until one works (tracer thread)."""

    settings: Settings
    cands: list[Tracer]
    sampler: Sampler
    pids: list[int] | None
    stop: threading.Event
    win: _Window
    window: float
    clock: Clock = REAL_CLOCK
    sample_period: int = 1  # perf-major records one fault in this many (the others every fault)
    settled: threading.Event = field(default_factory=threading.Event)
    attempts: list[_Attempt] = field(default_factory=list)
    fresh_windows: int = 0
    current: str = ""

    @property
    def failed(self) -> list[tuple[Tracer, str]]:
        return [(a.tracer, a.failure) for a in self.attempts if a.failure is not None]

    def main(self) -> None:
        try:
            for i, tracer in enumerate(self.cands):
                if i > 0:
                    if self.stop.is_set():
                        break
                    now = self.clock.monotonic()
                    if self.win.end - now < MIN_FALLBACK_SECONDS:
                        fresh = max(MIN_FALLBACK_SECONDS, min(self.window / 2, FALLBACK_SECONDS_MAX))
                        self.win.end = now + fresh
                        self.fresh_windows += 1
                attempt = self._attempt(tracer, max(0.1, self.win.end - self.clock.monotonic()))
                self.attempts.append(attempt)
                if attempt.failure is None or self.stop.is_set():
                    break
                log.warning("tracer %s failed at run time: %s", tracer.name, attempt.failure)
        finally:
            self.settled.set()

    def _attempt(self, tracer: Tracer, seconds: float) -> _Attempt:
        self.current = tracer.name
        seen: dict[str, float] = {}

        def mark(name: str) -> float:
            seen[name] = self.clock.monotonic()
            return self.sampler.mark(name)

        self.sampler.marks = {}
        self.sampler.mark_info = {}
        request = TraceRequest(
            seconds=seconds, pids=self.pids, cancel=self.stop,
            on_start=lambda: mark("start"), on_stop=lambda: mark("stop"),
            max_output_bytes=self.settings.tracing.tracer_max_output_bytes, max_pages=self.settings.tracing.tracer_max_pages,
            clock=self.clock, sample_period=self.sample_period if tracer.name in SAMPLING_BACKENDS else 1,
        )
        try:
            result = tracer.run(request)
        except Exception as exc:  # a broken tracer must not take the investigation with it
            log.exception("tracer %s failed", tracer.name)
            result = TraceResult(backend=tracer.name, exact=tracer.exact)
            result.errors.append(f"{type(exc).__name__}: {exc}")
        return _Attempt(tracer, result, self._failure(tracer, result, seen, seconds), dict(self.sampler.marks),
                        dict(self.sampler.mark_info))

    def _failure(self, tracer: Tracer, r: TraceResult, seen: dict[str, float], seconds: float) -> str | None:
        """Why this attempt is no good (the next candidate should trace), or None."""
        if tracer.name == "procfs" or self.stop.is_set():
            return None  # procfs records nothing by design; a cancelled window is not a failure
        err = r.errors[0] if r.errors else ""
        if "start" not in seen:
            return f"did not start: {err or 'no reason given'}"
        ran = seen.get("stop", self.clock.monotonic()) - seen["start"]
        if r.exited_early and r.events == 0:
            return f"exited after {ran:.1f} s of a {seconds:.1f} s window: {err or 'no reason given'}"
        if not r.exited_early and ran < MARKED_MIN_SHARE * seconds:
            return (f"read majflt over {ran:.1f} s of its {seconds:.1f} s interval: its marks came late (a slow "
                    "machine) or it stopped early" + (f" ({err})" if err else ""))
        if r.events == 0 and (rise := self._majflt_rise()) >= SILENT_MIN_FAULTS:
            return f"recorded no faults while the processes' majflt rose by {rise:,} in its {ran:.1f} s window" + (
                f" ({err})" if err else "")
        return None

    def _majflt_rise(self) -> int:
        start, stop = self.sampler.marks.get("start") or {}, self.sampler.marks.get("stop") or {}
        rise = 0
        for pid, (st, flt) in stop.items():
            before = start.get(pid)
            rise += max(0, flt - before[1]) if before is not None and before[0] == st else flt
        return rise

    def outcome(self, reason: str, skipped: list[SkippedBackend]) -> tuple[Tracer, TraceResult, str, list[SkippedBackend]]:
        """(the backend whose trace the report uses, its trace, why it, every other backend with why not)."""
        good = [a for a in self.attempts if a.failure is None]
        used = good[-1] if good else None
        failed = [a for a in self.attempts if a.failure is not None]
        out = [SkippedBackend(backend=a.tracer.name, reason=f"failed at run time: {a.failure}", failed_at_run_time=True)
               for a in failed]
        names = {a.tracer.name for a in self.attempts}
        if used is None:
            # Every tracer failed: no addresses; ranks and sources come from procfs (estimated).
            self.sampler.marks = {}
            self.sampler.mark_info = {}
            procfs = make_tracer("procfs", self.settings)
            trace = TraceResult(backend="procfs", exact=False)
            why = "every tracer failed at run time (" + "; ".join(f"{a.tracer.name}: {a.failure}" for a in failed) + ")"
            if not self.attempts:
                why = "no tracer ran (cancelled before the window)"
            rest = [s for s in skipped if s.backend not in names and s.backend != "procfs"]
            return procfs, trace, f"{why}: sources estimated from procfs", out + rest
        self.sampler.marks = used.marks
        self.sampler.mark_info = used.info
        if failed:
            reason = (f"fell back at run time to {used.tracer.name} after "
                      + ", ".join(f"{a.tracer.name} {a.failure}" for a in failed)
                      + f" (first choice: {reason})")
        rest = [s for s in skipped if s.backend not in names]
        if self.cands and self.cands[0].name not in names:
            rest.insert(0, SkippedBackend(backend=self.cands[0].name, reason="not tried"))
        return used.tracer, used.result, reason, out + rest


@dataclass(frozen=True)
class Edges:
    """What the investigation reads and traces through; None each: its own, from the settings."""

    procfs: ProcFS | None = None  # the procfs tree (settings.node.proc_root)
    pods: PodDirectory | None = None  # names pods (the service shares its one with the flight recorder)
    tracers: Sequence[Tracer] | None = None  # the backends to try, in order (the registry's choice)
    clock: Clock | None = None  # what the window is timed on (default_clock: the machine's)


@dataclass
class _Counted:
    """What the report's counts are over: the tracer's own interval (both its marks read) or the window."""

    ranked: list[ProcessTrack]
    counts: dict[int, tuple[int, list[int]]]  # pid -> majflt and series over the tracer's interval
    seconds: float
    over_interval: bool


@dataclass
class _Build:
    """What building one process's section needs besides the process itself (build_process)."""

    sampler: Sampler
    trace: TraceResult
    pods: PodDirectory
    elapsed: float  # the sampled window, s
    counted: _Counted
    my_mnt_ns: str | None


# The clock of an investigation whose edges give none: the machine's (tests replaying a captured window
# set a virtual one here for the CLI they run in-process: tests/proctree.py).
default_clock: Clock = REAL_CLOCK


def investigate(
    settings: Settings,
    *,
    seconds: float | None = None,
    pids: list[int] | None = None,
    top: int | None = None,
    trigger: Trigger | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    edges: Edges | None = None,
) -> Report:
    """Investigate this node for `seconds`.

    `edges.tracers`: the backends to try, in order (None: the registry's choice, then the other exact
    backends that work here). When one fails to start, dies inside the window or records nothing
    while the processes' majflt rose, the next one traces the rest of the window (or, with less than
    MIN_FALLBACK_SECONDS left, a fresh one of half the window, between MIN_FALLBACK_SECONDS and
    FALLBACK_SECONDS_MAX); the report lists the failed attempts in
    `tracer.skipped`. When every one fails, sources are estimated from procfs and the report says so.

    The story: wait for what an earlier run left, choose the tracers, sample procfs while they trace
    (_watch_window), stop them (_stop_tracer), count over the tracer's interval (_count), read each
    reported process once at the window's end (WindowEnd), build, check, diagnose and recommend.
    """
    window = float(seconds if seconds is not None else settings.investigation.investigation_seconds)
    cancel = cancel or threading.Event()
    edges = edges or Edges()
    tracers = edges.tracers
    procfs = edges.procfs or ProcFS(settings.node.proc_root)
    clock = edges.clock or default_clock
    report_progress = progress or (lambda _f, _m: None)
    started_at = utcnow()
    warnings = _before_the_window()
    cands, reason, skipped = _choose(settings, tracers)
    probing = tracers is None and settings.tracing.tracer == "auto" and settings.tracing.exact_max_rate > 0 \
        and cands[0].name in SAMPLING_BACKENDS
    probe_from = (procfs.vmstat().get("pgmajfault"), clock.monotonic()) if probing else None
    reread_start = rereaders.start(settings.node.cgroup_root, clock)  # every group's refaults: read() re-readers
    sampler = Sampler(procfs, pids, cgroup_root=settings.node.cgroup_root,
                      full_every=settings.investigation.scan_full_every_seconds, clock=clock)
    sampler.first()
    period, probed_rate = 1, None
    if probe_from is not None:
        probed_rate = node_fault_rate(procfs, clock, cancel, probe_from)
        period = sample_period(probed_rate, settings.tracing.exact_max_rate)
    report_progress(0.0, f"tracing with {cands[0].name}" + (f", one major fault in {period}" if period > 1 else ""))
    run = _TracerRun(settings, cands, sampler, pids, threading.Event(), _Window(), window, clock, period)
    thread = threading.Thread(target=run.main, name="tracer", daemon=True)
    t0 = clock.monotonic()
    run.win.end = t0 + window
    clock.start(thread)
    elapsed = _watch_window(run, thread, cancel, report_progress, t0)
    warnings.extend(_stop_tracer(run, thread))
    report_progress(0.92, "resolving")

    tracer, trace, reason, skipped = run.outcome(reason, skipped)
    if run.failed and tracers is None:
        for failed, why in run.failed:
            mark_failed(failed, settings, why)
    tracer_info = _tracer_info(tracer, trace, reason, skipped)
    if trace.sample_period > 1:  # the reason quotes the probe's command line (-c 1): say what ran
        tracer_info.reason += f"; this window recorded one major fault in {trace.sample_period} (-c {trace.sample_period})"
        tracer_info.notes.insert(0, sampled_note(trace.sample_period, probed_rate, settings.tracing.exact_max_rate))
    warnings.extend(_tracer_warnings(run, tracer, trace, elapsed, window))
    counted = _count(sampler, tracer, tracer_info, t0, elapsed)
    chosen = counted.ranked[: top or settings.investigation.top]
    sampler.final_snapshot([t.pid for t in chosen])

    node_stats = collect_node_stats(procfs, sampler, counted.seconds,
                                    vm=sampler.interval_vmstat() if counted.over_interval else None)
    read_swap(procfs, settings.node.sysfs_root, node_stats)
    end = WindowEnd(procfs, settings.node.cgroup_root)
    snaps = [end.take(t.pid, t.exited) for t in chosen]
    pods = edges.pods or PodDirectory(settings)
    attribution = Attribution()
    if any(s.cgroup is not None and s.cgroup.pod_uid for s in snaps):
        _, attribution = pods.index()
        if attribution.error:
            warnings.append(f"pod names: {attribution.error}")
    build = _Build(sampler, trace, pods, elapsed, counted, procfs.mnt_ns("self"))
    processes = [build_process(t, s, build) for t, s in zip(chosen, snaps, strict=True)]
    if counted.over_interval and tracer.exact and trace.sample_period == 1 and (inexact := check_exact(processes, trace)):
        warnings.append(f"{tracer.name} is not exact for {len(inexact)} process(es) over its "
                        f"{counted.seconds:.1f} s interval: " + "; ".join(inexact[:5]))
    elif trace.sample_period > 1:
        for p in processes:  # not checked: a sample stands for sample_period faults of whichever task made them
            p.exact_why = (f"sampled one fault in {trace.sample_period}: major_faults is majflt, traced_faults "
                           f"{trace.sample_period} x its samples")
    for p, s in zip(processes, snaps, strict=True):
        p.verdict = diagnose_process(p, node_stats, s.cgroup_problem, noise_floor=settings.investigation.noise_floor)
    apply_swap_devices(processes, node_stats)
    reread, reread_seconds = rereaders.finish(settings.node.cgroup_root, procfs, reread_start, clock)
    add_recommendations(processes, {t.pid: t for t in chosen}, trace, node_stats, end.snapshots,
                        WindowSeen(elapsed, sampler.refault_series, rereaders.reread_bytes(reread)),
                        owners=getattr(pods, "owners", None), node_name=settings.node.node_name)
    report_progress(0.98, "diagnosing")
    warnings.extend(access_warnings(procfs))
    if cancelled := cancel.is_set():
        warnings.append("the investigation was cancelled before the window ended")
    report = Report(
        node=settings.node.node_name,
        status="cancelled" if cancelled else "complete",
        started_at=started_at,
        finished_at=utcnow(),
        window_seconds=round(counted.seconds, 3),
        trigger=trigger or Trigger(),
        tracer=tracer_info,
        node_stats=node_stats,
        processes=processes,
        verdict=diagnose_report(processes, node_stats, counted.seconds, noise_floor=settings.investigation.noise_floor),
        attribution=attribution,
        warnings=warnings,
        rereaders=rereaders.rereaders(reread, processes, node_stats, reread_seconds, pod_of=pods.pod_for),
    )
    rereaders.note(report)
    return report


def _choose(settings: Settings, tracers: Sequence[Tracer] | None) -> tuple[list[Tracer], str, list[SkippedBackend]]:
    """The tracers to try in order, why the first, and the backends left out with why (the caller's list, or
    the registry's choice)."""
    if tracers is None:
        return candidates(settings)
    cands = list(tracers) or [make_tracer("procfs", settings)]
    return cands, f"given by the caller: {', '.join(t.name for t in cands)}", []


def node_fault_rate(procfs: ProcFS, clock: Clock, cancel: threading.Event,
                    since: tuple[int | None, float]) -> float | None:
    """The node's major faults a second (/proc/vmstat pgmajfault) from `since` (pgmajfault then, and
    when), waiting until RATE_PROBE_SECONDS have passed; None when it cannot be read."""
    a, t = since
    clock.wait(cancel, t + RATE_PROBE_SECONDS - clock.monotonic())
    b, dt = procfs.vmstat().get("pgmajfault"), clock.monotonic() - t
    if a is None or b is None or dt <= 0:
        return None
    return max(0, b - a) / dt


def sample_period(rate: float | None, exact_max_rate: int) -> int:
    """1 (record every major fault) up to exact_max_rate faults/s; above it the N that records about
    exact_max_rate a second. Unknown rate, or exact_max_rate 0: 1."""
    if rate is None or exact_max_rate <= 0 or rate <= exact_max_rate:
        return 1
    return math.ceil(rate / exact_max_rate)


def sampled_note(period: int, rate: float | None, exact_max_rate: int) -> str:
    """What the report says of a 1-in-period recording (why: README, "On a node that faults fast")."""
    seen = f"{rate:,.0f} major faults/s" if rate is not None else "a fault rate"
    return (f"sampled one major fault in {period}: the node made {seen} as the window opened, above "
            f"PFI_EXACT_MAX_RATE ({exact_max_rate:,}/s); process counts are still every fault (majflt), "
            f"source counts are {period} x samples, limits use the procfs basis")


def _before_the_window() -> list[str]:
    """Wait for an earlier run's tracer thread and reap what a killed one left: the report's warnings."""
    warnings = []
    straggler = _wait_for_stragglers(STRAGGLER_WAIT_SECONDS)
    if straggler:
        warnings.append(straggler)
    reaped = leftovers.reap()  # what a killed predecessor left behind
    if reaped.folders or reaped.tracers:
        warnings.append(f"leftovers of a killed investigation: {reaped.summary()}")
    return warnings


def _watch_window(run: _TracerRun, thread: threading.Thread, cancel: threading.Event, report_progress: Progress,
                  t0: float) -> float:
    """Sample procfs once a second until the window (`run.win.end`, a fallback may move it) ends and the
    tracer hands over, or `cancel`; the seconds sampled (rates are over them, not the hand-over)."""
    sampler, win, clock = run.sampler, run.win, run.clock
    next_tick = t0 + 1.0
    last_tick = t0
    sampled_end = t0
    while True:
        now = clock.monotonic()
        if cancel.is_set():
            break
        end = win.end
        if now >= end:
            if sampler.ticks == 0 or now - last_tick > 0.5:
                sampler.tick(full=True)  # the last part-second (or a window under a second) gets its sample too
                last_tick = now
            sampled_end = max(sampled_end, min(now, end + 1.0))
            # The tracer stops and hands over; if it failed, a fallback may start a fresh window.
            if clock.wait(run.settled, 0.1) or not thread.is_alive():
                break
            if clock.monotonic() - end > 2 * TRACER_GRACE_SECONDS:
                break
            if win.end > end:  # a fresh window: keep sampling
                next_tick = max(next_tick, clock.monotonic() + 1.0)
            continue
        clock.wait(cancel, min(next_tick, end) - now)
        if cancel.is_set():
            break
        if clock.monotonic() >= next_tick:
            # The window's last tick reads every process (the end's own tick below does too).
            sampler.tick(full=win.end - clock.monotonic() <= 0.6)
            last_tick = clock.monotonic()
            next_tick += 1.0
            while next_tick <= last_tick:  # after a hand-over pause, do not catch up tick by tick
                next_tick += 1.0
            elapsed = last_tick - t0
            total = max(win.end - t0, 1e-3)
            report_progress(min(elapsed / total, 1.0) * 0.9, f"{elapsed:.0f}/{total:.0f} s")
    if cancel.is_set():
        run.stop.set()
        sampled_end = clock.monotonic()
    return max(sampled_end - t0, 1e-3)


def _stop_tracer(run: _TracerRun, thread: threading.Thread) -> list[str]:
    """Wait for the tracer thread to hand over; stop it, then kill what it started, when it overruns."""
    run.clock.join(thread, TRACER_GRACE_SECONDS)
    if not thread.is_alive():
        return []
    # The backend did not stop on its own at its deadline: the stop event makes it kill its tracer.
    run.stop.set()
    run.clock.join(thread, TRACER_GRACE_SECONDS)
    if not thread.is_alive():
        return []
    # Still not stopped (ignores its stop, or a parse past its deadline): kill what it started,
    # so no tracer process of this run outlives it or traces alongside the next run.
    killed = kill_started_by(thread)
    thread.join(min(KILL_JOIN_SECONDS, TRACER_GRACE_SECONDS))
    msg = (f"tracer {run.current} did not stop within {2 * TRACER_GRACE_SECONDS:.0f} s: "
           f"killed the process group of its {killed} process(es)")
    if thread.is_alive():
        with _stragglers_lock:
            _stragglers.append(thread)
        msg += "; its thread still runs, the next investigation waits for it"
    return [msg]


def _tracer_info(tracer: Tracer, trace: TraceResult, reason: str, skipped: list[SkippedBackend]) -> TracerInfo:
    return TracerInfo(
        backend=tracer.name, exact=tracer.exact, reason=reason, skipped=skipped,
        events=trace.events, dropped=trace.dropped, output_bytes=trace.output_bytes,
        truncated=trace.truncated, duration_seconds=round(trace.duration_seconds, 3), errors=trace.errors[:20],
        counts_past_window=trace.counts_past_window,
        lost_samples=trace.lost, ring_buffer_pages=trace.ring_pages, ring_buffer_pages_wanted=trace.ring_pages_wanted,
        map_keys=trace.map_keys, map_keys_wanted=trace.map_keys_wanted, map_full=trace.map_full,
        notes=trace.notes[:20], sample_period=trace.sample_period,
    )


def _tracer_warnings(run: _TracerRun, tracer: Tracer, trace: TraceResult, elapsed: float, window: float) -> list[str]:
    """What the report says about how the tracing went."""
    warnings = []
    for failed, why in run.failed:
        warnings.append(f"tracer {failed.name} failed at run time ({why}); "
                        + (f"{tracer.name} traced instead" if tracer.name != "procfs" else "sources estimated from procfs"))
    if run.fresh_windows:
        warnings.append(f"the fallback tracer needed a fresh window: the investigation took {elapsed:.1f} s, "
                        f"not {window:.0f} s")
    if trace.errors:
        warnings.append(f"tracer {tracer.name} reported errors; sources were estimated from procfs where it saw nothing")
    if trace.counts_past_window:
        warnings.append(f"tracer {tracer.name} stopped late: its counts include faults after the window, so "
                        "traced counts and shares cover more than the interval majflt was read over")
    if trace.dropped:
        warnings.append(f"tracer {tracer.name} dropped {trace.dropped:,} of {trace.events:,} events: shares are from the rest")
    if not tracer.exact and tracer.name != "procfs":
        warnings.append(f"{tracer.name} records minor faults too: source shares include them; fault counts come from procfs")
    return warnings


def _count(sampler: Sampler, tracer: Tracer, info: TracerInfo, t0: float, elapsed: float) -> _Counted:
    """Counts over the same interval: with a tracer that marked both ends, every majflt count, rate and
    series the report gives (and compares with the traced counts) is over its interval, not the window."""
    span = sampler.interval() if tracer.name != "procfs" else None
    if span is None:
        return _Counted(sampler.ranked(), {}, elapsed, over_interval=False)
    seconds = max(span[1] - span[0], 1e-3)
    counts: dict[int, tuple[int, list[int]]] = {}
    ranked = []
    for t in sampler.ranked():
        counts[t.pid] = sampler.interval_counts(t)
        if counts[t.pid][0] > 0:
            ranked.append(t)
    ranked.sort(key=lambda t: (-counts[t.pid][0], t.pid))
    info.counts_over = "tracer"
    info.counted_from_seconds = round(span[0] - t0, 3)
    info.counted_seconds = round(seconds, 3)
    return _Counted(ranked, counts, seconds, over_interval=True)


def build_process(t: ProcessTrack, snap: ProcessSnapshot, b: _Build) -> ProcessReport:
    """One process's section of the report, from its track (the window's counters) and its snapshot at the
    window's end: majflt and series over the tracer's interval when counted there, else over the window."""
    counted = b.counted.counts.get(t.pid)
    majflt, series = counted if counted is not None else (t.major_faults, list(t.series))
    seconds = b.counted.seconds if counted is not None and b.counted.seconds else b.elapsed
    argv = snap.cmdline
    pages = b.trace.faults.get(t.pid, {})
    traced = b.trace.totals.get(t.pid, sum(pages.values()))
    read_bytes = None
    read_rate = None
    if snap.io is not None and t.io_first is not None:
        read_bytes = max(0, snap.io.get("read_bytes", 0) - t.io_first.get("read_bytes", 0))
        read_rate = read_bytes / max(b.elapsed - t.io_first_tick, 1.0)
    smaps = None
    evidence = b.sampler.swap_evidence(t, snap)  # also the cgroup's file refaults, for the limit rule
    if pages:
        sources = sources_from_pages(pages, t.maps)
    else:
        smaps = snap.smaps()
        sources = estimate_sources(t.major_faults, read_bytes, smaps, evidence)
    ref = snap.cgroup
    pod = b.pods.pod_for(ref) if ref is not None and ref.pod_uid else None
    rss = swap = None
    if smaps is not None:
        rss = sum(e.rss_bytes for e in smaps)
        swap = sum(e.swap_bytes for e in smaps)
    elif snap.status is not None:
        rss, swap = snap.status.vm_rss_bytes, snap.status.vm_swap_bytes
    mnt = snap.mnt_ns
    return ProcessReport(
        pid=t.pid,
        comm=redact_comm(t.comm),  # a process may be named like a secret (TOKEN=x)
        cmdline=redact_argv(argv) if argv else "",
        major_faults=majflt,
        major_faults_per_second=round(majflt / seconds, 2),
        minor_faults=t.minor_faults,
        series=series,
        traced_faults=traced,
        traced_majflt=b.sampler.traced_window_majflt(t.pid),
        started_during_window=t.started_during_window,
        exited_during_window=t.exited,
        host_process=pod is None,
        pod=pod,
        cgroup=ref.path if ref else None,
        paths_in_container=bool(mnt and b.my_mnt_ns and mnt != b.my_mnt_ns),
        sources=sources,
        cgroup_memory=snap.cgroup_memory,
        cgroup_file_refaults=evidence.cgroup_refault_file if evidence is not None else None,
        cgroup_anon_refaults=evidence.cgroup_refault_anon if evidence is not None else None,
        rss_bytes=rss,
        swap_bytes=swap,
        read_bytes_per_second=round(read_rate, 1) if read_rate is not None else None,
    )



# Which privilege each per-process file needs, for the operator.
_NEEDS = {
    "io": "CAP_SYS_PTRACE (ptrace read access)",
    "maps": "CAP_SYS_PTRACE (ptrace read access)",
    "smaps": "CAP_SYS_PTRACE (ptrace read access)",
    "ns/mnt": "CAP_SYS_PTRACE (ptrace read access)",
}
_LOST = {
    "io": "read rates and procfs estimates",
    "maps": "fault addresses resolved to files",
    "smaps": "swap/RSS sizes and procfs estimates",
    "ns/mnt": "whether paths are inside a container",
    "cgroup": "pods and cgroup memory",
    "cmdline": "command lines",
    "status": "RSS and swap sizes",
}


def access_warnings(procfs: ProcFS) -> list[str]:
    """One warning per /proc file whose reads were refused: "not allowed" is a privilege problem,
    unlike a process that exited (which is silent)."""
    out = []
    for name, (count, pids) in sorted(procfs.denied().items()):
        shown = ", ".join(map(str, pids)) + (", …" if count > len(pids) else "")
        need = _NEEDS.get(name, "read access to /proc")
        out.append(
            f"permission denied reading /proc/PID/{name} ({count} reads; pids {shown}): this report lacks "
            f"their {_LOST.get(name, 'details')}; the inspector needs {need}"
        )
    return out


def check_exact(processes: list[ProcessReport], trace: TraceResult) -> list[str]:
    """Set each process's `exact`: its traced count within EXACT_TOLERANCE of majflt over the same
    interval (traced_majflt), or why not. The lines for the report's warning, one per inexact process."""
    out = []
    for p in processes:
        m = p.traced_majflt
        if m is None:
            p.exact_why = "majflt was not read at both ends of the tracer's interval"
            continue
        traced = p.traced_faults
        slack = max(EXACT_TOLERANCE * m, EXACT_SLACK_FAULTS)
        p.exact = abs(traced - m) <= slack
        if p.exact:
            continue
        ratio = f"{traced:,} traced of {m:,} majflt ({traced / m:.3f})" if m else f"{traced:,} traced, majflt 0"
        if traced > m:
            why = ("late stop: its counts include faults after the interval" if trace.counts_past_window else
                   "late stop: it counted faults outside its interval")
        elif trace.lost:
            why = f"dropped: the kernel lost {trace.lost:,} of its samples"
        elif trace.dropped and p.pid not in trace.totals:
            why = "dropped: its faults were counted but not kept"
        else:
            why = "late attach: it began counting after the interval opened (or missed faults)"
        p.exact_why = f"{why}: {ratio}"
        out.append(f"pid {p.pid} {p.comm}: {p.exact_why}")
    return out


def collect_node_stats(procfs: ProcFS, sampler: Sampler, elapsed: float,
                       vm: list[dict[str, int]] | None = None) -> NodeStats:
    """`vm`: the node's /proc/vmstat readings to use (default: the sampler's, over the window)."""
    vm = sampler.node_vmstat if vm is None else vm
    first, last = (vm[0], vm[-1]) if vm else ({}, {})

    def rate(key: str) -> float:
        return round(max(0, last.get(key, 0) - first.get(key, 0)) / elapsed, 2)

    def rate_opt(key: str) -> float | None:
        return rate(key) if key in last else None

    series = [max(0, b.get("pgmajfault", 0) - a.get("pgmajfault", 0)) for a, b in zip(vm, vm[1:], strict=False)]
    mem = procfs.meminfo()
    return NodeStats(
        pgmajfault=max(0, last.get("pgmajfault", 0) - first.get("pgmajfault", 0)),
        pgmajfault_per_second=rate("pgmajfault"),
        pswpin_per_second=rate("pswpin"),
        pswpout_per_second=rate("pswpout"),
        workingset_refault_file_per_second=rate_opt("workingset_refault_file"),
        workingset_refault_anon_per_second=rate_opt("workingset_refault_anon"),
        series=series,
        mem_total_bytes=mem.get("MemTotal"),
        mem_available_bytes=mem.get("MemAvailable"),
        swap_total_bytes=mem.get("SwapTotal"),
        swap_free_bytes=mem.get("SwapFree"),
        psi_memory=procfs.pressure("memory"),
        psi_io=procfs.pressure("io"),
        pgscan_kswapd_per_second=rate_opt("pgscan_kswapd"),
        pgscan_direct_per_second=rate_opt("pgscan_direct"),
        allocstall_per_second=round(sum(rate(k) for k in last if k.startswith("allocstall_")), 2) if last else None,
    )


__all__ = ["Edges", "investigate", "SkippedBackend", "Tracer"]

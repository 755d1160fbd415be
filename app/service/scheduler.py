"""The scheduler: one investigation of this node at a time, alerts joining it, dedupe, cooldown.

The rules, in the order `submit` applies them to a firing alert (its key: fingerprint + startsAt):
1. the key belongs to a queued or running investigation, or to one that finished complete less
   than `cooldown_seconds` ago: "duplicate", the existing id. Alertmanager's repeats, an HA pair's
   two notifications and an alert posted to two pods of the Service all end here.
2. an investigation is running and its window is still open: the alert joins it (its trigger is
   recorded with the report); the node is being watched right now.
3. an investigation is queued: the alert joins it.
4. otherwise a new investigation is queued; the worker starts it at once when idle.
An alert that arrives after the running window closed (the engine is resolving and diagnosing)
queues a follow-up, so it gets a window of its own.

Bounds: `max_queue` alerts (triggers) may wait on this node, running and queued together; past
that an alert is ignored ("queue full"). The cooldown memory is bounded too.

A `resolved` alert removes its trigger from a queued investigation; a queued investigation left
without triggers is cancelled (never started, no report). A resolved alert does NOT cancel a
running investigation: its window is short and bounded, and a report that shows the faults
stopping is still worth having. Shutdown cancels the running one through the engine's `cancel`
event, which stops its tracer.

The investigator is blocking; it runs in a thread of its own (a daemon: a stuck one never holds
the process at exit), never on the event loop. Deadlines: the window stage ends by
`window + WINDOW_GRACE_SECONDS + PFI_STAGE_DEADLINE_SECONDS`, each later stage (resolving,
diagnosing; the engine's progress messages) within `PFI_STAGE_DEADLINE_SECONDS`. Past a deadline
the investigation is cancelled; one that does not come back within CANCEL_GRACE_SECONDS of being
cancelled (a deadline, or shutdown) is left behind and gets a report that says which stage it was
in: the service never waits on a stuck neighbour (a kubelet trickling its answer).

`on_started` runs before the engine starts (the service writes a `running` report row then, so a
crash leaves a trace); `on_finished` gets every investigation's report, also of one left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.config import Settings
from app.investigation.report import LeadUp, build_report
from app.models import Cause, Report, TracerInfo, Trigger, Verdict, new_report_id, utcnow
from app.service.metrics import Metrics

log = logging.getLogger(__name__)

Investigator = Callable[..., Report]
LeadUpReader = Callable[[Trigger, datetime], LeadUp]  # the flight recorder's lead-up to a trigger
NO_LEAD_UP = LeadUp(None, "no history: no flight recorder in this service")
RECENT_MAX = 10_000  # cooldown keys remembered
WINDOW_GRACE_SECONDS = 5.0  # the engine probes tracers before its window starts
# The engine reports its window as progress 0..0.9 and resolving/diagnosing as the rest.
WINDOW_DONE_FRACTION = 0.9
CANCEL_GRACE_SECONDS = 5.0  # from cancel to giving up on the investigation's thread
SUPERVISE_TICK_SECONDS = 0.25

Action = Literal["queued", "joined", "duplicate", "cancelled", "running", "ignored"]


@dataclass
class Investigation:
    id: str
    node: str
    window_seconds: float
    triggers: list[Trigger] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    state: Literal["queued", "running", "finishing", "done", "cancelled"] = "queued"
    queued_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    started_mono: float | None = None
    progress: float = 0.0
    message: str = "queued"
    cancel: threading.Event = field(default_factory=threading.Event)

    def add(self, trigger: Trigger, key: str) -> None:
        self.triggers.append(trigger)
        self.keys.append(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "state": self.state,
            "queued_at": self.queued_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "window_seconds": self.window_seconds,
            "progress": round(self.progress, 3),
            "message": self.message,
            "triggers": [t.model_dump(mode="json") for t in self.triggers],
        }


@dataclass
class Submitted:
    action: Action
    investigation_id: str | None = None
    reason: str = ""


OnFinished = Callable[[Investigation, Report], Awaitable[None]]
OnStarted = Callable[[Investigation], Awaitable[None]]


def failed_report(
    inv: Investigation,
    error: str,
    *,
    status: Literal["failed", "cancelled"] = "failed",
    summary: str | None = None,
) -> Report:
    """A report for an investigation that raised or was left behind: the failure is a result too."""
    return Report(
        id=inv.id,
        node=inv.node,
        status=status,
        started_at=inv.started_at or utcnow(),
        finished_at=utcnow(),
        window_seconds=inv.window_seconds,
        trigger=inv.triggers[0] if inv.triggers else Trigger(),
        tracer=TracerInfo(backend="none", exact=False, errors=[error]),
        verdict=Verdict(
            summary=summary or f"The investigation failed: {error}", cause=Cause.UNKNOWN, confidence="low"
        ),
    )


def running_report(inv: Investigation) -> Report:
    """The row written when an investigation starts; replaced by its result. One still there when
    the store opens belongs to a process that died (store.INTERRUPTED)."""
    return Report(
        id=inv.id,
        node=inv.node,
        status="running",
        started_at=inv.started_at or utcnow(),
        finished_at=None,
        window_seconds=inv.window_seconds,
        trigger=inv.triggers[0] if inv.triggers else Trigger(),
        tracer=TracerInfo(backend="none", exact=False),
        verdict=Verdict(summary="Investigation running", cause=Cause.UNKNOWN, confidence="low"),
    )


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        investigator: Investigator,
        on_finished: OnFinished,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_started: OnStarted | None = None,
        lead_up: LeadUpReader | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node.node_name
        self._investigator = investigator
        self._lead_up = lead_up
        self._on_finished = on_finished
        self.on_started = on_started  # settable after construction (the service sets it at start)
        self._metrics = metrics
        self._clock = clock
        self._queue: deque[Investigation] = deque()
        self._running: Investigation | None = None
        self._recent: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (report id, expiry)
        self._wake = asyncio.Event()
        self._left_behind: list[threading.Thread] = []  # investigations that never came back
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- what runs ---------------------------------------------------------------------------
    @property
    def running(self) -> Investigation | None:
        return self._running

    def active(self) -> list[Investigation]:
        return ([self._running] if self._running else []) + list(self._queue)

    def find(self, inv_id: str) -> Investigation | None:
        return next((i for i in self.active() if i.id == inv_id), None)

    def _waiting(self) -> int:
        return sum(len(i.triggers) for i in self.active())

    def _update_gauge(self) -> None:
        self._metrics.queue_depth.set(len(self.active()))

    def _in_window(self, inv: Investigation) -> bool:
        if inv.state != "running" or inv.started_mono is None:
            return False
        elapsed = self._clock() - inv.started_mono
        return inv.progress < WINDOW_DONE_FRACTION and elapsed < inv.window_seconds + WINDOW_GRACE_SECONDS

    def _recent_id(self, key: str) -> str | None:
        now = self._clock()
        while self._recent:
            oldest_key, (_, expiry) = next(iter(self._recent.items()))
            if expiry > now:
                break
            del self._recent[oldest_key]
        hit = self._recent.get(key)
        return hit[0] if hit and hit[1] > now else None

    # --- alerts --------------------------------------------------------------------------------
    def submit(self, trigger: Trigger, key: str) -> Submitted:
        for inv in self.active():
            if key in inv.keys:
                return Submitted("duplicate", inv.id, f"already {inv.state} for this alert")
        recent = self._recent_id(key)
        if recent is not None:
            return Submitted("duplicate", recent, "reported within the cooldown")
        if self._stopping:
            return Submitted("ignored", None, "shutting down")
        if self._waiting() >= self.settings.scheduler.max_queue:
            return Submitted(
                "ignored", None, f"queue full: {self._waiting()} alerts already wait on node {self.node}"
            )
        running = self._running
        if running is not None and self._in_window(running):
            running.add(trigger, key)
            return Submitted("joined", running.id, "joined the running investigation")
        if self._queue:
            queued = self._queue[-1]
            queued.add(trigger, key)
            return Submitted("joined", queued.id, "joined the queued investigation")
        inv = Investigation(
            id=new_report_id(), node=self.node, window_seconds=self.settings.investigation.investigation_seconds
        )
        inv.add(trigger, key)
        self._queue.append(inv)
        self._update_gauge()
        self._wake.set()
        return Submitted("queued", inv.id, "investigation queued")

    def on_alert_resolved(self, key: str) -> Submitted:
        for inv in list(self._queue):
            if key not in inv.keys:
                continue
            idx = inv.keys.index(key)
            del inv.keys[idx]
            del inv.triggers[idx]
            if inv.triggers:
                return Submitted("cancelled", inv.id, "alert removed from the queued investigation")
            self._queue.remove(inv)
            inv.state = "cancelled"
            inv.message = "cancelled: its alert resolved before it started"
            self._metrics.investigations.labels(outcome="cancelled_queued", backend="none").inc()
            self._update_gauge()
            log.info("investigation %s cancelled before it started: its alert resolved", inv.id)
            return Submitted("cancelled", inv.id, "queued investigation cancelled: its alert resolved")
        running = self._running
        if running is not None and key in running.keys:
            return Submitted(
                "running",
                running.id,
                "already running: a resolved alert does not stop a running investigation",
            )
        return Submitted("ignored", None, "resolved: no queued investigation for this alert")

    # --- the worker ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pfi-scheduler")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stopping:
                inv = self._queue.popleft()
                self._running = inv
                try:
                    await self._investigate(inv)
                except Exception:  # the worker loop must outlive any one investigation
                    log.exception("investigation %s: the scheduler caught an error", inv.id)
                finally:
                    self._running = None
                    self._update_gauge()

    def _progress(self, inv: Investigation, fraction: float, message: str) -> None:
        # Called from the worker thread: plain attribute writes only.
        try:
            inv.progress = min(1.0, max(0.0, float(fraction)))
            inv.message = str(message)[:200]
        except (TypeError, ValueError):
            pass

    def _deadline(self, inv: Investigation) -> tuple[str, float]:
        """(stage, its deadline in seconds) for where the investigation is now."""
        stage_limit = self.settings.scheduler.stage_deadline_seconds
        if inv.progress < WINDOW_DONE_FRACTION:
            return "window", inv.window_seconds + WINDOW_GRACE_SECONDS + stage_limit
        return inv.message or "finishing", stage_limit

    async def _run_in_thread(self, inv: Investigation, call: Callable[[], Report]) -> Report:
        """Run `call` in a daemon thread; watch its stage deadlines and the cancel event. Raises
        what the call raised; a call left behind gives a failed/cancelled report instead."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Report] = loop.create_future()

        def settle(result: Report | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            try:
                result: Report | None = call()
                error: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, result, error)

        thread = threading.Thread(target=work, name=f"pfi-investigation-{inv.id}", daemon=True)
        thread.start()
        stage, stage_since = "", self._clock()
        overrun: str | None = None
        cancelled_at: float | None = None
        while True:
            finished, _ = await asyncio.wait({done}, timeout=SUPERVISE_TICK_SECONDS)
            if finished:
                return done.result()
            now = self._clock()
            current, limit = self._deadline(inv)
            if current != stage:
                stage, stage_since = current, now
            if overrun is None and cancelled_at is None and now - stage_since > limit:
                overrun = f"stage {stage!r} passed its deadline of {limit:.0f} s"
                log.error("investigation %s: %s; cancelling it", inv.id, overrun)
                inv.cancel.set()
            if inv.cancel.is_set() and cancelled_at is None:
                cancelled_at = now
            if cancelled_at is not None and now - cancelled_at > CANCEL_GRACE_SECONDS:
                break
        # Left behind: the thread is a daemon and has its cancel event; we do not wait for it.
        self._left_behind = [t for t in self._left_behind if t.is_alive()] + [thread]
        where = f"in stage {stage!r} ({inv.message})" if inv.message != stage else f"in stage {stage!r}"
        if overrun is not None:
            error = f"{overrun}; it did not stop within {CANCEL_GRACE_SECONDS:.0f} s of being cancelled"
            summary = f"The investigation did not finish: {error}."
            status: Literal["failed", "cancelled"] = "failed"
        else:
            error = f"cancelled {where}; it did not stop within {CANCEL_GRACE_SECONDS:.0f} s"
            summary = f"The investigation was interrupted (shutdown): {error}."
            status = "cancelled"
        log.error(
            "investigation %s left behind %s (%d thread(s) left behind now)",
            inv.id,
            where,
            len(self._left_behind),
        )
        return failed_report(inv, error, status=status, summary=summary)

    async def _investigate(self, inv: Investigation) -> None:
        inv.state = "running"
        inv.started_at = utcnow()
        inv.started_mono = self._clock()
        inv.message = "starting"
        log.info("investigation %s of node %s starts (%d alert(s))", inv.id, inv.node, len(inv.triggers))
        if self.on_started is not None:
            try:
                await self.on_started(inv)
            except Exception:
                log.exception("investigation %s: recording its start failed", inv.id)
        call = functools.partial(
            self._investigator,
            self.settings,
            seconds=inv.window_seconds,
            trigger=inv.triggers[0] if inv.triggers else None,
            cancel=inv.cancel,
            progress=functools.partial(self._progress, inv),
        )
        try:
            result = await self._run_in_thread(inv, call)
            if not isinstance(result, Report):
                raise TypeError(f"the investigator returned {type(result).__name__}, not a Report")
        except Exception as exc:  # the engine's failure becomes a failed report, never a crash
            log.exception("investigation %s failed", inv.id)
            result = failed_report(inv, f"{type(exc).__name__}: {str(exc)[:500]}")
        duration = self._clock() - inv.started_mono
        inv.progress = 1.0
        inv.state = "finishing"  # no alert joins it from now on
        inv.message = "storing the report"
        report = build_report(result, report_id=inv.id, triggers=inv.triggers, lead_up=await self._read_lead_up(result))
        self._metrics.investigations.labels(outcome=report.status, backend=report.tracer.backend).inc()
        self._metrics.duration.observe(duration)
        try:
            await self._on_finished(inv, report)
        except Exception:
            log.exception("investigation %s: storing or posting the report failed", inv.id)
        if report.status == "complete" and self.settings.scheduler.cooldown_seconds > 0:
            expiry = self._clock() + self.settings.scheduler.cooldown_seconds
            for key in inv.keys:
                self._recent[key] = (inv.id, expiry)
                self._recent.move_to_end(key)
            while len(self._recent) > RECENT_MAX:
                self._recent.popitem(last=False)
        inv.state = "cancelled" if report.status == "cancelled" else "done"
        log.info("investigation %s %s in %.1fs", inv.id, report.status, duration)

    async def _read_lead_up(self, result: Report) -> LeadUp:
        """The recorder's lead-up to the investigation's alert, read in a worker thread (it holds the
        recorder's lock) within the stage deadline."""
        if self._lead_up is None:
            return NO_LEAD_UP
        until = result.finished_at or utcnow()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._lead_up, result.trigger, until), self.settings.scheduler.stage_deadline_seconds
            )
        except TimeoutError:
            return LeadUp(None, "no history: reading the recorder took too long")

    async def stop(self, timeout: float = CANCEL_GRACE_SECONDS + 10.0) -> None:
        """Cancel what is queued and running, wait (bounded) for the running one to come back with
        its cancelled report (or be left behind with one) and be stored, then stop the worker."""
        self._stopping = True
        for inv in list(self._queue):
            inv.state = "cancelled"
            inv.message = "cancelled: shutting down"
        self._queue.clear()
        running = self._running
        if running is not None:
            log.info("cancelling investigation %s: shutting down", running.id)
            running.cancel.set()
        task = self._task
        if task is not None:
            deadline = self._clock() + timeout
            while self._running is not None and self._clock() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None
        self._update_gauge()

"""The flight recorder in the service: a sampling thread, the lead-up in every report, /metrics, and
watch mode (issue 12).

- `RecorderService.start()` runs app.collectors.flight_recorder.FaultRecorder every
  PFI_RECORDER_INTERVAL_SECONDS in a daemon thread (file reads and kubelet lookups block; never on the
  event loop). `stop()` ends it (bounded).
- `lead_up(trigger, until)` cuts the lead-up out of the ring (app.investigation.lead_up.lead_up_since)
  for the scheduler, which builds the report with it (app.investigation.report.build_report).
- Watch mode (PFI_WATCH_THRESHOLD > 0): when the recorded node rate stays above the threshold for
  PFI_WATCH_FOR_SECONDS, a Trigger(kind="watch", rate, since) is submitted to the scheduler on the
  event loop under one key per node, so the scheduler, its cooldown and the sinks treat it like
  an alert: repeats while it runs or within the cooldown are duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.collectors.flight_recorder import FaultRecorder, PodLookup, Tick
from app.config import NodeSettings, RecorderSettings
from app.investigation.lead_up import lead_up_since
from app.investigation.report import LeadUp
from app.models import Trigger, utcnow

__all__ = ["RecorderMetrics", "RecorderService", "WatchState", "watch_submitter"]

log = logging.getLogger(__name__)

HISTORY_TOP = 10
STOP_SECONDS = 5.0
SAMPLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class RecorderMetrics:
    """The recorder's own cost and the node rate it sees, in the service's registry (no per-container
    series: cAdvisor has them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.samples = Counter("pfi_recorder_samples", "Samples the flight recorder took", registry=r)
        self.duration = Histogram(
            "pfi_recorder_sample_duration_seconds",
            "Wall time of one recorder sample (every memory cgroup and /proc/vmstat)",
            buckets=SAMPLE_BUCKETS,
            registry=r,
        )
        self.node_rate = Gauge(
            "pfi_recorder_node_major_faults_per_second",
            "The node's major faults per second over the recorder's last interval (/proc/vmstat pgmajfault)",
            registry=r,
        )
        self.cgroups = Gauge("pfi_recorder_cgroups", "Memory cgroups the recorder reads", registry=r)
        self.series = Gauge("pfi_recorder_series", "Containers and host groups with a series in the ring", registry=r)
        self.watch = Counter(
            "pfi_watch_triggers",
            "Watch-mode triggers (node rate above PFI_WATCH_THRESHOLD long enough), by what the scheduler did",
            ["outcome"],
            registry=r,
        )


@dataclass
class WatchState:
    """When the node rate has stayed above `threshold` for `for_seconds`. Pure (fed one tick at a time)."""

    threshold: float
    for_seconds: float
    since: float | None = None  # wall clock: the start of the first interval of the current run
    faults: int = 0  # node major faults during the run
    seconds: float = 0.0

    def feed(self, tick: Tick) -> bool:
        """True when the run above the threshold is long enough (on every tick while it lasts)."""
        if self.threshold <= 0 or tick.interval <= 0:
            return False
        if tick.node_rate <= self.threshold:
            self.since, self.faults, self.seconds = None, 0, 0.0
            return False
        if self.since is None:
            self.since = tick.at - tick.interval
        self.faults += tick.node_delta
        self.seconds += tick.interval
        return tick.at - self.since >= self.for_seconds

    @property
    def rate(self) -> float:
        return self.faults / self.seconds if self.seconds > 0 else 0.0


class RecorderServiceSettings(Protocol):
    """What the recorder and watch mode read: their group, and the node (its name and kernel paths). `app.config.Settings` is one."""

    @property
    def recorder(self) -> RecorderSettings: ...

    @property
    def node(self) -> NodeSettings: ...


class RecorderService:
    def __init__(
        self,
        settings: RecorderServiceSettings,
        registry: CollectorRegistry,
        pods: PodLookup | None,
        *,
        on_watch: Callable[[Trigger], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = RecorderMetrics(registry)
        self.enabled = settings.recorder.recorder_interval_seconds > 0
        self.recorder: FaultRecorder | None = None
        if self.enabled:
            self.recorder = FaultRecorder(
                settings.node.cgroup_root,
                settings.node.proc_root,
                interval=settings.recorder.recorder_interval_seconds,
                retention=settings.recorder.recorder_retention_seconds,
                pods=pods,
            )
        self.watch = WatchState(settings.recorder.watch_threshold, settings.recorder.watch_for_seconds)
        self.on_watch = on_watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the sampling thread -------------------------------------------------------------------------

    def start(self) -> None:
        if self.recorder is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pfi-recorder", daemon=True)
        self._thread.start()
        log.info(
            "flight recorder: every %gs, %d intervals kept (%.0f s)%s",
            self.recorder.interval,
            self.recorder.slots - 1,
            self.recorder.retention,
            f"; watch mode above {self.watch.threshold:g} major faults/s for {self.watch.for_seconds:g}s"
            if self.watch.threshold > 0
            else "",
        )

    def _run(self) -> None:
        assert self.recorder is not None
        interval = self.recorder.interval
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # never let one bad read end the recording
                log.exception("recorder sample failed")
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # fell behind (a slow lookup, a suspended VM): skip, do not burst
                next_at = now + interval
            self._stop.wait(next_at - now)

    def tick(self) -> Tick:
        assert self.recorder is not None
        t = self.recorder.sample()
        m = self.metrics
        m.samples.inc()
        m.duration.observe(t.duration)
        m.cgroups.set(t.groups)
        m.series.set(self.recorder.series_count)
        if t.interval > 0:
            m.node_rate.set(round(t.node_rate, 2))
        if self.watch.feed(t) and self.on_watch is not None and self.watch.since is not None:
            self.on_watch(
                Trigger(
                    kind="watch",
                    starts_at=datetime.fromtimestamp(self.watch.since, UTC).isoformat(),
                    labels={"threshold": f"{self.watch.threshold:g}", "for_seconds": f"{self.watch.for_seconds:g}"},
                    received_at=utcnow(),
                    rate=round(self.watch.rate, 1),
                    since=datetime.fromtimestamp(self.watch.since, UTC),
                )
            )
        return t

    def connect(self, submit: Callable[[Trigger, str], Any]) -> None:
        """Send watch-mode triggers to the scheduler's `submit` (on the running loop), and start."""
        self.on_watch = watch_submitter(asyncio.get_running_loop(), submit, self.settings.node.node_name, self.metrics)
        self.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS)
            self._thread = None

    # --- reports -------------------------------------------------------------------------------------

    def lead_up(self, trigger: Trigger, until: datetime) -> LeadUp:
        """What the ring holds of the lead-up to `trigger` (for build_report); never raises."""
        if self.recorder is None:
            return LeadUp(None, "no history: the recorder is off (PFI_RECORDER_INTERVAL_SECONDS=0)")
        try:
            history = self.recorder.history(lead_up_since(trigger, until), until, HISTORY_TOP)
        except Exception as exc:
            log.exception("reading the recorder's history failed")
            return LeadUp(None, f"no history: {type(exc).__name__}")
        if history is None:
            return LeadUp(None, "no history yet: the recorder has no sample in the lead-up")
        return LeadUp(history)


def watch_submitter(loop: asyncio.AbstractEventLoop, submit: Callable[[Trigger, str], Any], node: str,
                    metrics: RecorderMetrics) -> Callable[[Trigger], None]:
    """on_watch for the recorder thread: hands the trigger to the scheduler on the event loop."""
    key = f"watch:{node}"

    def on_loop(trigger: Trigger) -> None:
        sub = submit(trigger, key)
        action = getattr(sub, "action", "ignored")
        if action != "duplicate":
            metrics.watch.labels(outcome=action).inc()
            log.warning(
                "watch mode: node major faults %.0f/s above %s since %s: investigation %s (%s)",
                trigger.rate or 0, trigger.labels.get("threshold"), trigger.since, getattr(sub, "investigation_id", None),
                action,
            )

    def on_watch(trigger: Trigger) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(on_loop, trigger)

    return on_watch

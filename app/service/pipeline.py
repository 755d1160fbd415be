"""The report pipeline: what becomes of one investigation, from its start to a stored report on its
way to the sinks. The scheduler runs investigations (a queue with deadlines) and hands each one here
twice:

- `started(inv)`: the `running` row, written before the engine starts, so that a crash leaves a
  trace (a row still `running` when the store opens belongs to a process that died:
  report_store.INTERRUPTED); it is replaced by the result.
- `finished(inv, result, duration)`: the flight recorder's lead-up to the alert (read in a worker
  thread within the stage deadline), `build_report` (app.investigation.report: the one builder),
  the investigation counted in /metrics, then the outbox (the report stored with one outbox row per
  sink, delivered in the background: app.service.delivery.outbox). Returns the report.

A failure to write either is logged; it never stops the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from app.investigation.report import LeadUp, build_report
from app.models import Cause, Report, TracerInfo, Trigger, Verdict, utcnow
from app.service.delivery.outbox import Outbox
from app.service.metrics import Metrics
from app.service.report_store import ReportStore
from app.service.scheduler import Investigation

__all__ = ["LeadUpReader", "ReportPipeline", "running_report"]

log = logging.getLogger(__name__)

LeadUpReader = Callable[[Trigger, datetime], LeadUp]  # the flight recorder's lead-up to a trigger


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


class ReportPipeline:
    def __init__(
        self,
        store: ReportStore,
        outbox: Outbox,
        metrics: Metrics,
        lead_ups: LeadUpReader,
        *,
        lead_up_seconds: float,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._metrics = metrics
        self._lead_ups = lead_ups
        self._lead_up_seconds = lead_up_seconds  # the stage deadline

    async def started(self, inv: Investigation) -> None:
        try:
            await asyncio.to_thread(self._store.put, running_report(inv), list(inv.triggers))
        except Exception:
            log.exception("investigation %s: recording its start failed", inv.id)

    async def finished(self, inv: Investigation, result: Report, duration: float) -> Report:
        report = build_report(result, report_id=inv.id, triggers=inv.triggers, lead_up=await self._lead_up(result))
        self._metrics.investigations.labels(outcome=report.status, backend=report.tracer.backend).inc()
        self._metrics.duration.observe(duration)
        try:
            await self._outbox.send(report, list(inv.triggers))
        except Exception:
            log.exception("investigation %s: storing or posting the report failed", inv.id)
        return report

    async def _lead_up(self, result: Report) -> LeadUp:
        """The recorder's lead-up to the investigation's alert, read in a worker thread (it holds the
        recorder's lock) within the stage deadline."""
        until = result.finished_at or utcnow()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._lead_ups, result.trigger, until), self._lead_up_seconds
            )
        except TimeoutError:
            return LeadUp(None, "no history: reading the recorder took too long")

"""Reports to the sinks through the store's outbox, retried and resumed; the `Outbox` owns its tasks.

A finished report and one outbox row per sink are written together (`send`); each sink's result is
written with the removal of its row as soon as that sink is done. Deliveries left over by a stop or
a crash resume at the start, and every OUTBOX_RETRY_SECONDS after that (a delivery refused for too
many deliveries running, a batch beyond the first): each run drains the outbox batch by batch, a
bounded number of batches. `stop` ends the resume loop, gives running deliveries a moment and
cancels the rest: their rows stay in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from app.config import DeliverySettings
from app.models import Report, Trigger
from app.service.delivery.sinks import Sink, deliver_with_retry
from app.service.metrics import Metrics
from app.service.report_store import ReportStore

__all__ = ["DELIVER_STATUSES", "FleetNote", "Outbox"]

log = logging.getLogger(__name__)

MAX_DELIVERIES = 256  # reports being delivered at once; past it the periodic resume sends the rest
OUTBOX_RETRY_SECONDS = 45.0  # rows still in the outbox (not being delivered) are resumed this often
OUTBOX_BATCH = 100  # reports a batch of one resume run
OUTBOX_BATCHES = 50  # batches a run at most: 5000 reports, then the next run
DELIVER_STATUSES = ("complete", "failed")  # a cancelled report (shutdown) is not posted
# "also on 11 other nodes: ..." for a report's sinks (app.service.fleet.view.FleetView.also_on)
FleetNote = Callable[[Report], Awaitable[str]]


class Outbox:
    def __init__(
        self,
        delivery: DeliverySettings,
        store: ReportStore,
        sinks: list[Sink],
        metrics: Metrics,
        *,
        fleet_note: FleetNote | None = None,
    ) -> None:
        self.delivery = delivery
        self.store = store
        self.sinks = sinks
        self.metrics = metrics
        self.delivering: set[str] = set()  # report ids whose delivery runs (resume skips them)
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._resume_task: asyncio.Task[None] | None = None
        self.fleet_note = fleet_note

    def start(self) -> None:
        """Resume what a previous process left, then every OUTBOX_RETRY_SECONDS (with sinks only)."""
        if self.sinks and self._resume_task is None:
            self._resume_task = asyncio.get_running_loop().create_task(self._resume_loop(), name="outbox-resume")

    async def send(self, report: Report, triggers: list[Trigger]) -> None:
        """Store the report with an outbox row per sink (none for a cancelled one, or without sinks)
        and deliver it in the background."""
        deliver = bool(self.sinks) and report.status in DELIVER_STATUSES
        outbox = [k.name for k in self.sinks] if deliver else []
        if deliver:  # from now on the resume leaves it to the delivery below
            self.delivering.add(report.id)
        try:
            await asyncio.to_thread(self.store.put, report, triggers, outbox=outbox)
        except BaseException:
            self.delivering.discard(report.id)
            raise
        if deliver and not self._spawn(self.deliver(report, triggers), report.id):
            self.delivering.discard(report.id)  # refused: the periodic resume delivers it

    def _spawn(self, coro: Coroutine[Any, Any, Any], report_id: str) -> bool:
        if len(self._deliveries) >= MAX_DELIVERIES:
            coro.close()
            log.error("delivery refused (%d deliveries running): report %s stays in the outbox",
                      len(self._deliveries), report_id)
            return False
        task = asyncio.get_running_loop().create_task(coro, name=f"sinks-{report_id}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return True

    async def deliver(self, report: Report, triggers: list[Trigger], sinks: list[Sink] | None = None) -> Report:
        """Deliver to each sink (retried); each result is written with the removal of its outbox
        row as soon as that sink is done."""
        s = self.delivery
        current = report
        lock = asyncio.Lock()

        async def one(sink: Sink, fleet: str) -> None:
            nonlocal current
            r = await deliver_with_retry(
                sink, report, attempts=s.sink_attempts, backoff=s.sink_backoff_seconds, fleet=fleet
            )
            self.metrics.sink_deliveries.labels(sink=r.sink, outcome="ok" if r.ok else "failed").inc()
            async with lock:
                current = current.model_copy(update={"sinks": [*current.sinks, r]})
                await asyncio.to_thread(self.store.delivered, current, triggers, [sink.name])

        self.delivering.add(report.id)
        try:
            fleet = await self.fleet_note(report) if self.fleet_note is not None else ""
            await asyncio.gather(*(one(k, fleet) for k in (self.sinks if sinks is None else sinks)))
        finally:
            self.delivering.discard(report.id)
        return current

    async def _resume_loop(self) -> None:
        while True:
            await self.resume()
            await asyncio.sleep(OUTBOX_RETRY_SECONDS)

    async def resume(self) -> None:
        """Deliveries not done (a previous process stopped or was killed, a delivery was refused) are
        made now: batch after batch until the outbox holds only rows being delivered or seen in this run
        (at most OUTBOX_BATCHES batches; the rest waits for the next run)."""
        try:
            by_name = {k.name: k for k in self.sinks}
            seen: set[str] = set()
            for _ in range(OUTBOX_BATCHES):
                left = await asyncio.to_thread(self.store.outbox, OUTBOX_BATCH, seen | self.delivering)
                if not left:
                    break
                await self._resume_batch(left, by_name, seen)
        except Exception:
            log.exception("resuming sink deliveries failed; they stay in the outbox")

    async def _resume_batch(
        self, left: list[tuple[str, list[str]]], by_name: dict[str, Sink], seen: set[str]
    ) -> None:
        for rid, names in left:
            seen.add(rid)
            if rid in self.delivering:  # began since the batch was read
                continue
            report = await asyncio.to_thread(self.store.get, rid)
            triggers = await asyncio.to_thread(self.store.triggers, rid)
            if report is None:
                continue
            gone = [n for n in names if n not in by_name]
            if gone:  # a sink no longer configured: nothing to deliver to
                log.warning("report %s: sink(s) %s no longer configured; not delivered", rid, gone)
                await asyncio.to_thread(self.store.delivered, report, triggers, gone)
            todo = [by_name[n] for n in names if n in by_name]
            if todo:
                log.info("report %s: resuming delivery to %s", rid, [k.name for k in todo])
                await self.deliver(report, triggers, todo)

    async def stop(self, grace: float) -> None:
        """End the resume loop; wait up to `grace` seconds for running deliveries, cancel the rest
        (their rows stay in the outbox for the next start)."""
        if self._resume_task is not None:
            self._resume_task.cancel()
        running = set(self._deliveries)
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for t in late:
                log.warning(
                    "stopping: %s not done in %.0fs; its deliveries stay in the outbox for the next start",
                    t.get_name(),
                    grace,
                )
                t.cancel()
        tasks = [t for t in (self._resume_task, *self._deliveries) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resume_task = None

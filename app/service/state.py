"""Everything the running service holds, made in the app's lifespan (no global state).

`ServiceState.start` builds: the token, the report store, the metrics registry, one outbound httpx
client (forwarding, sinks, peers), the API server client and the peer directory, the sinks, the
single-flight scheduler, and a retry loop for reports the store could not write (it cannot die).

Reports go to the sinks through the store's outbox: the report and one outbox row per sink are
written together; each sink's result is written with the removal of its row. Deliveries left over
by a stop or a crash resume at the next start, and every `OUTBOX_RETRY_SECONDS` after that (a
delivery refused for too much background work, a batch beyond the first): each run drains the
outbox batch by batch, a bounded number of batches. `stop` cancels the running investigation (no tracer
is left running; a stuck one is left behind with a report saying so), gives sink deliveries a
moment (the outbox keeps the rest), writes what waits and closes everything: well inside the
chart's termination grace period whatever a neighbour does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.config import Settings
from app.models import Report
from app.service import logs
from app.service.auth import TokenWatcher, load_token
from app.service.cluster.kube import KubeApi
from app.service.cluster.nodes import NodeIdentity, as_ip
from app.service.cluster.peers import PeerDirectory, make_peer_directory
from app.service.delivery.sinks import Sink, deliver_with_retry, make_sinks
from app.service.metrics import Metrics
from app.service.report_store import ReportStore
from app.service.scheduler import Investigation, Investigator, Scheduler, running_report
from app.service.watch import RecorderService

log = logging.getLogger(__name__)

MAX_BACKGROUND_TASKS = 256
STORE_RETRY_SECONDS = 10.0
STOP_SINKS_SECONDS = 3.0  # sink deliveries still retrying then stay in the outbox for the next start
STOP_TASKS_SECONDS = 10.0  # other background work (forwarding alerts) has no outbox: it gets longer
OUTBOX_RETRY_SECONDS = 45.0  # rows still in the outbox (not being delivered) are resumed this often
OUTBOX_BATCH = 100  # reports a batch of one resume run
OUTBOX_BATCHES = 50  # batches a run at most: 5000 reports, then the next run
DELIVER_STATUSES = ("complete", "failed")  # a cancelled report (shutdown) is not posted


def local_identity(settings: Settings) -> NodeIdentity:
    """This node: its name and IPs. Without PFI_NODE_IP (a first try on one machine) the addresses
    the hostname resolves to count too."""
    ips: set[str] = set()
    if settings.node_ip:
        ips.update(ip for ip in (as_ip(p.strip()) for p in settings.node_ip.split(",")) if ip)
    else:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                ip = as_ip(str(info[4][0]))
                if ip:
                    ips.add(ip)
        except OSError:
            pass
    return NodeIdentity(settings.node_name, frozenset(ips))


def real_investigator(settings: Settings) -> Investigator:
    """The engine, imported when first used (tests inject a fake and never import it), with one pod
    directory for the service's life so its kubelet PodList cache outlives a single investigation."""
    pods: Any = None

    def run(*args: Any, **kwargs: Any) -> Report:
        nonlocal pods
        from app.collectors.kubelet import PodDirectory
        from app.investigation.engine import investigate

        if pods is None:
            pods = PodDirectory(settings)
        return investigate(*args, pods=pods, **kwargs)

    return run


@dataclass
class ServiceState:
    settings: Settings
    tokens: TokenWatcher
    store: ReportStore
    metrics: Metrics
    client: httpx.AsyncClient
    kube: KubeApi | None
    peers: PeerDirectory
    sinks: list[Sink]
    local: NodeIdentity
    scheduler: Scheduler = field(init=False)
    recorder: RecorderService | None = None  # the flight recorder and watch mode (issue 12)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    delivering: set[str] = field(default_factory=set)  # report ids whose delivery runs (resume skips them)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        investigator: Investigator | None = None,
        store: ReportStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        peers: PeerDirectory | None = None,
        token: str | None = None,
    ) -> ServiceState:
        if token is None:
            tokens = TokenWatcher.from_source(await asyncio.to_thread(load_token, settings))
        else:
            tokens = TokenWatcher(token)
        if store is None:
            store = ReportStore(
                settings.data_dir,
                retention_count=settings.report_retention_count,
                retention_days=settings.report_retention_days,
            )
            await asyncio.to_thread(store.open)
        # httpx logs every request's URL at INFO; a Slack webhook URL is a credential.
        logs.quiet_http_clients()
        metrics = Metrics()
        client = httpx.AsyncClient(
            transport=transport, timeout=settings.sink_timeout_seconds, follow_redirects=False
        )
        kube = KubeApi.from_settings(settings)
        state = cls(
            settings=settings,
            tokens=tokens,
            store=store,
            metrics=metrics,
            client=client,
            kube=kube,
            peers=peers if peers is not None else make_peer_directory(settings, kube),
            sinks=make_sinks(settings, client, kube),
            local=local_identity(settings),
        )
        state.recorder = RecorderService(settings, metrics.registry)
        investigate = state.recorder.wrap(investigator or real_investigator(settings))  # + the lead-up
        state.scheduler = Scheduler(settings, investigate, state.on_finished, metrics)
        state.scheduler.start()
        state.recorder.connect(state.scheduler.submit)
        state.spawn(state._store_retry_loop(), "store-retry")
        state.scheduler.on_started = state.on_started  # a `running` row as each investigation starts
        if state.sinks:
            state.spawn(state._outbox_loop(), "outbox-resume")
        state._update_store_gauges()
        log.info(
            "service for node %s: %d sink(s) %s; store %s",
            settings.node_name,
            len(state.sinks),
            [s.name for s in state.sinks],
            "ready" if store.ready else f"NOT ready: {store.reason}",
        )
        return state

    @property
    def token(self) -> str:
        """The webhook token now (re-read when its file changed)."""
        return self.tokens.token

    # --- background work -------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> bool:
        """Run in the background, tracked; False (and the coroutine closed) when too many run."""
        if len(self.tasks) >= MAX_BACKGROUND_TASKS:
            coro.close()
            log.error("background work refused (%d tasks running): %s", len(self.tasks), name)
            return False
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    def _update_store_gauges(self) -> None:
        self.metrics.store_ready.set(1 if self.store.ready else 0)
        self.metrics.store_pending.set(self.store.pending)
        self.metrics.store_set_aside.set(self.store.set_aside)

    async def _store_retry_loop(self) -> None:
        while True:
            await asyncio.sleep(STORE_RETRY_SECONDS)
            try:
                if self.store.pending or not self.store.ready:
                    ok = await asyncio.to_thread(self.store.retry_pending)
                    if ok:
                        log.info("report store writable again")
                self._update_store_gauges()
            except Exception:  # this loop is the store's way back: it must not die
                log.exception("report store retry failed; trying again in %.0fs", STORE_RETRY_SECONDS)

    # --- an investigation starts and finishes ---------------------------------------------------
    async def on_started(self, inv: Investigation) -> None:
        await asyncio.to_thread(self.store.put, running_report(inv), list(inv.triggers))
        self._update_store_gauges()

    async def on_finished(self, inv: Investigation, report: Report) -> None:
        if len(inv.triggers) > 1:
            report = report.model_copy(update={"joined": list(inv.triggers[1:])})
        deliver = bool(self.sinks) and report.status in DELIVER_STATUSES
        outbox = [k.name for k in self.sinks] if deliver else []
        if deliver:  # from now on the outbox resume leaves it to the task below
            self.delivering.add(report.id)
        try:
            await asyncio.to_thread(self.store.put, report, inv.triggers, outbox=outbox)
        except BaseException:
            self.delivering.discard(report.id)
            raise
        self._update_store_gauges()
        if deliver and not self.spawn(self.deliver(report, list(inv.triggers)), f"sinks-{report.id}"):
            self.delivering.discard(report.id)  # refused: the periodic outbox resume delivers it

    async def deliver(self, report: Report, triggers: list[Any], sinks: list[Sink] | None = None) -> Report:
        """Deliver to each sink (retried); each result is written with the removal of its outbox
        row as soon as that sink is done."""
        s = self.settings
        current = report
        lock = asyncio.Lock()

        async def one(sink: Sink) -> None:
            nonlocal current
            r = await deliver_with_retry(sink, report, attempts=s.sink_attempts, backoff=s.sink_backoff_seconds)
            self.metrics.sink_deliveries.labels(sink=r.sink, outcome="ok" if r.ok else "failed").inc()
            async with lock:
                current = current.model_copy(update={"sinks": [*current.sinks, r]})
                await asyncio.to_thread(self.store.delivered, current, triggers, [sink.name])
                self._update_store_gauges()

        self.delivering.add(report.id)
        try:
            await asyncio.gather(*(one(k) for k in (self.sinks if sinks is None else sinks)))
        finally:
            self.delivering.discard(report.id)
        return current

    async def _outbox_loop(self) -> None:
        """Resume at the start, then every OUTBOX_RETRY_SECONDS for rows still waiting."""
        while True:
            await self._resume_outbox()
            await asyncio.sleep(OUTBOX_RETRY_SECONDS)

    async def _resume_outbox(self) -> None:
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

    # --- readiness and shutdown ----------------------------------------------------------------
    def readiness(self) -> list[str]:
        reasons = []
        if not self.store.ready:
            reasons.append(self.store.reason or "report store not ready")
        if self.store.pending:
            reasons.append(f"{self.store.pending} report(s) waiting in memory for the store")
        return reasons

    async def stop(self) -> None:
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.stop)
        await self.scheduler.stop()
        pending = {t for t in self.tasks if not t.get_name().startswith(("store-retry", "outbox-resume"))}
        budget = {True: STOP_SINKS_SECONDS, False: STOP_TASKS_SECONDS}
        loop = asyncio.get_running_loop()
        start = loop.time()
        while pending:
            sinks_left = any(t.get_name().startswith("sinks-") for t in pending)
            wait = budget[sinks_left] - (loop.time() - start)
            if wait <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=wait)
            if sinks_left:
                for t in [t for t in pending if t.get_name().startswith("sinks-")]:
                    log.warning(
                        "stopping: %s not done in %.0fs; its deliveries stay in the outbox for the next start",
                        t.get_name(),
                        STOP_SINKS_SECONDS,
                    )
                    t.cancel()
                    pending.discard(t)
        for t in pending:
            log.warning("stopping: %s did not finish in %.0fs", t.get_name(), STOP_TASKS_SECONDS)
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.store.pending:
            await asyncio.to_thread(self.store.retry_pending)
        await asyncio.to_thread(self.store.close)
        await self.peers.aclose()
        if self.kube is not None:
            await self.kube.aclose()
        await self.client.aclose()

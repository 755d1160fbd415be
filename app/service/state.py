"""Everything the running service holds, made in the app's lifespan (no global state).

`ServiceState.start` builds: the token, the report store, the metrics registry, one outbound httpx
client (forwarding, sinks, peers), the API server client and the peer directory, the sinks, the
single-flight scheduler with its worker thread, and a retry loop for reports the store could not
write. `stop` cancels the running investigation (no tracer is left running), waits for its report
to be stored and for sink deliveries in flight (bounded), then closes everything.
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
from app.service.auth import load_token
from app.service.flight import Investigation, Investigator, Scheduler
from app.service.kube import KubeApi
from app.service.metrics import Metrics
from app.service.nodes import NodeIdentity, as_ip
from app.service.peers import PeerDirectory, make_peer_directory
from app.service.recorder import RecorderService
from app.service.sinks import Sink, deliver_with_retry, make_sinks
from app.service.store import ReportStore

log = logging.getLogger(__name__)

MAX_BACKGROUND_TASKS = 256
STORE_RETRY_SECONDS = 10.0
STOP_TASKS_SECONDS = 10.0
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
    resolver for the service's life so its kubelet PodList cache outlives a single investigation."""
    resolver: Any = None

    def run(*args: Any, **kwargs: Any) -> Report:
        nonlocal resolver
        from app.collectors.kubelet import PodResolver
        from app.investigation.engine import investigate

        if resolver is None:
            resolver = PodResolver(settings)
        return investigate(*args, resolver=resolver, **kwargs)

    return run


@dataclass
class ServiceState:
    settings: Settings
    token: str
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

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        investigator: Investigator | None = None,
        store: ReportStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        kube_transport: httpx.AsyncBaseTransport | None = None,
        peers: PeerDirectory | None = None,
        token: str | None = None,
    ) -> ServiceState:
        if token is None:
            token = (await asyncio.to_thread(load_token, settings)).token
        if store is None:
            store = ReportStore(
                settings.data_dir,
                retention_count=settings.report_retention_count,
                retention_days=settings.report_retention_days,
            )
            await asyncio.to_thread(store.open)
        # httpx logs every request's URL at INFO; a Slack webhook URL is a credential.
        for name in ("httpx", "httpcore"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        metrics = Metrics()
        client = httpx.AsyncClient(
            transport=transport, timeout=settings.sink_timeout_seconds, follow_redirects=False
        )
        kube = KubeApi.from_settings(settings, kube_transport)
        state = cls(
            settings=settings,
            token=token,
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
        state._update_store_gauges()
        log.info(
            "service for node %s: %d sink(s) %s; store %s",
            settings.node_name,
            len(state.sinks),
            [s.name for s in state.sinks],
            "ready" if store.ready else f"NOT ready: {store.reason}",
        )
        return state

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

    async def _store_retry_loop(self) -> None:
        while True:
            await asyncio.sleep(STORE_RETRY_SECONDS)
            if self.store.pending or not self.store.ready:
                ok = await asyncio.to_thread(self.store.retry_pending)
                if ok:
                    log.info("report store writable again")
            self._update_store_gauges()

    # --- a finished investigation --------------------------------------------------------------
    async def on_finished(self, inv: Investigation, report: Report) -> None:
        if len(inv.triggers) > 1:
            report = report.model_copy(update={"joined": list(inv.triggers[1:])})
        await asyncio.to_thread(self.store.put, report, inv.triggers)
        self._update_store_gauges()
        if self.sinks and report.status in DELIVER_STATUSES:
            self.spawn(self.deliver(report, list(inv.triggers)), f"sinks-{report.id}")

    async def deliver(self, report: Report, triggers: list[Any]) -> Report:
        s = self.settings
        results = await asyncio.gather(
            *(
                deliver_with_retry(k, report, attempts=s.sink_attempts, backoff=s.sink_backoff_seconds)
                for k in self.sinks
            )
        )
        for r in results:
            self.metrics.sink_deliveries.labels(sink=r.sink, outcome="ok" if r.ok else "failed").inc()
        updated = report.model_copy(update={"sinks": [*report.sinks, *results]})
        await asyncio.to_thread(self.store.put, updated, triggers)
        self._update_store_gauges()
        return updated

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
        pending = [t for t in self.tasks if not t.get_name().startswith("store-retry")]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_TASKS_SECONDS)
            for t in still:
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

"""Everything the running service holds, made in the app's lifespan (no global state).

`ServiceState.start` builds: the token, the report store, the metrics registry, one outbound httpx
client (forwarding, sinks, peers), the API server client and the peer directory, the sinks and their
outbox (app.service.delivery.outbox), the flight recorder, the scheduler, and a retry loop for
reports the store could not write (it cannot die).

`stop` cancels the running investigation (no tracer is left running; a stuck one is left behind
with a report saying so), gives sink deliveries a moment (the outbox keeps the rest) and other
background work (forwarding alerts) a little longer, writes what waits and closes everything: well
inside the chart's termination grace period whatever a neighbour does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from app.collectors.kubelet import PodDirectory
from app.config import Settings
from app.investigation.findings import Sample, samples_of
from app.models import Report, utcnow
from app.service import logs
from app.service.auth import TokenWatcher, load_token
from app.service.cluster.kube import KubeApi
from app.service.cluster.nodes import NodeIdentity, as_ip
from app.service.cluster.peers import PeerClient, PeerDirectory, make_peer_directory
from app.service.cluster.prometheus import PrometheusClient
from app.service.delivery.outbox import Outbox
from app.service.delivery.sinks import Sink, make_sinks
from app.service.metrics import Metrics
from app.service.report_store import ReportStore
from app.service.scheduler import Investigation, Investigator, Scheduler, running_report
from app.service.watch import RecorderService

log = logging.getLogger(__name__)

MAX_BACKGROUND_TASKS = 256
STORE_RETRY_SECONDS = 10.0
STOP_SINKS_SECONDS = 3.0  # sink deliveries still retrying then stay in the outbox for the next start
STOP_TASKS_SECONDS = 10.0  # other background work (forwarding alerts) has no outbox: it gets longer


def local_identity(settings: Settings) -> NodeIdentity:
    """This node: its name and IPs. Without PFI_NODE_IP (a first try on one machine) the addresses
    the hostname resolves to count too."""
    ips: set[str] = set()
    if settings.node.node_ip:
        ips.update(ip for ip in (as_ip(p.strip()) for p in settings.node.node_ip.split(",")) if ip)
    else:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                ip = as_ip(str(info[4][0]))
                if ip:
                    ips.add(ip)
        except OSError:
            pass
    return NodeIdentity(settings.node.node_name, frozenset(ips))


def real_investigator(pods: PodDirectory) -> Investigator:
    """The engine, imported when first used (tests inject a fake and never import it), with the
    service's one pod directory, whose kubelet PodList cache outlives a single investigation and is
    shared with the flight recorder."""

    def run(*args: Any, **kwargs: Any) -> Report:
        from app.investigation.engine import investigate

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
    outbox: Outbox
    pods: PodDirectory  # one kubelet PodList cache for the investigations and the flight recorder
    local: NodeIdentity
    scheduler: Scheduler = field(init=False)
    recorder: RecorderService | None = None  # the flight recorder and watch mode (issue 12)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # background work: forwarding, routing
    store_retry: asyncio.Task[None] | None = None
    prometheus: PrometheusClient | None = None  # the fleet from PromQL when prometheus_url is set (issue 28)

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
                settings.store.data_dir,
                retention_count=settings.store.report_retention_count,
                retention_days=settings.store.report_retention_days,
            )
            await asyncio.to_thread(store.open)
        # httpx logs every request's URL at INFO; a Slack webhook URL is a credential.
        logs.quiet_http_clients()
        metrics = Metrics()
        client = httpx.AsyncClient(
            transport=transport, timeout=settings.delivery.sink_timeout_seconds, follow_redirects=False
        )
        metrics.watch_store(store)
        kube = KubeApi.from_settings(settings.apiserver)
        sinks = make_sinks(settings, client, kube)
        state = cls(
            settings=settings,
            tokens=tokens,
            store=store,
            metrics=metrics,
            client=client,
            kube=kube,
            peers=peers if peers is not None else make_peer_directory(settings, kube),
            sinks=sinks,
            outbox=Outbox(settings.delivery, store, sinks, metrics),
            pods=PodDirectory(settings),
            local=local_identity(settings),
        )
        state.prometheus = PrometheusClient.from_settings(
            settings.fleet, transport, metrics.fleet_requests.labels(target="prometheus").inc
        )
        metrics.watch_findings(state.findings)
        state.recorder = RecorderService(settings, metrics.registry, state.pods)
        state.scheduler = Scheduler(
            settings,
            investigator or real_investigator(state.pods),
            state.on_finished,
            metrics,
            lead_up=state.recorder.lead_up,
        )
        state.scheduler.start()
        state.recorder.connect(state.scheduler.submit)
        state.store_retry = asyncio.get_running_loop().create_task(state._store_retry_loop(), name="store-retry")
        state.scheduler.on_started = state.on_started  # a `running` row as each investigation starts
        state.outbox.start()
        log.info(
            "service for node %s: %d sink(s) %s; store %s",
            settings.node.node_name,
            len(state.sinks),
            [s.name for s in state.sinks],
            "ready" if store.ready else f"NOT ready: {store.reason}",
        )
        return state

    @property
    def token(self) -> str:
        """The webhook token now (re-read when its file changed)."""
        return self.tokens.token

    def findings(self) -> list[Sample]:
        """This node's latest finding per workload, younger than the findings' age, at most
        findings_max_workloads of them (newest first): the pfi_finding_* gauges."""
        s = self.settings
        since = utcnow() - timedelta(seconds=s.fleet.findings_max_age_seconds)
        try:
            rows = self.store.workloads(since=since, limit=s.fleet.findings_max_workloads)
            return samples_of(self.local.name, (r for r in rows if r.node == self.local.name))
        except Exception:  # a row that does not read must not turn /metrics into a 500
            log.exception("findings left out of /metrics: the store's workload rows do not read")
            return []

    def peer_client(self) -> PeerClient:
        """The client for the other nodes' inspectors (forwarding alerts, fetching their reports)."""
        s = self.settings
        return PeerClient(
            self.client,
            lambda: self.token,
            local_node=self.local.name,
            forward_timeout=s.peers.forward_timeout_seconds,
            fetch_timeout=s.peers.peer_fetch_timeout_seconds,
        )

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

    async def _store_retry_loop(self) -> None:
        while True:
            await asyncio.sleep(STORE_RETRY_SECONDS)
            try:
                if self.store.pending or not self.store.ready:
                    ok = await asyncio.to_thread(self.store.retry_pending)
                    if ok:
                        log.info("report store writable again")
            except Exception:  # this loop is the store's way back: it must not die
                log.exception("report store retry failed; trying again in %.0fs", STORE_RETRY_SECONDS)

    # --- an investigation starts and finishes ---------------------------------------------------
    async def on_started(self, inv: Investigation) -> None:
        await asyncio.to_thread(self.store.put, running_report(inv), list(inv.triggers))

    async def on_finished(self, inv: Investigation, report: Report) -> None:
        await self.outbox.send(report, list(inv.triggers))

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
        if self.store_retry is not None:
            self.store_retry.cancel()
        await asyncio.gather(self.outbox.stop(STOP_SINKS_SECONDS), self._stop_tasks(STOP_TASKS_SECONDS))
        if self.store_retry is not None:
            await asyncio.gather(self.store_retry, return_exceptions=True)
        if self.store.pending:
            await asyncio.to_thread(self.store.retry_pending)
        await asyncio.to_thread(self.store.close)
        await self.peers.aclose()
        if self.kube is not None:
            await self.kube.aclose()
        await self.client.aclose()
        if self.prometheus is not None:
            await self.prometheus.aclose()

    async def _stop_tasks(self, timeout: float) -> None:
        """Background work (forwarding alerts) gets `timeout` seconds to finish, then is cancelled."""
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in late:
                log.warning("stopping: %s did not finish in %.0fs", t.get_name(), timeout)
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

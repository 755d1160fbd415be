"""The composition root: `build_service` makes the running service in dependency order and hands
each wing only what it uses; nothing is set on a wing after it is made. Called by the API app's
lifespan (app.service.web.app), which keeps the `Service` for the routes (app.service.deps); the
routes that show reports get only its `Browse`.

The order: the token, the report store, the metrics registry, one outbound httpx client (forwarding,
sinks, peers, Prometheus), the API server client, the sinks, the peer directory and the peer client,
the fleet (`FleetView`: findings, the fleet page's rows, the "also on" line), the outbox (given the
fleet's line), the kubelet pod directory and the flight recorder's ring, the report pipeline (given
the ring's lead-ups and the outbox), the scheduler (given the pipeline), the alert intake (given the
scheduler) and the recorder's sampling thread (given the scheduler's submit for watch mode). Then
the scheduler, the recorder, a retry loop for reports the store could not write (it cannot die) and
the outbox's resume start.

`Service.stop` cancels the running investigation (no tracer is left running; a stuck one is left
behind with a report saying so), gives sink deliveries a moment (the outbox keeps the rest) and
other background work (forwarding alerts) a little longer, writes what waits and closes everything:
well inside the chart's termination grace period whatever a neighbour does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

import httpx

from app.collectors.kubelet import PodDirectory
from app.config import NodeSettings, Settings, StoreSettings
from app.models import Report
from app.service import logs
from app.service.alerts.intake import Intake
from app.service.auth import TokenWatcher, load_token
from app.service.cluster.kube import AsyncApiServer
from app.service.cluster.nodes import NodeIdentity, as_ip
from app.service.cluster.peers import PeerClient, PeerDirectory, make_peer_directory
from app.service.cluster.prometheus import PrometheusClient
from app.service.delivery.outbox import Outbox
from app.service.delivery.sinks import Sink, make_sinks
from app.service.fleet.view import FleetView
from app.service.metrics import Metrics
from app.service.pipeline import ReportPipeline
from app.service.recorder import LeadUps, RecorderService, make_ring, watch_submitter
from app.service.report_store import ReportStore
from app.service.scheduler import Investigator, Scheduler

log = logging.getLogger(__name__)

STORE_RETRY_SECONDS = 10.0
STOP_SINKS_SECONDS = 3.0  # sink deliveries still retrying then stay in the outbox for the next start
STOP_TASKS_SECONDS = 10.0  # other background work (forwarding alerts) has no outbox: it gets longer


def local_identity(node: NodeSettings) -> NodeIdentity:
    """This node: its name and IPs. Without PFI_NODE_IP (a first try on one machine) the addresses
    the hostname resolves to count too."""
    ips: set[str] = set()
    if node.node_ip:
        ips.update(ip for ip in (as_ip(p.strip()) for p in node.node_ip.split(",")) if ip)
    else:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                ip = as_ip(str(info[4][0]))
                if ip:
                    ips.add(ip)
        except OSError:
            pass
    return NodeIdentity(node.node_name, frozenset(ips))


def real_investigator(pods: PodDirectory) -> Investigator:
    """The engine, imported when first used (tests inject a fake and never import it), with the
    service's one pod directory, whose kubelet PodList cache outlives a single investigation and is
    shared with the flight recorder."""

    def run(*args: Any, **kwargs: Any) -> Report:
        from app.investigation.engine import Edges, investigate

        return investigate(*args, edges=Edges(pods=pods), **kwargs)

    return run


@dataclass(frozen=True)
class Seams:
    """What a test may hand the service instead of the real thing: the engine (`investigator`), a
    `store`, the outbound HTTP `transport` (forwarding, sinks, peers, Prometheus), the `peers`
    directory, the webhook `token`."""

    investigator: Investigator | None = None
    store: ReportStore | None = None
    transport: httpx.AsyncBaseTransport | None = None
    peers: PeerDirectory | None = None
    token: str | None = None


@dataclass(frozen=True)
class Browse:
    """What the routes that show reports read, and nothing else: the UI's pages (app.service.ui.routes)
    and the API's reports, workloads and investigations. Made once by `build_service`."""

    store: ReportStore
    scheduler: Scheduler  # the running and queued investigations
    peers: PeerDirectory
    peer_client: PeerClient  # the other nodes' reports and investigations
    fleet: FleetView
    node: str  # this node's name


@dataclass(frozen=True)
class Service:
    """The running service, as `build_service` made it: what the routes read (those that show reports
    read only `browse`), and what `stop` stops."""

    settings: Settings
    tokens: TokenWatcher
    store: ReportStore
    metrics: Metrics
    client: httpx.AsyncClient
    apiserver: AsyncApiServer | None
    peers: PeerDirectory
    peer_client: PeerClient  # the other nodes' inspectors (forwarding alerts, fetching their reports)
    local: NodeIdentity
    prometheus: PrometheusClient | None  # the fleet from PromQL when prometheus_url is set (issue 28)
    fleet: FleetView
    sinks: list[Sink]
    outbox: Outbox
    pods: PodDirectory  # one kubelet PodList cache for the investigations and the flight recorder
    scheduler: Scheduler
    intake: Intake
    recorder: RecorderService  # the flight recorder's sampling thread and watch mode (issue 12)
    store_retry: asyncio.Task[None]
    browse: Browse

    @property
    def token(self) -> str:
        """The webhook token now (re-read when its file changed)."""
        return self.tokens.token

    def readiness(self) -> list[str]:
        reasons = []
        if not self.store.ready:
            reasons.append(self.store.reason or "report store not ready")
        if self.store.pending:
            reasons.append(f"{self.store.pending} report(s) waiting in memory for the store")
        return reasons

    async def stop(self) -> None:
        await asyncio.to_thread(self.recorder.stop)
        await self.scheduler.stop()
        self.store_retry.cancel()
        await asyncio.gather(self.outbox.stop(STOP_SINKS_SECONDS), self.intake.stop(STOP_TASKS_SECONDS))
        await asyncio.gather(self.store_retry, return_exceptions=True)
        if self.store.pending:
            await asyncio.to_thread(self.store.retry_pending)
        await asyncio.to_thread(self.store.close)
        await self.peers.aclose()
        if self.apiserver is not None:
            await self.apiserver.aclose()
        await self.client.aclose()
        if self.prometheus is not None:
            await self.prometheus.aclose()


async def _open_store(settings: StoreSettings, given: ReportStore | None) -> ReportStore:
    if given is not None:
        return given
    store = ReportStore(
        settings.data_dir,
        retention_count=settings.report_retention_count,
        retention_days=settings.report_retention_days,
    )
    await asyncio.to_thread(store.open)
    return store


async def _store_retry_loop(store: ReportStore) -> None:
    while True:
        await asyncio.sleep(STORE_RETRY_SECONDS)
        try:
            if store.pending or not store.ready:
                ok = await asyncio.to_thread(store.retry_pending)
                if ok:
                    log.info("report store writable again")
        except Exception:  # this loop is the store's way back: it must not die
            log.exception("report store retry failed; trying again in %.0fs", STORE_RETRY_SECONDS)


async def build_service(settings: Settings, seams: Seams = Seams()) -> Service:
    """Make and start the service, each part from the parts it uses (the order: the module's doc)."""
    if seams.token is None:
        tokens = TokenWatcher.from_source(await asyncio.to_thread(load_token, settings))
    else:
        tokens = TokenWatcher(seams.token)
    store = await _open_store(settings.store, seams.store)
    # httpx logs every request's URL at INFO; a Slack webhook URL is a credential.
    logs.quiet_http_clients()
    metrics = Metrics()
    metrics.watch_store(store)
    client = httpx.AsyncClient(
        transport=seams.transport, timeout=settings.delivery.sink_timeout_seconds, follow_redirects=False
    )
    apiserver = AsyncApiServer.from_settings(settings.apiserver)
    sinks = make_sinks(settings, client, apiserver)
    peers = seams.peers if seams.peers is not None else make_peer_directory(settings, apiserver)
    local = local_identity(settings.node)
    peer_client = PeerClient(
        client,
        lambda: tokens.token,
        local_node=local.name,
        forward_timeout=settings.peers.forward_timeout_seconds,
        fetch_timeout=settings.peers.peer_fetch_timeout_seconds,
    )
    prometheus = PrometheusClient.from_settings(
        settings.fleet, seams.transport, metrics.fleet_requests.labels(target="prometheus").inc
    )
    fleet = FleetView(settings.fleet, local.name, store, peers, peer_client, prometheus, metrics)
    metrics.watch_findings(fleet.findings)
    outbox = Outbox(settings.delivery, store, sinks, metrics, fleet_note=fleet.also_on)
    pods = PodDirectory(settings)
    ring = make_ring(settings.node, settings.recorder, pods)
    pipeline = ReportPipeline(
        store, outbox, metrics, LeadUps(ring), lead_up_seconds=settings.scheduler.stage_deadline_seconds
    )
    scheduler = Scheduler(settings, seams.investigator or real_investigator(pods), pipeline, metrics)
    intake = Intake(settings.web, metrics, local, peers, peer_client, scheduler)
    loop = asyncio.get_running_loop()
    recorder = RecorderService(
        settings.recorder,
        metrics.recorder,
        ring,
        on_watch=watch_submitter(loop, scheduler.submit, settings.node.node_name, metrics.recorder),
    )
    scheduler.start()
    recorder.start()
    store_retry = loop.create_task(_store_retry_loop(store), name="store-retry")
    outbox.start()
    log.info(
        "service for node %s: %d sink(s) %s; store %s",
        settings.node.node_name,
        len(sinks),
        [s.name for s in sinks],
        "ready" if store.ready else f"NOT ready: {store.reason}",
    )
    return Service(
        settings=settings, tokens=tokens, store=store, metrics=metrics, client=client, apiserver=apiserver,
        peers=peers, peer_client=peer_client, local=local, prometheus=prometheus, fleet=fleet,
        sinks=sinks, outbox=outbox, pods=pods, scheduler=scheduler, intake=intake, recorder=recorder,
        store_retry=store_retry,
        browse=Browse(store, scheduler, peers, peer_client, fleet, local.name),
    )

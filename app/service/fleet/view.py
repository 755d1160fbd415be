"""The fleet wing's data (`FleetView`): every node's reports grouped by the workload they blame, this
node's findings for /metrics, and the "also on N other nodes" line of the sinks. The page is
app.service.fleet.page; the grouping itself is pure, in app.investigation.fleet.

Two sources, one shape (`Fleet`), merged by app.investigation.fleet:
- **Prometheus** (`prometheus_url` set, issue 28): every inspector exports its findings on /metrics
  (app.investigation.findings); one PromQL query answers for the fleet (FLEET_QUERY) or for one
  workload (`also_on_query`), cached briefly (app.service.cluster.prometheus). This node's own rows
  come from its store (they hold the file and the summary too). A storm over N nodes costs N
  queries at most (one a report), however large N is.
- **Peers** (no Prometheus): this node's store (`ReportStore.workloads`) and each peer's
  (`GET /api/v1/workloads?scope=node`), at most `fleet_peer_sample` peers (a random sample when
  there are more, said so on the page and in the "also on" line), concurrently (at most
  app.service.cluster.peers.PEER_CONCURRENCY at once), with the token and the peer fetch timeout; a peer that does not answer
  is named as unreachable. A storm over N nodes costs at most fleet_peer_sample x N requests.

Every request made for it counts in `pfi_fleet_requests_total{target}`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.config import FleetSettings
from app.investigation.findings import FLEET_QUERY, Sample, also_on_query, node_rows_of, samples_of
from app.investigation.fleet import ALSO_ON_WINDOW, NodeWorkload, WorkloadRow, also_on_text, facts_of, merge
from app.models import Report, utcnow
from app.service.cluster.answers import workload_rows
from app.service.cluster.peers import Peer, PeerClient, PeerDirectory, PeerError, ask_peers
from app.service.cluster.prometheus import PrometheusClient, PrometheusError
from app.service.metrics import Metrics
from app.service.report_store import WORKLOADS_MAX, ReportStore

log = logging.getLogger(__name__)


def _rows_of(peer: Peer, docs: list[dict[str, object]]) -> list[NodeWorkload]:
    """A peer's rows, validated as our own (app.service.cluster.answers.workload_rows); one that
    does not parse makes the whole answer bad: the peer is named ("answered badly") on the page,
    once, instead of a log line per row."""
    try:
        return workload_rows(peer.node, docs, WORKLOADS_MAX)
    except ValueError as exc:
        raise PeerError(f"answered badly: {' '.join(str(exc).splitlines()[:3])[:300]}") from None


@dataclass
class Fleet:
    rows: list[WorkloadRow]
    unreachable: list[str] = field(default_factory=list)
    nodes_with_reports: int = 0  # nodes that answered with at least one report (finished or not)
    source: str = "peers"  # "prometheus" or "peers"
    peers_asked: int = 0  # peers: how many were asked ...
    peers_known: int = 0  # ... of how many (more than asked: a sample)
    max_age_seconds: float = 0.0  # prometheus: the findings' age, what the rows cover

    @property
    def sampled(self) -> bool:
        return self.source == "peers" and self.peers_asked < self.peers_known

    def coverage(self) -> str:
        """Where the rows come from, in a sentence for the page."""
        if self.source == "prometheus":
            return (
                f"from Prometheus: every node's findings of the last {self.max_age_seconds / 60:.0f} minutes"
                " (pfi_finding_* gauges; files and verdicts are on each node's report page)"
            )
        if self.sampled:
            return (
                f"asked {self.peers_asked} of {self.peers_known} peers (a random sample, fleet_peer_sample):"
                " other nodes' reports may be missing; set prometheus.url for the whole fleet"
            )
        return f"asked every peer ({self.peers_known})"


async def _prometheus_rows(
    prom: PrometheusClient, *, since: datetime | None, key: str | None
) -> tuple[list[NodeWorkload], list[str]]:
    try:
        answer = await prom.query(FLEET_QUERY if key is None else also_on_query(key))
    except PrometheusError as exc:
        log.warning("Prometheus did not answer the fleet's query: %s", exc)
        return [], [f"prometheus ({str(exc)[:200]})"]
    samples = [Sample(s.labels.get("__name__", ""), s.labels, s.value) for s in answer.samples]
    rows = [r for r in node_rows_of(samples) if since is None or r.last_seen >= since]
    if key is not None:
        rows = [r for r in rows if r.workload.key == key]
    return rows, [f"prometheus: more than {len(answer.samples)} series, the rest left out"] if answer.truncated else []


class FleetView:
    """The fleet wing: this node's findings (the pfi_finding_* gauges), every node's rows by workload
    (the fleet page), and the "also on N other nodes" line the outbox gives each report's sinks.
    Made by the composition root (app.service.root) from the parts it reads, nothing else."""

    def __init__(
        self,
        fleet: FleetSettings,
        node: str,
        store: ReportStore,
        peers: PeerDirectory,
        client: PeerClient,
        prometheus: PrometheusClient | None,
        metrics: Metrics,
    ) -> None:
        self.settings = fleet
        self.node = node  # this node's name: its own rows come from its store
        self.store = store
        self.peers = peers
        self.client = client
        self.prometheus = prometheus
        self._peer_requests = metrics.fleet_requests.labels(target="peer")

    def findings(self) -> list[Sample]:
        """This node's latest finding per workload, younger than the findings' age, at most
        findings_max_workloads of them (newest first): the pfi_finding_* gauges."""
        s = self.settings
        since = utcnow() - timedelta(seconds=s.findings_max_age_seconds)
        try:
            rows = self.store.workloads(since=since, limit=s.findings_max_workloads)
            return samples_of(self.node, (r for r in rows if r.node == self.node))
        except Exception:  # a row that does not read must not turn /metrics into a 500
            log.exception("findings left out of /metrics: the store's workload rows do not read")
            return []

    def _sample(self, peers: list[Peer]) -> list[Peer]:
        n = self.settings.fleet_peer_sample
        return list(peers) if len(peers) <= n else random.sample(peers, n)

    async def gather(self, *, since: datetime | None = None, key: str | None = None) -> Fleet:
        """Every node's rows (this store's, and Prometheus's or each sampled peer's), merged: one row a
        workload."""
        prom = self.prometheus
        local_since = since
        if prom is not None:  # the findings' age bounds what Prometheus knows: this store's rows alike
            oldest = utcnow() - timedelta(seconds=self.settings.findings_max_age_seconds)
            local_since = oldest if since is None else max(since, oldest)
        local, local_count = await asyncio.gather(
            asyncio.to_thread(self.store.workloads, since=local_since, key=key),
            asyncio.to_thread(self.store.count, finished=True),
        )
        rows = list(local)
        nodes = {self.node} if local_count else set()
        if prom is not None:
            found, unreachable = await _prometheus_rows(prom, since=since, key=key)
            rows.extend(r for r in found if r.node != self.node)
            nodes.update(r.node for r in found)
            return Fleet(
                rows=merge(rows), unreachable=unreachable, nodes_with_reports=len(nodes), source="prometheus",
                max_age_seconds=self.settings.findings_max_age_seconds,
            )

        async def ask(peer: Peer) -> tuple[list[NodeWorkload], int]:
            self._peer_requests.inc()
            docs, count = await self.client.workloads(peer, since=since, key=key, limit=WORKLOADS_MAX)
            return _rows_of(peer, docs), count

        known = await self.peers.peers()
        asked = self._sample(known)
        answers, unreachable = await ask_peers(self.peers, ask, asked)
        for peer, (peer_rows, count) in answers:
            rows.extend(peer_rows)
            if count:
                nodes.add(peer.node)
        return Fleet(
            rows=merge(rows), unreachable=unreachable, nodes_with_reports=len(nodes), source="peers",
            peers_asked=len(asked), peers_known=len(known),
        )

    async def also_on(self, report: Report) -> str:
        """`also on 11 other nodes: a, b, c, ...` when the workload the report blames had reports on
        other nodes in the last hour (ALSO_ON_WINDOW); '' when not, or when it blames nothing. Peers
        that do not answer are left out (logged): the report is posted all the same."""
        facts = facts_of(report)
        if facts is None:
            return ""
        try:
            found = await self.gather(since=utcnow() - ALSO_ON_WINDOW, key=facts.workload.key)
        except Exception:  # the summary goes out without it rather than not at all
            log.exception("report %s: cannot ask the peers about workload %s", report.id, facts.workload.label)
            return ""
        if found.unreachable:
            log.info(
                "report %s: %d peer(s) not asked about %s: %s",
                report.id,
                len(found.unreachable),
                facts.workload.label,
                "; ".join(found.unreachable[:5]),
            )
        others = sorted({n for row in found.rows for n in row.nodes} - {report.node})
        return also_on_text(others, sampled=(found.peers_asked, found.peers_known) if found.sampled else None)

"""What happens to each alert of a webhook call: ignored (and why), handed to this node's
scheduler, or forwarded to the inspector on its node. Never investigates; forwarding runs in the
background (the answer stays fast).

An alert whose first node label names this node is taken at once. Routing the others needs the
peer directory (the API server in a cluster). It runs as one task per request:
node names are checked (an IP or a DNS-1123 name, else the alert is ignored with the reason), each
distinct node is looked up once, and all misses share one refresh of the peer list. The webhook
waits for that task at most ROUTE_BUDGET_SECONDS; when the API server is slower, the answer lists
the alerts as `deferred` and the task finishes in the background (it accepts, forwards or logs
them then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from app.models import Trigger, utcnow
from app.service.alerts.payload import IncomingAlert, ParsedPayload
from app.service.cluster.nodes import (
    NODE_LABELS,
    NodeIdentity,
    Resolution,
    as_ip,
    host_is_valid,
    node_for_alert,
    split_host,
)
from app.service.cluster.peers import FORWARDED_HEADER, Peer, PeerDirectory
from app.service.scheduler import Action
from app.service.state import ServiceState

__all__ = [
    "FORWARDED_HEADER",
    "ROUTE_BUDGET_SECONDS",
    "Accepted",
    "AlertsAnswer",
    "Forwarded",
    "Ignored",
    "Outcomes",
    "forward",
    "handle_alerts",
]

log = logging.getLogger(__name__)

MAX_TRIGGER_LABELS = 64
ROUTE_BUDGET_SECONDS = 1.0


def _base(alert: IncomingAlert) -> dict[str, Any]:
    return {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status}


@dataclass(frozen=True)
class Accepted:
    """Taken by this node's scheduler: what it did (queued, joined, duplicate...) and the investigation."""

    alert: IncomingAlert
    node: str
    action: Action
    id: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {**_base(self.alert), "node": self.node, "action": self.action, "id": self.id, "reason": self.reason}


@dataclass(frozen=True)
class Forwarded:
    """Handed to the inspector on `node` (in the background)."""

    alert: IncomingAlert
    node: str

    def as_dict(self) -> dict[str, Any]:
        return {**_base(self.alert), "node": self.node}


@dataclass(frozen=True)
class Ignored:
    """Not taken, and why; also an alert whose routing goes on in the background (deferred)."""

    alert: IncomingAlert
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {**_base(self.alert), "reason": self.reason}


@dataclass
class Outcomes:
    """What happened to a batch of alerts."""

    accepted: list[Accepted] = field(default_factory=list)
    forwarded: list[Forwarded] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)

    def add(self, other: Outcomes) -> None:
        self.accepted += other.accepted
        self.forwarded += other.forwarded
        self.ignored += other.ignored


@dataclass
class AlertsAnswer:
    """The webhook's answer: every alert of the call in one of the lists."""

    node: str
    outcomes: Outcomes
    deferred: list[Ignored] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        o = self.outcomes
        answer: dict[str, Any] = {
            "node": self.node,
            "accepted": [a.as_dict() for a in o.accepted],
            "forwarded": [f.as_dict() for f in o.forwarded],
            "ignored": [i.as_dict() for i in o.ignored],
        }
        if self.deferred:
            answer["deferred"] = [d.as_dict() for d in self.deferred]
        if self.warnings:
            answer["warnings"] = list(self.warnings)
        return answer


def _trigger(alert: IncomingAlert, forwarded_from: str | None) -> Trigger:
    labels = dict(list(alert.labels.items())[:MAX_TRIGGER_LABELS])
    return Trigger(
        kind="alert",
        alertname=alert.alertname,
        fingerprint=alert.fingerprint,
        starts_at=alert.starts_at or None,
        labels=labels,
        received_at=utcnow(),
        forwarded_from=forwarded_from,
    )


@dataclass
class _Decision:
    alert: IncomingAlert
    action: Literal["local", "forward", "ignore"]
    peer: Peer | None = None
    reason: str = ""


def _pending_node(res: Resolution) -> str:
    return res.node or ""


def _surely_local(alert: IncomingAlert, local: NodeIdentity) -> bool:
    """The first node label present names this node: no other node can win (node_for_alert takes the
    first label naming a known node, this one first), so no directory is needed."""
    first = next((v for v in (alert.labels.get(k, "").strip() for k in NODE_LABELS) if v), None)
    if first is None or not host_is_valid(split_host(first)):
        return False
    res = node_for_alert(alert.labels, local, [])
    return res.kind == "local" and res.value == first


async def _route(
    peers: PeerDirectory, local: NodeIdentity, alerts: list[IncomingAlert], forwarded_from: str | None
) -> list[_Decision]:
    """Where each alert goes. The only waits are the directory's (bounded by the API deadline)."""
    others = await peers.nodes()
    out: list[_Decision] = []
    pending: dict[str, list[IncomingAlert]] = {}  # node (name or IP) -> its alerts, looked up once
    for alert in alerts:
        res = node_for_alert(alert.labels, local, others)
        if res.kind == "none":
            out.append(_Decision(alert, "ignore", reason="no node label (node, nodename, kubernetes_node or instance)"))
        elif res.kind == "invalid":
            out.append(_Decision(alert, "ignore", reason=(
                f"label {res.label} = {res.value!r} is neither a node name (DNS-1123) nor an IP address")))
        elif res.kind == "local":
            out.append(_Decision(alert, "local"))
        elif forwarded_from:
            out.append(_Decision(alert, "ignore", reason=(
                f"for node {res.node}, not this one ({local.name}), and not forwarded twice")))
        else:
            pending.setdefault(_pending_node(res), []).append(alert)
    unknown_ips: list[IncomingAlert] = []
    for node, group in pending.items():
        peer = await peers.peer_for_node(node)  # misses share one refresh of the list
        if peer is not None:
            out.extend(_Decision(a, "forward", peer=peer) for a in group)
        elif as_ip(node) is not None:
            unknown_ips.extend(group)
        else:
            out.extend(_Decision(a, "ignore", reason=_no_inspector(peers, node)) for a in group)
    if unknown_ips:  # the refreshed list may know the node's addresses now
        others = await peers.nodes()
        for alert in unknown_ips:
            res = node_for_alert(alert.labels, local, others)
            peer = await peers.peer_for_node(res.node) if res.kind == "remote" and res.node else None
            if res.kind == "local":
                out.append(_Decision(alert, "local"))
            elif peer is not None:
                out.append(_Decision(alert, "forward", peer=peer))
            else:
                out.append(_Decision(alert, "ignore", reason=_no_inspector(peers, res.node or "?")))
    return out


class _UnroutedLog:
    """Alerts for nodes with no inspector, logged as one line a request naming UNROUTED_SHOWN nodes,
    and at most one line every UNROUTED_LOG_SECONDS (what was not logged is counted in the next):
    one request naming 1,000 unknown nodes wrote 1,000 WARNING lines."""

    def __init__(self) -> None:
        self._logged_at = float("-inf")
        self._held_alerts = 0
        self._held_nodes = 0

    def note(self, unrouted: dict[str, int]) -> None:
        now = time.monotonic()
        if now - self._logged_at < UNROUTED_LOG_SECONDS:
            self._held_alerts += sum(unrouted.values())
            self._held_nodes += len(unrouted)
            return
        self._logged_at = now
        shown = sorted(unrouted.items(), key=lambda kv: (-kv[1], kv[0]))[:UNROUTED_SHOWN]
        more = len(unrouted) - len(shown)
        held = (
            f" (and {self._held_alerts} alert(s) for {self._held_nodes} node(s) not logged in the last"
            f" {UNROUTED_LOG_SECONDS:g}s)"
            if self._held_alerts
            else ""
        )
        log.warning(
            "%d alert(s) for %d node(s) not routed: %s%s%s",
            sum(unrouted.values()),
            len(unrouted),
            "; ".join(f"{n} x {reason}" for reason, n in shown),
            f"; and {more} more node(s)" if more else "",
            held,
        )
        self._held_alerts = self._held_nodes = 0


UNROUTED_SHOWN = 5
UNROUTED_LOG_SECONDS = 10.0


def _unrouted_log(state: ServiceState) -> _UnroutedLog:
    """The service's own limiter (one per ServiceState, kept on it: two services in one process, as
    in the tests, do not silence each other)."""
    found = vars(state).setdefault("_unrouted_log", _UnroutedLog())
    assert isinstance(found, _UnroutedLog)
    return found


def _no_inspector(peers: PeerDirectory, node: str) -> str:
    why = f"no inspector on node {node}"
    return f"{why} ({peers.error})" if peers.error else why


async def handle_alerts(state: ServiceState, parsed: ParsedPayload, forwarded_from: str | None) -> AlertsAnswer:
    outcomes = Outcomes()
    deferred: list[Ignored] = []
    names = state.settings.web.alertname_set()
    metrics = state.metrics.alerts

    wanted = [a for a in parsed.alerts if a.alertname in names]
    for alert in parsed.alerts:
        if alert.alertname not in names:
            outcomes.ignored.append(Ignored(alert, (
                f"alertname {alert.alertname!r} is not one of PFI_ALERTNAMES ({', '.join(sorted(names))})")))
            metrics.labels(outcome="ignored").inc()
    here = [_Decision(a, "local") for a in wanted if _surely_local(a, state.local)]
    wanted = [a for a in wanted if not _surely_local(a, state.local)]
    outcomes.add(_apply(state, parsed, here, forwarded_from))
    if wanted:
        task = asyncio.get_running_loop().create_task(_route(state.peers, state.local, wanted, forwarded_from))
        done, _ = await asyncio.wait({task}, timeout=ROUTE_BUDGET_SECONDS)
        if task in done:
            outcomes.add(_apply(state, parsed, _decisions(task, wanted), forwarded_from))
        elif state.spawn(_apply_later(state, parsed, task, wanted, forwarded_from), "route-alerts"):
            reason = (f"the node lookup (API server) takes longer than {ROUTE_BUDGET_SECONDS:g}s: "
                      "accepted or forwarded in the background, see the logs")
            for alert in wanted:
                deferred.append(Ignored(alert, reason))
                metrics.labels(outcome="deferred").inc()
        else:
            task.cancel()
            for alert in wanted:
                outcomes.ignored.append(Ignored(alert, "too much background work: node lookup refused"))
                metrics.labels(outcome="ignored").inc()
    return AlertsAnswer(state.local.name, outcomes, deferred, list(parsed.warnings))


def _decisions(task: asyncio.Task[list[_Decision]], wanted: list[IncomingAlert]) -> list[_Decision]:
    exc = task.exception()
    if exc is None:
        return task.result()
    log.error("routing %d alert(s) failed: %s: %s", len(wanted), type(exc).__name__, exc)
    return [_Decision(a, "ignore", reason=f"node lookup failed: {type(exc).__name__}") for a in wanted]


async def _apply_later(
    state: ServiceState,
    parsed: ParsedPayload,
    task: asyncio.Task[list[_Decision]],
    wanted: list[IncomingAlert],
    forwarded_from: str | None,
) -> None:
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        raise
    done = _apply(state, parsed, _decisions(task, wanted), forwarded_from)
    log.info(
        "deferred routing of %d alert(s): %d accepted, %d forwarded, %d ignored",
        len(wanted), len(done.accepted), len(done.forwarded), len(done.ignored),
    )


def _apply(
    state: ServiceState,
    parsed: ParsedPayload,
    decisions: list[_Decision],
    forwarded_from: str | None,
) -> Outcomes:
    """Carry the decisions out: submit to the scheduler, forward (in the background), or ignore."""
    out = Outcomes()
    metrics = state.metrics.alerts
    to_peer: dict[str, tuple[Peer, list[IncomingAlert]]] = {}
    unrouted: dict[str, int] = {}

    def ignore(alert: IncomingAlert, reason: str) -> None:
        out.ignored.append(Ignored(alert, reason))
        metrics.labels(outcome="ignored").inc()

    for d in decisions:
        alert = d.alert
        if d.action == "ignore":
            ignore(alert, d.reason)
            if d.reason.startswith("no inspector on node"):
                unrouted[d.reason] = unrouted.get(d.reason, 0) + 1
            continue
        if d.action == "forward" and d.peer is not None:
            to_peer.setdefault(d.peer.url, (d.peer, []))[1].append(alert)
            continue
        trigger = _trigger(alert, forwarded_from)
        if alert.status == "firing":
            sub = state.scheduler.submit(trigger, alert.key)
        else:
            sub = state.scheduler.on_alert_resolved(alert.key)
        if sub.action == "ignored":
            ignore(alert, sub.reason)
            continue
        out.accepted.append(Accepted(alert, state.local.name, sub.action, sub.investigation_id, sub.reason))
        metrics.labels(outcome=sub.action).inc()
    if unrouted:
        _unrouted_log(state).note(unrouted)

    for peer, alerts in to_peer.values():
        body = {**parsed.envelope, "alerts": [a.raw for a in alerts]}
        if state.spawn(forward(state, peer, body), f"forward-{peer.node}"):
            for a in alerts:
                out.forwarded.append(Forwarded(a, peer.node))
                metrics.labels(outcome="forwarded").inc()
        else:
            for a in alerts:
                ignore(a, f"forwarding backlog full: alert for node {peer.node} not forwarded")
    return out


async def forward(state: ServiceState, peer: Peer, body: dict[str, Any]) -> bool:
    """Forward alerts to a peer (PeerClient.forward), counted and logged."""
    n = len(body.get("alerts", []))
    problem = await state.peer_client().forward(peer, body)
    if problem is None:
        log.info("forwarded %d alert(s) to the inspector on node %s (%s)", n, peer.node, peer.url)
        state.metrics.forwards.labels(outcome="ok").inc()
        return True
    log.error("forwarding %d alert(s) to node %s (%s) failed: %s", n, peer.node, peer.url, problem)
    state.metrics.forwards.labels(outcome="failed").inc()
    return False

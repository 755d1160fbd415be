"""What happens to each alert of a webhook call: ignored (and why), handed to this node's single
flight, or forwarded to the inspector on its node. Never investigates; forwarding runs in the
background (the answer stays fast). Peer lookups are cached and bounded by the API timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from app.models import Trigger, utcnow
from app.service.nodes import as_ip, resolve_node
from app.service.payload import IncomingAlert, ParsedPayload
from app.service.peers import Peer
from app.service.state import ServiceState

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-PFI-Forwarded-From"
FORWARD_ATTEMPTS = 3
MAX_TRIGGER_LABELS = 64


def _base(alert: IncomingAlert) -> dict[str, Any]:
    return {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status}


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


async def handle_alerts(
    state: ServiceState, parsed: ParsedPayload, forwarded_from: str | None
) -> dict[str, Any]:
    accepted: list[dict[str, Any]] = []
    forwarded: list[dict[str, Any]] = []
    ignored: list[dict[str, Any]] = []
    names = state.settings.alertname_set()
    metrics = state.metrics.alerts

    def ignore(alert: IncomingAlert, reason: str) -> None:
        ignored.append({**_base(alert), "reason": reason})
        metrics.labels(outcome="ignored").inc()

    wanted = [a for a in parsed.alerts if a.alertname in names]
    for alert in parsed.alerts:
        if alert.alertname not in names:
            ignore(
                alert,
                f"alertname {alert.alertname!r} is not one of PFI_ALERTNAMES ({', '.join(sorted(names))})",
            )
    others = await state.peers.nodes() if wanted else []
    to_peer: dict[str, tuple[Peer, list[IncomingAlert]]] = {}

    for alert in wanted:
        res = resolve_node(alert.labels, state.local, others)
        if res.kind == "none":
            ignore(alert, "no node label (node, nodename, kubernetes_node or instance)")
            continue
        if res.kind == "local":
            trigger = _trigger(alert, forwarded_from)
            if alert.status == "firing":
                sub = state.scheduler.submit(trigger, alert.key)
            else:
                sub = state.scheduler.resolve(alert.key)
            if sub.action == "ignored":
                ignore(alert, sub.reason)
                continue
            accepted.append(
                {
                    **_base(alert),
                    "node": state.local.name,
                    "action": sub.action,
                    "id": sub.investigation_id,
                    "reason": sub.reason,
                }
            )
            metrics.labels(outcome=sub.action).inc()
            continue
        node = res.node or ""
        if forwarded_from:
            ignore(alert, f"for node {node}, not this one ({state.local.name}), and not forwarded twice")
            continue
        peer = None
        if res.kind == "remote" or as_ip(node) is None:
            peer = await state.peers.peer_for_node(node)
        if peer is None:
            why = f"no inspector on node {node}"
            if state.peers.error:
                why += f" ({state.peers.error})"
            log.warning("alert %s (%s=%s): %s", alert.fingerprint, res.label, res.value, why)
            ignore(alert, why)
            continue
        to_peer.setdefault(peer.url, (peer, []))[1].append(alert)

    for peer, alerts in to_peer.values():
        body = {**parsed.envelope, "alerts": [a.raw for a in alerts]}
        if state.spawn(forward(state, peer, body), f"forward-{peer.node}"):
            for a in alerts:
                forwarded.append({**_base(a), "node": peer.node})
                metrics.labels(outcome="forwarded").inc()
        else:
            for a in alerts:
                ignore(a, f"forwarding backlog full: alert for node {peer.node} not forwarded")

    answer: dict[str, Any] = {
        "node": state.local.name,
        "accepted": accepted,
        "forwarded": forwarded,
        "ignored": ignored,
    }
    if parsed.warnings:
        answer["warnings"] = parsed.warnings
    return answer


async def forward(state: ServiceState, peer: Peer, body: dict[str, Any]) -> bool:
    """POST the alerts to the peer's webhook with the same token, marked as forwarded; retried on
    network errors and 5xx, not on 4xx (the peer said no: retrying will not change it)."""
    url = f"{peer.url}/api/v1/alerts"
    headers = {"Authorization": f"Bearer {state.token}", FORWARDED_HEADER: state.local.name}
    n = len(body.get("alerts", []))
    for attempt in range(1, FORWARD_ATTEMPTS + 1):
        try:
            resp = await state.client.post(
                url, json=body, headers=headers, timeout=state.settings.forward_timeout_seconds
            )
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code < 300:
                log.info("forwarded %d alert(s) to the inspector on node %s (%s)", n, peer.node, peer.url)
                state.metrics.forwards.labels(outcome="ok").inc()
                return True
            problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if resp.status_code < 500:
                break
        if attempt < FORWARD_ATTEMPTS:
            await asyncio.sleep(0.5 * 2 ** (attempt - 1))
    log.error("forwarding %d alert(s) to node %s (%s) failed: %s", n, peer.node, peer.url, problem)
    state.metrics.forwards.labels(outcome="failed").inc()
    return False

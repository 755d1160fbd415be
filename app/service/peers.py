"""The inspector pods on the other nodes (the DaemonSet's peers), and the nodes' names and IPs.

Three directories behind one small interface:
- `KubePeers`: the API server. Pods of this DaemonSet (`settings.namespace`, `peer_label_selector`),
  listed whole and cached `peer_cache_seconds`; a node missing from the cache is looked up with the
  `spec.nodeName` field selector (at most every few seconds). A pod's `status.hostIP` is its node's
  IP; `GET nodes` adds the other nodes' addresses when RBAC allows it (best effort).
- `StaticPeers`: a fixed list (`PFI_STATIC_PEERS`), for machines without Kubernetes and the tests.
- `NoPeers`: a single machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from app.config import Settings
from app.service.kube import KubeApi, KubeError, service_account_namespace
from app.service.nodes import NodeIdentity, as_ip, names_match

log = logging.getLogger(__name__)

MISS_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class Peer:
    node: str
    url: str  # base URL of its API, e.g. http://10.244.1.7:8080
    ips: frozenset[str] = frozenset()  # its node's IPs


class PeerDirectory(Protocol):
    error: str | None  # the last lookup problem, for logs and answers

    async def nodes(self) -> list[NodeIdentity]: ...

    async def peer_for_node(self, node: str) -> Peer | None: ...

    async def peers(self) -> list[Peer]: ...

    async def aclose(self) -> None: ...


class NoPeers:
    error: str | None = None

    async def nodes(self) -> list[NodeIdentity]:
        return []

    async def peer_for_node(self, node: str) -> Peer | None:
        return None

    async def peers(self) -> list[Peer]:
        return []

    async def aclose(self) -> None:
        return None


def parse_static_peers(spec: str, own_node: str) -> list[Peer]:
    """`node-b@10.0.3.8=http://10.0.3.8:8080, node-c=http://127.0.0.1:18081` (IPs optional, `@`
    separated)."""
    peers = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"static peer {item!r}: expected NODE[@IP...]=URL")
        left, url = item.split("=", 1)
        name, *ips = [p.strip() for p in left.split("@")]
        if not name or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"static peer {item!r}: expected NODE[@IP...]=http(s)://HOST:PORT")
        if names_match(name, own_node):
            continue
        peers.append(Peer(node=name, url=url.strip().rstrip("/"), ips=frozenset(i for i in ips if as_ip(i))))
    return peers


class StaticPeers:
    error: str | None = None

    def __init__(self, peers: list[Peer]) -> None:
        self._peers = peers

    async def nodes(self) -> list[NodeIdentity]:
        return [NodeIdentity(p.node, p.ips) for p in self._peers]

    async def peer_for_node(self, node: str) -> Peer | None:
        return next((p for p in self._peers if names_match(p.node, node)), None)

    async def peers(self) -> list[Peer]:
        return list(self._peers)

    async def aclose(self) -> None:
        return None


def _pod_is_usable(pod: dict[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return (
        not meta.get("deletionTimestamp") and status.get("phase") == "Running" and bool(status.get("podIP"))
    )


class KubePeers:
    def __init__(self, api: KubeApi, settings: Settings, namespace: str, selector: str) -> None:
        self.api = api
        self.own_node = settings.node_name
        self.port = settings.peer_port
        self.ttl = settings.peer_cache_seconds
        self.namespace = namespace
        self.selector = selector
        self.error: str | None = None
        self._peers: dict[str, Peer] = {}
        self._node_ips: dict[str, frozenset[str]] = {}
        self._fetched_at: float | None = None
        self._nodes_forbidden = False
        self._miss_at: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def _peer_from_pod(self, pod: dict[str, Any]) -> Peer | None:
        if not _pod_is_usable(pod):
            return None
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        node = spec.get("nodeName")
        if not node:
            return None
        pod_ip = status["podIP"]
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        host_ip = status.get("hostIP")
        ips = frozenset({host_ip} if host_ip else set()) | frozenset(
            a.get("ip", "") for a in status.get("hostIPs") or [] if a.get("ip")
        )
        return Peer(node=node, url=f"http://{host}:{self.port}", ips=ips)

    async def _list_pods(self, field_selector: str | None = None) -> list[Peer]:
        params = {"labelSelector": self.selector}
        if field_selector:
            params["fieldSelector"] = field_selector
        body = await self.api.get(f"/api/v1/namespaces/{self.namespace}/pods", params)
        found = [self._peer_from_pod(p) for p in (body or {}).get("items") or []]
        return [p for p in found if p is not None]

    async def _list_nodes(self) -> dict[str, frozenset[str]]:
        if self._nodes_forbidden:
            return {}
        try:
            body = await self.api.get("/api/v1/nodes")
        except KubeError as exc:
            if "HTTP 403" in str(exc):
                self._nodes_forbidden = True  # RBAC: pods' hostIP is enough for nodes with a peer
                log.info("no RBAC to list nodes; node IPs come from the peer pods' hostIP")
                return {}
            raise
        out: dict[str, frozenset[str]] = {}
        for node in (body or {}).get("items") or []:
            name = (node.get("metadata") or {}).get("name")
            if not name:
                continue
            addrs = (node.get("status") or {}).get("addresses") or []
            out[name] = frozenset(a["address"] for a in addrs if a.get("address") and as_ip(a["address"]))
        return out

    async def _refresh(self, force: bool = False) -> None:
        async with self._lock:
            now = time.monotonic()
            if not force and self._fetched_at is not None and now - self._fetched_at < self.ttl:
                return
            try:
                peers = await self._list_pods()
                node_ips = await self._list_nodes()
            except KubeError as exc:
                self.error = f"cannot list inspector pods: {exc}"
                log.warning("%s (using the cached list of %d)", self.error, len(self._peers))
                self._fetched_at = now  # do not hammer a failing API server; retry after the TTL
                return
            self._peers = {p.node: p for p in peers if not names_match(p.node, self.own_node)}
            if node_ips:
                self._node_ips = node_ips
            self._fetched_at = now
            self.error = None

    async def nodes(self) -> list[NodeIdentity]:
        await self._refresh()
        ips: dict[str, set[str]] = {n: set(a) for n, a in self._node_ips.items()}
        for p in self._peers.values():
            ips.setdefault(p.node, set()).update(p.ips)
        return [NodeIdentity(n, frozenset(a)) for n, a in ips.items() if not names_match(n, self.own_node)]

    async def peer_for_node(self, node: str) -> Peer | None:
        await self._refresh()
        hit = next((p for p in self._peers.values() if names_match(p.node, node)), None)
        if hit is not None:
            return hit
        now = time.monotonic()
        if now - self._miss_at.get(node, -1e9) < MISS_REFRESH_SECONDS:
            return None
        self._miss_at[node] = now
        if len(self._miss_at) > 1000:
            self._miss_at.clear()
        try:
            found = await self._list_pods(field_selector=f"spec.nodeName={node}")
        except KubeError as exc:
            self.error = f"cannot look up the inspector on node {node}: {exc}"
            log.warning("%s", self.error)
            return None
        for p in found:
            if not names_match(p.node, self.own_node):
                self._peers[p.node] = p
                return p
        return None

    async def peers(self) -> list[Peer]:
        await self._refresh()
        return list(self._peers.values())

    async def aclose(self) -> None:
        return None  # the KubeApi belongs to the service state, which closes it


def make_peer_directory(settings: Settings, api: KubeApi | None) -> PeerDirectory:
    if settings.static_peers:
        return StaticPeers(parse_static_peers(settings.static_peers, settings.node_name))
    if api is None:
        return NoPeers()
    namespace = settings.namespace or service_account_namespace()
    if not namespace or not settings.peer_label_selector:
        log.warning(
            "in a cluster but PFI_NAMESPACE/PFI_PEER_LABEL_SELECTOR unset: alerts for other nodes are not forwarded"
        )
        return NoPeers()
    return KubePeers(api, settings, namespace, settings.peer_label_selector)

"""The inspector pods on the other nodes (the DaemonSet's peers), the nodes' names and IPs, and the
one client that talks to peers.

Three directories behind one small interface:
- `KubePeers`: the API server. Pods of this DaemonSet (`settings.peers.namespace`, `peer_label_selector`),
  listed whole and cached `peer_cache_seconds`. A node missing from the list makes the list be
  fetched again, at most every MISS_REFRESH_SECONDS and by one caller at a time however many
  alerts (and nodes) miss: no per-node query, so no label value ever reaches a selector. A pod's
  `status.hostIP` is its node's IP; `GET nodes` adds the other nodes' addresses when RBAC allows.
  Node names from the API server are used only when they are DNS-1123 names.
- `StaticPeers`: a fixed list (`PFI_STATIC_PEERS`), for machines without Kubernetes and the tests.
- `NoPeers`: a single machine.

`PeerClient`: forward alerts to a peer, list its reports, workloads and investigations, get one report. It
needs an httpx client, the token and the timeouts, nothing else of the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError

from app.collectors.apiserver import is_node_name
from app.config import ApiServerSettings, NodeSettings, PeerSettings
from app.service.cluster.answers import INVESTIGATION_ROWS, REPORT_ROWS, rows_of
from app.service.cluster.kube import ApiServerError, AsyncApiServer, service_account_namespace
from app.service.cluster.nodes import NodeIdentity, as_ip, names_match
from app.service.errors import ServiceError

log = logging.getLogger(__name__)

MISS_REFRESH_SECONDS = 5.0
PEER_CONCURRENCY = 32  # peers asked at once: a fleet of thousands is asked in waves, not all at once
T = TypeVar("T")
FORWARDED_HEADER = "X-PFI-Forwarded-From"
FORWARD_ATTEMPTS = 3
# The most a peer's answer may hold, in bytes: our own report list of 500 rows is ~300 KiB and a
# report document a few MiB; past this the peer answered badly (a 150,000-row list was 100 MB).
PEER_ANSWER_MAX_BYTES = 16 * 1024 * 1024
INVESTIGATIONS_MAX = 1_000  # rows of a peer's /api/v1/investigations (its queue is far smaller)


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


class PeerLookupSettings(Protocol):
    """What finding peers reads: the peers group, this node's name, and the API server's group (its service account names the namespace). `app.config.Settings` is one."""

    @property
    def peers(self) -> PeerSettings: ...

    @property
    def node(self) -> NodeSettings: ...

    @property
    def apiserver(self) -> ApiServerSettings: ...


class KubePeers:
    def __init__(self, api: AsyncApiServer, settings: PeerLookupSettings, namespace: str, selector: str) -> None:
        self.api = api
        self.own_node = settings.node.node_name
        self.port = settings.peers.peer_port
        self.ttl = settings.peers.peer_cache_seconds
        self.namespace = namespace
        self.selector = selector
        self.error: str | None = None
        self._peers: dict[str, Peer] = {}
        self._node_ips: dict[str, frozenset[str]] = {}
        self._fetched_at: float | None = None
        self._nodes_forbidden = False
        self._lock = asyncio.Lock()
        self.fetches = 0  # how often the list was fetched (tests, logs)

    def _peer_from_pod(self, pod: dict[str, Any]) -> Peer | None:
        if not _pod_is_usable(pod):
            return None
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        node = spec.get("nodeName")
        if not isinstance(node, str) or not is_node_name(node):
            return None  # not a name the API server would give a Node: not trusted
        pod_ip = as_ip(str(status["podIP"]))
        if pod_ip is None:
            return None
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        host_ip = status.get("hostIP")
        ips = frozenset({host_ip} if host_ip else set()) | frozenset(
            a.get("ip", "") for a in status.get("hostIPs") or [] if a.get("ip")
        )
        return Peer(node=node, url=f"http://{host}:{self.port}", ips=ips)

    async def _list_pods(self) -> list[Peer]:
        body = await self.api.list_pods(self.namespace, self.selector)
        found = [self._peer_from_pod(p) for p in (body or {}).get("items") or [] if isinstance(p, dict)]
        return [p for p in found if p is not None]

    async def _list_nodes(self) -> dict[str, frozenset[str]]:
        if self._nodes_forbidden:
            return {}
        try:
            body = await self.api.list_nodes()
        except ApiServerError as exc:
            if "answered 403" in str(exc):
                self._nodes_forbidden = True  # RBAC: pods' hostIP is enough for nodes with a peer
                log.info("no RBAC to list nodes; node IPs come from the peer pods' hostIP")
                return {}
            raise
        out: dict[str, frozenset[str]] = {}
        for node in (body or {}).get("items") or []:
            name = (node.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not is_node_name(name):
                continue
            addrs = (node.get("status") or {}).get("addresses") or []
            out[name] = frozenset(a["address"] for a in addrs if a.get("address") and as_ip(a["address"]))
        return out

    async def _refresh(self, *, miss: bool = False) -> None:
        """Fetch the list when it is older than the TTL, or (a node was missed) older than
        MISS_REFRESH_SECONDS. One caller fetches; the others wait for its answer."""
        async with self._lock:
            now = time.monotonic()
            max_age = MISS_REFRESH_SECONDS if miss else self.ttl
            if self._fetched_at is not None and now - self._fetched_at < max_age:
                return
            self.fetches += 1
            try:
                peers = await self._list_pods()
                node_ips = await self._list_nodes()
            except ApiServerError as exc:
                self.error = f"cannot list inspector pods: {exc}"
                log.warning("%s (using the cached list of %d)", self.error, len(self._peers))
                self._fetched_at = time.monotonic()  # do not hammer a failing API server
                return
            self._peers = {p.node: p for p in peers if not names_match(p.node, self.own_node)}
            if node_ips:
                self._node_ips = node_ips
            self._fetched_at = time.monotonic()
            self.error = None

    async def nodes(self) -> list[NodeIdentity]:
        await self._refresh()
        ips: dict[str, set[str]] = {n: set(a) for n, a in self._node_ips.items()}
        for p in self._peers.values():
            ips.setdefault(p.node, set()).update(p.ips)
        return [NodeIdentity(n, frozenset(a)) for n, a in ips.items() if not names_match(n, self.own_node)]

    def _find(self, node: str) -> Peer | None:
        return next((p for p in self._peers.values() if names_match(p.node, node)), None)

    async def peer_for_node(self, node: str) -> Peer | None:
        await self._refresh()
        hit = self._find(node)
        if hit is None:
            await self._refresh(miss=True)
            hit = self._find(node)
        return hit

    async def peers(self) -> list[Peer]:
        await self._refresh()
        return list(self._peers.values())

    async def aclose(self) -> None:
        return None  # the AsyncApiServer belongs to the service (app.service.root), which closes it


def make_peer_directory(settings: PeerLookupSettings, api: AsyncApiServer | None) -> PeerDirectory:
    if settings.peers.static_peers:
        return StaticPeers(parse_static_peers(settings.peers.static_peers, settings.node.node_name))
    if api is None:
        return NoPeers()
    namespace = settings.peers.namespace or service_account_namespace(settings.apiserver)
    if not namespace or not settings.peers.peer_label_selector:
        log.warning(
            "in a cluster but PFI_NAMESPACE/PFI_PEER_LABEL_SELECTOR unset: alerts for other nodes are not forwarded"
        )
        return NoPeers()
    return KubePeers(api, settings, namespace, settings.peers.peer_label_selector)


# --- talking to peers --------------------------------------------------------------------------------


class PeerError(ServiceError):
    """A peer did not give what was asked (unreachable, timed out, HTTP error, not JSON, not the
    rows asked for: "answered badly")."""


def _first_line(exc: BaseException) -> str:
    """A short reason: the first lines of a ValidationError (which names the field), bounded."""
    text = " ".join(str(exc).splitlines()[:3])
    return text[:300]


class _Dropped(Exception):
    """The connection failed under a GET (reset, closed, broken mid-answer): worth one more try."""


def _transport_problem(exc: httpx.HTTPError) -> str:
    """'ReadError: [Errno 104] Connection reset by peer': the error's type, and its text when it has one."""
    text = _first_line(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PeerClient:
    """The inspector on another node, over HTTP with the shared webhook token."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        token: Callable[[], str],
        *,
        local_node: str,
        forward_timeout: float,
        fetch_timeout: float,
        retry_delay: float = 0.5,
    ) -> None:
        self.client = client
        self.token = token
        self.local_node = local_node
        self.forward_timeout = forward_timeout
        self.fetch_timeout = fetch_timeout
        self.retry_delay = retry_delay

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    async def forward(self, peer: Peer, body: dict[str, Any]) -> str | None:
        """POST alerts to the peer's webhook, marked as forwarded; retried on network errors and
        5xx, not on 4xx (the peer said no). None when delivered, else the problem."""
        url = f"{peer.url}/api/v1/alerts"
        headers = {**self._headers(), FORWARDED_HEADER: self.local_node}
        problem = "not tried"
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            try:
                resp = await self.client.post(url, json=body, headers=headers, timeout=self.forward_timeout)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    return None
                problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code < 500:
                    break
            if attempt < FORWARD_ATTEMPTS:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
        return problem

    async def _get(self, peer: Peer, path: str, parse: Callable[[bytes], Any] = json.loads) -> Any:
        """GET from the peer: the answer read to at most PEER_ANSWER_MAX_BYTES within the fetch
        timeout as a whole (not per read: a peer trickling bytes is cut off), then `parse`d (JSON,
        and validation) in a thread, off the event loop. PeerError says what went wrong; one that
        starts "answered badly" is a peer that answered, but not with what we asked for."""
        try:
            async with asyncio.timeout(self.fetch_timeout):
                try:
                    body = await self._read(peer, path)
                except _Dropped:
                    # A GET is safe to ask again: once, on a new connection, within the same deadline
                    # (a kept-alive connection reset under load once dropped a peer from a fleet page).
                    body = await self._read(peer, path, again=True)
        except TimeoutError:
            raise PeerError(f"no complete answer within {self.fetch_timeout:g}s") from None
        try:
            return await asyncio.to_thread(parse, body)
        except (ValueError, RecursionError) as exc:  # not JSON, or not the rows (ValidationError)
            raise PeerError(f"answered badly: {_first_line(exc)}") from None

    async def _read(self, peer: Peer, path: str, *, again: bool = False) -> bytes:
        """The answer's bytes; _Dropped when the connection failed under the request (asked `again`:
        a PeerError naming the error)."""
        try:
            async with self.client.stream(
                "GET", f"{peer.url}{path}", headers=self._headers(), timeout=self.fetch_timeout
            ) as resp:
                if resp.status_code >= 400:
                    raise PeerError(f"HTTP {resp.status_code}")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > PEER_ANSWER_MAX_BYTES:
                    raise PeerError(f"answered badly: {declared} bytes, over {PEER_ANSWER_MAX_BYTES}")
                buf = bytearray()
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > PEER_ANSWER_MAX_BYTES:
                        raise PeerError(f"answered badly: over {PEER_ANSWER_MAX_BYTES} bytes")
                return bytes(buf)
        except httpx.TransportError as exc:
            if not again and not isinstance(exc, httpx.TimeoutException | httpx.ConnectError):
                raise _Dropped from None
            raise PeerError(_transport_problem(exc)) from None
        except httpx.HTTPError as exc:
            raise PeerError(_transport_problem(exc)) from None

    async def reports(self, peer: Peer, limit: int) -> list[dict[str, Any]]:
        """The peer's report list, each row validated as app.service.cluster.answers.ReportRow."""
        return list(
            await self._get(
                peer,
                f"/api/v1/reports?limit={limit}",
                lambda b: rows_of(json.loads(b), "reports", REPORT_ROWS, limit),
            )
        )

    async def workloads(
        self, peer: Peer, *, since: datetime | None, key: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The peer's own reports grouped by workload (`scope=node`: it does not ask its peers in
        turn), and how many reports it holds."""
        params: dict[str, str | int] = {"scope": "node", "limit": limit}
        if since is not None:
            params["since"] = since.astimezone(UTC).isoformat()
        if key is not None:
            params["key"] = key
        doc = await self._get(peer, "/api/v1/workloads?" + urlencode(params))
        rows = doc.get("workloads") if isinstance(doc, dict) else None
        count = doc.get("reports") if isinstance(doc, dict) else None
        if isinstance(rows, list) and len(rows) > limit:  # rows are validated by the caller (fleet)
            raise PeerError(f"answered badly: {len(rows)} workloads, more than the {limit} asked for")
        return [r for r in rows or [] if isinstance(r, dict)], count if isinstance(count, int) else 0

    async def investigations(self, peer: Peer) -> list[dict[str, Any]]:
        """The peer's queued and running investigations, validated as InvestigationRow."""
        return list(
            await self._get(
                peer,
                "/api/v1/investigations",
                lambda b: rows_of(json.loads(b), "investigations", INVESTIGATION_ROWS, INVESTIGATIONS_MAX),
            )
        )

    async def report(self, peer: Peer, report_id: str) -> dict[str, Any] | None:
        """The report document, or None when the peer has no such report (404)."""
        try:
            doc = await self._get(peer, f"/api/v1/reports/{report_id}")
        except PeerError as exc:
            if str(exc) == "HTTP 404":
                return None
            raise
        return doc if isinstance(doc, dict) else None


async def ask_peers(
    directory: PeerDirectory, ask: Callable[[Peer], Awaitable[T]], peers: list[Peer] | None = None
) -> tuple[list[tuple[Peer, T]], list[str]]:
    """`ask` every peer (or those given; at most PEER_CONCURRENCY at once): the answers, and the
    peers that did not answer with the reason (`node (HTTP 503)`), plus the peer directory's own
    problem."""
    if peers is None:
        peers = await directory.peers()
    gate = asyncio.Semaphore(PEER_CONCURRENCY)

    async def one(peer: Peer) -> T:
        async with gate:
            return await ask(peer)

    results = await asyncio.gather(*(one(p) for p in peers), return_exceptions=True)
    answers: list[tuple[Peer, T]] = []
    unreachable: list[str] = []
    for peer, result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation and the like are not a peer's answer
            reason = str(result) if isinstance(result, PeerError | ValidationError) else type(result).__name__
            unreachable.append(f"{peer.node} ({reason[:200]})")
            continue
        answers.append((peer, result))
    if directory.error:
        unreachable.append(f"peer list: {directory.error}")
    return answers, unreachable

"""Which node an alert names: a table, one quirk a row; and the peer directories."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.service.kube import KubeApi
from app.service.nodes import NodeIdentity, Resolution, names_match, resolve_node, split_host
from app.service.peers import KubePeers, parse_static_peers
from tests.service_support import make_settings

LOCAL = NodeIdentity("ip-10-0-3-7.ec2.internal", frozenset({"10.0.3.7", "fd00::7"}))
OTHERS = [
    NodeIdentity("ip-10-0-3-8.ec2.internal", frozenset({"10.0.3.8"})),
    NodeIdentity("worker-b", frozenset({"10.0.4.2"})),
]

CASES: list[tuple[str, dict[str, str], Resolution]] = [
    (
        "node label, exact",
        {"node": "ip-10-0-3-7.ec2.internal"},
        Resolution("local", LOCAL.name, "node", "ip-10-0-3-7.ec2.internal"),
    ),
    (
        "nodename, short name vs FQDN",
        {"nodename": "ip-10-0-3-7"},
        Resolution("local", LOCAL.name, "nodename", "ip-10-0-3-7"),
    ),
    (
        "kubernetes_node, another node",
        {"kubernetes_node": "worker-b"},
        Resolution("remote", "worker-b", "kubernetes_node", "worker-b"),
    ),
    (
        "instance as node name (kube-prometheus)",
        {"instance": "worker-b"},
        Resolution("remote", "worker-b", "instance", "worker-b"),
    ),
    (
        "instance IP:port (kube-prometheus-stack)",
        {"instance": "10.0.3.8:9100"},
        Resolution("remote", "ip-10-0-3-8.ec2.internal", "instance", "10.0.3.8:9100"),
    ),
    (
        "instance is this node's IP",
        {"instance": "10.0.3.7:9100"},
        Resolution("local", LOCAL.name, "instance", "10.0.3.7:9100"),
    ),
    (
        "instance [IPv6]:port",
        {"instance": "[fd00::7]:9100"},
        Resolution("local", LOCAL.name, "instance", "[fd00::7]:9100"),
    ),
    (
        "instance hostname:port, FQDN",
        {"instance": "worker-b.corp.example:9100"},
        Resolution("remote", "worker-b", "instance", "worker-b.corp.example:9100"),
    ),
    ("case differs", {"instance": "WORKER-B"}, Resolution("remote", "worker-b", "instance", "WORKER-B")),
    (
        "loopback: a one-machine setup",
        {"instance": "127.0.0.1:31463"},
        Resolution("local", LOCAL.name, "instance", "127.0.0.1:31463"),
    ),
    (
        "localhost",
        {"instance": "localhost:9102"},
        Resolution("local", LOCAL.name, "instance", "localhost:9102"),
    ),
    (
        "unknown IP",
        {"instance": "10.9.9.9:9100"},
        Resolution("unknown", "10.9.9.9", "instance", "10.9.9.9:9100"),
    ),
    (
        "unknown name keeps its host part",
        {"node": "gone-node"},
        Resolution("unknown", "gone-node", "node", "gone-node"),
    ),
    (
        "node label wins over instance",
        {"node": "worker-b", "instance": "10.0.3.7:9100"},
        Resolution("remote", "worker-b", "node", "worker-b"),
    ),
    (
        "an unknown node label falls through to a known instance",
        {"node": "", "nodename": "nope", "instance": "10.0.3.7:9100"},
        Resolution("local", LOCAL.name, "instance", "10.0.3.7:9100"),
    ),
    (
        "the exporter's pod/namespace/container/service are never read",
        {"pod": "node-exporter-abc", "namespace": "monitoring", "container": "node-exporter", "service": "x"},
        Resolution("none"),
    ),
    ("no node label at all", {"alertname": "X"}, Resolution("none")),
    (
        "two different FQDNs never match",
        {"node": "ip-10-0-3-7.other.internal"},
        Resolution("unknown", "ip-10-0-3-7.other.internal", "node", "ip-10-0-3-7.other.internal"),
    ),
]


@pytest.mark.parametrize(("labels", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_node(labels: dict[str, str], expected: Resolution) -> None:
    assert resolve_node(labels, LOCAL, OTHERS) == expected


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("10.0.3.7:9100", "10.0.3.7"),
        ("[::1]:9100", "::1"),
        ("fd00::1", "fd00::1"),
        ("node-a", "node-a"),
        ("a.b:1", "a.b"),
    ],
)
def test_split_host(value: str, host: str) -> None:
    assert split_host(value) == host


def test_names_match() -> None:
    assert names_match("node-a", "NODE-A.")
    assert names_match("node-a", "node-a.cluster.local")
    assert not names_match("node-a.x", "node-a.y")
    assert not names_match("", "node-a")


def test_static_peers() -> None:
    peers = parse_static_peers(
        "node-a=http://127.0.0.1:1, node-b@10.0.3.8@fd00::8=http://127.0.0.1:2/ ,node-c=https://c:8080",
        "node-a",
    )
    assert [(p.node, p.url, sorted(p.ips)) for p in peers] == [
        ("node-b", "http://127.0.0.1:2", ["10.0.3.8", "fd00::8"]),
        ("node-c", "https://c:8080", []),
    ]
    with pytest.raises(ValueError):
        parse_static_peers("node-b", "node-a")
    with pytest.raises(ValueError):
        parse_static_peers("node-b=ftp://x", "node-a")


# --- the API server directory, against an httpx transport that answers like the API server ----


def _pod(
    node: str, pod_ip: str, host_ip: str, *, phase: str = "Running", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"pfi-{node}", "namespace": "pfi"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": phase, "podIP": pod_ip, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}]},
    }


class FakeApiServer:
    def __init__(self, pods: list[dict[str, Any]], nodes_status: int = 200) -> None:
        self.pods = pods
        self.nodes_status = nodes_status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == "Bearer sa-token"
        if request.url.path == "/api/v1/namespaces/pfi/pods":
            assert request.url.params["labelSelector"] == "app=pfi"
            items = self.pods
            field = request.url.params.get("fieldSelector")
            if field:
                items = [p for p in items if f"spec.nodeName={p['spec']['nodeName']}" == field]
            return httpx.Response(200, json={"kind": "PodList", "items": items})
        if request.url.path == "/api/v1/nodes":
            if self.nodes_status != 200:
                return httpx.Response(self.nodes_status, json={"kind": "Status", "reason": "Forbidden"})
            return httpx.Response(
                200,
                json={
                    "items": [
                        {
                            "metadata": {"name": "node-c"},
                            "status": {
                                "addresses": [
                                    {"type": "InternalIP", "address": "10.0.5.5"},
                                    {"type": "Hostname", "address": "node-c"},
                                ]
                            },
                        }
                    ]
                },
            )
        return httpx.Response(404, json={})


def _directory(tmp_path: Any, fake: FakeApiServer) -> KubePeers:
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    api = KubeApi("https://kube.test", token_file=token, transport=httpx.MockTransport(fake))
    settings = make_settings(tmp_path, namespace="pfi", peer_label_selector="app=pfi", peer_port=8080)
    return KubePeers(api, settings, "pfi", "app=pfi")


def test_kube_peers(tmp_path: Any) -> None:
    fake = FakeApiServer(
        [
            _pod("node-a", "10.244.0.5", "10.0.3.7"),  # ourselves: not a peer
            _pod("node-b", "10.244.1.5", "10.0.3.8"),
            _pod("node-b", "10.244.1.4", "10.0.3.8", deleting=True),  # the old pod of a rollout
            _pod("node-d", "10.244.3.5", "10.0.3.9", phase="Pending"),
        ]
    )

    async def go() -> None:
        d = _directory(tmp_path, fake)
        peers = await d.peers()
        assert [(p.node, p.url) for p in peers] == [("node-b", "http://10.244.1.5:8080")]
        nodes = {n.name: n.ips for n in await d.nodes()}
        assert nodes == {"node-b": frozenset({"10.0.3.8"}), "node-c": frozenset({"10.0.5.5"})}
        assert (await d.peer_for_node("node-b")) == peers[0]
        n = len(fake.requests)
        assert await d.peer_for_node("node-c") is None  # looked up by field selector ...
        assert fake.requests[-1].url.params["fieldSelector"] == "spec.nodeName=node-c"
        assert await d.peer_for_node("node-c") is None  # ... but not again right away
        assert len(fake.requests) == n + 1
        await d.api.aclose()

    asyncio.run(go())


def test_kube_peers_without_rbac_for_nodes_and_with_a_failing_api(tmp_path: Any) -> None:
    fake = FakeApiServer([_pod("node-b", "10.244.1.5", "10.0.3.8")], nodes_status=403)

    async def go() -> None:
        d = _directory(tmp_path, fake)
        assert {n.name for n in await d.nodes()} == {"node-b"}  # node IPs from the pods' hostIP
        assert d.error is None
        fake.pods = []
        d._fetched_at = None  # expire the cache
        fake_fail = httpx.MockTransport(lambda r: httpx.Response(500, text="etcd is sad"))
        d.api._client._transport = fake_fail
        assert [p.node for p in await d.peers()] == ["node-b"]  # the cached list is kept
        assert d.error and "HTTP 500" in d.error
        await d.api.aclose()

    asyncio.run(go())


def test_no_secret_in_requests_log(tmp_path: Any) -> None:
    # The directory never puts the token anywhere but the Authorization header.
    fake = FakeApiServer([])

    async def go() -> None:
        d = _directory(tmp_path, fake)
        await d.peers()
        assert all("sa-token" not in str(r.url) for r in fake.requests)
        await d.api.aclose()

    asyncio.run(go())

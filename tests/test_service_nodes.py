"""Which node an alert names: a table, one quirk a row; and the peer directories."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.service.cluster.kube import AsyncApiServer
from app.service.cluster.nodes import NodeIdentity, Resolution, names_match, node_for_alert, split_host
from app.service.cluster.peers import KubePeers, parse_static_peers
from app.service.web.app import create_app
from tests.service_support import AUTH, TOKEN, FakeEngine, LiveServer, firing, make_settings, wait_for
from tests.tls_standin import ApiServer, Certs, StandIn

SA_TOKEN = "sa-token-0123456789"

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
def test_node_for_alert(labels: dict[str, str], expected: Resolution) -> None:
    assert node_for_alert(labels, LOCAL, OTHERS) == expected


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


# --- the API server directory, against a TLS API-server stand-in on loopback --------------------


def _pod(
    node: str, pod_ip: str, host_ip: str, *, phase: str = "Running", deleting: bool = False
) -> dict[str, Any]:
    """An inspector pod as the API server lists it (trimmed to the fields it always has)."""
    meta: dict[str, Any] = {
        "name": f"pfi-{node}", "namespace": "pfi", "uid": f"uid-{node}-{pod_ip}", "labels": {"app": "pfi"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "pfi", "uid": "ds"}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "inspector", "image": "pfi"}]},
        "status": {"phase": phase, "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": host_ip,
                   "hostIPs": [{"ip": host_ip}], "qosClass": "Burstable"},
    }


NODE_C = {
    "metadata": {"name": "node-c", "uid": "n-c"},
    "status": {"addresses": [{"type": "InternalIP", "address": "10.0.5.5"}, {"type": "Hostname", "address": "node-c"}]},
}


@pytest.fixture
def apiserver(tmp_path: Path, certs: Certs, serve: Callable[[StandIn], StandIn]) -> Callable[..., tuple[StandIn, ApiServer]]:
    def start(pods: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None, **kw: Any) -> tuple[StandIn, ApiServer]:
        fake = ApiServer(pods, [NODE_C] if nodes is None else nodes)
        return serve(StandIn("", SA_TOKEN, routes=fake, **kw)), fake
    return start


def _settings(tmp_path: Path, api: StandIn, certs: Certs, **kw: Any) -> Any:
    token = tmp_path / "sa-token"
    token.write_text(SA_TOKEN + "\n")
    kw.setdefault("apiserver_timeout_seconds", 10.0)  # a loaded CI machine; the deadline test sets 3 s
    return make_settings(tmp_path, namespace="pfi", peer_label_selector="app=pfi", peer_port=8080,
                         apiserver_url=api.url, apiserver_ca_file=certs.ca, apiserver_token_file=token, **kw)


def _directory(settings: Any) -> KubePeers:
    api = AsyncApiServer.from_settings(settings.apiserver)
    assert api is not None
    return KubePeers(api, settings, "pfi", "app=pfi")


def test_kube_peers(tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]) -> None:
    stand, _ = apiserver([
        _pod("node-a", "10.244.0.5", "10.0.3.7"),  # ourselves: not a peer
        _pod("node-b", "10.244.1.5", "10.0.3.8"),
        _pod("node-b", "10.244.1.4", "10.0.3.8", deleting=True),  # the old pod of a rollout
        _pod("node-d", "10.244.3.5", "10.0.3.9", phase="Pending"),
        _pod("Bad_Node,x", "10.244.4.5", "10.0.3.10"),  # not a DNS-1123 node name: never trusted
    ])

    async def go() -> None:
        d = _directory(_settings(tmp_path, stand, certs))
        peers = await d.peers()
        assert [(p.node, p.url) for p in peers] == [("node-b", "http://10.244.1.5:8080")]
        nodes = {n.name: n.ips for n in await d.nodes()}
        assert nodes == {"node-b": frozenset({"10.0.3.8"}), "node-c": frozenset({"10.0.5.5"})}
        assert (await d.peer_for_node("node-b")) == peers[0]
        n = len(stand.requests)
        assert await d.peer_for_node("node-c") is None  # a miss right after a fetch: no new one
        assert len(stand.requests) == n
        assert d._fetched_at is not None
        d._fetched_at -= 6  # 6 s old (TTL 30 s): a miss refreshes the whole list once ...
        assert await d.peer_for_node("node-c") is None
        assert await d.peer_for_node("node-e") is None  # ... and not again right away, whatever node
        assert len(stand.requests) == n + 2  # pods + nodes
        assert all("fieldSelector" not in r for r in stand.requests)
        assert parse_qs(urlsplit(stand.requests[0]).query) == {"labelSelector": ["app=pfi"]}
        await d.api.aclose()

    asyncio.run(go())


def test_kube_peers_without_rbac_for_nodes_and_with_a_failing_api(
    tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]
) -> None:
    stand, fake = apiserver([_pod("node-b", "127.0.1.5", "10.0.3.8")])
    fake.forbid.add("/api/v1/nodes")

    async def go() -> None:
        d = _directory(_settings(tmp_path, stand, certs))
        assert {n.name for n in await d.nodes()} == {"node-b"}  # node IPs from the pods' hostIP
        assert d.error is None
        fake.pods = []
        fake.forbid.add("/api/v1/namespaces/pfi/pods")
        d._fetched_at = None  # expire the cache
        assert [p.node for p in await d.peers()] == ["node-b"]  # the cached list is kept
        assert d.error and "answered 403" in d.error and "forbidden" in d.error
        await d.api.aclose()

    asyncio.run(go())


def test_no_secret_in_requests(tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]) -> None:
    stand, _ = apiserver([])

    async def go() -> None:
        d = _directory(_settings(tmp_path, stand, certs))
        await d.peers()
        assert stand.requests and all(SA_TOKEN not in r for r in stand.requests)
        await d.api.aclose()

    asyncio.run(go())


@pytest.mark.servers
def test_kubernetes_is_imported_only_when_the_api_server_is_asked(tmp_path: Path) -> None:
    """An idle service (in a cluster, Events on, peers by label) and `investigate` without the
    API-server fallback never import the kubernetes package. Its flight recorder reads a cgroup tree of
    its own, with no pod in it: on this machine's, a pod-shaped group of a test running beside this one
    (the scenario matrix's) made the recorder name its pod, through the API server when the kubelet did
    not answer (CI: the import came true)."""
    (tmp_path / "cgroup").mkdir()
    code = (
        "import asyncio, sys\n"
        "from app.config import Settings\n"
        "from app.service.root import Seams, build_service\n"
        "from app.collectors.kubelet import PodDirectory\n"
        "async def main():\n"
        f"    s = Settings(data_dir={str(tmp_path / 'd')!r}, namespace='pfi', peer_label_selector='app=pfi',\n"
        "                 kubernetes_events=True, apiserver_url='https://127.0.0.1:1',\n"
        f"                 cgroup_root={str(tmp_path / 'cgroup')!r})\n"
        "    state = await build_service(s, Seams(token='t' * 24))\n"
        "    await asyncio.sleep(0.2)\n"
        "    PodDirectory(s.updated(apiserver_fallback=False)).index()\n"
        "    print('kubernetes' in sys.modules, state.apiserver is not None, len(state.sinks))\n"
        "    await state.stop()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True", "1"], out.stderr[-2000:]


# --- node resolution in the webhook (issue 10.4) ----------------------------------------------------


def _alerts(nodes: list[str], label: str = "node") -> dict[str, Any]:
    body = firing({label: nodes[0]})
    first = body["alerts"][0]
    body["alerts"] = [
        {**first, "labels": {**first["labels"], label: n}, "fingerprint": f"fp{i}"} for i, n in enumerate(nodes)
    ]
    return body


@pytest.mark.servers
def test_a_thousand_alerts_for_unknown_nodes_cost_one_lookup(
    tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]
) -> None:
    stand, _ = apiserver([_pod("node-b", "127.0.1.5", "10.0.3.8")])
    settings = _settings(tmp_path, stand, certs, max_alerts_per_request=1000)
    with LiveServer(create_app(settings, investigator=FakeEngine(), token=TOKEN)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as client:
        # One alert first: the peer list is fetched (pods + nodes) and the kubernetes client
        # imported, so the timing below is the 1,000 alerts' own.
        first = client.post("/api/v1/alerts", json=_alerts(["node-b"]), headers=AUTH).json()
        if first.get("deferred"):  # a loaded machine: that first lookup took over the webhook's 1 s
            wait_for(lambda: 'pfi_alerts_received_total{outcome="forwarded"} 1.0' in client.get("/metrics").text,
                     timeout=60, what="the deferred first alert forwarded")  # a hang guard: load 17 took > 15 s
        else:
            assert [f["node"] for f in first["forwarded"]] == ["node-b"], first
        resp = client.post("/api/v1/alerts", json=_alerts([f"gone-{i}" for i in range(1000)]), headers=AUTH)
        assert resp.status_code == 202
        answer = resp.json()
        assert len(answer["ignored"]) == 1000 and answer["accepted"] == answer["forwarded"] == []
        assert answer["ignored"][7]["reason"] == "no inspector on node gone-7"
    # The list (pods + nodes), fetched for the first alert and not again for the 1,000 misses
    # (it is younger than MISS_REFRESH_SECONDS); at worst one refresh: 4 calls, not 1,000.
    assert len(stand.requests) <= 4, stand.requests  # the cost is counted in lookups, not timed (a loaded machine)


@pytest.mark.servers
def test_the_webhook_answers_fast_when_the_api_server_never_does(
    tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]
) -> None:
    stand, _ = apiserver([], hang=True)
    settings = _settings(tmp_path, stand, certs, apiserver_timeout_seconds=3.0)
    engine = FakeEngine()
    with LiveServer(create_app(settings, investigator=engine, token=TOKEN)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as client:
        resp = client.post("/api/v1/alerts", json=_alerts([f"slow-{i}" for i in range(9)] + ["node-a"]), headers=AUTH)
        assert resp.status_code == 202
        answer = resp.json()
        # This node's alert needs no lookup: taken at once. The others wait in the background.
        assert [(a["fingerprint"], a["action"]) for a in answer["accepted"]] == [("fp9", "queued")]
        # Answered before the lookup ended (order, not a stopwatch): the 9 are still deferred, not ignored.
        assert len(answer["deferred"]) == 9 and answer["ignored"] == []
        assert "takes longer than 1s" in answer["deferred"][0]["reason"]
        wait_for(lambda: engine.calls, timeout=15, what="the local alert's investigation")
        assert engine.calls[0]["trigger"].labels["node"] == "node-a"
        # Behind the scenes the lookup ends at the API deadline (3 s) and the 9 are ignored.
        wait_for(lambda: 'pfi_alerts_received_total{outcome="ignored"} 9.0' in client.get("/metrics").text,
                 timeout=15, what="the deferred alerts' outcome")
    assert len(stand.requests) == 1  # one list asked, not one per alert


@pytest.mark.servers
def test_label_values_never_reach_a_selector(
    tmp_path: Path, certs: Certs, apiserver: Callable[..., tuple[StandIn, ApiServer]]
) -> None:
    stand, _ = apiserver([_pod("node-b", "127.0.1.5", "10.0.3.8")])
    settings = _settings(tmp_path, stand, certs)
    with LiveServer(create_app(settings, investigator=FakeEngine(), token=TOKEN)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as client:
        bad = _alerts(["x,metadata.name!=y", "node-b/../../x", "node-ü"])
        answer = client.post("/api/v1/alerts", json=bad, headers=AUTH).json()
        assert [i["reason"] for i in answer["ignored"]] == [
            "label node = 'x,metadata.name!=y' is neither a node name (DNS-1123) nor an IP address",
            "label node = 'node-b/../../x' is neither a node name (DNS-1123) nor an IP address",
            "label node = 'node-ü' is neither a node name (DNS-1123) nor an IP address",
        ]
    assert all("metadata.name" not in r and "fieldSelector" not in r for r in stand.requests)


def test_invalid_node_label_falls_through_to_a_valid_one() -> None:
    res = node_for_alert({"node": "x,metadata.name!=y", "instance": "10.0.3.7:9100"}, LOCAL, OTHERS)
    assert res == Resolution("local", LOCAL.name, "instance", "10.0.3.7:9100")
    assert node_for_alert({"node": "a b"}, LOCAL, OTHERS) == Resolution("invalid", None, "node", "a b")

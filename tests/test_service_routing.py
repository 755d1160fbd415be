"""Routing in the DaemonSet: two real service instances on loopback act as nodes A and B."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.service.web.app import create_app
from tests.service_support import (
    AUTH,
    TOKEN,
    FakeEngine,
    LiveServer,
    bind_loopback,
    firing,
    make_settings,
    reports,
    wait_for,
)


@contextmanager
def two_nodes(tmp_path: Path, **kw: Any) -> Iterator[dict[str, tuple[httpx.Client, FakeEngine]]]:
    """node-a (10.0.3.7) and node-b (10.0.3.8), each knowing the other as a static peer."""
    socks = {"node-a": bind_loopback(), "node-b": bind_loopback()}
    urls = {n: f"http://127.0.0.1:{s.getsockname()[1]}" for n, s in socks.items()}
    ips = {"node-a": "10.0.3.7", "node-b": "10.0.3.8"}
    out: dict[str, tuple[httpx.Client, FakeEngine]] = {}
    with ExitStack() as stack:
        for node, sock in socks.items():
            other = "node-b" if node == "node-a" else "node-a"
            settings = make_settings(
                tmp_path / node,
                node_name=node,
                node_ip=ips[node],
                static_peers=f"{other}@{ips[other]}={urls[other]}",
                **kw,
            )
            engine = FakeEngine()
            live = stack.enter_context(
                LiveServer(create_app(settings, investigator=engine, token=TOKEN), sock)
            )
            client = stack.enter_context(httpx.Client(base_url=live.url, timeout=10))
            out[node] = (client, engine)
        yield out


@pytest.mark.servers
def test_alert_for_b_posted_to_a_ends_as_a_report_on_b(tmp_path: Path) -> None:
    with two_nodes(tmp_path) as nodes:
        a, engine_a = nodes["node-a"]
        b, engine_b = nodes["node-b"]
        # kube-prometheus-stack style: instance is node B's IP and port.
        answer = a.post("/api/v1/alerts", json=firing({"instance": "10.0.3.8:9100"}), headers=AUTH).json()
        assert answer["accepted"] == [] and answer["ignored"] == []
        assert [(f["node"], f["fingerprint"]) for f in answer["forwarded"]] == [("node-b", "fp1")]

        (row,) = wait_for(lambda: reports(b), what="the report on node B")
        assert row["node"] == "node-b"
        doc = b.get(f"/api/v1/reports/{row['id']}", headers=AUTH).json()
        assert doc["trigger"]["forwarded_from"] == "node-a"
        assert doc["trigger"]["labels"]["instance"] == "10.0.3.8:9100"
        assert reports(a) == []
        assert engine_a.calls == [] and len(engine_b.calls) == 1
        assert 'pfi_alert_forwards_total{outcome="ok"} 1.0' in a.get("/metrics").text

        # A mixed batch: the alert for A stays, the one for B (by node name) goes.
        mixed = firing({"node": "node-a"}, fingerprint="mine")
        theirs = firing({"nodename": "node-b"}, fingerprint="theirs")["alerts"][0]
        mixed["alerts"].append(theirs)
        answer = a.post("/api/v1/alerts", json=mixed, headers=AUTH).json()
        assert [x["fingerprint"] for x in answer["accepted"]] == ["mine"]
        assert [x["fingerprint"] for x in answer["forwarded"]] == ["theirs"]
        wait_for(lambda: len(reports(b)) == 2, what="second report on B")
        wait_for(lambda: len(reports(a)) == 1, what="report on A")


@pytest.mark.servers
def test_a_forwarded_alert_is_not_forwarded_again(tmp_path: Path) -> None:
    with two_nodes(tmp_path) as nodes:
        b, engine_b = nodes["node-b"]
        # As if node-a had forwarded an alert that (by B's view) is for node-a: B must not bounce it.
        answer = b.post(
            "/api/v1/alerts",
            json=firing({"instance": "10.0.3.7:9100"}),
            headers={**AUTH, "X-PFI-Forwarded-From": "node-a"},
        ).json()
        assert answer["forwarded"] == [] and answer["accepted"] == []
        (ign,) = answer["ignored"]
        assert ign["reason"] == "for node node-a, not this one (node-b), and not forwarded twice"
        # A forwarded alert for this node is taken, and records who forwarded it.
        ok = b.post(
            "/api/v1/alerts",
            json=firing({"node": "node-b"}),
            headers={**AUTH, "X-PFI-Forwarded-From": "node-a"},
        ).json()
        assert ok["accepted"][0]["action"] == "queued"
        wait_for(lambda: reports(b), what="report")
        assert engine_b.calls[0]["trigger"].forwarded_from == "node-a"


@pytest.mark.servers
@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"node": "node-z"}, "no inspector on node node-z"),
        ({"instance": "10.0.9.9:9100"}, "no inspector on node 10.0.9.9"),
    ],
)
def test_unknown_node_gets_a_clear_answer(
    tmp_path: Path, labels: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"), two_nodes(tmp_path) as nodes:
        a, engine_a = nodes["node-a"]
        answer = a.post("/api/v1/alerts", json=firing(labels), headers=AUTH).json()
        assert [i["reason"] for i in answer["ignored"]] == [reason]
        assert engine_a.calls == []
    assert any(reason in r.getMessage() for r in caplog.records)


@pytest.mark.servers
def test_peer_down_is_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = bind_loopback()  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    settings = make_settings(tmp_path, static_peers=f"node-b={url}")
    app = create_app(settings, investigator=FakeEngine(), token=TOKEN)
    with caplog.at_level("ERROR"), LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as a:
        answer = a.post("/api/v1/alerts", json=firing({"node": "node-b"}), headers=AUTH).json()
        assert answer["forwarded"][0]["node"] == "node-b"  # answered at once, forwarded in the background
        wait_for(
            lambda: 'pfi_alert_forwards_total{outcome="failed"} 1.0' in a.get("/metrics").text,
            timeout=15,
            what="forward failure",
        )
    assert any("forwarding 1 alert(s) to node node-b" in r.getMessage() for r in caplog.records)


@pytest.mark.servers
def test_peer_client_against_a_real_instance(tmp_path: Path) -> None:
    """PeerClient needs an httpx client, the token and timeouts: here against node-b's real API."""
    import asyncio

    from app.service.cluster.peers import Peer, PeerClient, PeerError

    with two_nodes(tmp_path) as nodes:
        b, _ = nodes["node-b"]
        peer = Peer("node-b", str(b.base_url).rstrip("/"))
        # One report on B, made through the client's forward (as node-a would).
        body = firing({"node": "node-b"})

        async def go() -> tuple[Any, ...]:
            async with httpx.AsyncClient() as http:
                good = PeerClient(http, lambda: TOKEN, local_node="node-a", forward_timeout=5, fetch_timeout=5)
                bad = PeerClient(http, lambda: "wrong-token-0123456789", local_node="node-a",
                                 forward_timeout=5, fetch_timeout=5, retry_delay=0)
                assert await good.forward(peer, body) is None
                refused = await bad.forward(peer, body)  # 4xx: not retried
                await asyncio.to_thread(wait_for, lambda: reports(b), what="B's report")
                rows = await good.reports(peer, 10)
                doc = await good.report(peer, rows[0]["id"])
                missing = await good.report(peer, "nosuchreport")
                running = await good.investigations(peer)
                with pytest.raises(PeerError) as err:
                    await bad.reports(peer, 10)
                return refused, rows, doc, missing, running, str(err.value)

        refused, rows, doc, missing, running, err = asyncio.run(go())
        assert refused is not None and refused.startswith("HTTP 401")
        assert [r["node"] for r in rows] == ["node-b"]
        assert doc is not None and doc["trigger"]["forwarded_from"] == "node-a"
        assert missing is None and running == [] and err == "HTTP 401"

"""An alert storm over a DaemonSet of 12 inspectors on loopback (issue 10, "done means").

Twelve real instances (API + UI each), every one knowing the others through PFI_STATIC_PEERS, the
real engine with the procfs tracer and a 2 s window. 120 alerts, ten copies of each node's alert
(named by node or by node IP and exporter port, timestamps written two ways as an HA pair of
Alertmanagers does), are posted in groups of 1-6 to random instances, concurrently. Expected: no
5xx anywhere; every alert accepted or forwarded, none ignored; exactly one report per node, stored
on that node; every instance's UI lists all twelve. Only the HTTP API and settings are used.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.service.report_store import ReportStore
from app.service.web.app import create_app
from tests.e2e.sample_reports import deployment_pod_report
from tests.service_support import AUTH, TOKEN, Instance, listening_socket, wait_for

pytestmark = [pytest.mark.storm, pytest.mark.servers]

N = 12
COPIES = 10
WINDOW = 2.0
DEPLOYMENT_NODES = [1, 2, 4, 6, 7, 9, 11]  # nodes running a pod of search/search-indexer
DEPLOYMENT_KEY = "workload:search/Deployment/search-indexer"


def _alert(i: int, copy: int) -> dict[str, Any]:
    node = f"storm-{i:02d}"
    labels = {"alertname": "NodeMemoryMajorPagesFaults", "severity": "warning", "job": "node-exporter"}
    if copy % 3 == 2:
        labels["instance"] = f"10.0.9.{i + 1}:9100"  # kube-prometheus-stack style: the node's IP
    else:
        labels["node"] = node
        labels["instance"] = f"10.0.9.{i + 1}:9100"
    starts = "2026-12-02T04:00:00.5Z" if copy % 2 else "2026-12-02T04:00:00.500000000Z"  # same instant
    return {"status": "firing", "labels": labels, "startsAt": starts, "fingerprint": f"storm{i:02d}"}


def test_alert_storm_over_twelve_instances(tmp_path: Path) -> None:
    rng = random.Random(10)
    for i in DEPLOYMENT_NODES:
        seeded = ReportStore(tmp_path / f"storm-{i:02d}")
        assert seeded.open() and seeded.put(deployment_pod_report(f"storm-{i:02d}", i))
        seeded.close()
    socks = [listening_socket() for _ in range(N)]
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    names = [f"storm-{i:02d}" for i in range(N)]
    ips = [f"10.0.9.{i + 1}" for i in range(N)]
    statuses: list[int] = []
    with ExitStack() as stack:
        apis: list[httpx.Client] = []
        uis: list[str] = []
        for i in range(N):
            peers = ",".join(f"{names[j]}@{ips[j]}={urls[j]}" for j in range(N) if j != i)
            settings = Settings(
                node_name=names[i],
                node_ip=ips[i],
                # Node IPs are made up: the kubelet is never looked for there (closed loopback port).
                kubelet_url="https://127.0.0.1:1",
                data_dir=tmp_path / names[i],
                static_peers=peers,
                apiserver_url=None,
                tracer="procfs",
                # No tools to probe: as root the registry would run the real perf and bpftrace in each of
                # the twelve (a real tracer: the marker guard, tests/needs.py), and the storm needs neither.
                perf_path="/nonexistent/pfi-storm", bpftrace_path="/nonexistent/pfi-storm",
                investigation_seconds=WINDOW,
                cooldown_seconds=600,
                peer_fetch_timeout_seconds=10,
                forward_timeout_seconds=10,
            )
            instance = stack.enter_context(Instance(create_app(settings, token=TOKEN), socks[i]))  # real engine
            uis.append(instance.ui_url)
            apis.append(stack.enter_context(httpx.Client(base_url=urls[i], timeout=30)))

        alerts = [_alert(i, c) for i in range(N) for c in range(COPIES)]
        rng.shuffle(alerts)
        groups: list[list[dict[str, Any]]] = []
        while alerts:
            k = rng.randint(1, 6)
            groups.append(alerts[:k])
            alerts = alerts[k:]

        def post(group: list[dict[str, Any]]) -> dict[str, Any]:
            target = rng.randrange(N)
            body = {"version": "4", "status": "firing", "receiver": "pfi", "alerts": group}
            resp = apis[target].post("/api/v1/alerts", json=body, headers=AUTH)
            statuses.append(resp.status_code)
            return dict(resp.json())

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(post, groups))
        assert all(s == 202 for s in statuses), Counter(statuses)
        assert sum(len(a["accepted"]) + len(a["forwarded"]) for a in answers) == N * COPIES
        assert [i for a in answers for i in a["ignored"]] == []

        def alerted(i: int) -> list[dict[str, Any]]:
            rows = apis[i].get("/api/v1/reports", headers=AUTH).json()["reports"]
            return [r for r in rows if not r["id"].startswith("seed")]

        def done(i: int) -> bool:
            rows = alerted(i)
            return bool(rows) and all(r["status"] == "complete" for r in rows)

        wait_for(lambda: all(done(i) for i in range(N)), timeout=40, what="a report on every node")
        # Forwarding retries and late copies had their chance: still one report per node.
        wait_for(
            lambda: all(not c.get("/api/v1/investigations", headers=AUTH).json()["investigations"] for c in apis),
            timeout=20,
            what="all idle",
        )
        ids: dict[str, str] = {}
        for i, client in enumerate(apis):
            resp = client.get("/api/v1/reports", headers=AUTH)
            statuses.append(resp.status_code)
            rows = [r for r in resp.json()["reports"] if not r["id"].startswith("seed")]
            assert [(r["node"], r["status"]) for r in rows] == [(names[i], "complete")], rows
            assert rows[0]["backend"] == "procfs"
            assert rows[0]["alertname"] == "NodeMemoryMajorPagesFaults"
            ids[names[i]] = rows[0]["id"]

        # Any instance's API and fleet page: the Deployment is one row naming its seven nodes.
        deployment_nodes = [names[i] for i in DEPLOYMENT_NODES]
        for i, (client, ui) in enumerate(zip(apis, uis, strict=True)):
            resp = client.get("/api/v1/workloads", headers=AUTH)
            statuses.append(resp.status_code)
            doc = resp.json()
            assert doc["unreachable"] == [], doc["unreachable"]
            rows = [w for w in doc["workloads"] if w["workload"]["key"] == DEPLOYMENT_KEY]
            assert len(rows) == 1, doc["workloads"]
            assert rows[0]["nodes"] == deployment_nodes and rows[0]["reports"] == len(DEPLOYMENT_NODES)
            assert rows[0]["workload"]["label"] == "Deployment search/search-indexer"
            page = httpx.get(f"{ui}/", timeout=30)  # reports of twelve nodes: the landing page is the fleet
            statuses.append(page.status_code)
            assert "Workloads across the fleet" in page.text and 'id="unreachable"' not in page.text
            found = re.findall(rf'<tr class="workload" data-key="{DEPLOYMENT_KEY}">(.*?)</tr>', page.text, re.S)
            assert len(found) == 1, f"{ui}: {len(found)} rows of the Deployment"
            cell = re.search(r'<td class="nodes".*?</td>', found[0], re.S)
            assert cell is not None
            listed = re.findall(r'<a href="/reports/(seed\d\d)(?:\?node=([^"]+))?">([^<]+)</a>', cell.group(0))
            assert sorted(n for _, _, n in listed) == deployment_nodes, listed
            for rid, node_param, node in listed:  # each node's report, linked from every instance
                assert rid == f"seed{names.index(node):02d}"
                assert node_param == ("" if node == names[i] else node)

        # Any instance's report list still lists every node's report (its own and the eleven peers').
        for ui in uis:
            page = httpx.get(f"{ui}/reports", timeout=30)
            statuses.append(page.status_code)
            assert page.status_code == 200
            missing = [n for n, rid in ids.items() if rid not in page.text]
            warn = page.text.split('id="unreachable"')[1][:600] if 'id="unreachable"' in page.text else ""
            assert missing == [], f"{ui} does not list {missing}: {warn}"
            assert "unreachable" not in page.text.lower()
    assert max(statuses) < 500

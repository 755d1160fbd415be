"""The fleet on a real Prometheus (issue 28, "done when"): Debian's Prometheus scraping twelve real
inspectors (API + UI each, uvicorn on loopback) every second, with the chart's own fleet rules (the
alert's `for:` lowered to 2 s) and one real node-exporter standing in for the node storm-01.

Seeded stores: Deployment search/search-indexer on seven nodes, the pod cache/redis-0 on one, and on
storm-05 (findings age 60 s) a host process whose report is 42 s old when the test starts.
Instance storm-00 asks its peers (no prometheus_url); the eleven others ask Prometheus. Expected:
- /api/v1/workloads from Prometheus equals the peer path's for the same reports;
- every panel expression of the chart's dashboard returns data, for the Deployment;
- PageFaultsWorkloadOnManyNodes fires for the Deployment and never for redis-0 (one node);
- storm-05's finding is on /metrics and in Prometheus, then gone after its age;
- a storm of twelve alerts (one a node; the engine stands in, reports blame the Deployment) makes
  one PromQL query per Prometheus instance and eleven peer requests for the peer instance (2N - 2
  in all, where the peer path alone is N (N - 1)), and every "also on" line names the other nodes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.models import Report, Trigger, utcnow
from app.service.report_store import ReportStore
from app.service.web.app import create_app
from tests.e2e.sample_reports import deployment_pod_report, host_report, swap_report
from tests.e2e.stack import (
    NODE_EXPORTER,
    PROMETHEUS,
    free_port,
    recording_receiver,
    start_process,
    stop_process,
    wait_http_ok,
)
from tests.e2e.stack import wait_for as wait_until
from tests.fleet_support import dashboard, fleet_rule_groups, panel_queries
from tests.service_support import AUTH, TOKEN, Instance, listening_socket

pytestmark = [pytest.mark.servers, pytest.mark.e2e, pytest.mark.storm]
pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")

N = 12
NAMES = [f"storm-{i:02d}" for i in range(N)]
DEPLOYMENT_NODES = [1, 2, 4, 6, 7, 9, 11]
DEPLOYMENT_KEY = "workload:search/Deployment/search-indexer"
SINGLE_NODE, SINGLE_KEY = 3, "pod:cache/redis-0"
AGING_NODE, AGING_KEY, AGE = 5, "comm:postgres", 60.0
AGING_LEFT = 28.0  # seconds storm-05's finding has left when the test starts
NE_NODE = 1  # the node-exporter stands in for storm-01 (its nodename relabelled)


class StormEngine:
    """The engine's stand-in for the storm: this node's pod of the Deployment, as
    tests.e2e.sample_reports words a real file-fault report at its limit."""

    def __call__(self, settings: Settings, *, trigger: Trigger | None = None, **_: Any) -> Report:
        i = NAMES.index(settings.node.node_name)
        report = deployment_pod_report(settings.node.node_name, i, minutes_ago=0.5)
        return report.model_copy(update={"id": f"storm{i:02d}", "trigger": trigger or report.trigger})


def _seed(tmp_path: Path) -> None:
    now = utcnow()
    for i in DEPLOYMENT_NODES:
        seeded = ReportStore(tmp_path / NAMES[i])
        assert seeded.open() and seeded.put(deployment_pod_report(NAMES[i], i, minutes_ago=2 + i))
        seeded.close()
    extra = {
        SINGLE_NODE: swap_report().model_copy(
            update={"id": "single03", "node": NAMES[SINGLE_NODE], "started_at": now - timedelta(minutes=3),
                    "finished_at": now - timedelta(minutes=3) + timedelta(seconds=30)}),
        AGING_NODE: host_report().model_copy(
            update={"id": "aging05", "node": NAMES[AGING_NODE],
                    "started_at": now - timedelta(seconds=AGE - AGING_LEFT), "finished_at": now}),
    }
    for i, report in extra.items():
        seeded = ReportStore(tmp_path / NAMES[i])
        assert seeded.open() and seeded.put(report)
        seeded.close()


def _prometheus_config(api_ports: list[int], ne_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                # as the chart's ServiceMonitor: /metrics, honorLabels, and the operator's target labels
                "job_name": "pagefault-inspector",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in api_ports],
                                    "labels": {"namespace": "pagefault-inspector", "container": "inspector"}}],
            },
            {
                "job_name": "node-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{ne_port}"]}],
                # this machine plays node storm-01: its uname nodename is the node's name
                "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "node_uname_info",
                                            "target_label": "nodename", "replacement": NAMES[NE_NODE]}],
            },
        ],
    }


@contextmanager
def _prometheus(workdir: Path, api_ports: list[int]) -> Iterator[str]:
    ne_port, port = free_port(), free_port()
    groups = fleet_rule_groups(**{"for": "2s"})
    (workdir / "rules.yml").write_text(json.dumps({"groups": groups}))
    (workdir / "prometheus.yml").write_text(json.dumps(_prometheus_config(api_ports, ne_port)))
    (workdir / "prom-data").mkdir()
    procs = []
    try:
        procs.append(start_process("node-exporter", [
            NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{ne_port}", "--collector.disable-defaults",
            "--collector.vmstat", "--collector.uname"], workdir))
        procs.append(start_process("prometheus", [
            PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"], workdir))
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", 30, procs[1])
        yield f"http://127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            stop_process(p)


def _query(prom: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"]["result"])


def _comparable(doc: dict[str, Any], leave_out: set[str]) -> dict[str, Any]:
    """The rows' facts both sources hold (file, summary and command stay in the report)."""
    out = {}
    for w in doc["workloads"]:
        if w["workload"]["key"] in leave_out:
            continue
        rec = w["recommendation"] or {}
        out[w["workload"]["key"]] = {
            "label": w["workload"]["label"],
            "nodes": w["nodes"],
            "reports": w["reports"],
            "first_seen": w["first_seen"][:23],
            "last_seen": w["last_seen"][:23],
            "cause": w["cause"],
            "fault_kind": w["fault_kind"],
            "recommended_limit_bytes": rec.get("recommended_limit_bytes"),
            "links": [(link["node"], link["report_id"]) for link in w["links"]],
        }
    return out


def _fleet_requests(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^pfi_fleet_requests_total\{target="(\w+)"\} (\S+)$', text, re.M)}


def test_fleet_on_a_real_prometheus_scraping_twelve_instances(tmp_path: Path) -> None:
    _seed(tmp_path)
    socks = [listening_socket() for _ in range(N)]
    ports = [s.getsockname()[1] for s in socks]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    (tmp_path / "prom").mkdir()
    with ExitStack() as stack:
        prom = stack.enter_context(_prometheus(tmp_path / "prom", ports))
        receiver = stack.enter_context(recording_receiver(path="/api/v2/alerts"))
        apis: list[httpx.Client] = []
        uis: list[str] = []
        for i in range(N):
            settings = Settings(
                node_name=NAMES[i],
                node_ip=f"10.0.9.{i + 1}",
                kubelet_url="https://127.0.0.1:1",
                data_dir=tmp_path / NAMES[i],
                static_peers=",".join(f"{NAMES[j]}={urls[j]}" for j in range(N) if j != i),
                apiserver_url=None,
                recorder_interval_seconds=0,
                cooldown_seconds=600,
                alertmanager_url=receiver.url.removesuffix("/api/v2/alerts"),
                prometheus_url=None if i == 0 else prom,
                prometheus_cache_seconds=1,
                findings_max_age_seconds=AGE if i == AGING_NODE else 3600,
            )
            instance = stack.enter_context(Instance(create_app(settings, investigator=StormEngine(), token=TOKEN),
                                                    socks[i]))
            uis.append(instance.ui_url)
            apis.append(stack.enter_context(httpx.Client(base_url=urls[i], timeout=30)))

        # Findings as metrics: the aging finding is on its node's /metrics with its labels, no path.
        own = apis[AGING_NODE].get("/metrics").text
        (line,) = [x for x in own.splitlines() if x.startswith("pfi_finding_reports{")]
        assert 'kind="host"' in line and 'node="storm-05"' in line and 'workload="comm:postgres"' in line, line
        assert "/var/lib/postgresql" not in own and "/data/index.bin" not in apis[1].get("/metrics").text
        deployment = f'pfi_finding_reports{{workload="{DEPLOYMENT_KEY}"}}'
        # Every seeded node's finding, not only the Deployment's: under load a target's first scrape
        # can come seconds after another's (CI once compared while storm-03's was still unscraped).
        wait_until("Prometheus to hold the findings of every seeded node",
                   lambda: len(_query(prom, deployment)) == len(DEPLOYMENT_NODES)
                   and _query(prom, f'pfi_finding_reports{{node="{NAMES[SINGLE_NODE]}"}}')
                   and _query(prom, f'pfi_finding_reports{{node="{NAMES[AGING_NODE]}"}}'), 20, 0.3)
        (series,) = _query(prom, 'pfi_finding_recommended_limit_bytes{node="storm-04"}')
        assert series["metric"]["namespace"] == "search" and series["metric"]["container"] == "indexer"
        assert series["metric"]["owner_kind"] == "Deployment" and series["value"][1] == str(1536 << 20)

        # The PromQL fleet equals the peer path's for the same reports (storm-05's finding is
        # aging out of Prometheus meanwhile: the peer path keeps a report for good).
        by_peers = apis[0].get("/api/v1/workloads", headers=AUTH).json()
        by_prom = apis[8].get("/api/v1/workloads", headers=AUTH).json()
        assert (by_peers["source"], by_prom["source"]) == ("peers", "prometheus")
        assert by_peers["unreachable"] == [] and by_prom["unreachable"] == []
        assert _comparable(by_prom, {AGING_KEY}) == _comparable(by_peers, {AGING_KEY})
        assert set(_comparable(by_prom, set())) >= {DEPLOYMENT_KEY, SINGLE_KEY}
        row = _comparable(by_prom, set())[DEPLOYMENT_KEY]
        assert row["nodes"] == [NAMES[i] for i in DEPLOYMENT_NODES] and row["reports"] == 7
        page = httpx.get(f"{uis[8]}/workloads", timeout=30).text
        assert "from Prometheus" in page and re.search(rf'data-key="{DEPLOYMENT_KEY}"', page)
        assert "asked every peer (11)" in httpx.get(f"{uis[0]}/workloads", timeout=30).text

        # Every panel of the dashboard has data for the Deployment.
        for title, expr in panel_queries({"namespace": "search", "workload": "search-indexer", "job": "node-exporter"}):
            found = wait_until(f"data for panel {title!r}: {expr}", lambda e=expr: _query(prom, e), 20, 0.5)
            for s in found:
                labels = s["metric"]
                assert labels.get("owner_name", "search-indexer") == "search-indexer", (title, labels)
                assert labels.get("nodename", NAMES[NE_NODE]) == NAMES[NE_NODE], (title, labels)
        assert len(dashboard()["panels"]) >= 6

        # The rule fires for the Deployment, and not for the pod on one node.
        def alerts() -> list[dict[str, Any]]:
            r = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return [a for a in r if a["labels"]["alertname"] == "PageFaultsWorkloadOnManyNodes"]

        wait_until("PageFaultsWorkloadOnManyNodes firing", lambda: any(a["state"] == "firing" for a in alerts()), 20, 0.5)
        assert [(a["labels"]["workload"], a["state"], a["value"]) for a in alerts()] == [
            (DEPLOYMENT_KEY, "firing", "7e+00")]

        # The aging finding goes away after its age: from the node's /metrics, then from Prometheus.
        wait_until("storm-05's finding gone from Prometheus",
                   lambda: not _query(prom, f'pfi_finding_reports{{node="{NAMES[AGING_NODE]}"}}'), AGING_LEFT + 15, 0.5)
        assert "comm:postgres" not in apis[AGING_NODE].get("/metrics").text
        assert len(_query(prom, deployment)) == len(DEPLOYMENT_NODES)  # the others stay

        # The storm: one alert a node, every report delivered with its "also on" line.
        before = [_fleet_requests(c) for c in apis]
        for i, client in enumerate(apis):
            alert = {"status": "firing", "labels": {"alertname": "NodeMemoryMajorPagesFaults", "node": NAMES[i]},
                     "startsAt": "2026-12-07T04:00:00Z", "fingerprint": f"fp{i:02d}"}
            resp = client.post("/api/v1/alerts", headers=AUTH,
                               json={"version": "4", "status": "firing", "receiver": "pfi", "alerts": [alert]})
            assert resp.status_code == 202 and len(resp.json()["accepted"]) == 1, resp.text
        posted = wait_until("twelve reports posted to Alertmanager", lambda: (b := receiver.bodies()) and len(b) >= N and b, 30, 0.3)
        after = [_fleet_requests(c) for c in apis]
        spent = {t: sum(a.get(t, 0) - b.get(t, 0) for a, b in zip(after, before, strict=True)) for t in ("prometheus", "peer")}
        assert spent == {"prometheus": N - 1, "peer": N - 1}, spent  # 2N - 2 in all; the old way: N (N - 1)
        also = {}
        for body in posted:
            (a,) = body
            also[a["labels"]["node"]] = a["annotations"].get("also_on", "")
        assert sorted(also) == NAMES
        for node, text in also.items():
            others = [NAMES[i] for i in DEPLOYMENT_NODES if NAMES[i] != node]
            m = re.match(r"also on (\d+) other nodes: ", text)
            assert m is not None and int(m.group(1)) >= len(others), (node, text)
            assert "at least" not in text  # 11 peers: all asked, no sample
        time.sleep(0)  # (the ExitStack stops the instances, the receiver and Prometheus)

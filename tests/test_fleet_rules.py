"""The fleet's PrometheusRule and dashboard, checked by Prometheus's own promtool: the rules load,
the alert fires for a workload on 3 nodes after 15 minutes and not before, and never for a workload
on one node; every panel's expression parses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fleet_support import dashboard, fleet_rule_groups, panel_queries

pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")

DEPLOYMENT = {"namespace": "search", "owner_kind": "Deployment", "owner_name": "search-indexer",
              "kind": "workload", "workload": "workload:search/Deployment/search-indexer"}
SINGLE = {"namespace": "db", "owner_kind": "StatefulSet", "owner_name": "pg", "kind": "workload",
          "workload": "workload:db/StatefulSet/pg"}


def _series(labels: dict[str, str], node: str, values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in {**labels, "node": node, "cause": "container_memory_limit",
                                                 "source_kind": "file", "report_id": f"r-{node}"}.items())
    return {"series": f"pfi_finding_report_timestamp_seconds{{{inner}}}", "values": values}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_alert_fires_for_a_workload_on_three_nodes_after_fifteen_minutes(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": fleet_rule_groups()}))
    checked = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alert_labels = {**DEPLOYMENT, "severity": "warning"}
    tests: dict[str, Any] = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                *(_series(DEPLOYMENT, n, "1700000000x40") for n in ("node-a", "node-b", "node-c")),
                _series(SINGLE, "node-a", "1700000000x40"),
                _series(SINGLE, "node-d", "_x20 1700000000x20"),  # a second node only from minute 21
            ],
            "promql_expr_test": [{
                "expr": "pfi:workload_nodes:count",
                "eval_time": "10m",
                "exp_samples": [{"labels": "pfi:workload_nodes:count{" + ",".join(
                    f'{k}="{v}"' for k, v in lab.items()) + "}", "value": n}
                    for lab, n in ((DEPLOYMENT, 3), (SINGLE, 1))],
            }],
            "alert_rule_test": [
                {"eval_time": "14m", "alertname": "PageFaultsWorkloadOnManyNodes", "exp_alerts": []},
                {"eval_time": "16m", "alertname": "PageFaultsWorkloadOnManyNodes", "exp_alerts": [
                    {"exp_labels": alert_labels, "exp_annotations": {
                        "summary": "One workload thrashes on many nodes at once.",
                        "description": "Deployment search/search-indexer (workload:search/Deployment/search-indexer)"
                        " is the culprit of the last NodeMemoryMajorPagesFaults report on 3 nodes for 15m:"
                        " one fix (its memory limit, usually) is due, not one a node.",
                    }}]},
                # the StatefulSet is on two nodes from minute 21: still under 3, never alerted
                {"eval_time": "39m", "alertname": "PageFaultsWorkloadOnManyNodes", "exp_alerts": [
                    {"exp_labels": alert_labels, "exp_annotations": {
                        "summary": "One workload thrashes on many nodes at once.",
                        "description": "Deployment search/search-indexer (workload:search/Deployment/search-indexer)"
                        " is the culprit of the last NodeMemoryMajorPagesFaults report on 3 nodes for 15m:"
                        " one fix (its memory limit, usually) is due, not one a node.",
                    }}]},
            ],
        }],
    }
    (tmp_path / "tests.yml").write_text(json.dumps(tests))
    result = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_thresholds_are_the_values(tmp_path: Path) -> None:
    (group,) = fleet_rule_groups(minNodes=5, **{"for": "30m"})
    (alert,) = [r for r in group["rules"] if "alert" in r]
    assert (alert["expr"], alert["for"]) == ("pfi:workload_nodes:count >= 5", "30m")


@needs_promtool
def test_every_panel_expression_parses(tmp_path: Path) -> None:
    queries = panel_queries({"namespace": ".*", "workload": ".*", "job": "node-exporter"})
    assert len(queries) == sum(len(p["targets"]) for p in dashboard()["panels"]) >= 6
    rules = [{"record": f"panel:{i}", "expr": expr} for i, (_title, expr) in enumerate(queries)]
    (tmp_path / "panels.yml").write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    result = _promtool("check", "rules", "panels.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json() -> None:
    """What Grafana needs to import it: a uid, a schema version, panels with unique ids, a place on
    the grid and a Prometheus target each, every variable used defined."""
    d = dashboard()
    assert d["uid"] and d["schemaVersion"] >= 30 and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    defined = {v["name"] for v in d["templating"]["list"]}
    for p in d["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["targets"], p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    panel_queries({name: ".*" for name in defined})  # no undefined variable
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for must in ("major faults", "nodes", "cause", "source kind", "recommended", "node alert"):
        assert must in titles, must
    # the findings table links each row to its node's report page
    links = json.dumps(d["panels"])
    assert "/reports/${__data.fields.report_id}?node=${__data.fields.node}" in links

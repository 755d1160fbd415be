"""The chart's fleet parts, rendered by the real Helm engine: the dashboard ConfigMap (off by default,
the Grafana sidecar's label, the dashboard JSON as the chart ships it), the fleet rules (off by
default), the Prometheus settings reaching the pod, and honorLabels on the ServiceMonitor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fleet_support import DASHBOARD

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
yaml = pytest.importorskip("yaml")
from tests.test_chart import CHART_DIR, NAMESPACE, RELEASE, env, kinds, one  # noqa: E402


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [o for src, text in rendered.items() if src.endswith(".yaml") for o in yaml.safe_load_all(text) if o]


def test_off_by_default() -> None:
    objs = render({})
    assert "ConfigMap" not in kinds(objs) and "PrometheusRule" not in kinds(objs)
    e = env(objs)
    assert "PFI_PROMETHEUS_URL" not in e
    assert (e["PFI_FINDINGS_MAX_AGE_SECONDS"]["value"], e["PFI_FINDINGS_MAX_WORKLOADS"]["value"],
            e["PFI_FLEET_PEER_SAMPLE"]["value"]) == ("3600", "20", "16")


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    cm = one(render({"fleet": {"dashboard": {"enabled": True, "namespace": "monitoring"}}}), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    (name, text), = cm["data"].items()
    assert name.endswith(".json") and json.loads(text) == json.loads(DASHBOARD.read_text())


def test_prometheus_settings_reach_the_pod() -> None:
    e = env(render({"prometheus": {"enabled": True, "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                                   "caFile": "/etc/pfi/prometheus-ca/ca.crt", "timeoutSeconds": 3}}))
    assert e["PFI_PROMETHEUS_URL"]["value"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    assert e["PFI_PROMETHEUS_TOKEN_FILE"]["value"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert e["PFI_PROMETHEUS_CA_FILE"]["value"] == "/etc/pfi/prometheus-ca/ca.crt"
    assert e["PFI_PROMETHEUS_TIMEOUT_SECONDS"]["value"] == "3"
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"prometheus": {"url": "kube-prometheus-stack-prometheus:9090"}})  # no scheme


def test_service_monitor_keeps_the_findings_labels() -> None:
    (endpoint,) = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


def test_fleet_rules_object() -> None:
    rule = one(render({"fleet": {"rules": {"enabled": True, "labels": {"release": "kps"}}}}), "PrometheusRule")
    assert rule["metadata"]["name"] == f"{RELEASE}-fleet" and rule["metadata"]["labels"]["release"] == "kps"
    (group,) = rule["spec"]["groups"]
    assert [r.get("record") or r.get("alert") for r in group["rules"]] == [
        "pfi:workload_nodes:count", "pfi:workload_major_faults_per_second:sum", "PageFaultsWorkloadOnManyNodes"]

"""POST /api/v1/alerts: auth, every fixture payload, bad input; the read API and /metrics."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest

from app.service import auth
from tests.service_support import (
    AUTH,
    CAPTURED,
    FIXTURES,
    TOKEN,
    FakeEngine,
    firing,
    fixture,
    reports,
    service,
    wait_for,
)

# ---------------------------------------------------------------------------------------------
# auth


@pytest.mark.servers
def test_token_missing_wrong_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth looks it up at each call
    with service(tmp_path) as (client, _):
        body = fixture(CAPTURED)
        missing = client.post("/api/v1/alerts", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["detail"] == "missing bearer token"

        wrong = client.post("/api/v1/alerts", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "www-authenticate" in wrong.headers
        assert calls and calls[-1] == (b"nope", TOKEN.encode())  # compared in constant time

        basic = client.post("/api/v1/alerts", json=body, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401

        assert client.post("/api/v1/alerts", json=body, headers=AUTH).status_code == 202
        # Every /api path needs the token; health, readiness and metrics do not.
        for path in ("/api/v1/reports", "/api/v1/reports/x", "/api/v1/investigations"):
            assert client.get(path).status_code == 401, path
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_generated_token_is_private_and_reused(tmp_path: Path) -> None:
    from tests.service_support import make_settings

    settings = make_settings(tmp_path)
    first = auth.load_token(settings)
    assert first.generated and first.path == settings.store.data_dir / "webhook-token"
    assert (first.path.stat().st_mode & 0o777) == 0o600
    again = auth.load_token(settings)
    assert not again.generated and again.token == first.token


def test_token_file_empty_refuses_to_start(tmp_path: Path) -> None:
    from tests.service_support import make_settings

    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(RuntimeError, match="empty"):
        auth.load_token(make_settings(tmp_path, webhook_token_file=empty))


# ---------------------------------------------------------------------------------------------
# every fixture payload: what is accepted, what is ignored and why

CONFIGURED_IGNORED = {
    # file: (expected status, number of alerts, reason fragment every alert is ignored with)
    "kubesphere-alertmanagerfailedreload-exporter-pod-labels.json": (202, 1, "not one of PFI_ALERTNAMES"),
    "kubesphere-cputhrottlinghigh-9-alerts.json": (202, 9, "not one of PFI_ALERTNAMES"),
    "kubesphere-kubepodcrashlooping-no-version-no-groupkey.json": (202, 1, "not one of PFI_ALERTNAMES"),
    # Alertmanager 0.5: "version": 0 and "groupKey": 0 as numbers, no alert status. Decision: an
    # unknown version is read as version 4 when its shape fits (with a warning in the answer).
    "legacy-am-0.5-version-0-numeric-groupkey-0-sendsAt.json": (202, 11, "not one of PFI_ALERTNAMES"),
    "v4-19-alerts-regex-route-groupkey-tabs.json": (202, 19, "not one of PFI_ALERTNAMES"),
    "v4-kube-prometheus-cputhrottlinghigh-resolved-empty-grouplabels.json": (
        202,
        1,
        "not one of PFI_ALERTNAMES",
    ),
    "v4-minimal-one-alert-no-status-no-generatorurl.json": (202, 1, "not one of PFI_ALERTNAMES"),
    "v4-resolved-two-alerts-nanosecond-and-odd-timestamps.json": (202, 2, "not one of PFI_ALERTNAMES"),
}


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == set(CONFIGURED_IGNORED) | {CAPTURED}


@pytest.mark.servers
@pytest.mark.parametrize("name", sorted(CONFIGURED_IGNORED))
def test_fixture_payloads_with_default_alertnames(tmp_path: Path, name: str) -> None:
    status, count, reason = CONFIGURED_IGNORED[name]
    with service(tmp_path) as (client, engine):
        resp = client.post("/api/v1/alerts", json=fixture(name), headers=AUTH)
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["accepted"] == [] and body["forwarded"] == []
        assert len(body["ignored"]) == count
        assert all(reason in i["reason"] for i in body["ignored"])
        assert all(i["fingerprint"] and i["alertname"] for i in body["ignored"])
    assert engine.calls == []


@pytest.mark.servers
def test_captured_nodememorymajorpagesfaults_is_accepted_for_this_node(tmp_path: Path) -> None:
    """The payload Debian's Alertmanager 0.25 sent here: `instance` is 127.0.0.1:31463 (a plain
    scrape job on this machine), which names this node."""
    with service(tmp_path) as (client, engine):
        resp = client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH)
        assert resp.status_code == 202
        body = resp.json()
        assert body["ignored"] == [] and body["forwarded"] == []
        (acc,) = body["accepted"]
        assert acc["fingerprint"] == "6e62b79a56ddf886"
        assert acc["node"] == "node-a" and acc["action"] == "queued"
        rows = wait_for(lambda: reports(client), what="the report")
        assert rows[0]["id"] == acc["id"]
        full = client.get(f"/api/v1/reports/{acc['id']}", headers=AUTH).json()
        assert full["trigger"]["fingerprint"] == "6e62b79a56ddf886"
        assert full["trigger"]["labels"]["instance"] == "127.0.0.1:31463"
    assert len(engine.calls) == 1


@pytest.mark.servers
def test_exporter_pod_labels_do_not_name_the_node(tmp_path: Path) -> None:
    """AlertmanagerFailedReload carries the exporter's pod/namespace/service labels; with that
    alertname configured, only `instance` (10.233.71.231:9093) is read, and no inspector runs there."""
    with service(tmp_path, alertnames="NodeMemoryMajorPagesFaults,AlertmanagerFailedReload") as (
        client,
        engine,
    ):
        body = client.post(
            "/api/v1/alerts",
            json=fixture("kubesphere-alertmanagerfailedreload-exporter-pod-labels.json"),
            headers=AUTH,
        ).json()
        (ign,) = body["ignored"]
        assert ign["reason"] == "no inspector on node 10.233.71.231"
    assert engine.calls == []


@pytest.mark.servers
def test_no_node_labels_and_unknown_version(tmp_path: Path) -> None:
    """CPUThrottlingHigh has pod/namespace/container but no node label: ignored with the reason.
    The legacy version-0 payload is read (warning), its alerts without `instance` ignored."""
    names = "CPUThrottlingHigh,CPU_Percentage_Worning,LoadAverage_15MIN"
    with service(tmp_path, alertnames=names, node_name="vm") as (client, engine):
        body = client.post(
            "/api/v1/alerts", json=fixture("kubesphere-cputhrottlinghigh-9-alerts.json"), headers=AUTH
        ).json()
        assert len(body["ignored"]) == 9
        assert all(i["reason"].startswith("no node label") for i in body["ignored"])
        assert body["warnings"] == ["payload has no version; read as version 4"]

        legacy = client.post(
            "/api/v1/alerts",
            json=fixture("legacy-am-0.5-version-0-numeric-groupkey-0-sendsAt.json"),
            headers=AUTH,
        )
        assert legacy.status_code == 202
        lb = legacy.json()
        assert "payload version 0 is not 4" in lb["warnings"][0]
        reasons = {i["alertname"]: i["reason"] for i in lb["ignored"]}
        assert reasons["CPU_Percentage_Worning"].startswith("no node label")
        # localhost:9102 is loopback: this machine (alerts have no status: the payload's "firing").
        assert {a["alertname"] for a in lb["accepted"]} == {"LoadAverage_15MIN"}
        assert [a["action"] for a in lb["accepted"]][0] == "queued"


@pytest.mark.servers
def test_unknown_version_that_does_not_fit_is_422(tmp_path: Path) -> None:
    with service(tmp_path) as (client, _):
        body = {"version": "5", "alerts": [{"labels": "not-a-map"}]}
        resp = client.post("/api/v1/alerts", json=body, headers=AUTH)
        assert resp.status_code == 422
        assert "version '5'" in resp.json()["detail"] and "alerts.0.labels" in resp.json()["detail"]


# ---------------------------------------------------------------------------------------------
# bad input: all 4xx with a reason, never 5xx, and the service keeps serving


def _bad_cases(max_body: int) -> list[tuple[str, bytes, int, str]]:
    good = json.dumps(fixture(CAPTURED)).encode()
    many = firing({"instance": "10.0.3.7:9100"})
    many["alerts"] = many["alerts"] * 5000
    return [
        ("truncated JSON", good[: len(good) // 2], 400, "invalid JSON"),
        ("empty body", b"", 400, "empty body"),
        ("not UTF-8", b"\xff\xfe{", 400, "invalid JSON"),
        ("a JSON array", b"[]", 422, "must be a JSON object"),
        ("a JSON string", b'"alerts"', 422, "must be a JSON object"),
        ("no alerts", b'{"version": "4"}', 422, "no `alerts` list"),
        ("alerts not a list", b'{"alerts": {"a": 1}}', 422, "no `alerts` list"),
        ("alert not an object", b'{"alerts": [1]}', 422, "alerts.0"),
        (
            "labels with a number",
            b'{"alerts": [{"labels": {"alertname": 5}}]}',
            422,
            "alerts.0.labels.alertname",
        ),
        ("no labels", b'{"alerts": [{"status": "firing"}]}', 422, "alerts.0.labels"),
        ("odd status", b'{"alerts": [{"status": "pending", "labels": {}}]}', 422, "alerts.0.status"),
        (
            "wrong envelope types",
            b'{"alerts": [], "groupLabels": [1], "truncatedAlerts": "x"}',
            422,
            "groupLabels",
        ),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, 400, "invalid JSON"),
        ("huge body", b'{"alerts": [], "x": "' + b"a" * (max_body + 10) + b'"}', 413, "over the limit"),
        ("5,000 alerts", json.dumps(many).encode(), 413, ""),
        ("huge number", b'{"alerts": [], "truncatedAlerts": 1' + b"0" * 5000 + b"}", 400, "invalid JSON"),
    ]


@pytest.mark.servers
def test_bad_input_is_4xx_with_a_reason(tmp_path: Path) -> None:
    max_body = 1024 * 1024
    with service(tmp_path, max_body_bytes=max_body) as (client, engine):
        for what, body, status, reason in _bad_cases(max_body):
            resp = client.post(
                "/api/v1/alerts", content=body, headers={**AUTH, "content-type": "application/json"}
            )
            assert resp.status_code == status, (what, resp.status_code, resp.text[:300])
            detail = resp.json()["detail"]
            assert reason in detail, (what, detail)
            assert "Traceback" not in resp.text
        # 5,000 alerts in a body under the size limit: refused by count, with the numbers.
        many = firing({"instance": "10.0.3.7:9100"})
        many["alerts"] = many["alerts"] * 5000
        roomy_resp = None
        with service(tmp_path / "roomy", max_body_bytes=64 * 1024 * 1024) as (roomy, _):
            roomy_resp = roomy.post("/api/v1/alerts", json=many, headers=AUTH)
            assert roomy.get("/healthz").status_code == 200
        assert roomy_resp.status_code == 413
        assert roomy_resp.json()["detail"] == "too many alerts in one request: 5000 > 1000"
        # Still serving, still investigating nothing.
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
    assert engine.calls == []


@pytest.mark.servers
def test_content_length_over_limit_is_refused_before_reading(tmp_path: Path) -> None:
    import socket

    with service(tmp_path, max_body_bytes=2048) as (client, _):
        host, port = client.base_url.host, client.base_url.port
        with socket.create_connection((host, port or 80), timeout=5) as s:
            s.sendall(
                f"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n".encode()
            )
            head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 413")


@pytest.mark.servers
def test_bad_query_parameters_are_422(tmp_path: Path) -> None:
    with service(tmp_path) as (client, _):
        for q in ("limit=0", "limit=501", "limit=abc"):
            resp = client.get(f"/api/v1/reports?{q}", headers=AUTH)
            assert resp.status_code == 422, q
            assert "limit" in resp.json()["detail"]
        assert client.get("/api/v1/reports/nope", headers=AUTH).status_code == 404


# ---------------------------------------------------------------------------------------------
# read API and metrics


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.servers
def test_read_api_filters_and_metrics_move(tmp_path: Path) -> None:
    with service(tmp_path) as (client, engine):
        m0 = client.get("/metrics").text
        assert _metric(m0, 'pfi_alerts_received_total{outcome="queued"}') == 0
        client.post(
            "/api/v1/alerts", json=firing({"instance": "10.0.3.7:9100"}, fingerprint="a"), headers=AUTH
        )
        wait_for(lambda: len(reports(client)) == 1, what="first report")
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="b"), headers=AUTH)
        wait_for(lambda: len(reports(client)) == 2, what="second report")
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="b"), headers=AUTH)  # dup
        client.post("/api/v1/alerts", content=b"{", headers=AUTH)  # rejected
        client.post(
            "/api/v1/alerts", json=fixture("kubesphere-cputhrottlinghigh-9-alerts.json"), headers=AUTH
        )

        rows = reports(client)
        assert rows[0]["started_at"] >= rows[1]["started_at"]  # newest first
        assert {r["node"] for r in rows} == {"node-a"}
        assert client.get("/api/v1/reports?node=node-b", headers=AUTH).json()["reports"] == []
        assert len(client.get("/api/v1/reports?limit=1", headers=AUTH).json()["reports"]) == 1
        doc = client.get(f"/api/v1/reports/{rows[0]['id']}", headers=AUTH).json()
        assert doc["schema_version"] and doc["processes"][0]["pod"]["name"] == "cart-cache-7d9f"
        assert client.get("/api/v1/investigations", headers=AUTH).json()["investigations"] == []

        m = client.get("/metrics").text
        assert _metric(m, 'pfi_alerts_received_total{outcome="queued"}') == 2
        assert _metric(m, 'pfi_alerts_received_total{outcome="duplicate"}') == 1
        assert _metric(m, 'pfi_alerts_received_total{outcome="rejected"}') == 1
        assert _metric(m, 'pfi_alerts_received_total{outcome="ignored"}') == 9
        assert _metric(m, 'pfi_investigations_total{backend="perf-major",outcome="complete"}') == 2
        assert _metric(m, "pfi_investigation_duration_seconds_count") == 2
        assert _metric(m, "pfi_queue_depth") == 0
        assert _metric(m, "pfi_store_ready") == 1
    assert len(engine.calls) == 2


@pytest.mark.servers
def test_engine_failure_is_a_failed_report_not_a_crash(tmp_path: Path) -> None:
    with service(tmp_path, FakeEngine(fail=True)) as (client, _):
        client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="failed report")
        assert row["status"] == "failed"
        assert "perf exploded" in row["summary"]
        assert client.get("/healthz").status_code == 200

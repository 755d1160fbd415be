"""Every sink against a real HTTP receiver on loopback; retries with backoff; outcomes recorded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.models import Report
from app.service.delivery.sinks import (
    AlertmanagerSink,
    KubeEventsSink,
    SlackSink,
    WebhookSink,
    deliver_with_retry,
    describe_top,
    report_url,
)
from tests.service_support import (
    AUTH,
    CAPTURED,
    Recorder,
    fixture,
    make_report,
    make_settings,
    reports,
    service,
    wait_for,
)
from tests.tls_standin import ApiServer, Certs, StandIn

SLACK_SECRET = "T0000/B0000/XXXXsecretXXXX"


def _full(client: httpx.Client, rid: str) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/reports/{rid}", headers=AUTH).json())


@pytest.mark.servers
def test_every_sink_end_to_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, certs: Certs, serve: Callable[[StandIn], StandIn]
) -> None:
    token = tmp_path / "sa-token"
    token.write_text("sa-token-0123456789\n")
    api = ApiServer([])  # the token goes over TLS only (an http:// API server URL is refused)
    kube = serve(StandIn("", "sa-token-0123456789", routes=api))
    with (
        Recorder() as am,
        Recorder(fail_first=2) as slack,  # fails twice, then takes it
        Recorder() as hook,
        caplog.at_level(logging.DEBUG),
        service(
            tmp_path,
            alertmanager_url=am.url,
            kubernetes_events=True,
            apiserver_url=kube.url,
            apiserver_ca_file=certs.ca,
            apiserver_token_file=token,
            slack_webhook_url=f"{slack.url}/services/{SLACK_SECRET}",
            report_webhook_url=f"{hook.url}/hook",
            public_url="https://pfi.example/",
        ) as (client, _),
    ):
        client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="report")
        # Each sink's result is written as soon as that sink is done (the slowest, Slack, last).
        doc = wait_for(lambda: len((d := _full(client, row["id"]))["sinks"]) == 4 and d, what="sink results")
        results = {s["sink"]: s for s in doc["sinks"]}
        assert set(results) == {"alertmanager", "kubernetes-events", "slack", "webhook"}
        assert all(r["ok"] for r in results.values()), results
        assert results["slack"]["attempts"] == 3 and results["alertmanager"]["attempts"] == 1

        # Alertmanager: POST /api/v2/alerts, one MajorPageFaultsReport alert.
        (req,) = am.requests
        assert req["path"] == "/api/v2/alerts"
        (alert,) = req["body"]
        assert alert["labels"] == {
            "alertname": "MajorPageFaultsReport",
            "severity": "info",
            "node": "node-a",
            "namespace": "shop",
            "pod": "cart-cache-7d9f",
            "container": "cache",
            "cause": "container_memory_limit",
            "report_id": row["id"],
        }
        ann = alert["annotations"]
        assert ann["summary"].startswith("container cache of shop/cart-cache-7d9f")
        assert ann["report_url"] == f"https://pfi.example/reports/{row['id']}"
        assert "cart-cache [4242] in shop/cart-cache-7d9f (cache): 8,000 major faults/s" in ann["description"]
        assert "file /data/index.bin 90%" in ann["description"]
        assert alert["startsAt"] < alert["endsAt"] and alert["generatorURL"] == ann["report_url"]

        # Kubernetes Events (events.k8s.io/v1): the Node and the culprit Pod (the host process gets none).
        assert kube.requests == [
            "POST /apis/events.k8s.io/v1/namespaces/default/events",
            "POST /apis/events.k8s.io/v1/namespaces/shop/events",
        ]
        node_ev, pod_ev = api.events  # the stand-in took them with the bearer token only
        assert node_ev["regarding"]["kind"] == "Node" and node_ev["regarding"]["name"] == "node-a"
        assert pod_ev["regarding"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": "shop",
            "name": "cart-cache-7d9f",
            "uid": "0f3c2a1e-0000-4000-8000-000000000001",
            "fieldPath": "spec.containers{cache}",
        }
        for ev in (node_ev, pod_ev):
            assert ev["reason"] == "MajorPageFaults" and ev["type"] == "Warning"
            assert ev["reportingController"] == "pagefault-inspector.io/pagefault-inspector"
            assert len(ev["note"]) <= 1024
        assert pod_ev["note"].startswith("cart-cache re-reads /data/index.bin")

        # Slack: three tries, each the same message with the verdict and a link.
        assert len(slack.requests) == 3
        msg = slack.requests[-1]["body"]
        assert msg["text"].startswith("Major page faults on node-a:")
        assert f"<https://pfi.example/reports/{row['id']}|Full report>" in str(msg["blocks"])

        # The generic webhook: the whole report document.
        assert Report.model_validate(hook.requests[0]["body"]).id == row["id"]

        metrics = client.get("/metrics").text
        for sink in ("alertmanager", "kubernetes-events", "slack", "webhook"):
            assert f'pfi_sink_deliveries_total{{outcome="ok",sink="{sink}"}} 1.0' in metrics
    # The Slack URL is a credential: in no log line, also not in the retries' warnings.
    assert any("sink slack attempt 1/4 failed" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if SLACK_SECRET in r.getMessage()]


@pytest.mark.servers
def test_failing_sink_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    with (
        Recorder(status=500) as am,
        service(tmp_path, alertmanager_url=am.url, sink_attempts=3) as (client, _),
    ):
        client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="report")
        doc = wait_for(lambda: (d := _full(client, row["id"]))["sinks"] and d, what="sink results")
        (res,) = doc["sinks"]
        assert res == {**res, "sink": "alertmanager", "ok": False, "attempts": 3}
        assert "HTTP 500" in res["detail"]
        assert len(am.requests) == 3
        assert (
            'pfi_sink_deliveries_total{outcome="failed",sink="alertmanager"} 1.0'
            in client.get("/metrics").text
        )


def test_backoff_doubles(tmp_path: Path) -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            settings = make_settings(tmp_path, report_webhook_url="http://127.0.0.1:9/x")
            res = await deliver_with_retry(
                WebhookSink(settings, client), make_report("node-a"), attempts=4, backoff=0.5, sleep=sleep
            )
            assert not res.ok and res.attempts == 4 and "ConnectError" in res.detail
            assert "127.0.0.1:9" not in res.detail  # the URL stays out of the result

    asyncio.run(go())
    assert waits == [0.5, 1.0, 2.0]


def test_payloads_are_bounded_and_link_to_the_ui(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, alertmanager_url="http://am", slack_webhook_url="http://s")
    report = make_report("node-a")
    long = report.model_copy(
        update={
            "verdict": report.verdict.model_copy(update={"summary": "x" * 5000}),
            "processes": report.processes * 50,
        }
    )
    assert len(describe_top(long)) <= 1024
    client = httpx.AsyncClient()
    alert = AlertmanagerSink(settings, client).alert(long)
    assert len(alert["annotations"]["summary"]) <= 1024
    # Without PFI_PUBLIC_URL: the UI address, what `kubectl port-forward` reaches.
    assert alert["annotations"]["report_url"] == f"http://127.0.0.1:8081/reports/{report.id}"
    assert (
        report_url(make_settings(tmp_path, ui_listen_address="0.0.0.0:9000").web, "x")
        == "http://127.0.0.1:9000/reports/x"
    )
    msg = SlackSink(settings, client).message(long)
    assert all(len(b["text"]["text"]) <= 3000 for b in msg["blocks"] if "text" in b)
    host_only = report.model_copy(update={"processes": [report.processes[1]]})
    assert "namespace" not in AlertmanagerSink(settings, client).alert(host_only)["labels"]
    assert (
        KubeEventsSink.targets(host_only)[0][1]["kind"] == "Node"
        and len(KubeEventsSink.targets(host_only)) == 1
    )
    asyncio.run(client.aclose())


HTTP_LOGGERS = ("httpx", "httpcore")


@pytest.fixture
def serve_logging() -> Any:
    """Logging configured the way `serve` does (app.service.logs.configure at INFO) into a buffer;
    the root logger and the http client loggers are put back afterwards."""
    import io

    from app.service import logs

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logs._configured,
             {n: logging.getLogger(n).level for n in HTTP_LOGGERS})
    for n in HTTP_LOGGERS:
        logging.getLogger(n).setLevel(logging.NOTSET)
    logs._configured = False
    buf = io.StringIO()
    try:
        assert logs.configure("text", logging.INFO, buf)
        yield buf
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logs._configured = saved[2]
        for n, level in saved[3].items():
            logging.getLogger(n).setLevel(level)


def test_slack_url_not_in_serve_logs(tmp_path: Path, serve_logging: Any) -> None:
    """httpx logs each request's URL at INFO; with serve's logging, a real Slack delivery over real
    httpx to a loopback receiver leaves neither the URL path nor its secret in any log line."""
    with Recorder() as slack:
        url = f"{slack.url}/services/{SLACK_SECRET}"
        settings = make_settings(tmp_path, slack_webhook_url=url)

        async def go() -> Any:
            async with httpx.AsyncClient() as client:
                return await deliver_with_retry(SlackSink(settings, client), make_report("node-a"), attempts=1, backoff=0)

        result = asyncio.run(go())
    assert result.ok and slack.requests[0]["path"] == f"/services/{SLACK_SECRET}"
    logging.getLogger("app.test").info("delivered")  # the buffer does capture INFO lines
    text = serve_logging.getvalue()
    assert "delivered" in text
    assert SLACK_SECRET not in text and "/services/" not in text


def test_a_quiet_report_is_a_normal_event_on_the_node_only(tmp_path: Path) -> None:
    """The alert fired but the window found the node under the noise floor: the Node gets a Normal
    Event saying so, and the pods merely listed (a handful of faults each) get no Warning."""
    from app.models import Cause

    settings = make_settings(tmp_path)
    report = make_report("node-a")
    assert any(p.pod is not None and p.major_faults > 0 for p in report.processes)
    sink = KubeEventsSink(settings, api=None)  # type: ignore[arg-type]  # targets and bodies only
    busy = sink.targets(report)
    assert [o["kind"] for _, o, _ in busy] == ["Node", "Pod"]
    assert sink.event(report, *busy[0])["type"] == "Warning"
    quiet = report.model_copy(update={"verdict": report.verdict.model_copy(update={
        "cause": Cause.QUIET, "summary": "the node is quiet: 3 major faults/s"})})
    targets = sink.targets(quiet)
    assert [o["kind"] for _, o, _ in targets] == ["Node"]
    ev = sink.event(quiet, *targets[0])
    assert ev["type"] == "Normal" and ev["note"].startswith("the node is quiet")

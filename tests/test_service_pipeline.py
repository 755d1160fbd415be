"""A report's way through the service: one builder puts the report together (id, alerts, the
recorder's lead-up or why there is none), the alerts' answer is typed, the outbox owns its
deliveries, the store's gauges are read at scrape time, and the engine and the recorder share one
pod directory. (Issue 19 pinned each of these defects with a test that fails without its fix.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.investigation.lead_up import NO_HISTORY_CLI
from app.investigation.report import CLI_LEAD_UP, LeadUp, build_report
from app.models import Cause, History, HistoryCgroup, HistoryPod, Report, Trigger
from app.service.alerts.intake import Accepted, AlertsAnswer, Forwarded, Ignored, Outcomes
from app.service.alerts.payload import IncomingAlert
from app.service.delivery.outbox import Outbox
from app.service.metrics import Metrics
from app.service.report_store import ReportStore
from tests.service_support import (
    AUTH,
    FakeEngine,
    firing,
    make_report,
    make_settings,
    reports,
    service,
    wait_for,
)

# --- one place builds a report --------------------------------------------------------------------


def _stopped_history(started: datetime) -> History:
    """A lead-up whose top container made 8,400 faults/s and stopped before the window."""
    since = started - timedelta(minutes=30)
    series = [0, 0] + [8400 * 60] * 12 + [0] * 16
    pod = HistoryPod(namespace="billing", name="nightly-report", uid="u-1", container="report")
    cg = HistoryCgroup(cgroup="/kubepods/pod-u-1/c1", pod=pod, major_faults=sum(series), series=series,
                       last_active_at=since + timedelta(minutes=14))
    return History(interval_seconds=60, since=since, until=started, node_series=series,
                   node_major_faults=sum(series), cgroups=[cg])


def test_build_report_puts_id_alerts_and_lead_up_together():
    first = Trigger(kind="alert", fingerprint="fp1", starts_at="2026-12-02T10:20:00Z")
    joined = Trigger(kind="alert", fingerprint="fp2")
    result = make_report("node-a", Trigger(kind="alert", fingerprint="fp1"))
    quiet = result.model_copy(update={"processes": []})
    history = _stopped_history(result.started_at)

    report = build_report(quiet, report_id="r-1", triggers=[first, joined], lead_up=LeadUp(history))
    assert report.id == "r-1"
    assert report.trigger == first and report.joined == [joined]
    assert report.history == history and report.history_reason is None
    assert report.verdict.cause == Cause.STOPPED_BEFORE_WINDOW  # the verdict reads the lead-up
    assert "billing/nightly-report" in report.verdict.summary
    assert quiet.id != "r-1" and quiet.history is None  # the engine's result is left as it was

    none = build_report(result, report_id="r-2", triggers=[first], lead_up=LeadUp(None, "no history yet"))
    assert (none.id, none.joined, none.history, none.history_reason) == ("r-2", [], None, "no history yet")
    assert none.verdict == result.verdict


def test_cli_report_says_why_it_has_no_lead_up():
    result = make_report("node-a")
    report = build_report(result, report_id=result.id, triggers=[], lead_up=CLI_LEAD_UP)
    assert report.trigger == result.trigger and report.id == result.id
    assert report.history is None and report.history_reason == NO_HISTORY_CLI


@pytest.mark.servers
def test_service_report_carries_the_recorders_reason_and_who_joined(tmp_path: Path) -> None:
    """Through the service: the stored document has its id, the alerts that joined and why there is no
    lead-up (the recorder is off in these tests), all set by the one builder."""
    engine = FakeEngine(hold=True)
    with service(tmp_path, engine) as (client, _):
        first = client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="fp1"), headers=AUTH).json()
        wait_for(engine.started.is_set, what="engine start")
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="fp2"), headers=AUTH)
        engine.release.set()
        rid = first["accepted"][0]["id"]
        wait_for(lambda: reports(client), what="report")
        doc = client.get(f"/api/v1/reports/{rid}", headers=AUTH).json()
    assert doc["id"] == rid
    assert doc["trigger"]["fingerprint"] == "fp1" and [t["fingerprint"] for t in doc["joined"]] == ["fp2"]
    assert doc["history"] is None
    assert doc["history_reason"] == "no history: the recorder is off (PFI_RECORDER_INTERVAL_SECONDS=0)"


# --- alert handling answers in types ----------------------------------------------------------------


def test_alerts_answer_is_typed_and_keeps_the_webhook_shape():
    a = IncomingAlert("firing", {"alertname": "NodeMemoryMajorPagesFaults", "node": "n1"}, "fp1", "t0", {})
    b = IncomingAlert("resolved", {"alertname": "Other"}, "fp2", "t1", {})
    outcomes = Outcomes(accepted=[Accepted(a, "n1", "queued", "r-1", "investigation queued")])
    outcomes.add(Outcomes(forwarded=[Forwarded(a, "n2")], ignored=[Ignored(b, "not ours")]))
    base_a = {"fingerprint": "fp1", "alertname": "NodeMemoryMajorPagesFaults", "status": "firing"}
    base_b = {"fingerprint": "fp2", "alertname": "Other", "status": "resolved"}
    assert AlertsAnswer("n1", outcomes).as_dict() == {
        "node": "n1",
        "accepted": [{**base_a, "node": "n1", "action": "queued", "id": "r-1", "reason": "investigation queued"}],
        "forwarded": [{**base_a, "node": "n2"}],
        "ignored": [{**base_b, "reason": "not ours"}],
    }
    later = AlertsAnswer("n1", Outcomes(), deferred=[Ignored(a, "slow lookup")], warnings=["w"]).as_dict()
    assert later["deferred"] == [{**base_a, "reason": "slow lookup"}] and later["warnings"] == ["w"]


# --- the outbox owns its deliveries; the store's gauges are read at scrape time ------------------------


class _Sink:
    """A sink that records what it got; `hang` makes every delivery wait until cancelled."""

    name = "webhook"

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.got: list[str] = []

    async def deliver(self, report: Report, fleet: str = "") -> str:
        if self.hang:
            await asyncio.Event().wait()
        self.got.append(report.id)
        return "ok"


def test_outbox_stop_cancels_late_deliveries_and_the_next_outbox_resumes_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = ReportStore(tmp_path / "data")
    assert store.open()
    report = make_report("node-a")

    async def first() -> float:
        box = Outbox(settings.delivery, store, [_Sink(hang=True)], Metrics())
        box.start()
        await box.send(report, [])
        assert report.id in box.delivering
        t0 = time.monotonic()
        await box.stop(0.2)
        return time.monotonic() - t0

    assert asyncio.run(first()) < 2.0
    assert store.outbox() == [(report.id, ["webhook"])]  # kept for the next start

    sink = _Sink()

    async def second() -> None:
        box = Outbox(settings.delivery, store, [sink], Metrics())
        box.start()  # resumes at once
        for _ in range(100):
            if sink.got:
                break
            await asyncio.sleep(0.02)
        await box.stop(1.0)

    asyncio.run(second())
    assert sink.got == [report.id]
    assert store.outbox() == []
    stored = store.get(report.id)
    assert stored is not None and [(r.sink, r.ok) for r in stored.sinks] == [("webhook", True)]
    store.close()


def test_outbox_sends_no_cancelled_report(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "data")
    assert store.open()
    sink = _Sink()
    cancelled = make_report("node-a", status="cancelled")

    async def run() -> None:
        box = Outbox(make_settings(tmp_path).delivery, store, [sink], Metrics())
        await box.send(cancelled, [])
        await box.stop(1.0)

    asyncio.run(run())
    assert sink.got == [] and store.outbox() == [] and store.get(cancelled.id) is not None
    store.close()


@pytest.mark.servers
def test_store_gauges_are_read_when_scraped(tmp_path: Path) -> None:
    """A change of the store that no call site reports (a report set aside, the store failing) shows in
    the next scrape of /metrics."""
    store = ReportStore(tmp_path / "data")
    assert store.open()
    with service(tmp_path, store=store) as (client, _):
        before = client.get("/metrics").text
        assert "pfi_store_ready 1.0" in before and "pfi_store_set_aside_reports 0.0" in before
        store.set_aside = 3
        store.reason = "cannot write: disk I/O error"
        after = client.get("/metrics").text
        assert "pfi_store_ready 0.0" in after and "pfi_store_set_aside_reports 3.0" in after
        store.reason = None
        assert "pfi_store_ready 1.0" in client.get("/metrics").text


# --- one pod directory ---------------------------------------------------------------------------------


def test_the_engine_and_the_recorder_share_one_pod_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One kubelet PodList cache per service: the flight recorder's lookups and the investigations'
    go to the same directory (there were two, each asking the kubelet)."""
    import app.investigation.engine
    from app.service.root import Seams, build_service

    seen: list[object] = []
    monkeypatch.setattr(app.investigation.engine, "investigate", lambda *a, edges, **k: seen.append(edges.pods))
    settings = make_settings(tmp_path, recorder_interval_seconds=5, cgroup_root=tmp_path / "no-cgroups")

    async def run() -> None:
        state = await build_service(settings, Seams(token="t" * 32))
        try:
            assert state.recorder is not None and state.recorder.recorder is not None
            assert state.recorder.recorder.pods is state.pods
            state.scheduler._investigator(settings)  # what the scheduler runs for an alert
            assert seen == [state.pods]
        finally:
            await state.stop()

    asyncio.run(run())


@pytest.mark.servers
def test_service_report_carries_the_recorders_lead_up(tmp_path: Path) -> None:
    """With the recorder on, the scheduler reads its lead-up and the one builder puts it in the report."""
    from tests.test_recorder import V2_B, Node

    n = Node(tmp_path / "node", 2)
    n.set(V2_B, 0)
    with service(tmp_path, recorder_interval_seconds=0.5, cgroup_root=n.cg, proc_root=n.proc,
                 kubelet_url="https://127.0.0.1:1", apiserver_fallback=False) as (client, _):
        def samples() -> float:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("pfi_recorder_samples_total "):
                    return float(line.split()[1])
            return 0.0

        wait_for(lambda: samples() >= 2, what="two recorder samples")
        n.set(V2_B, 5000)
        n.node(5000)
        wait_for(lambda: samples() >= 4, what="the burst recorded")
        starts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        answer = client.post("/api/v1/alerts", json=firing({"node": "node-a"}, starts=starts), headers=AUTH).json()
        rid = answer["accepted"][0]["id"]
        wait_for(lambda: reports(client), what="report")
        doc = client.get(f"/api/v1/reports/{rid}", headers=AUTH).json()
    assert doc["history_reason"] is None, doc["history_reason"]
    h = doc["history"]
    assert h is not None and h["node_major_faults"] == 5000
    assert h["cgroups"] and h["cgroups"][0]["major_faults"] == 5000


# --- one composition root ------------------------------------------------------------------------------


def test_a_service_built_without_the_web_app_gives_its_sinks_the_fleet_line(tmp_path: Path) -> None:
    """The outbox gets the fleet's "also on" line when it is built (it used to be set on it by the web
    app after the service started: a service built without the app, as the storm harness builds
    them, posted its reports without the line)."""
    import json

    import httpx

    from app.service.root import Seams, build_service
    from tests.e2e.sample_reports import deployment_pod_report

    peer_store = ReportStore(tmp_path / "node-b")
    assert peer_store.open() and peer_store.put(deployment_pod_report("node-b", 2, minutes_ago=5))
    posted: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "am.test":
            posted.extend(json.loads(request.content))
            return httpx.Response(200, json={})
        rows = peer_store.workloads(key=request.url.params.get("key"))
        body = {"node": "node-b", "scope": "node", "reports": peer_store.count(finished=True),
                "workloads": [r.model_dump(mode="json") for r in rows]}
        return httpx.Response(200, json=body)

    settings = make_settings(tmp_path, alertmanager_url="http://am.test:9093", static_peers="node-b=http://node-b.test:8080")
    mine = deployment_pod_report("node-a", 1, minutes_ago=1)

    async def run() -> None:
        service = await build_service(settings, Seams(transport=httpx.MockTransport(answer), token="t" * 32))
        try:
            await service.outbox.send(mine, [])
            deadline = time.monotonic() + 60  # the delivery runs in the outbox's own task
            while not posted and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await service.stop()

    asyncio.run(run())
    peer_store.close()
    assert posted, "nothing reached Alertmanager"
    assert posted[0]["annotations"]["also_on"] == "also on 1 other node: node-b"

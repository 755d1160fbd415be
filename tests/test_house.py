"""Issue 19, the house: the defects found while putting the service in wings, each pinned by a test
that fails without its fix."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import TRACER_CHOICES, TRACER_NAMES, Settings
from app.investigation.lead_up import NO_HISTORY_CLI
from app.investigation.report import CLI_LEAD_UP, LeadUp, build_report
from app.models import Cause, History, HistoryCgroup, HistoryPod, Report, Trigger
from app.parsers.address import AddressError, split_host_port
from app.service.alerts.intake import Accepted, AlertsAnswer, Forwarded, Ignored, Outcomes
from app.service.alerts.payload import IncomingAlert
from app.service.delivery.outbox import Outbox
from app.service.metrics import Metrics
from app.service.report_store import ReportStore
from app.tracers import registry
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


def test_settings_name_the_registry_backends_in_order():
    """app.config keeps the backend names as a literal (it no longer imports the tracers); they are
    the registry's backends, by their classes' own names, in the order auto tries them."""
    assert tuple(registry.ORDER) == TRACER_NAMES
    assert [registry.make_tracer(n, Settings()).name for n in TRACER_NAMES] == list(TRACER_NAMES)
    assert registry.CHOICES == TRACER_CHOICES == ("auto", *TRACER_NAMES)


def test_registry_refuses_names_that_differ():
    with pytest.raises(RuntimeError, match="differ from app.config.TRACER_NAMES"):
        registry.check_names(["perf-major", "procfs"], ("procfs", "perf-major"))
    with pytest.raises(RuntimeError):
        registry.check_names([*registry.ORDER, "ftrace"], TRACER_NAMES)
    registry.check_names(list(registry.ORDER), TRACER_NAMES)


def test_settings_refuse_an_unknown_tracer(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PFI_TRACER", "ftrace")
    with pytest.raises(ValidationError, match="unknown tracer 'ftrace'; one of auto, perf-major"):
        Settings()


def test_settings_load_without_the_tracers():
    """The settings module imports no tracer (the 9-module circle through app.config is gone)."""
    import subprocess
    import sys

    code = "import sys, app.config; app.config.Settings(); print(sorted(m for m in sys.modules if m.startswith('app.tracers')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


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


# --- one host:port parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ui", "url"),
    [
        ("127.0.0.1:8081", "http://127.0.0.1:8081/reports/r1"),
        ("*:8081", "http://127.0.0.1:8081/reports/r1"),  # was http://*:8081
        (":9000", "http://127.0.0.1:9000/reports/r1"),
        ("[::]:8081", "http://127.0.0.1:8081/reports/r1"),
        ("0.0.0.0:8081", "http://127.0.0.1:8081/reports/r1"),
        ("localhost", "http://localhost:8081/reports/r1"),  # was http://127.0.0.1:localhost
        ("localhost:8090", "http://localhost:8090/reports/r1"),
        ("[::1]:8081", "http://[::1]:8081/reports/r1"),  # was http://[::1]:8081 only by luck
        ("[fd00::7]", "http://[fd00::7]:8081/reports/r1"),
        ("fd00::7", "http://[fd00::7]:8081/reports/r1"),  # was http://fd00::7:8081 (no brackets)
    ],
)
def test_report_url_from_any_ui_listen_address(tmp_path: Path, ui: str, url: str) -> None:
    from app.service.delivery.sinks import report_url

    assert report_url(make_settings(tmp_path, ui_listen_address=ui, public_url=None).web, "r1") == url


@pytest.mark.parametrize(
    ("ui", "warns"),
    [("127.0.0.1:8081", False), ("localhost", False), ("[::1]", False), ("localhost:8081", False),
     ("*:8081", True), ("[::]:8081", True), ("10.0.0.5:8081", True), ("fd00::7", True)],
)
def test_ui_exposure_warning_reads_the_address_like_serve(tmp_path: Path, ui: str, warns: bool) -> None:
    """`localhost` without a port is loopback (it warned before: the port-less address lost its host)."""
    from app.service.ui.guard import allowed_ui_hosts, ui_exposure_warning

    assert (ui_exposure_warning(make_settings(tmp_path, ui_listen_address=ui).web) is not None) == warns
    assert "*" not in allowed_ui_hosts(make_settings(tmp_path, ui_listen_address=ui).web)


@pytest.mark.parametrize(
    ("text", "parts"),
    [("10.0.3.7:9100", ("10.0.3.7", "9100")), ("[fd00::1]:9100", ("fd00::1", "9100")), ("[fd00::1]", ("fd00::1", None)),
     ("fd00::1", ("fd00::1", None)), ("node-a", ("node-a", None)), (":8080", ("", "8080")), ("*:8081", ("*", "8081")),
     (" Node-A:1 ", ("Node-A", "1"))],
)
def test_split_host_port(text: str, parts: tuple[str, str | None]) -> None:
    assert split_host_port(text) == parts


@pytest.mark.parametrize("text", ["[fd00::1", "[fd00::1]9100", "[::1]x"])
def test_split_host_port_refuses_broken_brackets(text: str) -> None:
    with pytest.raises(AddressError):
        split_host_port(text)


# --- broad excepts narrowed: what we expect is reported, our own bugs surface with their traceback ------


def test_cli_reports_a_bad_setting_but_not_a_bug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    import app.cli

    monkeypatch.setenv("PFI_INVESTIGATION_SECONDS", "-1")
    assert app.cli.main(["probe", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "bad setting" in err and "investigation_seconds" in err
    monkeypatch.delenv("PFI_INVESTIGATION_SECONDS")

    def broken() -> Settings:
        raise KeyError("a bug in a validator")

    monkeypatch.setattr(app.cli, "Settings", broken)
    with pytest.raises(KeyError, match="a bug in a validator"):  # was: "bad setting: 'a bug in a validator'", exit 2
        app.cli.main(["probe"])


def _kubelet_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, kubelet_url="https://127.0.0.1:1", apiserver_fallback=False)


def test_kubelet_unreachable_is_an_attribution_error(tmp_path: Path) -> None:
    from app.collectors.kubelet import PodDirectory

    index, attribution = PodDirectory(_kubelet_settings(tmp_path)).index()
    assert index is None and attribution.error is not None and "unreachable" in attribution.error


def test_a_bug_while_asking_the_kubelet_is_not_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    from app.collectors.kubelet import PodDirectory

    def bug(*_a: object, **_k: object) -> None:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(urllib3.PoolManager, "request", bug)
    with pytest.raises(TypeError, match="a bug of ours"):  # was: attribution "kubelet unreachable: TypeError"
        PodDirectory(_kubelet_settings(tmp_path)).index()


def test_a_bug_in_an_api_server_call_is_not_unreachable() -> None:
    from app.collectors.apiserver import ApiServer, ApiServerConfig, ApiServerError

    api = ApiServer(ApiServerConfig("PFI_APISERVER_URL", "https://127.0.0.1:1", None, None, None, 2.0))

    def refused(_client: object) -> object:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ApiServerError, match="unreachable: connection refused"):
        api._call("test", refused)

    def bug(_client: object) -> object:
        raise AttributeError("a bug of ours")

    with pytest.raises(AttributeError, match="a bug of ours"):  # was: ApiServerError "unreachable: AttributeError"
        api._call("test", bug)
    api.close()


def test_a_pod_directory_bug_fails_the_recorder_sample(tmp_path: Path) -> None:
    """It used to be one warning line without traceback per sample, with the pod left unnamed; now the
    sample raises and the service's recorder thread logs it with its traceback."""
    from app.collectors.flight_recorder import FaultRecorder
    from tests.test_recorder import V2_B, Node

    class BrokenPods:
        def pod_for(self, ref: object) -> None:
            raise ZeroDivisionError("a bug of ours")

    n = Node(tmp_path, 2)
    n.set(V2_B, 70)
    rec = FaultRecorder(n.cg, n.proc, interval=10, retention=60, pods=BrokenPods())
    with pytest.raises(ZeroDivisionError):
        rec.sample()


# --- one pod directory ---------------------------------------------------------------------------------


def test_the_engine_and_the_recorder_share_one_pod_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One kubelet PodList cache per service: the flight recorder's lookups and the investigations'
    go to the same directory (there were two, each asking the kubelet)."""
    import app.investigation.engine
    from app.service.state import ServiceState

    seen: list[object] = []
    monkeypatch.setattr(app.investigation.engine, "investigate", lambda *a, pods, **k: seen.append(pods))
    settings = make_settings(tmp_path, recorder_interval_seconds=5, cgroup_root=tmp_path / "no-cgroups")

    async def run() -> None:
        state = await ServiceState.start(settings, store=None, token="t" * 32)
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

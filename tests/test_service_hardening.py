"""Issue 10 through the HTTP API: a poisoned alert, a sink outbox that outlives a stop, stage
deadlines, Slack escaping, the UI's Host check and headers, control characters on pages, a client
that hangs up mid-body, token rotation, private data files."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.models import Report, Trigger
from app.service import scheduler, state
from app.service.delivery import outbox
from app.service.logs import JsonFormatter, SafeTextFormatter
from app.service.report_store import ReportStore
from app.service.ui.guard import ui_exposure_warning
from app.service.web.app import create_app, create_ui_app
from tests.service_support import (
    AUTH,
    TOKEN,
    FakeEngine,
    LiveServer,
    Recorder,
    firing,
    make_report,
    make_settings,
    reports,
    service,
    wait_for,
)


def _doc(client: httpx.Client, rid: str) -> dict[str, Any]:
    resp = client.get(f"/api/v1/reports/{rid}", headers=AUTH)
    return dict(resp.json()) if resp.status_code == 200 else {}


# ---------------------------------------------------------------------------------------------
# 1. unencodable text


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"alertname": "NodeMemoryMajorPagesFaults\ud800"}, "alerts[0].labels.alertname"),
        ({"node": "node-a", "team": "x\udfffy"}, "alerts[0].labels.team"),
        ({"node": "node-a", "bad\ud800key": "v"}, "(its name)"),
    ],
)
@pytest.mark.servers
def test_lone_surrogate_is_a_422_naming_the_field(tmp_path: Path, labels: dict[str, str], field: str) -> None:
    with service(tmp_path, cooldown_seconds=0) as (client, engine):
        body = firing(labels)
        body["alerts"][0]["labels"].update(labels)
        # json.dumps writes "\ud800" as the escape Alertmanager would send: valid JSON.
        resp = client.post("/api/v1/alerts", content=json.dumps(body).encode(), headers=AUTH)
        assert resp.status_code == 422, resp.text
        assert field in resp.json()["detail"] and "surrogate" in resp.json()["detail"]
        assert engine.calls == []
        # The next, normal alert is investigated and stored; the service is ready.
        ok = client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers=AUTH)
        assert ok.status_code == 202 and ok.json()["accepted"][0]["action"] == "queued"
        (row,) = wait_for(lambda: reports(client), what="report")
        assert row["status"] == "complete"
        assert client.get("/readyz").json() == {"ready": True, "reasons": []}


@pytest.mark.servers
def test_control_characters_in_labels_are_stored_and_shown_as_escapes(tmp_path: Path) -> None:
    evil = "a\x00b\x1b[31mc\x07d\u202eevil.exe"
    settings = make_settings(tmp_path, cooldown_seconds=0)
    api_app = create_app(settings, investigator=FakeEngine(), token=TOKEN)
    with (
        LiveServer(api_app) as api,
        LiveServer(create_ui_app(api_app)) as ui,
        httpx.Client(base_url=api.url, timeout=10) as client,
    ):
        resp = client.post("/api/v1/alerts", json=firing({"node": "node-a", "team": evil}), headers=AUTH)
        assert resp.status_code == 202
        (row,) = wait_for(lambda: reports(client), what="report")
        assert _doc(client, row["id"])["trigger"]["labels"]["team"] == evil  # stored as sent
        page = httpx.get(f"{ui.url}/reports/{row['id']}", timeout=10)
        assert page.status_code == 200
        assert "a\\x00b\\x1b[31mc\\x07d\\u202eevil.exe" in page.text
        for raw in ("\x00", "\x1b", "\x07", "\u202e"):
            assert raw not in page.text


def test_store_sets_aside_a_report_it_cannot_write_and_goes_on(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "data")
    assert store.open()
    poisoned = make_report("node-a", Trigger(labels={"team": "x\ud800"}))
    normal = make_report("node-a")
    assert store.put(poisoned) is True  # set aside: nothing waits for it
    assert store.put(normal) is True
    assert store.set_aside == 1 and store.pending == 0 and store.ready
    assert [s.id for s in store.list()] == [normal.id]
    store.close()


@pytest.mark.servers
def test_store_retry_loop_survives_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    healed = threading.Event()  # the disk comes back only when the test says so (no race with /readyz)

    class Flaky(ReportStore):
        calls = 0

        def retry_pending(self) -> bool:
            Flaky.calls += 1
            if Flaky.calls <= 3:
                raise RuntimeError("disk on fire")
            if not healed.is_set():
                return False
            self.reason = None
            return True

    monkeypatch.setattr(state, "STORE_RETRY_SECONDS", 0.05)
    store = Flaky(tmp_path / "data")
    store.open()
    store.reason = "cannot write: disk I/O error"  # not ready: the loop retries
    with service(tmp_path, store=store) as (client, _):
        assert client.get("/readyz").status_code == 503
        wait_for(lambda: Flaky.calls > 3, what="the retry loop past its three errors")
        assert client.get("/readyz").status_code == 503  # still failing quietly: not ready
        healed.set()
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready after the retries")
    assert Flaky.calls >= 4


# ---------------------------------------------------------------------------------------------
# 2. the sink outbox


@pytest.mark.servers
def test_sink_delivery_pending_at_stop_is_made_after_restart(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"sink_attempts": 20, "sink_backoff_seconds": 0.3}
    # The service stops (first) while the webhook still fails: no result, the outbox keeps it.
    with Recorder(status=503) as down, service(tmp_path, report_webhook_url=f"{down.url}/hook", **kw) as (
        client,
        _,
    ):
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="report")
        wait_for(lambda: down.requests, what="a first delivery attempt")
    with Recorder() as up, service(tmp_path, report_webhook_url=f"{up.url}/hook", **kw) as (client, _):
        doc = wait_for(lambda: (d := _doc(client, row["id"]))["sinks"] and d, what="resumed delivery")
        assert [(s["sink"], s["ok"]) for s in doc["sinks"]] == [("webhook", True)]
        assert [r["body"]["id"] for r in up.requests] == [row["id"]]
    # Delivered once: a third start has nothing left to send.
    with Recorder() as again, service(tmp_path, report_webhook_url=f"{again.url}/hook", **kw) as (client, _):
        time.sleep(0.5)
        assert again.requests == []


@pytest.mark.servers
def test_more_than_one_batch_of_outbox_rows_is_all_delivered_after_restart(tmp_path: Path) -> None:
    """150 reports left in the outbox (a crash during a storm): all go out after the restart, each once,
    not only the first batch of 100."""
    store = ReportStore(tmp_path / "data")
    assert store.open()
    ids = []
    for _ in range(150):
        r = make_report("node-a")
        assert store.put(r, [], outbox=["webhook"])
        ids.append(r.id)
    assert len(store.outbox(limit=1000)) == 150
    store.close()
    with Recorder() as up, service(tmp_path, report_webhook_url=f"{up.url}/hook") as (client, _):
        wait_for(lambda: len(up.requests) >= 150, timeout=30, what="150 resumed deliveries")
        time.sleep(0.3)
        assert sorted(r["body"]["id"] for r in up.requests) == sorted(ids)
    again = ReportStore(tmp_path / "data")
    assert again.open()
    assert again.outbox() == []
    again.close()


@pytest.mark.servers
def test_delivery_refused_for_too_much_background_work_is_retried_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery refused by the outbox (too many deliveries running) leaves the outbox row; the
    periodic resume delivers it while the service runs, not at the next restart."""
    monkeypatch.setattr(outbox, "OUTBOX_RETRY_SECONDS", 0.5)
    with Recorder() as up, service(tmp_path, report_webhook_url=f"{up.url}/hook") as (client, _):
        time.sleep(0.3)  # the start's resume has run (nothing to do)
        monkeypatch.setattr(outbox, "MAX_DELIVERIES", 0)  # every new delivery is refused
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="report")
        wait_for(lambda: any("delivery refused (" in r.getMessage() and f"report {row['id']} stays" in r.getMessage()
                             for r in caplog.records), what="the refused delivery")
        doc = wait_for(lambda: (d := _doc(client, row["id"]))["sinks"] and d, timeout=5, what="a resumed delivery")
        assert [(s["sink"], s["ok"]) for s in doc["sinks"]] == [("webhook", True)]
        assert [q["body"]["id"] for q in up.requests] == [row["id"]]
    again = ReportStore(tmp_path / "data")
    assert again.open()
    assert again.outbox() == []
    again.close()


# ---------------------------------------------------------------------------------------------
# 3. stage deadlines


@pytest.mark.servers
def test_a_stage_past_its_deadline_gives_a_failed_report_and_the_next_alert_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "CANCEL_GRACE_SECONDS", 0.5)
    stuck = threading.Event()
    release = threading.Event()

    def engine(settings: Settings, *, progress: Callable[[float, str], None], **kw: Any) -> Report:
        if not stuck.is_set():
            stuck.set()
            progress(0.95, "resolving pods")
            release.wait(30)  # a neighbour that never answers; ignores cancel
        return make_report(settings.node.node_name, kw.get("trigger"))

    try:
        with service(tmp_path, engine=engine, stage_deadline_seconds=1, cooldown_seconds=0) as (client, _):  # type: ignore[arg-type]
            client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers=AUTH)
            (row,) = wait_for(lambda: reports(client), timeout=15, what="failed report")
            assert row["status"] == "failed"
            assert "stage 'resolving pods' passed its deadline of 1 s" in row["summary"]
            # The scheduler is free again: the next alert gets its own, complete report.
            client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="fp2"), headers=AUTH)
            wait_for(lambda: len(reports(client)) == 2, timeout=15, what="second report")
            assert {r["status"] for r in reports(client)} == {"failed", "complete"}
    finally:
        release.set()


# ---------------------------------------------------------------------------------------------
# 5. Slack


@pytest.mark.servers
def test_slack_fallback_text_is_escaped_like_the_blocks(tmp_path: Path) -> None:
    def engine(settings: Settings, **kw: Any) -> Report:
        report = make_report(settings.node.node_name, kw.get("trigger"))
        p = report.processes[0].model_copy(update={"comm": "<!channel>"})
        verdict = report.verdict.model_copy(update={"summary": "<!channel> <@U123> re-reads its data"})
        return report.model_copy(update={"processes": [p, *report.processes[1:]], "verdict": verdict})

    with Recorder() as slack, service(tmp_path, engine=engine, slack_webhook_url=f"{slack.url}/s") as (client, _):  # type: ignore[arg-type]
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers=AUTH)
        wait_for(lambda: slack.requests, what="slack post")
        body = slack.requests[0]["body"]
        texts = [body["text"]] + [json.dumps(b) for b in body["blocks"]]
        assert "&lt;!channel&gt;" in body["text"] and "&lt;@U123&gt;" in body["text"]
        for text in texts:
            assert "<!channel>" not in text and "<@U123>" not in text


# ---------------------------------------------------------------------------------------------
# 7. the UI: Host check, headers, exposure warning


@pytest.mark.servers
def test_ui_answers_only_loopback_or_configured_hosts_with_security_headers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, public_url="https://pfi.example.org/")
    api_app = create_app(settings, investigator=FakeEngine(), token=TOKEN)
    with LiveServer(api_app), LiveServer(create_ui_app(api_app)) as ui:
        port = ui.port

        def get(host: str) -> httpx.Response:
            return httpx.get(f"{ui.url}/", headers={"Host": host}, timeout=10)

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "pfi.example.org", f"[::1]:{port}"):
            resp = get(host)
            assert resp.status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "pfi.example.org.evil"):
            resp = get(host)
            assert resp.status_code == 421, host
            assert "not allowed" in resp.text and "<" not in resp.text
        resp = get(f"127.0.0.1:{port}")
        csp = resp.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert get("evil.example").headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("address", "warns"),
    [
        ("127.0.0.1:8081", False),
        ("localhost:8081", False),
        ("[::1]:8081", False),
        ("0.0.0.0:8081", True),
        ("[::]:8081", True),
        (":8081", True),
        ("10.0.3.7:8081", True),
    ],
)
def test_ui_beyond_loopback_warns(tmp_path: Path, address: str, warns: bool) -> None:
    warning = ui_exposure_warning(make_settings(tmp_path, ui_listen_address=address).web)
    assert (warning is not None) == warns
    if warning:
        assert "beyond loopback" in warning and "port-forward" in warning


# ---------------------------------------------------------------------------------------------
# 8. logs


def _record(msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord("app.service.alerts.intake", logging.WARNING, __file__, 1, msg, args, None)


def test_log_lines_cannot_be_forged() -> None:
    forged = "node-x\r\n2026-12-02 04:00:00,000 ERROR app.service.auth: token leaked"
    text = SafeTextFormatter("%(levelname)s %(name)s: %(message)s").format(_record("alert for %s", forged))
    assert "\n" not in text and "\r" not in text
    assert text == "WARNING app.service.alerts.intake: alert for node-x\\r\\n2026-12-02 04:00:00,000 ERROR app.service.auth: token leaked"
    line = JsonFormatter().format(_record("alert for %s \x1b[2J\u202e", forged))
    assert "\n" not in line and json.loads(line)["message"] == f"alert for {forged} \x1b[2J\u202e"
    assert "\x1b" not in line and "\u202e" not in line


@pytest.mark.servers
def test_client_disconnect_mid_body_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), service(tmp_path) as (client, _):
        host, port = client.base_url.host, client.base_url.port
        with socket.create_connection((host, port)) as s:
            s.sendall(
                b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"alerts\": ["
            )
            time.sleep(0.3)
        wait_for(lambda: any("disconnected" in r.getMessage() for r in caplog.records), what="log line")
        time.sleep(0.3)
        assert client.get("/healthz").status_code == 200
    lines = [r for r in caplog.records if "disconnected after" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert re.search(r"client 127\.0\.0\.1 disconnected after \d+ of 5000 body bytes", lines[0].getMessage())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ---------------------------------------------------------------------------------------------
# 10. token rotation


def _status(client: httpx.Client, token: str) -> int:
    return client.get("/api/v1/reports", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.servers
def test_token_file_rewritten_or_swapped_like_the_kubelet_is_reread(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    (secret / "..2026_12_02_a").mkdir(parents=True)
    (secret / "..2026_12_02_a" / "token").write_text("first-token-0123456789\n")
    os.symlink("..2026_12_02_a", secret / "..data")
    os.symlink("..data/token", secret / "token")
    settings = make_settings(tmp_path, webhook_token_file=secret / "token")
    with LiveServer(create_app(settings, investigator=FakeEngine())) as live, httpx.Client(
        base_url=live.url, timeout=10
    ) as client:
        assert _status(client, "first-token-0123456789") == 200
        # The kubelet's update: a new timestamped dir, ..data swapped atomically by rename.
        (secret / "..2026_12_02_b").mkdir()
        (secret / "..2026_12_02_b" / "token").write_text("second-token-0123456789\n")
        os.symlink("..2026_12_02_b", secret / "..data_tmp")
        os.rename(secret / "..data_tmp", secret / "..data")
        assert _status(client, "second-token-0123456789") == 200
        assert _status(client, "first-token-0123456789") == 401
        # Rewritten in place (a plain file mount, or an operator's edit).
        (secret / "..2026_12_02_b" / "token").write_text("third-token-0123456789xyz\n")
        assert _status(client, "third-token-0123456789xyz") == 200
        assert _status(client, "second-token-0123456789") == 401
        # Emptied half-way through a rotation: the last good token keeps working.
        (secret / "..2026_12_02_b" / "token").write_text("")
        assert _status(client, "third-token-0123456789xyz") == 200
        assert client.get("/api/v1/reports", headers={"Authorization": "Bearer"}).status_code == 401


def test_token_rewritten_with_same_size_and_mtime_is_noticed_and_short_tokens_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`cp -p` / `rsync -t` keep size and mtime: stat shows no change, the timed re-read (hash) does.
    A reload to a token shorter than the minimum keeps the last good token and says why."""
    from app.service import auth
    from app.service.auth import MIN_TOKEN_LENGTH, TokenWatcher

    now = [0.0]  # the watcher's clock, moved by hand: no wall-clock window for a loaded machine to miss
    path = tmp_path / "token"
    path.write_text("aaaaaaaaaaaaaaaaaaaaaaaa\n")
    watcher = TokenWatcher("aaaaaaaaaaaaaaaaaaaaaaaa", path, clock=lambda: now[0])
    st = path.stat()
    staged = tmp_path / "staged"
    staged.write_text("bbbbbbbbbbbbbbbbbbbbbbbb\n")
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(path, "r+b") as f:  # rewrite in place like cp -p: same inode, same size, then same mtime
        f.write(staged.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    now[0] += auth.RECHECK_SECONDS - 0.01
    assert watcher.token == "aaaaaaaaaaaaaaaaaaaaaaaa"  # within the interval: stat only
    now[0] += 0.01
    assert watcher.token == "bbbbbbbbbbbbbbbbbbbbbbbb"  # the timed re-read (hash) noticed it

    # A 1-character token (and one just under the minimum) is refused; the last good one stays.
    caplog.set_level(logging.WARNING, logger="app.service.auth")
    for short in ("x", "c" * (MIN_TOKEN_LENGTH - 1)):
        path.write_text(short + "\n")
        now[0] += auth.RECHECK_SECONDS
        assert watcher.token == "bbbbbbbbbbbbbbbbbbbbbbbb"
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.service.auth"]
    assert any(f"shorter than {MIN_TOKEN_LENGTH} characters; keeping the last good token" in m for m in warnings)
    # A good new token after that is taken.
    path.write_text("d" * MIN_TOKEN_LENGTH + "\n")
    assert watcher.token == "d" * MIN_TOKEN_LENGTH


# ---------------------------------------------------------------------------------------------
# 11. private data on the node


@pytest.mark.servers
def test_data_dir_and_store_files_are_private_also_when_they_existed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "reports.sqlite3"
    db.touch()
    os.chmod(db, 0o644)
    settings = make_settings(tmp_path)
    api_app = create_app(settings, investigator=FakeEngine())  # token generated into the data dir
    with LiveServer(api_app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        token = (data / "webhook-token").read_text().strip()
        client.post("/api/v1/alerts", json=firing({"node": "node-a"}), headers={"Authorization": f"Bearer {token}"})
        wait_for(lambda: client.get("/api/v1/reports", headers={"Authorization": f"Bearer {token}"}).json()["reports"])
        assert (data.stat().st_mode & 0o777) == 0o700
        files = sorted(p.name for p in data.iterdir())
        assert {"reports.sqlite3", "reports.sqlite3-wal", "webhook-token"} <= set(files)
        for p in data.iterdir():
            assert (p.stat().st_mode & 0o777) == 0o600, p.name

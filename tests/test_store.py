"""The SQLite report store: restart keeps reports, retention, corrupt/unwritable files."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from app.models import Trigger
from app.service.report_store import DB_NAME, ReportStore
from tests.service_support import AUTH, CAPTURED, fixture, make_report, reports, service, wait_for


def test_restart_keeps_reports_and_triggers(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    assert store.open() and store.ready
    r = make_report("node-a")
    trig = [Trigger(kind="alert", alertname="NodeMemoryMajorPagesFaults", fingerprint="f1")]
    assert store.put(r, trig)
    store.close()

    again = ReportStore(tmp_path)
    assert again.open()
    got = again.get(r.id)
    assert got is not None and got.model_dump() == r.model_dump()
    assert again.triggers(r.id)[0].fingerprint == "f1"
    (summary,) = again.list()
    assert summary.id == r.id and summary.top_pod == "cart-cache-7d9f" and summary.backend == "perf-major"
    assert summary.alerts == 1
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()


def test_replace_is_one_row(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    store.open()
    r = make_report("node-a")
    store.put(r)
    store.put(r.model_copy(update={"warnings": ["updated"]}))
    assert store.count() == 1
    got = store.get(r.id)
    assert got is not None and got.warnings == ["updated"]
    store.close()


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    store = ReportStore(tmp_path, retention_count=3, retention_days=2)
    store.open()
    base = make_report("node-a")
    ids = []
    for i in range(5):
        r = make_report("node-a").model_copy(update={"started_at": base.started_at + timedelta(minutes=i)})
        store.put(r)
        ids.append(r.id)
    kept = [s.id for s in store.list()]
    assert kept == ids[::-1][:3]  # the newest three, newest first
    old = make_report("node-b").model_copy(update={"started_at": base.started_at - timedelta(days=3)})
    store.put(old)
    assert store.get(old.id) is None  # older than the retention age: gone at once
    assert store.list(node="node-b") == []
    store.close()


def test_corrupt_database_is_not_ready_and_keeps_reports_in_memory(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database\x00" * 512)
    store = ReportStore(tmp_path)
    assert not store.open()
    assert store.reason is not None and "not a database" in store.reason
    r = make_report("node-a")
    assert not store.put(r)  # not written ...
    assert store.get(r.id) is not None  # ... but not lost
    assert [s.id for s in store.list()] == [r.id]
    assert store.pending == 1
    # The file is never replaced behind the operator's back.
    assert (tmp_path / DB_NAME).read_bytes().startswith(b"this is not a database")
    # Once the operator moves it away, the retry writes what waited.
    os.rename(tmp_path / DB_NAME, tmp_path / "reports.corrupt")
    assert store.retry_pending()
    assert store.ready and store.pending == 0
    store.close()
    again = ReportStore(tmp_path)
    again.open()
    assert again.get(r.id) is not None
    again.close()


def test_unwritable_data_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permissions: make the database path a directory instead.
        (tmp_path / DB_NAME).mkdir()
    else:
        tmp_path.chmod(0o500)
    try:
        store = ReportStore(tmp_path)
        assert not store.open()
        assert store.reason and ("cannot open" in store.reason or "unusable" in store.reason)
        r = make_report("node-a")
        assert not store.put(r)
        assert store.get(r.id) is not None
    finally:
        tmp_path.chmod(0o700)


def test_pending_is_bounded(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).mkdir()
    store = ReportStore(tmp_path, pending_max=3)
    store.open()
    for _ in range(5):
        store.put(make_report("node-a"))
    assert store.pending == 3


@pytest.mark.servers
def test_corrupt_store_makes_readyz_503_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DB_NAME).write_bytes(b"garbage" * 1000)
    with caplog.at_level("ERROR"), service(tmp_path) as (client, _):
        resp = client.get("/readyz")
        assert resp.status_code == 503
        assert "not a database" in resp.json()["reasons"][0]
        assert client.get("/healthz").status_code == 200
        # An alert still gets investigated; the report is kept in memory and readable.
        acc = client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH).json()["accepted"][0]
        wait_for(lambda: reports(client), what="report in memory")
        assert client.get(f"/api/v1/reports/{acc['id']}", headers=AUTH).status_code == 200
        assert "1 report(s) waiting in memory" in client.get("/readyz").json()["reasons"][1]
        assert "pfi_store_ready 0.0" in client.get("/metrics").text
    assert any("not a database" in r.getMessage() for r in caplog.records)


@pytest.mark.servers
def test_service_restart_keeps_reports(tmp_path: Path) -> None:
    with service(tmp_path) as (client, _):
        client.post("/api/v1/alerts", json=fixture(CAPTURED), headers=AUTH)
        (row,) = wait_for(lambda: reports(client), what="report")
    with service(tmp_path) as (client, engine):
        assert [r["id"] for r in reports(client)] == [row["id"]]
        # The cooldown is in memory: after a restart the same alert investigates again.
        assert engine.calls == []


def test_running_row_becomes_failed_at_the_next_start_only(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    assert store.open()
    crashed = make_report("node-a", status="running")
    assert store.put(crashed)
    assert store.list() == []  # a running row is not listed: the scheduler shows what runs
    store.close()  # no final report: the process "died"

    again = ReportStore(tmp_path)
    assert again.open()
    assert again.interrupted == [crashed.id]
    got = again.get(crashed.id)
    assert got is not None and got.status == "failed"
    assert "stopped while this investigation ran" in got.verdict.summary
    # A reopen in the same process (the store came back after a disk error) leaves this process's
    # own running row alone.
    mine = make_report("node-a", status="running")
    assert again.put(mine)
    again.reason = "cannot write: disk I/O error"
    assert again.retry_pending()
    got = again.get(mine.id)
    assert got is not None and got.status == "running"
    again.close()


def test_outbox_rows_written_with_the_report_and_removed_with_each_result(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    assert store.open()
    r = make_report("node-a")
    assert store.put(r, [], outbox=["slack", "webhook"])
    assert store.outbox() == [(r.id, ["slack", "webhook"])]
    assert store.delivered(r, [], ["slack"])
    store.close()
    again = ReportStore(tmp_path)
    assert again.open()
    assert again.outbox() == [(r.id, ["webhook"])]  # survives a restart
    assert again.delivered(r, [], ["webhook"])
    assert again.outbox() == []
    again.close()

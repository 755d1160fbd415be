"""Hostile input, round three (issue 23): every parse of outside input ends in a typed value or a
4xx with the reason, never a 500. In process (tests/inprocess.py): no server, fast tier."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from app.service.report_store import DB_NAME, ReportStore
from tests.inprocess import in_process
from tests.service_support import firing, make_report


@pytest.mark.parametrize(
    "starts", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999999-14:00"]
)
def test_alert_dates_past_the_calendar_are_accepted_not_500(tmp_path: Path, starts: str) -> None:
    async def run() -> None:
        async with in_process(tmp_path) as apps:
            resp = await apps.api.post("/api/v1/alerts", json=firing({"node": "node-a"}, starts=starts))
            assert resp.status_code == 202, resp.text
            assert resp.json()["accepted"], resp.text

    asyncio.run(run())


@pytest.mark.parametrize("scope", ["fleet", "node"])
@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_workloads_since_out_of_range_is_a_422(tmp_path: Path, scope: str, since: str) -> None:
    async def run() -> None:
        async with in_process(tmp_path) as apps:
            resp = await apps.api.get("/api/v1/workloads", params={"scope": scope, "since": since})
            assert resp.status_code == 422, resp.text
            assert "since" in resp.json()["detail"]

    asyncio.run(run())


# --- the store reads row by row (item 2) ------------------------------------------------------------


def _stored(tmp_path: Path, n: int) -> list[str]:
    """n reports written to the store under the settings' data dir; their ids, oldest first."""
    store = ReportStore(tmp_path / "data")
    assert store.open()
    ids = []
    for i in range(n):
        report = make_report("node-a", seconds=300 - i)
        assert store.put(report)
        ids.append(report.id)
    store.close()
    return ids


def _corrupt(tmp_path: Path, rid: str, column: str, value: str) -> None:
    conn = sqlite3.connect(tmp_path / "data" / DB_NAME)
    with conn:
        conn.execute(f"UPDATE reports SET {column} = ? WHERE id = ?", (value, rid))
    conn.close()


def test_one_malformed_row_is_listed_as_unreadable_and_hides_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, *intact = _stored(tmp_path, 3)
    _corrupt(tmp_path, broken, "json", '{"id": "truncated", "processes": [')

    async def run() -> None:
        async with in_process(tmp_path) as apps:
            for _ in range(3):  # listed again and again: still there, still ready, logged once
                listing = (await apps.api.get("/api/v1/reports")).json()["reports"]
                assert {r["id"] for r in listing} == {broken, *intact}
                assert [r["id"] for r in listing if r["unreadable"]] == [broken]
                assert all(r["top_process"] == "cart-cache" for r in listing if not r["unreadable"])
                ready = await apps.api.get("/readyz")
                assert ready.status_code == 200, ready.text
            one = await apps.api.get(f"/api/v1/reports/{broken}")
            assert one.status_code == 404 and "unreadable" in one.json()["detail"]
            assert (await apps.api.get(f"/api/v1/reports/{intact[0]}")).status_code == 200
            page = await apps.ui.get(f"/reports/{broken}")
            assert page.status_code == 404 and "malformed" in page.text
            index = await apps.ui.get("/reports")
            assert index.status_code == 200 and "unreadable" in index.text and intact[0] in index.text
            metrics = (await apps.api.get("/metrics")).text
            assert "pfi_store_unreadable_reports 1.0" in metrics

    with caplog.at_level(logging.ERROR, logger="app.service.report_store"):
        asyncio.run(run())
    assert sum(broken in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("cell", ["{}", "not json", '{"workload": 3}'])
def test_a_workload_cell_that_is_not_a_workload_is_skipped(tmp_path: Path, cell: str) -> None:
    broken, intact = _stored(tmp_path, 2)
    _corrupt(tmp_path, broken, "workload", cell)
    _corrupt(tmp_path, broken, "workload_key", "w-broken")

    async def run() -> None:
        async with in_process(tmp_path) as apps:
            for scope in ("node", "fleet"):
                resp = await apps.api.get("/api/v1/workloads", params={"scope": scope})
                assert resp.status_code == 200, resp.text
                rows = resp.json()["workloads"]
                assert [r["reports"] for r in rows] == [1], rows  # the intact report's workload
            for path in ("/", "/workloads"):
                page = await apps.ui.get(path)
                assert page.status_code == 200, page.text
                assert "cart-cache" in page.text
            assert (await apps.api.get("/readyz")).status_code == 200

    asyncio.run(run())

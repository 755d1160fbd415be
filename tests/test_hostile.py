"""Hostile input, round three (issue 23): every parse of outside input ends in a typed value or a
4xx with the reason, never a 500. In process (tests/inprocess.py): no server, fast tier."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.inprocess import in_process
from tests.service_support import firing


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

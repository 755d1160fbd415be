"""Hostile input from our own OpenAPI schema (issue 23): schemathesis generates requests for every
route of the API and the UI app (in process, the lifespan running, the token given so the routes
themselves are reached) and no answer may be a 5xx. A bounded, derandomised budget: the same few
hundred cases each run, in seconds; a 5xx found names the request to replay (a curl line)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inprocess import Apps, in_process

T = TypeVar("T")
EXAMPLES = 25  # per operation: 13 operations, 7 of them with parameters
EXAMPLES_WITH_TIMES = 80  # an operation with a date-time parameter: it is sent in a third of them

# date-time parameters (`since`) across the whole calendar and the widest offsets, edges included:
# that is where a time parses but cannot be turned into UTC (0001-01-01T00:00:00+14:00)
_OFFSETS = [timezone(timedelta(hours=h)) for h in (-14, -1, 0, 1, 14)]
schemathesis.openapi.format(
    "date-time",
    st.one_of(
        st.sampled_from([edge.replace(tzinfo=tz) for edge in (datetime.min, datetime.max) for tz in _OFFSETS]),
        st.datetimes(
            min_value=datetime(1, 1, 1),
            max_value=datetime(9999, 12, 31, 23, 59, 59),
            timezones=st.sampled_from(_OFFSETS),
        ),
    ).map(datetime.isoformat),
)


class Portal:
    """An event loop in a thread, for hypothesis's synchronous tests to call the apps through."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _operations(app: FastAPI) -> list[Any]:
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(portal: Portal, client: httpx.AsyncClient, app: FastAPI, tried: dict[str, int], fives: list[str]) -> None:
    for op in _operations(app):
        _fuzz_one(portal, client, op, tried, fives)


def _fuzz_one(portal: Portal, client: httpx.AsyncClient, op: Any, tried: dict[str, int], fives: list[str]) -> None:
    key = f"{op.method.upper()} {op.path}"

    @settings(
        max_examples=EXAMPLES_WITH_TIMES if "date-time" in str(op.definition.raw) else EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url), headers=dict(client.headers))
        kwargs.pop("follow_redirects", None)
        if not kwargs.get("cookies"):
            kwargs.pop("cookies", None)  # httpx deprecates per-request cookies; our routes read none
        resp = portal.run(client.request(**kwargs))
        tried[key] = tried.get(key, 0) + 1
        if resp.status_code >= 500:
            fives.append(f"{resp.status_code} on {case.as_curl_command()}")

    check()


def test_no_route_answers_5xx_to_schema_generated_requests(tmp_path: Path) -> None:
    tried: dict[str, int] = {}
    fives: list[str] = []
    portal = Portal()
    stack = AsyncExitStack()
    t0 = time.monotonic()
    try:
        apps: Apps = portal.run(stack.enter_async_context(in_process(tmp_path)))
        _fuzz(portal, apps.api, apps.api_app, tried, fives)
        _fuzz(portal, apps.ui, apps.ui_app, tried, fives)
    finally:
        portal.run(stack.aclose())
        portal.close()
    took = time.monotonic() - t0
    print(f"schema fuzz: {sum(tried.values())} requests in {took:.1f}s: {sorted(tried.items())}")
    assert fives == [], fives[:10]
    # every route of both apps was reached (a route whose cases all fail to generate would hide here)
    assert {"POST /api/v1/alerts", "GET /api/v1/workloads", "GET /reports/{report_id}"} <= set(tried)
    assert sum(tried.values()) >= 200

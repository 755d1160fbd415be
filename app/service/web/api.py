"""The API address's routes: thin, each one call into the service.

Everything under /api/v1 needs the bearer token (reports hold command lines and pod names);
/healthz, /readyz and /metrics do not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from app.investigation.fleet import SCHEMA_VERSION as WORKLOADS_VERSION
from app.investigation.fleet import SORT_KEYS, sort_rows
from app.service.alerts.intake import FORWARDED_HEADER, handle_alerts
from app.service.alerts.payload import PayloadError, parse_payload
from app.service.deps import BrowseDep, StateDep, TokenRequired

log = logging.getLogger(__name__)

public = APIRouter()
api = APIRouter(prefix="/api/v1", dependencies=[TokenRequired])


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes, without reading more than that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise PayloadError(413, f"body is over the limit of {limit} bytes")
    except ClientDisconnect:
        # One line, no traceback: nobody is left to answer, and nothing was wrong on our side.
        client = request.client.host if request.client else "?"
        log.info(
            "client %s disconnected after %d of %s body bytes: request dropped", client, len(buf), declared or "?"
        )
        raise PayloadError(400, "client disconnected before the body was complete") from None
    return bytes(buf)


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise PayloadError(400, "empty body: expected Alertmanager's JSON payload")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep, huge ints
        raise PayloadError(400, f"invalid JSON: {str(exc)[:200]}") from None


@public.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    reasons = state.readiness()
    return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)


@public.get("/metrics")
async def metrics(state: StateDep) -> Response:
    # in a thread: the findings' gauges read the store (app.service.fleet.view.FleetView.findings)
    return Response(await asyncio.to_thread(state.metrics.render), media_type=CONTENT_TYPE_LATEST)


@api.post("/alerts", status_code=202)
async def post_alerts(
    request: Request,
    state: StateDep,
    forwarded_from: Annotated[str | None, Header(alias=FORWARDED_HEADER, max_length=253)] = None,
) -> JSONResponse:
    try:
        body = await read_body(request, state.settings.web.max_body_bytes)
        parsed = parse_payload(decode_json(body), max_alerts=state.settings.web.max_alerts_per_request)
    except PayloadError:
        state.metrics.alerts.labels(outcome="rejected").inc()
        raise
    answer = await handle_alerts(state.intake, parsed, forwarded_from)
    names = sorted({a.alertname for a in parsed.alerts})
    # Label values are quoted (%r): whatever they hold, they stay inside this one line.
    log.info(
        "webhook: %d alert(s) %s%s%s: %d accepted, %d forwarded, %d ignored",
        len(parsed.alerts),
        ", ".join(repr(n[:100]) for n in names[:3]),
        " and more" if len(names) > 3 else "",
        f" forwarded by {forwarded_from!r}" if forwarded_from else "",
        len(answer.outcomes.accepted),
        len(answer.outcomes.forwarded),
        len(answer.outcomes.ignored),
    )
    return JSONResponse(answer.as_dict(), status_code=202)


@api.get("/reports")
async def list_reports(
    browse: BrowseDep,
    node: Annotated[str | None, Query(max_length=253)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    rows = await asyncio.to_thread(browse.store.list, node=node, limit=limit)
    return {"node": browse.node, "reports": [r.as_dict() for r in rows]}


@api.get("/reports/{report_id}")
async def get_report(browse: BrowseDep, report_id: str) -> Response:
    report = await asyncio.to_thread(browse.store.get, report_id)
    if report is None or report.status == "running":  # its row, written at the start
        running = browse.scheduler.find(report_id)
        if running is not None:
            raise HTTPException(
                404, f"investigation {report_id} is {running.state}; see /api/v1/investigations"
            )
        if report is None and report_id in browse.store.unreadable:
            raise HTTPException(
                404, f"report {report_id} is stored but unreadable (a malformed row); see the log"
            )
        if report is None:
            raise HTTPException(404, f"no report {report_id} on node {browse.node}")
    return Response(report.model_dump_json(), media_type="application/json")


@api.get("/workloads")
async def list_workloads(
    browse: BrowseDep,
    scope: Literal["fleet", "node"] = "fleet",
    sort: Annotated[str, Query(pattern="^(" + "|".join(SORT_KEYS) + ")$")] = "last_seen",
    order: Literal["desc", "asc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    since: datetime | None = None,
    key: Annotated[str | None, Query(max_length=700)] = None,
) -> dict[str, Any]:
    """Reports grouped by the workload they blame (docs/service.md). `scope=fleet`: every node's,
    merged, one row a workload, paged by `offset`; `scope=node`: this node's store only (what
    peers ask each other), at most `limit` workloads, newest first."""
    if since is not None and since.tzinfo is None:
        raise HTTPException(422, "since: give a time zone (e.g. 2026-12-04T15:00:00Z)")
    if since is not None:
        try:  # 0001-01-01T00:00:00+14:00 parses but is before datetime.min in UTC
            since = since.astimezone(UTC)
        except OverflowError:
            raise HTTPException(422, "since: out of range once in UTC (years 1 to 9999)") from None
    base = {"schema_version": WORKLOADS_VERSION, "node": browse.node, "scope": scope}
    if scope == "node":
        rows, count = await asyncio.gather(
            asyncio.to_thread(browse.store.workloads, since=since, key=key, limit=limit),
            asyncio.to_thread(browse.store.count, finished=True),
        )
        return {**base, "reports": count, "workloads": [r.model_dump(mode="json") for r in rows]}
    found = await browse.fleet.gather(since=since, key=key)
    ordered = sort_rows(found.rows, sort, descending=order == "desc")
    page = ordered[offset : offset + limit]
    return {
        **base,
        "total": len(ordered),
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if offset + limit < len(ordered) else None,
        "unreachable": found.unreachable,
        "source": found.source,
        "coverage": found.coverage(),
        "workloads": [r.model_dump(mode="json") for r in page],
    }


@api.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    """The API's OpenAPI schema, with the token like the rest of /api/v1 (it lists every route)."""
    return request.app.openapi()  # type: ignore[no-any-return]


@api.get("/investigations")
async def investigations(browse: BrowseDep) -> dict[str, Any]:
    return {"node": browse.node, "investigations": [i.as_dict() for i in browse.scheduler.active()]}

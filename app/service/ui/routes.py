"""The UI address's routes (loopback by default: reached through `kubectl port-forward`).

- `GET /`: the fleet page when reports come from more than one node, else the report list.
- `GET /workloads?sort=&order=&offset=`: the fleet page: every node's reports grouped by the
  workload they blame, one row a workload (app.service.fleet.view; app.service.fleet.page).
- `GET /reports`: the reports of every node: this node's store and each peer's `GET /api/v1/reports`
  (with the token, bounded time, asked concurrently: app.service.cluster.peers.ask_peers); a peer that does
  not answer is listed as unreachable. Running and queued investigations of every node are shown
  with their progress.
- `GET /reports/{id}`: the report page; a report of another node is fetched from its pod
  (`?node=` says which, else every peer is asked); a running investigation shows its progress.
- `GET /reports/{id}.json`: the document.
The HTML comes from app.service.ui.render and app.service.fleet.page (pure functions); this module
only gathers the data, from what it is given: `Browse` (app.service.root), not the whole service.
No token here: the UI listens on loopback, and port-forwarding needs cluster credentials.
"""

from __future__ import annotations

import asyncio
import html
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from app.investigation.fleet import SORT_KEYS
from app.models import Report
from app.service.cluster.peers import Peer, PeerError, ask_peers
from app.service.deps import BrowseDep
from app.service.fleet.page import fleet_page_html
from app.service.fleet.view import Fleet
from app.service.report_store import ReportSummary
from app.service.root import Browse
from app.service.scheduler import Investigation
from app.service.ui.render import (
    IndexRow,
    RunningRow,
    render_index_page,
    render_report_page,
    render_running_page,
)

ui = APIRouter()

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INDEX_LIMIT = 200


def _dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _index_row(s: dict[str, Any], *, local: bool) -> IndexRow:
    ns, pod = s.get("top_namespace"), s.get("top_pod")
    node = str(s.get("node") or "?")
    rid = str(s.get("id") or "")
    return IndexRow(
        id=rid,
        node=node,
        started_at=_dt(s.get("started_at")),
        status=str(s.get("status") or "?"),
        verdict="unreadable: its stored row is malformed"
        if s.get("unreadable") is True
        else str(s.get("summary") or ""),
        top_process=s.get("top_process"),
        top_pod=f"{ns}/{pod}" if pod else None,
        backend=str(s.get("backend") or "?"),
        url=f"/reports/{rid}" if local else f"/reports/{rid}?node={node}",
    )


def _trigger_text(triggers: list[dict[str, Any]]) -> str:
    if not triggers:
        return "manual"
    first = triggers[0]
    text = f"alert {first.get('alertname') or '?'}"
    if first.get("forwarded_from"):
        text += f" (forwarded by {first['forwarded_from']})"
    if len(triggers) > 1:
        text += f" + {len(triggers) - 1} joined"
    return text


def _running_row(d: dict[str, Any]) -> RunningRow:
    started = d.get("started_at") or d.get("queued_at")
    message = str(d.get("message") or "")
    if d.get("state") == "queued":
        message = "queued"
    return RunningRow(
        node=str(d.get("node") or "?"),
        started_at=_dt(started),
        progress=float(d.get("progress") or 0.0),
        message=message,
        trigger=_trigger_text(list(d.get("triggers") or [])),
    )


async def _index_page(pages: Browse) -> HTMLResponse:
    """The reports of every node, newest first (peers asked as app.service.cluster.peers.ask_peers does)."""
    local: list[ReportSummary] = await asyncio.to_thread(pages.store.list, limit=INDEX_LIMIT)
    rows = [_index_row(s.as_dict(), local=True) for s in local]
    running = [_running_row(i.as_dict()) for i in pages.scheduler.active()]
    client = pages.peer_client

    async def ask(peer: Peer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        reports, active = await asyncio.gather(client.reports(peer, INDEX_LIMIT), client.investigations(peer))
        return reports, active

    answers, unreachable = await ask_peers(pages.peers, ask)
    for _peer, (reports, active) in answers:
        rows.extend(_index_row(s, local=False) for s in reports)
        running.extend(_running_row(d) for d in active)
    # Rendered in a thread: many peers' rows take a while, and /healthz shares this event loop.
    return HTMLResponse(
        await asyncio.to_thread(render_index_page, rows, running=running, unreachable=unreachable)
    )


async def _fleet_page(pages: Browse, found: Fleet, sort: str, order: str, offset: int) -> HTMLResponse:
    # Sorted and rendered in a thread: many rows take a while, and /healthz shares this event loop.
    return HTMLResponse(await asyncio.to_thread(fleet_page_html, found, pages.node, sort, order, offset))


SortParam = Annotated[str, Query(pattern="^(" + "|".join(SORT_KEYS) + ")$")]
OrderParam = Annotated[Literal["desc", "asc"], Query()]
OffsetParam = Annotated[int, Query(ge=0, le=1_000_000)]


@ui.get("/", response_class=HTMLResponse)
async def landing(pages: BrowseDep) -> HTMLResponse:
    """The fleet page when reports come from more than one node, else the report list."""
    found = await pages.fleet.gather()
    if found.nodes_with_reports > 1:
        return await _fleet_page(pages, found, "last_seen", "desc", 0)
    return await _index_page(pages)


@ui.get("/reports", response_class=HTMLResponse)
async def index(pages: BrowseDep) -> HTMLResponse:
    return await _index_page(pages)


@ui.get("/workloads", response_class=HTMLResponse)
async def workloads(
    pages: BrowseDep, sort: SortParam = "last_seen", order: OrderParam = "desc", offset: OffsetParam = 0
) -> HTMLResponse:
    return await _fleet_page(pages, await pages.fleet.gather(), sort, order, offset)


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p><p><a href='/reports'>All reports</a></p></body></html>"
    )
    return HTMLResponse(body, status_code=status)


async def _find(
    pages: Browse, report_id: str, node: str | None, problems: list[str] | None = None
) -> Report | Investigation | dict[str, Any] | None:
    """The report (local, else from a peer), or the local investigation, or a peer's running one.
    Peers that answered badly are added to `problems` (`node-b answered badly: ...`)."""
    problems = [] if problems is None else problems
    inv = pages.scheduler.find(report_id)
    if inv is not None:
        return inv
    report = await asyncio.to_thread(pages.store.get, report_id)
    if report is not None:
        return report
    peers = await pages.peers.peers()
    if node:
        peers = [p for p in peers if p.node == node]

    client = pages.peer_client

    async def ask(peer: Peer) -> Report | dict[str, Any] | None:
        try:
            doc = await client.report(peer, report_id)
            if doc is not None:
                return await asyncio.to_thread(Report.model_validate, doc)
        except ValidationError as exc:
            problems.append(f"{peer.node} answered badly: {str(exc).splitlines()[0][:200]}")
        except PeerError as exc:
            if str(exc).startswith("answered badly"):
                problems.append(f"{peer.node} {exc}")
        try:
            running = await client.investigations(peer)
        except PeerError as exc:
            if str(exc).startswith("answered badly"):
                problems.append(f"{peer.node} {exc}")
            return None
        return next((d for d in running if d.get("id") == report_id), None)

    for found in await asyncio.gather(*(ask(p) for p in peers)):
        if found is not None:
            return found
    return None


@ui.get("/reports/{report_id}.json")
async def report_json(
    pages: BrowseDep, report_id: str, node: Annotated[str | None, Query(max_length=253)] = None
) -> Response:
    if not ID_RE.match(report_id):
        return JSONResponse({"detail": "not a report id"}, status_code=404)
    found = await _find(pages, report_id, node)
    if isinstance(found, Report):
        return Response(found.model_dump_json(indent=2), media_type="application/json")
    if isinstance(found, Investigation):
        return JSONResponse(found.as_dict(), status_code=202)
    if isinstance(found, dict):
        return JSONResponse(found, status_code=202)
    return JSONResponse({"detail": f"no report {report_id}"}, status_code=404)


@ui.get("/reports/{report_id}", response_class=HTMLResponse)
async def report_page(
    pages: BrowseDep, report_id: str, node: Annotated[str | None, Query(max_length=253)] = None
) -> HTMLResponse:
    if not ID_RE.match(report_id):
        return _page(404, "Not found", "That is not a report id.")
    problems: list[str] = []
    found = await _find(pages, report_id, node, problems)
    if isinstance(found, Report):
        return HTMLResponse(await asyncio.to_thread(render_report_page, found))
    if isinstance(found, Investigation):
        return HTMLResponse(render_running_page(_running_row(found.as_dict())))
    if isinstance(found, dict):
        return HTMLResponse(render_running_page(_running_row(found)))
    if report_id in pages.store.unreadable:
        return _page(404, "Report unreadable", f"Report {report_id} is stored here but its row is malformed.")
    where = f" on node {node}" if node else " on any node that answered"
    told = "".join(f" Peer {p}." for p in sorted(set(problems))[:5])
    return _page(404, "Report not found", f"No report {report_id}{where}.{told}")

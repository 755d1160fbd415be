"""The fleet page: one row a workload across every node (app.investigation.fleet), sortable by
links in the column heads and paged by links under the table: no JavaScript. Pure, like
the report pages: what the fleet wing gathered (app.service.fleet.view.Fleet) in, HTML out; every value is
escaped by the template."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from app.investigation.fleet import SORT_KEYS, WorkloadRow, sort_rows
from app.service.fleet.view import Fleet
from app.service.html.env import CAUSE_LABELS, environment

__all__ = [
    "FLEET_NODES_SHOWN",
    "FLEET_PAGE",
    "FleetPage",
    "FleetRow",
    "NodeLinkRow",
    "fleet_page_html",
    "fleet_row",
    "render_fleet_page",
]

FLEET_PAGE = 100  # workloads a fleet page shows; the rest are on the next pages
FLEET_NODES_SHOWN = 12  # node links written in a row; the rest is counted ("and 988 more")
COLUMNS = [  # (sort key or '', heading); one column may hold two sort links
    ("workload", "workload"),
    ("nodes", "nodes"),
    ("reports", "reports"),
    ("first_seen", "first seen"),
    ("last_seen", "last seen (UTC)"),
    ("cause", "dominant cause"),
    ("", "faults on"),
    ("", "recommendation"),
]


@dataclass
class NodeLinkRow:
    node: str
    url: str  # that node's newest report of the workload


@dataclass
class FleetRow:
    label: str  # Deployment shop/cart, pod cache/redis-0, unit postgresql.service
    kind: str  # workload, pod, host
    key: str
    nodes: list[NodeLinkRow]  # at most FLEET_NODES_SHOWN
    node_count: int
    reports: int
    first_seen: datetime
    last_seen: datetime
    cause: str
    causes: str  # "container memory limit 11, swap 1" when more than one
    fault_kind: str | None
    file: str | None
    summary: str
    limit_bytes: int | None = None
    command: str | None = None


@dataclass
class FleetPage:
    rows: list[FleetRow]
    total: int  # workloads in the whole list
    nodes: int  # nodes with a report
    sort: str
    descending: bool
    offset: int
    page_size: int
    unreachable: list[str] = field(default_factory=list)
    coverage: str = ""  # where the rows come from: Prometheus, every peer, or a sample of them


def _link(sort: str, descending: bool, offset: int = 0) -> str:
    query = {"sort": sort, "order": "desc" if descending else "asc"}
    if offset:
        query["offset"] = str(offset)
    return "/workloads?" + urlencode(query)


def render_fleet_page(page: FleetPage) -> str:
    """Every workload that reports blame, one row each, with the nodes it was seen on."""
    heads: list[tuple[str, str | None, str]] = []
    for key, title in COLUMNS:
        if key not in SORT_KEYS:
            heads.append((title, None, ""))
            continue
        current = key == page.sort
        # a click on the current column flips the order; another column starts at its useful end
        descending = not page.descending if current else key != "workload"
        arrow = (" ▼" if page.descending else " ▲") if current else ""
        heads.append((title, _link(key, descending), arrow))
    prev_url = (
        _link(page.sort, page.descending, max(0, page.offset - page.page_size)) if page.offset > 0 else None
    )
    end = page.offset + len(page.rows)
    next_url = _link(page.sort, page.descending, end) if end < page.total else None
    return (
        environment()
        .get_template("fleet.html")
        .render(
            page=page,
            heads=heads,
            prev_url=prev_url,
            next_url=next_url,
            first=page.offset + 1 if page.rows else 0,
            last=end,
            cause_labels=CAUSE_LABELS,
            refresh=False,
            title="Workloads across the fleet",
        )
    )


def _causes_text(causes: dict[str, int]) -> str:
    if len(causes) < 2:
        return ""
    ordered = sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{c.replace('_', ' ')} {n}" for c, n in ordered)


def fleet_row(row: WorkloadRow, local_node: str) -> FleetRow:
    rec = row.recommendation
    return FleetRow(
        label=row.workload.label,
        kind=row.workload.kind,
        key=row.workload.key,
        nodes=[
            NodeLinkRow(
                node=link.node,
                url=f"/reports/{link.report_id}"
                + ("" if link.node == local_node else "?" + urlencode({"node": link.node})),
            )
            for link in row.links[:FLEET_NODES_SHOWN]
        ],
        node_count=len(row.nodes),
        reports=row.reports,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        cause=row.cause,
        causes=_causes_text(row.causes),
        fault_kind=row.fault_kind,
        file=row.file,
        summary=row.summary,
        limit_bytes=rec.recommended_limit_bytes if rec else None,
        command=rec.command if rec else None,
    )


def fleet_page_html(found: Fleet, local_node: str, sort: str, order: str, offset: int) -> str:
    """The fleet page of what the fleet wing gathered (app.service.fleet.view.FleetView.gather): sorted,
    one page of FLEET_PAGE rows from `offset`."""
    ordered = sort_rows(found.rows, sort, descending=order == "desc")
    page = FleetPage(
        rows=[fleet_row(r, local_node) for r in ordered[offset : offset + FLEET_PAGE]],
        total=len(ordered),
        nodes=found.nodes_with_reports,
        sort=sort,
        descending=order == "desc",
        offset=offset,
        page_size=FLEET_PAGE,
        unreachable=found.unreachable,
        coverage=found.coverage(),
    )
    return render_fleet_page(page)

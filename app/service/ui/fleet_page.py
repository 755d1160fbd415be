"""The fleet page: one row a workload across every node (app.investigation.fleet), sortable by
links in the column heads and paged by links under the table: no JavaScript. Pure, like
render.py: data in, HTML out; every value is escaped by the template."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from app.investigation.fleet import SORT_KEYS
from app.service.ui.render import CAUSE_LABELS, _env

__all__ = ["FLEET_NODES_SHOWN", "FleetPage", "FleetRow", "NodeLinkRow", "render_fleet_page"]

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
        _env()
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

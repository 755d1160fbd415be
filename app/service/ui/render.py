"""Server-rendered report pages (Jinja2, autoescaped, no JavaScript, no external assets).

Pure functions: they take data and return HTML. The service mounts them on the UI address.

Everything that comes from a report (command lines, pod names, paths, alert labels) is untrusted:
the pages are written with the one environment of app.service.html.env, whose templates never mark
it safe and whose `_finalize` shows control and bidi characters as visible escapes. The charts are
inline SVG whose geometry is computed in app.service.html.chart (numbers only); its labels are
written by the template, so they are escaped like everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from app.investigation.who import pod_label as _pod_label
from app.models import Report
from app.service.html.chart import DASHES, NODE_COLOUR, PALETTE, Chart, chart_frame
from app.service.html.env import as_utc, environment
from app.service.ui.lead_up_chart import build_history_chart, history_label

__all__ = [
    "IndexRow",
    "RunningRow",
    "render_index_page",
    "render_report_page",
    "render_running_page",
]


@dataclass
class IndexRow:
    """One finished (or failed/cancelled) report in the index of every node's reports."""

    id: str
    node: str
    started_at: datetime
    status: str
    verdict: str
    top_process: str | None
    top_pod: str | None
    backend: str
    url: str


@dataclass
class RunningRow:
    """An investigation in progress. `progress` is a fraction, 0.0 to 1.0 (clamped)."""

    node: str
    started_at: datetime
    progress: float
    message: str
    trigger: str


CHART_TOP = 6  # processes drawn in the chart


# ----------------------------------------------------------------------------------------------
# the window's chart (the frame and its lines: app/service/html/chart.py)


def build_chart(report: Report, top: int = CHART_TOP) -> Chart | None:
    procs = [p for p in report.processes[:top] if p.series]
    node_series = list(report.node_stats.series)
    if not procs:
        return None
    n = max(len(p.series) for p in procs)
    if node_series:
        n = max(n, len(node_series))
    peak = max(max(p.series) for p in procs)
    if node_series:
        peak = max(peak, max(node_series))
    chart, line = chart_frame(n, peak, 8, str)
    if node_series:
        chart.lines.append(line(node_series, "node total (pgmajfault)", NODE_COLOUR, "3 3", True))
    for idx, p in enumerate(procs):
        who = _pod_label(p)
        label = f"{p.comm} (pid {p.pid})" + (f" · {who}" if who else "")
        chart.lines.append(
            line(list(p.series), label, PALETTE[idx % len(PALETTE)], DASHES[idx % len(DASHES)])
        )
    return chart


def _clamp(v: float) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return 0.0
    if math.isnan(v):
        return 0.0
    return min(1.0, max(0.0, v))


# ----------------------------------------------------------------------------------------------
# the pages


def render_index_page(
    rows: list[IndexRow],
    *,
    running: list[RunningRow],
    unreachable: list[str] = [],  # noqa: B006
) -> str:
    """Reports of every node (newest first), investigations in progress, peers that did not answer."""
    rows = sorted(rows, key=lambda r: as_utc(r.started_at) or datetime.min.replace(tzinfo=UTC), reverse=True)
    nodes = sorted({r.node for r in rows} | {r.node for r in running})
    return (
        environment()
        .get_template("index.html")
        .render(
            rows=rows,
            running=[(r, _clamp(r.progress)) for r in running],
            unreachable=list(unreachable),
            nodes=nodes,
            refresh=bool(running),
            title="Major page fault reports",
        )
    )


def render_report_page(report: Report) -> str:
    """One report: verdict first, then who faults, on what, how the node was, how it was measured."""
    top = report.processes[0] if report.processes else None
    return (
        environment()
        .get_template("report.html")
        .render(
            r=report,
            top=top,
            chart=build_chart(report),
            chart_top=CHART_TOP,
            advice_once=advice_once(report),
            **_history_context(report),  # the flight recorder's lead-up (app/service/ui/lead_up_chart.py)
            refresh=report.status == "running",
            title=f"{report.verdict.summary} · {report.node}",
        )
    )


def advice_once(report: Report) -> list[list[str]]:
    """Each process's advice lines not shown higher on the page (the report's "What to do", an earlier
    process's): a line is written once per report, so the top process's advice, which is the report's,
    is not repeated under "What each process faults on"."""
    shown = set(report.verdict.advice)
    out = []
    for p in report.processes:
        lines = [a for a in (p.verdict.advice if p.verdict else []) if a not in shown]
        shown.update(lines)
        out.append(lines)
    return out


def _history_context(report: Report) -> dict[str, object]:
    return {"history_chart": build_history_chart(report), "history_label": history_label}


def render_running_page(row: RunningRow) -> str:
    """An investigation in progress; the page reloads itself every 2 s (no JavaScript)."""
    return (
        environment()
        .get_template("running.html")
        .render(
            row=row,
            progress=_clamp(row.progress),
            refresh=True,
            title=f"Investigating {row.node}…",
        )
    )

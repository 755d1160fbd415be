"""The lead-up chart of a report page: each top container's major faults per second over the flight
recorder's lead-up, with the node's total (numbers only; the template writes the SVG and escapes
the labels, like the window's chart)."""

from __future__ import annotations

from datetime import timedelta

from app.investigation.who import group_label
from app.models import Report
from app.service.html.chart import DASHES, NODE_COLOUR, PALETTE, Chart, chart_frame

__all__ = ["HISTORY_CHART_TOP", "build_history_chart", "history_label"]

HISTORY_CHART_TOP = 6


history_label = group_label  # a recorded group's label on the lead-up chart (app.investigation.who)


def build_history_chart(report: Report, top: int = HISTORY_CHART_TOP) -> Chart | None:
    h = report.history
    if h is None or not h.node_series:
        return None
    step_s = h.interval_seconds or 1.0
    groups = [c for c in h.cgroups[:top] if c.series]
    n = max([len(h.node_series)] + [len(c.series) for c in groups])
    rates = [[v / step_s for v in s] for s in [h.node_series] + [c.series for c in groups]]
    peak = max((max(r) for r in rates if r), default=0.0)
    fmt = "%H:%M:%S" if n * step_s < 600 else "%H:%M"

    def at(i: int) -> str:
        return (h.since + timedelta(seconds=step_s * (i + 1))).strftime(fmt)

    chart, line = chart_frame(n, peak, 6, at, x_label="time (UTC), end of each interval",
                              y_label="major faults / s")
    chart.lines.append(line(rates[0], "node total (pgmajfault)", NODE_COLOUR, "3 3", True))
    for idx, (c, r) in enumerate(zip(groups, rates[1:], strict=True)):
        chart.lines.append(line(r, history_label(c), PALETTE[idx % len(PALETTE)], DASHES[idx % len(DASHES)]))
    return chart

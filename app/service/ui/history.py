"""The lead-up chart of a report page: each top container's major faults per second over the flight
recorder's lead-up, with the node's total (numbers only; the template writes the SVG and escapes
the labels, like the window's chart)."""

from __future__ import annotations

import math
from datetime import timedelta

from app.models import HistoryCgroup, Report
from app.service.ui.render import DASHES, NODE_COLOUR, PALETTE, Chart, ChartLine, _nice_step, _tick_label

__all__ = ["HISTORY_CHART_TOP", "build_history_chart", "history_label"]

HISTORY_CHART_TOP = 6


def history_label(c: HistoryCgroup) -> str:
    if c.pod is None:
        return c.cgroup
    return c.pod.display(short=True) + (f" · {c.pod.container}" if c.pod.container else "")


def build_history_chart(report: Report, top: int = HISTORY_CHART_TOP) -> Chart | None:
    h = report.history
    if h is None or not h.node_series:
        return None
    step_s = h.interval_seconds or 1.0
    groups = [c for c in h.cgroups[:top] if c.series]
    width, height = 760, 300
    left, right, top_px, bottom = 84, 16, 16, 50
    plot_w, plot_h = width - left - right, height - top_px - bottom
    n = max([len(h.node_series)] + [len(c.series) for c in groups])
    rates = [[v / step_s for v in s] for s in [h.node_series] + [c.series for c in groups]]
    peak = max((max(r) for r in rates if r), default=0.0)
    ystep = _nice_step(max(peak, 1), 5)
    y_max = ystep * max(1, math.ceil(max(peak, 1) / ystep))
    x_span = max(1, n - 1)

    def x_of(i: int) -> float:
        return round(left + plot_w * i / x_span, 1)

    def y_of(v: float) -> float:
        return round(top_px + plot_h * (1 - v / y_max), 1)

    chart = Chart(width, height, left, right, top_px, bottom, x_label="time (UTC), end of each interval",
                  y_label="major faults / s")
    v = 0.0
    while v <= y_max + 1e-9:
        chart.y_ticks.append((y_of(v), _tick_label(v)))
        v += ystep
    fine = n * step_s < 600
    for i in range(0, n, max(1, int(_nice_step(x_span, 6)))):
        at = h.since + timedelta(seconds=step_s * (i + 1))
        chart.x_ticks.append((x_of(i), at.strftime("%H:%M:%S" if fine else "%H:%M")))

    def line(series: list[float], label: str, colour: str, dash: str, is_node: bool = False) -> ChartLine:
        pts = " ".join(f"{x_of(i)},{y_of(val)}" for i, val in enumerate(series))
        marker = (x_of(0), y_of(series[0])) if len(series) == 1 else None
        return ChartLine(label, colour, dash, pts, len(series), round(max(series)), is_node, marker)

    chart.lines.append(line(rates[0], "node total (pgmajfault)", NODE_COLOUR, "3 3", True))
    for idx, (c, r) in enumerate(zip(groups, rates[1:], strict=True)):
        chart.lines.append(line(r, history_label(c), PALETTE[idx % len(PALETTE)], DASHES[idx % len(DASHES)]))
    return chart

"""Chart geometry for the pages (numbers only; the template writes the SVG and escapes the labels):
the frame, its axes and ticks, and the lines on it; the colours and dashes lines take in turn. The
window's chart (app.service.ui.render.build_chart), the lead-up's (app.service.ui.lead_up_chart) and
the fleet dashboard's (app.service.fleet.dashboard) are drawn on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Okabe-Ito: distinguishable with the common colour-vision deficiencies. Yellow left out (unreadable
# on white); lines also differ by dash pattern so they never rely on colour alone.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000"]
DASHES = ["", "6 3", "2 3", "8 3 2 3", "", "6 3", "2 3"]
NODE_COLOUR = "#8a8a8a"


@dataclass
class ChartLine:
    label: str
    colour: str
    dash: str
    points: str  # "x,y x,y ..." one per series element
    n: int
    peak: int
    is_node: bool = False
    marker: tuple[float, float] | None = None  # a dot for one-point series


@dataclass
class Chart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    y_ticks: list[tuple[float, str]] = field(default_factory=list)  # (y px, label)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    lines: list[ChartLine] = field(default_factory=list)
    x_label: str = "seconds into the window"
    y_label: str = "major faults / s"


def _nice_step(span: float, target_ticks: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(1, target_ticks)
    mag: float = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag  # pragma: no cover


def _tick_label(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 10_000:
        return f"{v / 1000:g}k"
    return f"{v:,.0f}" if v == int(v) else f"{v:g}"


def chart_frame(
    n: int,
    peak: float,
    x_ticks: int,
    x_tick_label: Callable[[int], str],
    x_label: str = Chart.x_label,
    y_label: str = Chart.y_label,
) -> tuple[Chart, Callable[..., ChartLine]]:
    """An empty chart for series of up to n points, its y axis from 0 to a round number at or above
    peak (ticks included) and about x_ticks x ticks labelled by x_tick_label(point index); with the
    function that turns a series into a line on it: line(series, label, colour, dash, is_node=False)."""
    width, height = 760, 300
    left, right, top_px, bottom = 84, 16, 16, 50
    plot_w = width - left - right
    plot_h = height - top_px - bottom
    step = _nice_step(max(peak, 1), 5)
    y_max = step * max(1, math.ceil(max(peak, 1) / step))
    x_span = max(1, n - 1)

    def x_of(i: int) -> float:
        return round(left + plot_w * i / x_span, 1)

    def y_of(v: float) -> float:
        return round(top_px + plot_h * (1 - v / y_max), 1)

    chart = Chart(width, height, left, right, top_px, bottom, x_label=x_label, y_label=y_label)
    v = 0.0
    while v <= y_max + 1e-9:
        chart.y_ticks.append((y_of(v), _tick_label(v)))
        v += step
    for i in range(0, n, max(1, int(_nice_step(x_span, x_ticks)))):
        chart.x_ticks.append((x_of(i), x_tick_label(i)))

    def line(series: Sequence[float], label: str, colour: str, dash: str, is_node: bool = False) -> ChartLine:
        pts = " ".join(f"{x_of(i)},{y_of(val)}" for i, val in enumerate(series))
        marker = (x_of(0), y_of(series[0])) if len(series) == 1 else None
        return ChartLine(label, colour, dash, pts, len(series), round(max(series)), is_node, marker)

    return chart, line

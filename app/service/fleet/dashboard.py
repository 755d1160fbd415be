"""The fleet's Grafana dashboard (charts/pagefault-inspector/dashboards/fleet.json) drawn with the
report page's own chart code, for a picture of it where Grafana is not at hand (docs/fleet.md;
scripts/render_dashboard.py feeds it a real Prometheus's answers). Pure: panels' results in, HTML out.

Time-series panels become line charts (app.service.html.chart.chart_frame); instant panels become
bars; table panels become tables. Every value is escaped by the template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.service.html.chart import DASHES, PALETTE, Chart, chart_frame
from app.service.html.env import environment

__all__ = ["PanelResult", "render_dashboard"]


@dataclass
class PanelResult:
    title: str
    kind: str  # "timeseries", "table", "bars"
    description: str = ""
    unit: str = ""  # y axis / bar unit
    series: list[tuple[str, list[float]]] = field(default_factory=list)  # timeseries: (legend, values)
    seconds: int = 0  # the time range the series cover (one value a step)
    bars: list[tuple[str, float, str]] = field(default_factory=list)  # (legend, value, value as text)
    columns: list[str] = field(default_factory=list)  # table
    rows: list[list[str]] = field(default_factory=list)
    chart: Chart | None = None
    bar_max: float = 1.0


def _chart(p: PanelResult) -> Chart | None:
    if not p.series:
        return None
    n = max(len(v) for _, v in p.series)
    peak = max((max(v) for _, v in p.series if v), default=1.0)
    step = p.seconds / max(1, n - 1)
    chart, line = chart_frame(n, peak, 6, lambda i: f"-{round(p.seconds - i * step)}s",
                              x_label="seconds before now", y_label=p.unit)
    for k, (label, values) in enumerate(p.series[: len(PALETTE)]):
        chart.lines.append(line(values, label, PALETTE[k], DASHES[k]))
    return chart


def render_dashboard(title: str, panels: Sequence[PanelResult]) -> str:
    for p in panels:
        if p.kind == "timeseries":
            p.chart = _chart(p)
        p.bar_max = max((b[1] for b in p.bars), default=1.0) or 1.0
    return environment().get_template("fleet_dashboard.html").render(title=title, panels=panels, refresh=False)

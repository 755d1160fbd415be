"""The report as text for a terminal (rich): what `pagefault-inspector investigate` prints."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app.investigation.recommend import command_line, headline
from app.investigation.who import group_cell, who_cell
from app.models import ProcessReport, Report

SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(series: list[int], width: int = 30) -> str:
    if not series:
        return ""
    if len(series) > width:  # fold into `width` buckets
        step = len(series) / width
        series = [sum(series[int(i * step):int((i + 1) * step)]) for i in range(width)]
    top = max(series) or 1
    return "".join(SPARK[min(8, round(v / top * 8))] for v in series)


def _sources(p: ProcessReport, limit: int = 3) -> str:
    lines = []
    for s in p.sources[:limit]:
        where = s.path or ""
        est = " (estimated)" if s.estimated else ""
        lines.append(f"{s.share:>4.0%} {s.kind.value} {where}{est}".rstrip())
    return "\n".join(lines) or "-"


def _hanging(lines: list[str], mark: str, style: str = "") -> Table:
    """One line an item, wrapped under its own text rather than under the mark ("• raise ..." wraps
    under "raise"; the basis and the evidence stay indented): a two-column grid."""
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True, style=style)
    grid.add_column(overflow="fold")
    for line in lines:
        grid.add_row(mark, Text(line, style=style))
    return grid


def render(report: Report, console: Console) -> None:
    v = report.verdict
    title = f"{report.node}: {report.window_seconds:.0f} s, {report.tracer.backend}"
    body: list[Text | Table] = [Text(v.summary, style="bold"), _hanging(v.advice, "•")]
    if (rec := v.recommendation) is not None:
        body.append(Text("limit: " + headline(rec), style="bold"))
        body.append(_hanging([command_line(rec)], " ", "bold"))
        body.append(_hanging(rec.basis, " ", "dim"))
    if v.evidence:
        body.append(Text("why:", style="dim"))
        body.append(_hanging(v.evidence, " ", "dim"))
    console.print(Panel(Group(*body), title=title,
                        subtitle=f"cause: {v.cause.value}, confidence: {v.confidence}"))
    ns = report.node_stats
    console.print(
        f"node: {ns.pgmajfault_per_second:,.0f} major faults/s, swap-in {ns.pswpin_per_second:,.0f} pages/s, "
        f"swap-out {ns.pswpout_per_second:,.0f} pages/s"
        + (f", memory PSI some avg10 {ns.psi_memory.some_avg10:.1f}%" if ns.psi_memory else "")
    )
    render_lead_up(report, console)
    if report.processes:
        table = Table(show_lines=True)
        for col in ("pid", "comm", "pod / container", "majflt/s", "series", "sources"):
            table.add_column(col, overflow="fold")
        for p in report.processes:
            table.add_row(str(p.pid), p.comm, who_cell(p), f"{p.major_faults_per_second:,.0f}",
                          sparkline(p.series), _sources(p))
        console.print(table)
        for p in report.processes[1:3]:  # the first one's verdict is the headline
            if p.verdict:
                console.print(f"[bold]{p.pid} {p.comm}[/bold]: {p.verdict.summary}")
    t = report.tracer
    kind = "exact major faults" if t.exact else "approximate"
    if t.exact and t.sample_period > 1:
        kind = f"major faults, one in {t.sample_period} recorded: sources' counts estimated"
    if t.counts_past_window:
        kind += ", counted past the window"
    if t.counts_over == "tracer" and t.counted_seconds is not None:
        kind += f"; counts over its {t.counted_seconds:.1f} s interval"
    line = f"tracer: {t.backend} ({kind}): {t.reason}"
    if t.events:
        line += f"; {t.events:,} events, {t.dropped:,} dropped"
    console.print(line)
    for note in t.notes:
        if note.startswith("sampled one major fault"):
            console.print(f"  {note}")
    for s in t.skipped:
        console.print(f"  skipped {s.backend}: {s.reason}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"report {report.id}, schema {report.schema_version}")


def render_lead_up(report: Report, console: Console) -> None:
    """The flight recorder's lead-up (the service's reports), or why there is none."""
    h = report.history
    if h is None:
        if report.history_reason:
            console.print(f"[dim]{report.history_reason}[/dim]")
        return
    span = f"{h.since:%H:%M:%S}-{h.until:%H:%M:%S} UTC"
    console.print(
        f"lead-up {span}, every {h.interval_seconds:g} s: node {h.node_major_faults:,} major faults "
        f"{sparkline(h.node_series)}"
    )
    if not h.cgroups:
        console.print("  no container had major faults in the lead-up")
        return
    table = Table(title="lead-up: top containers by major faults", show_lines=False)
    for col in ("pod / container (or cgroup)", "major faults", "peak/s", "series", "last active"):
        table.add_column(col, overflow="fold")
    for c in h.cgroups:
        last = f"{c.last_active_at:%H:%M:%S}" if c.last_active_at else "-"
        table.add_row(group_cell(c), f"{c.major_faults:,}", f"{c.peak_per_second:,.0f}", sparkline(c.series),
                      last + (" (gone)" if c.gone else ""))
    console.print(table)

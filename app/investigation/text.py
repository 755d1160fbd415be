"""The report as text for a terminal (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

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


def _pod(p: ProcessReport) -> str:
    if p.pod is None:
        return "(host)"
    name = f"{p.pod.namespace}/{p.pod.name}" if p.pod.name else f"uid {p.pod.uid}"
    return f"{name}\n{p.pod.container or ''}".rstrip()


def _sources(p: ProcessReport, limit: int = 3) -> str:
    lines = []
    for s in p.sources[:limit]:
        where = s.path or ""
        est = " (estimated)" if s.estimated else ""
        lines.append(f"{s.share:>4.0%} {s.kind.value} {where}{est}".rstrip())
    return "\n".join(lines) or "-"


def render(report: Report, console: Console) -> None:
    v = report.verdict
    title = f"{report.node}: {report.window_seconds:.0f} s, {report.tracer.backend}"
    advice = "\n".join(f"• {a}" for a in v.advice)
    console.print(Panel(Group(Text(v.summary, style="bold"), Text(advice)), title=title,
                        subtitle=f"cause: {v.cause.value}, confidence: {v.confidence}"))
    ns = report.node_stats
    console.print(
        f"node: {ns.pgmajfault_per_second:,.0f} major faults/s, swap-in {ns.pswpin_per_second:,.0f} pages/s, "
        f"swap-out {ns.pswpout_per_second:,.0f} pages/s"
        + (f", memory PSI some avg10 {ns.psi_memory.some_avg10:.1f}%" if ns.psi_memory else "")
    )
    if report.processes:
        table = Table(show_lines=True)
        for col in ("pid", "comm", "pod / container", "majflt/s", "series", "sources"):
            table.add_column(col, overflow="fold")
        for p in report.processes:
            table.add_row(str(p.pid), p.comm, _pod(p), f"{p.major_faults_per_second:,.0f}",
                          sparkline(p.series), _sources(p))
        console.print(table)
        for p in report.processes[1:3]:  # the first one's verdict is the headline
            if p.verdict:
                console.print(f"[bold]{p.pid} {p.comm}[/bold]: {p.verdict.summary}")
    t = report.tracer
    line = f"tracer: {t.backend} ({'exact major faults' if t.exact else 'approximate'}): {t.reason}"
    if t.events:
        line += f"; {t.events:,} events, {t.dropped:,} dropped"
    console.print(line)
    for s in t.skipped:
        console.print(f"  skipped {s.backend}: {s.reason}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"report {report.id}, schema {report.schema_version}")

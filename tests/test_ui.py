"""The report pages: content, escaping of untrusted report strings, the inline SVG chart, the index."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from html.parser import HTMLParser

import pytest

from app.models import ProcessReport, Source
from app.service.html.chart import PALETTE
from app.service.html.env import KIND_COLOURS, source_bar
from app.service.ui import IndexRow, RunningRow, render_index_page, render_report_page, render_running_page
from app.service.ui.render import build_chart
from tests.e2e.sample_reports import (
    HOSTILE,
    T0,
    empty_report,
    file_fault_report,
    host_report,
    hostile_report,
    swap_report,
)


class _Collector(HTMLParser):
    """Collects text (outside <style>/<title>) and every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    c.close()
    return c


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", " ".join(parse(html).text))


def polylines(html: str) -> list[dict[str, str | None]]:
    return [a for t, a in parse(html).tags if t == "polyline"]


def svg_root(html: str) -> ET.Element:
    m = re.search(r"<svg viewBox=.*?</svg>", html, re.S)
    assert m, "no chart svg"
    return ET.fromstring(m.group(0))  # the chart is well-formed XML


# ------------------------------------------------------------------------------------------------


def test_file_fault_report_verdict_first_and_culprit_named():
    r = file_fault_report()
    html = render_report_page(r)
    text = text_of(html)
    # the verdict comes before everything else in the page body
    assert text.index(r.verdict.summary) < text.index("Major faults per second") < text.index("Top processes")
    assert "Container memory limit" in text and "high confidence" in text
    for a in r.verdict.advice:
        assert a in text
    assert "search/search-indexer-7d9f8b6c5-q2x8z" in text
    assert "indexer" in text and "48213" in text
    assert "/data/index.bin" in text
    assert "Deployment/search-indexer" in text
    # hot ranges, node stats, tracer, skipped backends with reasons, sinks, warnings
    assert "0 B–64 MiB: 123,000" in text
    assert "9,190" in text  # node pgmajfault/s
    assert "23.4% / 11.2%" in text  # PSI memory some/full avg10
    assert "perf-major" in text and "exact major faults" in text
    assert "no kprobes: /sys/kernel/tracing/kprobe_events missing" in text
    assert "connect timeout after 5 retries" in text and "delivered" in text
    assert "paths of containerised processes are as the container sees them" in text
    assert "<script" not in html  # no JavaScript at all
    assert 'http-equiv="refresh"' not in html  # a finished report does not reload


def test_chart_polylines_match_series_and_legend():
    r = file_fault_report(n=30)
    html = render_report_page(r)
    lines = polylines(html)
    node = [a for a in lines if "node" in (a["class"] or "").split()]
    procs = [a for a in lines if "node" not in (a["class"] or "").split()]
    assert len(node) == 1 and len(node[0]["points"].split()) == len(r.node_stats.series)
    assert len(procs) == len(r.processes)
    for a, p in zip(procs, r.processes, strict=True):
        pts = a["points"].split()
        assert len(pts) == len(p.series) == int(a["data-points"])
        xs = [float(pt.split(",")[0]) for pt in pts]
        assert xs == sorted(xs)  # time runs left to right
    # colours from the colour-blind-safe palette, in rank order; each process in the legend
    assert [a["stroke"] for a in procs] == PALETTE[: len(procs)]
    root = svg_root(html)
    assert root.get("viewBox")
    legend = text_of(html.split("<figcaption>")[1].split("</figcaption>")[0])
    for p in r.processes:
        assert f"{p.comm} (pid {p.pid})" in legend
    assert "node total (pgmajfault)" in legend
    # axes: labels and ticks
    assert "seconds into the window" in html and "major faults / s" in html
    assert "10k" in text_of(html)


def test_chart_y_scale_covers_the_peak():
    r = file_fault_report(n=12)
    c = build_chart(r)
    assert c is not None
    top_of_plot = c.top
    bottom_of_plot = c.height - c.bottom
    for line in c.lines:
        for pt in line.points.split():
            x, y = map(float, pt.split(","))
            assert c.left <= x <= c.width - c.right
            assert top_of_plot - 0.01 <= y <= bottom_of_plot + 0.01


def test_chart_handles_short_and_uneven_series():
    r = file_fault_report(n=10)
    r.processes[1].series = [5]  # started in the last second
    r.processes[2].series = [0, 0, 3]
    html = render_report_page(r)
    procs = [a for a in polylines(html) if "node" not in (a["class"] or "")]
    assert [len(a["points"].split()) for a in procs] == [10, 1, 3]
    assert "<circle" in html  # a one-point series still shows as a dot
    svg_root(html)


def test_stacked_source_bar_by_kind():
    r = file_fault_report()
    segs = source_bar(r.processes[0])
    assert [s.kind for s in segs] == ["file", "code", "swap", "unknown"]
    assert math.isclose(sum(s.share for s in segs), 1.0)
    assert segs[0].share > 0.9
    assert segs[0].colour == KIND_COLOURS["file"]
    html = render_report_page(r)
    assert "file (page cache) <b>96%</b>" in html
    # every bar's segment widths add up to 100%
    for bar in re.findall(r'<div class="bar[^"]*"[^>]*>(.*?)</div>', html, re.S):
        widths = [float(w) for w in re.findall(r"width: ([\d.]+)%", bar)]
        assert math.isclose(sum(widths), 100.0, abs_tol=0.01)


def test_estimated_sources_without_counts_still_get_a_bar():
    r = host_report()
    segs = source_bar(r.processes[0])
    assert [(s.kind, round(s.share, 2)) for s in segs] == [("file", 0.7), ("swap", 0.3)]
    text = text_of(render_report_page(r))
    assert "host process" in text
    assert "estimated" in text and "approximate" in text
    assert "procfs" in text and "perf_event_paranoid=3" in text


def test_swap_report():
    r = swap_report()
    text = text_of(render_report_page(r))
    assert r.verdict.summary in text
    assert "Swap-in of anonymous memory" in text
    assert "cache/redis-0" in text and "redis" in text
    assert "swap (anonymous)" in text and "shmem (tmpfs)" in text
    assert "/dev/shm/redis-shared" in text
    assert "7,950" in text  # pswpin/s
    assert "1.0 GiB of 4.0 GiB" in text  # swap free


def test_empty_report_has_no_chart_but_says_why():
    r = empty_report()
    html = render_report_page(r)
    text = text_of(html)
    assert "no major page faults during the 30 s window" in text
    assert "No process had major faults in this window" in text
    assert "<polyline" not in html
    assert 'class="card verdict none"' in html  # the calm colour


def test_hostile_strings_are_escaped():
    r = hostile_report()
    html = render_report_page(r)
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "<b>evil" not in html and "ns<i>" not in html
    assert "&lt;script&gt;" in html
    # what a person sees is the literal text
    text = text_of(html)
    assert HOSTILE in text
    assert "<b>evil</b>" in text
    assert 'c"><img src=x onerror=alert(1)>' in text
    # the chart is still well-formed with a hostile legend
    svg_root(html)
    # attributes cannot be broken out of either
    for tag, attrs in parse(html).tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    idx = render_index_page(
        [
            IndexRow(
                id="x",
                node=HOSTILE,
                started_at=T0,
                status="complete",
                verdict=HOSTILE,
                top_process=HOSTILE,
                top_pod=HOSTILE,
                backend=HOSTILE,
                url='javascript:alert(1)" onclick="x',
            )
        ],
        running=[RunningRow(node=HOSTILE, started_at=T0, progress=0.5, message=HOSTILE, trigger=HOSTILE)],
        unreachable=[HOSTILE],
    )
    assert "<script" not in idx.lower()
    assert "javascript:" not in idx
    assert not any(k.startswith("on") for _, a in parse(idx).tags for k in a)
    run = render_running_page(
        RunningRow(node=HOSTILE, started_at=T0, progress=0.5, message=HOSTILE, trigger=HOSTILE)
    )
    assert "<script" not in run.lower()


def _rows() -> list[IndexRow]:
    out = []
    for i, make in enumerate([file_fault_report, swap_report, host_report, empty_report]):
        r = make()
        started = T0 + timedelta(minutes=i * 7 % 5)  # not in order
        top = r.processes[0] if r.processes else None
        out.append(
            IndexRow(
                id=r.id,
                node=r.node,
                started_at=started,
                status="failed" if i == 3 else r.status,
                verdict=r.verdict.summary,
                top_process=f"{top.comm} ({top.pid})" if top else None,
                top_pod=f"{top.pod.namespace}/{top.pod.name}" if top and top.pod else None,
                backend=r.tracer.backend,
                url=f"/reports/{r.id}",
            )
        )
    return out


def test_index_lists_every_node_newest_first_with_running_and_unreachable():
    rows = _rows()
    running = [
        RunningRow(
            node="worker-3",
            started_at=T0,
            progress=0.4,
            message="tracing with perf-major",
            trigger="alert NodeMemoryMajorPagesFaults",
        )
    ]
    html = render_index_page(rows, running=running, unreachable=["worker-9 (10.0.3.9:8080): timeout"])
    text = text_of(html)
    order = sorted(rows, key=lambda r: r.started_at, reverse=True)
    positions = [text.index(r.verdict) for r in order]
    assert positions == sorted(positions)
    for r in rows:
        assert f'href="{r.url}"' in html
        assert r.node in text
    assert "search/search-indexer-7d9f8b6c5-q2x8z" in text
    assert "host process" in text  # postgres has no pod
    assert "failed" in text  # a non-complete status is flagged
    assert "worker-9 (10.0.3.9:8080): timeout" in text and "Peers that did not answer" in text
    assert "Investigating now" in text and "40% · tracing with perf-major" in text
    assert 'aria-valuenow="40"' in html
    assert 'http-equiv="refresh"' in html  # something is running: keep the list fresh


def test_index_empty():
    html = render_index_page([], running=[])
    text = text_of(html)
    assert "No reports yet" in text
    assert 'http-equiv="refresh"' not in html
    assert "Peers that did not answer" not in text


@pytest.mark.parametrize(
    ("progress", "pct"),
    [(0.0, "0"), (0.42, "42"), (1.0, "100"), (1.7, "100"), (-3, "0"), (float("nan"), "0")],
)
def test_running_page(progress, pct):
    html = render_running_page(
        RunningRow(
            node="worker-3",
            started_at=T0,
            progress=progress,
            message="tracing with perf-major",
            trigger="alert NodeMemoryMajorPagesFaults",
        )
    )
    assert '<meta http-equiv="refresh" content="2">' in html
    assert f'aria-valuenow="{pct}"' in html
    assert "worker-3" in text_of(html) and "tracing with perf-major" in text_of(html)


def test_running_report_reloads():
    r = file_fault_report(n=5)
    r.status = "running"
    assert '<meta http-equiv="refresh" content="2">' in render_report_page(r)


def test_naive_datetimes_are_taken_as_utc():
    r = swap_report()
    r.started_at = r.started_at.replace(tzinfo=None)
    assert "2026-11-25 10:32:05 UTC" in render_report_page(r)


def test_process_without_series_or_sources():
    r = file_fault_report(n=5)
    r.processes.append(ProcessReport(pid=1, comm="init", major_faults=0, major_faults_per_second=0.0))
    r.processes.append(
        ProcessReport(
            pid=2,
            comm="odd",
            major_faults=1,
            major_faults_per_second=0.2,
            series=[0, 1],
            sources=[Source(kind="unknown", faults=1, share=1.0)],
        )
    )
    html = render_report_page(r)
    assert "no traced sources" in text_of(html)
    svg_root(html)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("/reports/abc", True),
        ("reports/abc", True),
        ("http://h:8081/r/1", True),
        ("https://h/r", True),
        ("javascript:alert(1)", False),
        (" JavaScript:x", False),
        ("data:text/html,x", False),
        ("/r?next=javascript:x", True),
    ],
)
def test_index_links_never_run_script(url, ok):
    row = IndexRow(
        id="a",
        node="n",
        started_at=T0,
        status="complete",
        verdict="v",
        top_process=None,
        top_pod=None,
        backend="perf-major",
        url=url,
    )
    hrefs = [
        a["href"]
        for t, a in parse(render_index_page([row], running=[])).tags
        if t == "a" and a["href"] not in ("/", "/workloads", "/reports")  # the header's links
    ]
    assert hrefs == [url.strip() if ok else "#"]


def test_the_verdicts_evidence_is_shown_on_the_page_and_in_the_terminal():
    """What the verdict rests on (diagnose.py's evidence) is on the page and in the text output, and so
    is what an estimated source was inferred from."""
    import io

    from rich.console import Console

    from app.investigation.diagnose import diagnose_process, diagnose_report
    from app.render_text import render

    r = file_fault_report()
    for p in r.processes:
        p.verdict = diagnose_process(p, r.node_stats)
    r.verdict = diagnose_report(r.processes, r.node_stats, r.window_seconds)
    assert r.verdict.evidence  # the real rules gave their reasons
    top = r.processes[0]
    top.sources[0] = top.sources[0].model_copy(update={"estimated": True, "evidence": ["cgroup refaults: 0 anon"]})
    text = text_of(render_report_page(r))
    assert "Why: the evidence" in text
    for e in r.verdict.evidence:
        assert e in text
    assert "from: cgroup refaults: 0 anon" in text
    buf = io.StringIO()
    render(r, Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "why:" in out and r.verdict.evidence[0][:60] in out


def test_a_quiet_report_reads_as_quiet_on_the_page():
    """Issue 17: the real quiet verdict (diagnose.py, node under the noise floor) is labelled as such,
    in the calm colour, and its top process is still listed."""
    from app.investigation.diagnose import diagnose_process, diagnose_report
    from app.models import NodeStats

    r = host_report()
    node = NodeStats(pgmajfault=31, pgmajfault_per_second=3.1, series=[3] * 10)
    top = r.processes[0].model_copy(update={"major_faults": 12, "major_faults_per_second": 1.2, "series": [1] * 10})
    top.verdict = diagnose_process(top, node)
    r = r.model_copy(update={"node_stats": node, "processes": [top], "window_seconds": 10,
                             "verdict": diagnose_report([top], node, 10)})
    html = render_report_page(r)
    text = text_of(html)
    assert "Quiet node" in text and "the node is quiet: 3.1 major faults/s" in text
    assert 'class="card verdict none"' in html
    assert top.comm in text


def test_a_trace_counted_past_the_window_is_not_shown_as_plainly_exact():
    """bpftrace that acted on its stop late kept counting after the window: the page and the terminal
    say so next to 'exact major faults' (the counts are major faults, but not the window's)."""
    import io

    from rich.console import Console

    from app.render_text import render

    r = file_fault_report()
    plain = text_of(render_report_page(r))
    assert "exact major faults" in plain and "counted past the window" not in plain
    r.tracer = r.tracer.model_copy(update={"exact": True, "counts_past_window": True})
    assert "exact major faults, counted past the window" in text_of(render_report_page(r))
    out = io.StringIO()
    render(r, Console(file=out, width=300))
    assert "(exact major faults, counted past the window)" in out.getvalue()


def test_alert_start_is_written_as_the_page_writes_times():
    """Alertmanager's startsAt (RFC 3339, nanoseconds, Z) reads like every other time on the page; text
    that is not a time is shown as it came (escaped)."""
    r = file_fault_report()
    r.trigger.starts_at = "2026-12-07T06:53:32.838024352Z"  # as Alertmanager 0.25 sends it
    assert "since 2026-12-07 06:53:32 UTC" in text_of(render_report_page(r))
    r.trigger.starts_at = "yesterday <b>"
    assert "since yesterday &lt;b&gt;" in render_report_page(r)


def test_a_sampled_report_says_one_in_n_not_exact():
    from app.investigation.engine import sampled_note

    r = file_fault_report()
    r.tracer.sample_period = 4
    r.tracer.notes = [sampled_note(4, 15437.0, 4000), "perf.data read while recording (3 rounds)"]
    html = render_report_page(r)
    text = text_of(html)
    assert "major faults, one in 4 recorded" in text and "exact major faults" not in text
    # the note rides on the badge (a paragraph made the tracer card over twice the node card beside it)
    badge = re.search(r'<span class="badge medium" title="([^"]*)">major faults, one in 4 recorded', html)
    assert badge and badge.group(1).startswith("sampled one major fault in 4: the node made 15,437 major faults/s")
    assert "perf.data read while recording" not in html  # only the sampling note

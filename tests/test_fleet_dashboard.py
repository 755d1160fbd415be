"""The fleet dashboard's drawing (app.service.fleet.dashboard, pure) and the fleet page's word on
where its rows come from (a sample of peers is said so)."""

from __future__ import annotations

import re

from app.service.fleet.dashboard import PanelResult, render_dashboard
from app.service.fleet.page import FleetPage, render_fleet_page
from app.service.fleet.view import Fleet


def test_panels_drawn_one_line_a_series_bars_and_tables_escaped() -> None:
    html = render_dashboard("the fleet", [
        PanelResult("Nodes each workload thrashes on", "timeseries", unit="short", seconds=10,
                    series=[("workload:search/Deployment/search-indexer", [7.0] * 6 + [12.0] * 5),
                            ("pod:cache/redis-0", [1.0] * 11)]),
        PanelResult("Current vs recommended", "bars", bars=[("current", 1 << 30, "1,024 MiB"),
                                                             ("recommended", 1536 << 20, "1,536 MiB")]),
        PanelResult("Findings", "table", columns=["owner_name", "node"], rows=[["<script>x</script>", "storm-01"]]),
        PanelResult("Empty", "timeseries"),
    ])
    lines = re.findall(r'<polyline [^>]*points="([^"]+)"', html)
    assert len(lines) == 2 and all(len(pts.split()) == 11 for pts in lines)
    # the Deployment's line steps up (smaller y is higher): 7 nodes, then 12
    ys = [float(p.split(",")[1]) for p in lines[0].split()]
    assert ys[0] == ys[5] > ys[6] == ys[10]
    assert re.findall(r"height: .9rem; width: ([\d.]+)%", html) == ["66.7", "100.0"]
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert html.count("No data.") == 1


def test_fleet_page_says_when_it_asked_a_sample_of_peers() -> None:
    sampled = Fleet(rows=[], source="peers", peers_asked=16, peers_known=99)
    assert sampled.sampled and "asked 16 of 99 peers" in sampled.coverage()
    whole = Fleet(rows=[], source="peers", peers_asked=11, peers_known=11)
    assert not whole.sampled and whole.coverage() == "asked every peer (11)"
    assert Fleet(rows=[], source="prometheus", max_age_seconds=3600).coverage().startswith(
        "from Prometheus: every node's findings of the last 60 minutes")
    page = FleetPage(rows=[], total=0, nodes=0, sort="last_seen", descending=True, offset=0, page_size=100,
                     coverage=sampled.coverage())
    assert re.search(r'<span id="coverage">asked 16 of 99 peers \(a random sample', render_fleet_page(page))

"""The fleet view's grouping (app.investigation.fleet) on real report documents, and the store's
workload columns: one index lookup for "reports of workload W in the last hour", and a store file
from before the columns existed getting them at open."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

from app.investigation.fleet import also_on_text, facts_of, merge, node_rows, sort_rows, workload_of
from app.models import Cause, PodRef, Recommendation, Report, utcnow
from app.service.report_store import DB_NAME, ReportStore
from tests.e2e.sample_reports import empty_report, file_fault_report, host_report, swap_report


def _on(report: Report, node: str, pod: str, minutes_ago: float = 0) -> Report:
    """The same report from another pod of the same Deployment on another node."""
    top = report.processes[0]
    assert top.pod is not None
    moved = top.model_copy(update={"pod": top.pod.model_copy(update={"name": pod})})
    started = utcnow() - timedelta(minutes=minutes_ago)
    return report.model_copy(
        update={
            "id": f"{node}-{pod}-{minutes_ago:g}".replace(".", "")[:64],
            "node": node,
            "started_at": started,
            "finished_at": started + timedelta(seconds=31),
            "processes": [moved, *report.processes[1:]],
        }
    )


def test_the_workload_a_report_blames():
    w = workload_of(file_fault_report())  # a pod of a Deployment
    assert w is not None and w.key == "workload:search/Deployment/search-indexer"
    assert w.label == "Deployment search/search-indexer"
    w = workload_of(swap_report())  # a pod without an owner: the pod
    assert w is not None and (w.key, w.label) == ("pod:cache/redis-0", "pod cache/redis-0")
    w = workload_of(host_report())  # a host process without a cgroup: its command
    assert w is not None and (w.key, w.label) == ("comm:postgres", "host process postgres")
    unit = host_report()
    unit.processes[0].cgroup = "/system.slice/postgresql.service"
    w = workload_of(unit)
    assert w is not None and (w.key, w.label) == ("cgroup:/system.slice/postgresql.service", "unit postgresql.service")
    assert workload_of(empty_report()) is None and facts_of(empty_report()) is None  # a quiet node blames nothing
    listed = host_report()  # processes listed for context under a quiet verdict are not blamed either
    listed.verdict = listed.verdict.model_copy(update={"cause": Cause.NO_MAJOR_FAULTS})
    assert workload_of(listed) is None
    nameless = swap_report()
    nameless.processes[0].pod = PodRef(uid="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    w = workload_of(nameless)
    assert w is not None and w.key == "pod-uid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def test_facts_name_the_fault_kind_file_and_recommendation():
    f = facts_of(file_fault_report())
    assert f is not None
    assert (f.cause, f.fault_kind, f.file) == ("container_memory_limit", "file", "/data/index.bin")
    assert f.recommendation is None  # reports from before the advice's recommendation

    r = file_fault_report()
    cmd = "kubectl -n search set resources deployment/search-indexer -c indexer --limits=memory=1536Mi"
    r.verdict = r.verdict.model_copy(update={"recommendation": Recommendation(
        subject="container", knob="resources.limits.memory", recommended_limit_bytes=1536 << 20, command=cmd)})
    f = facts_of(r)
    assert f is not None and f.recommendation is not None
    assert (f.recommendation.recommended_limit_bytes, f.recommendation.command) == (1536 << 20, cmd)


def test_one_deployment_on_twelve_nodes_is_one_row():
    base = file_fault_report()
    reports = [_on(base, f"node-{i:02d}", f"search-indexer-7d9f8b6c5-{i:05d}", minutes_ago=i) for i in range(12)]
    reports.append(_on(base, "node-03", "search-indexer-7d9f8b6c5-later", minutes_ago=0.5))  # twice on node-03
    reports.append(swap_report())
    per_node: dict[str, list[tuple[str, object, object]]] = {}
    for r in reports:
        f = facts_of(r)
        assert f is not None
        per_node.setdefault(r.node, []).append((r.id, r.started_at, f))
    rows = merge(row for node, items in per_node.items() for row in node_rows(node, items))  # type: ignore[arg-type]
    assert [r.workload.label for r in rows] == ["Deployment search/search-indexer", "pod cache/redis-0"]
    dep = rows[0]
    assert dep.nodes == [f"node-{i:02d}" for i in range(12)] and dep.reports == 13
    assert dep.cause == "container_memory_limit" and (dep.fault_kind, dep.file) == ("file", "/data/index.bin")
    assert dep.first_seen == reports[11].started_at and dep.last_seen == reports[0].started_at
    links = {link.node: link.report_id for link in dep.links}
    assert len(links) == 12 and links["node-03"] == reports[12].id  # each node's newest report
    # a node's rows merged twice (own store and a peer answering for it) count once
    again = merge([*node_rows("node-00", per_node["node-00"]), *node_rows("node-00", per_node["node-00"])])  # type: ignore[arg-type]
    assert again[0].reports == 1
    assert [r.workload.label for r in sort_rows(rows, "nodes", descending=False)][0] == "pod cache/redis-0"
    assert sort_rows(rows, "reports")[0].reports == 13


def test_dominant_cause_is_the_one_most_reports_name():
    base = file_fault_report()
    items = []
    for i, cause in enumerate([Cause.CONTAINER_MEMORY_LIMIT, Cause.SWAP, Cause.SWAP]):
        r = _on(base, f"n{i}", f"p{i}", minutes_ago=3 - i)
        r.verdict = r.verdict.model_copy(update={"cause": cause})
        f = facts_of(r)
        assert f is not None
        items.extend(node_rows(r.node, [(r.id, r.started_at, f)]))
    (row,) = merge(items)
    assert row.cause == "swap" and row.causes == {"container_memory_limit": 1, "swap": 2}


def test_also_on_text():
    names = [f"node-{i:02d}" for i in range(11)]
    assert also_on_text(names) == "also on 11 other nodes: node-00, node-01, node-02, ..."
    assert also_on_text(["b"]) == "also on 1 other node: b"
    assert also_on_text([]) == ""


def test_store_answers_a_workload_in_the_last_hour(tmp_path: Path):
    store = ReportStore(tmp_path)
    assert store.open()
    base = file_fault_report()
    recent = [_on(base, "node-a", f"si-{i}", minutes_ago=10 * i) for i in range(3)]  # 0, 10, 20 min ago
    old = _on(base, "node-a", "si-old", minutes_ago=90)
    for r in [*recent, old, swap_report().model_copy(update={"node": "node-a"}), empty_report()]:
        assert store.put(r)
    key = "workload:search/Deployment/search-indexer"
    (row,) = store.workloads(key=key, since=utcnow() - timedelta(hours=1))
    assert (row.node, row.reports) == ("node-a", 3)
    assert [link.report_id for link in row.links] == [r.id for r in recent]
    assert row.latest.file == "/data/index.bin"
    everything = store.workloads()
    assert {w.workload.key: w.reports for w in everything} == {key: 4, "pod:cache/redis-0": 1}
    # the lookup uses the index, not a scan of the table
    assert store._conn is not None
    plan = " ".join(
        str(r[-1])
        for r in store._conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM reports WHERE workload_key = ? AND started_at >= ?", (key, "x")
        )
    )
    assert "USING INDEX reports_workload" in plan, plan
    store.close()


OLD_SCHEMA = """
CREATE TABLE reports (id TEXT PRIMARY KEY, node TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
    status TEXT NOT NULL, summary TEXT NOT NULL, json TEXT NOT NULL, triggers TEXT NOT NULL DEFAULT '[]');
CREATE INDEX reports_started ON reports (started_at DESC);
CREATE TABLE outbox (report_id TEXT NOT NULL, sink TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (report_id, sink));
"""


def test_a_store_file_from_before_the_workload_columns_gets_them(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript(OLD_SCHEMA)
    base = file_fault_report()
    rows = [_on(base, "node-a", f"si-{i}", minutes_ago=i) for i in range(250)] + [empty_report()]  # > one batch
    for r in rows:
        conn.execute(
            "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, '[]')",
            (r.id, r.node, r.started_at.isoformat(), None, r.status, r.verdict.summary, r.model_dump_json()),
        )
    conn.execute(
        "INSERT INTO reports VALUES ('broken', 'node-a', '2026-01-01T00:00:00+00:00', NULL, 'complete', 's', '{}', '[]')"
    )
    conn.commit()
    conn.close()
    store = ReportStore(tmp_path, retention_count=1000, retention_days=3650)
    assert store.open() and store.workloads_reason is None
    (row,) = store.workloads()
    assert row.reports == 250 and row.workload.label == "Deployment search/search-indexer"
    assert len(store.list(limit=500)) == 252  # every old row still listed, the unreadable one too
    new = _on(base, "node-a", "si-new")
    assert store.put(new)
    assert store.workloads()[0].links[0].report_id == new.id
    store.close()
    check = sqlite3.connect(tmp_path / DB_NAME)
    assert check.execute("SELECT count(*) FROM reports WHERE workload_key IS NULL").fetchone()[0] == 0
    assert json.loads(check.execute("SELECT workload FROM reports WHERE id = ?", (new.id,)).fetchone()[0])["cause"]
    check.close()


def test_fleet_page_escapes_what_reports_hold():
    from datetime import UTC, datetime

    from app.service.fleet.page import FleetPage, FleetRow, NodeLinkRow, render_fleet_page
    from tests.e2e.sample_reports import HOSTILE, hostile_report

    r = hostile_report().model_copy(update={"started_at": datetime(2026, 12, 4, tzinfo=UTC)})
    f = facts_of(r)
    assert f is not None
    (row,) = merge(node_rows(r.node, [(r.id, r.started_at, f)]))
    html = render_fleet_page(
        FleetPage(
            rows=[
                FleetRow(
                    label=row.workload.label,
                    kind=row.workload.kind,
                    key=row.workload.key,
                    nodes=[NodeLinkRow(node=r.node, url="javascript:alert(1)")],
                    node_count=1,
                    reports=1,
                    first_seen=row.first_seen,
                    last_seen=row.last_seen,
                    cause=row.cause,
                    causes="",
                    fault_kind=row.fault_kind,
                    file=row.file,
                    summary=row.summary,
                    command=HOSTILE,
                )
            ],
            total=1,
            nodes=1,
            sort="last_seen",
            descending=True,
            offset=0,
            page_size=100,
        )
    )
    assert "<script" not in html and "javascript:" not in html
    assert "&lt;script&gt;" in html and "pod ns&lt;i&gt;/pod&lt;script&gt;" in html


def test_summaries_name_the_other_nodes(tmp_path: Path):
    import httpx

    from app.service.delivery.sinks import AlertmanagerSink, SlackSink
    from tests.service_support import make_settings

    settings = make_settings(tmp_path, alertmanager_url="http://am", slack_webhook_url="http://s")
    client = httpx.AsyncClient()
    r = file_fault_report()
    note = also_on_text([f"node-{i:02d}" for i in range(11)])
    alert = AlertmanagerSink(settings, client).alert(r, note)
    assert alert["annotations"]["summary"] == f"{r.verdict.summary} ({note})"
    assert alert["annotations"]["also_on"] == note
    assert "also_on" not in AlertmanagerSink(settings, client).alert(r)["annotations"]
    text = SlackSink(settings, client).message(r, note)["blocks"][0]["text"]["text"]
    assert "The same workload also on 11 other nodes: node-00, node-01, node-02, ..." in text


def test_swap_from_zram_is_its_own_source_kind_in_the_facts():
    """BottleRocket's swap is zram: the findings' source_kind says zram (compressed pages in node
    RAM), disk swap stays swap, and a mix stays swap."""
    assert facts_of(swap_report()).fault_kind == "swap"  # type: ignore[union-attr]
    for devices, kind in ((["zram"], "zram"), (["disk"], "swap"), (["zram", "disk"], "swap")):
        r = swap_report()
        top = r.processes[0]
        swaps = [s for s in top.sources if s.kind == "swap"]
        assert swaps
        for i, s in enumerate(swaps):
            s.swap_device = devices[i % len(devices)]  # type: ignore[assignment]
        if len(devices) == 2 and len(swaps) == 1:
            top.sources.append(swaps[0].model_copy(update={"swap_device": "disk", "share": 0.01}))
        f = facts_of(r)
        assert f is not None and f.fault_kind == kind, devices

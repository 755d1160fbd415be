"""Findings as metrics (issue 28), without servers: the series a node exports (labels, bounds, age),
Prometheus's answers parsed (real captured answers of Debian's Prometheus 2.42), the series read back
into the fleet's rows equal to the rows the stores give, and the client's cache, deadline and bounds
against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.investigation.findings import (
    FLEET_QUERY,
    GAUGES,
    LABELS,
    Sample,
    also_on_query,
    node_rows_of,
    samples_of,
)
from app.investigation.fleet import facts_of, merge, node_rows
from app.models import utcnow
from app.parsers.prometheus import PromAnswerError, parse_vector
from app.service.cluster.prometheus import PrometheusClient, PrometheusError
from app.service.report_store import ReportStore
from app.service.root import Seams, build_service
from tests.e2e.sample_reports import deployment_pod_report, host_report, swap_report
from tests.service_support import make_settings

FIXTURES = Path(__file__).parent / "fixtures" / "prometheus"
DEPLOYMENT_KEY = "workload:search/Deployment/search-indexer"


def _samples(text: bytes) -> list[Sample]:
    found, truncated = parse_vector(text, 10_000)
    assert not truncated
    return [Sample(s.labels["__name__"], s.labels, s.value) for s in found]


# --- Prometheus's answers --------------------------------------------------------------------------


def test_captured_fleet_answer_reads_back_into_rows() -> None:
    rows = merge(node_rows_of(_samples((FIXTURES / "fleet-query.json").read_bytes())))
    by_key = {r.workload.key: r for r in rows}
    assert set(by_key) == {DEPLOYMENT_KEY, "pod:cache/redis-0"}
    dep = by_key[DEPLOYMENT_KEY]
    assert dep.workload.label == "Deployment search/search-indexer"
    assert dep.nodes == ["storm-01", "storm-04"] and dep.reports == 2
    assert (dep.cause, dep.fault_kind) == ("container_memory_limit", "file")
    assert dep.recommendation is not None and dep.recommendation.recommended_limit_bytes == 1536 << 20
    assert [(link.node, link.report_id) for link in dep.links] == [("storm-01", "seed01"), ("storm-04", "seed04")]
    redis = by_key["pod:cache/redis-0"]
    assert (redis.workload.label, redis.nodes, redis.cause, redis.fault_kind) == (
        "pod cache/redis-0", ["storm-03"], "swap", "swap")
    assert redis.recommendation is None


def test_captured_also_on_answer_names_the_nodes() -> None:
    rows = node_rows_of(_samples((FIXTURES / "also-on-query.json").read_bytes()))
    assert sorted(r.node for r in rows) == ["storm-01", "storm-04"]
    assert {r.workload.key for r in rows} == {DEPLOYMENT_KEY}


def test_error_answer_is_an_error() -> None:
    with pytest.raises(PromAnswerError, match="bad_data: invalid parameter"):
        parse_vector((FIXTURES / "error-bad-data.json").read_bytes(), 10)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"<html>proxy login</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "not an instant vector"),
        (b'{"status":"success"}', "not an instant vector"),
    ],
)
def test_answers_that_are_not_a_vector(text: bytes, why: str) -> None:
    with pytest.raises(PromAnswerError, match=why):
        parse_vector(text, 10)


def test_bad_series_left_out_and_the_count_bounded() -> None:
    good = '{"metric":{"__name__":"up","node":"a"},"value":[1,"1"]}'
    body = ('{"status":"success","data":{"resultType":"vector","result":[' + ",".join([
        good, '{"metric":{"__name__":"up"},"value":[1,"NaN"]}', '{"metric":{"n":1},"value":[1,"1"]}',
        '{"metric":{"__name__":"up"},"value":[1,"x"]}', '"junk"', good, good]) + "]}}")
    found, truncated = parse_vector(body, 6)
    assert [s.labels["node"] for s in found] == ["a", "a"] and truncated
    assert parse_vector(body, 7) == (found + found[:1], False)


def test_also_on_query_quotes_the_key() -> None:
    assert also_on_query('cgroup:/system.slice/we"ird\\unit.service') == (
        'pfi_finding_report_timestamp_seconds{workload="cgroup:/system.slice/we\\"ird\\\\unit.service"}')
    assert FLEET_QUERY.startswith('{__name__=~"pfi_finding_') and all(name in FLEET_QUERY for name in GAUGES)


# --- the series of a node --------------------------------------------------------------------------


def _reports() -> list[tuple[str, Any, Any]]:
    out = []
    for i, r in enumerate([deployment_pod_report("n1", 1, minutes_ago=9), deployment_pod_report("n1", 2, minutes_ago=3),
                           swap_report(), host_report()]):
        facts = facts_of(r)
        assert facts is not None
        out.append((f"r{i}", utcnow() - timedelta(minutes=20 - i), facts))
    return out


def test_series_labels_are_owners_not_pods_or_paths() -> None:
    samples = samples_of("n1", node_rows("n1", _reports()))
    assert {s.name for s in samples} == set(GAUGES)
    assert all(list(s.labels) == list(LABELS) for s in samples)
    dep = [s for s in samples if s.labels["workload"] == DEPLOYMENT_KEY]
    assert len(dep) == len(GAUGES)  # two reports of two pods on this node: one finding
    labels = dep[0].labels
    assert (labels["namespace"], labels["owner_kind"], labels["owner_name"], labels["container"]) == (
        "search", "Deployment", "search-indexer", "indexer")
    assert (labels["cause"], labels["source_kind"], labels["report_id"]) == ("container_memory_limit", "file", "r1")
    values = {s.name: s.value for s in dep}
    assert values["pfi_finding_reports"] == 2
    assert values["pfi_finding_memory_limit_bytes"] == 1 << 30
    assert values["pfi_finding_recommended_limit_bytes"] == 1536 << 20
    assert values["pfi_finding_major_faults_per_second"] == pytest.approx(9123.4)
    text = repr(samples)
    for path in ("/data/index.bin", "search-indexer-7d9f8b6c5", "pid"):
        assert path not in "".join(v for s in samples for v in s.labels.values()), path
    assert "pod:cache/redis-0" in text and "comm:postgres" in text
    redis = next(s for s in samples if s.labels["workload"] == "pod:cache/redis-0")
    assert (redis.labels["owner_kind"], redis.labels["owner_name"], redis.labels["source_kind"]) == ("Pod", "redis-0", "swap")
    # no limit known: no limit series (absent, not 0)
    assert not [s for s in samples if s.labels["workload"] == "comm:postgres" and "limit" in s.name]


def test_series_read_back_equal_the_store_rows() -> None:
    """What the fleet shows from Prometheus equals what it shows from the stores, for what the series
    hold (file, summary and the command stay in the report)."""
    nodes = {n: node_rows(n, [(rid, at, f.model_copy(update={"workload": f.workload})) for rid, at, f in _reports()])
             for n in ("n1", "n2")}
    direct = merge(r for rows in nodes.values() for r in rows)
    via = merge(node_rows_of([s for n, rows in nodes.items() for s in samples_of(n, rows)]))

    def facts(rows: Any) -> list[tuple[Any, ...]]:
        return sorted((r.workload.key, r.workload.label, r.nodes, r.reports, r.first_seen, r.last_seen, r.cause,
                       r.fault_kind, r.recommendation.recommended_limit_bytes if r.recommendation else None,
                       [(link.node, link.report_id) for link in r.links]) for r in rows)

    assert facts(via) == facts(direct)


def test_node_exports_at_most_k_findings_younger_than_the_age(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "data")
    assert store.open()
    for i in range(12):  # twelve Deployments, one report each, i minutes apart
        r = deployment_pod_report("node-a", i, minutes_ago=i * 10)
        pod = r.processes[0].pod
        assert pod is not None and pod.owner is not None
        owner = pod.owner.model_copy(update={"name": f"app-{i:02d}"})
        top = r.processes[0].model_copy(update={"pod": pod.model_copy(update={"owner": owner})})
        assert store.put(r.model_copy(update={"processes": [top, *r.processes[1:]]}))
    store.close()

    async def scrape(**kw: Any) -> str:  # the service opens the store at make_settings' data_dir
        state = await build_service(make_settings(tmp_path, **kw), Seams(token="t" * 32))
        try:
            return (await asyncio.to_thread(state.metrics.render)).decode()
        finally:
            await state.stop()

    def owners(text: str) -> list[str]:
        return sorted(line.split('owner_name="')[1].split('"')[0] for line in text.splitlines()
                      if line.startswith("pfi_finding_reports{"))

    # age 3,600 s: the reports of the last hour (0..50 minutes ago), at most 4 of them: the newest
    assert owners(asyncio.run(scrape(findings_max_age_seconds=3600, findings_max_workloads=4))) == [
        "app-00", "app-01", "app-02", "app-03"]
    assert owners(asyncio.run(scrape(findings_max_age_seconds=3600, findings_max_workloads=50))) == [
        f"app-{i:02d}" for i in range(6)]
    text = asyncio.run(scrape(findings_max_age_seconds=60 * 25, findings_max_workloads=50))
    assert owners(text) == ["app-00", "app-01", "app-02"]
    assert sum(line.startswith("pfi_finding_") for line in text.splitlines()) == 3 * len(GAUGES)


# --- the client -------------------------------------------------------------------------------------


@contextmanager
def fake_prometheus(body: bytes, delay: float = 0.0, status: int = 200) -> Iterator[dict[str, Any]]:
    """A real HTTP server on loopback answering every query with `body` (a captured answer)."""
    seen: dict[str, Any] = {"requests": 0, "auth": [], "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen["requests"] += 1
            seen["auth"].append(self.headers.get("Authorization"))
            seen["paths"].append(self.path)
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (the deadline test)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    seen["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_client_caches_one_query_for_many_callers_and_sends_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with fake_prometheus((FIXTURES / "also-on-query.json").read_bytes(), delay=0.2) as prom:
        async def go() -> list[int]:
            client = PrometheusClient(prom["url"], timeout=5, cache_seconds=30, token_file=token)
            try:
                answers = await asyncio.gather(*(client.query(also_on_query(DEPLOYMENT_KEY)) for _ in range(20)))
                return [len(a.samples) for a in answers]
            finally:
                await client.aclose()

        assert asyncio.run(go()) == [2] * 20
        assert prom["requests"] == 1 and prom["auth"] == ["Bearer s3cret-token"]
        assert "timeout=5s" in prom["paths"][0]


def test_client_deadline_and_errors_are_errors() -> None:
    with fake_prometheus((FIXTURES / "also-on-query.json").read_bytes(), delay=2.0) as slow:
        async def late() -> None:
            client = PrometheusClient(slow["url"], timeout=0.3, cache_seconds=0)
            try:
                await client.query("up")
            finally:
                await client.aclose()

        started = time.monotonic()
        with pytest.raises(PrometheusError, match="no answer within 0.3s"):
            asyncio.run(late())
        assert time.monotonic() - started < 1.5
    with fake_prometheus((FIXTURES / "error-bad-data.json").read_bytes(), status=400) as bad:
        async def error() -> None:
            client = PrometheusClient(bad["url"], timeout=5, cache_seconds=0)
            try:
                await client.query("up{")
            finally:
                await client.aclose()

        with pytest.raises(PrometheusError, match="HTTP 400: bad_data"):
            asyncio.run(error())


def test_prometheus_away_leaves_this_nodes_rows_and_says_so(tmp_path: Path) -> None:
    """A Prometheus that does not answer: the fleet is this node's store, with the reason; the also-on
    line is empty (the report still goes out)."""
    from tests.service_support import free_port

    store = ReportStore(tmp_path / "data")
    assert store.open()
    mine = deployment_pod_report("node-a", 1, minutes_ago=2)
    assert store.put(mine)
    store.close()

    async def go() -> tuple[Any, str]:
        settings = make_settings(tmp_path, prometheus_url=f"http://127.0.0.1:{free_port()}", prometheus_timeout_seconds=2)
        state = await build_service(settings, Seams(token="t" * 32))
        try:
            return await state.fleet.gather(), await state.fleet.also_on(mine)
        finally:
            await state.stop()

    found, line = asyncio.run(go())
    assert [(r.workload.key, r.nodes) for r in found.rows] == [(DEPLOYMENT_KEY, ["node-a"])]
    assert found.source == "prometheus" and len(found.unreachable) == 1
    assert found.unreachable[0].startswith("prometheus (ConnectError")
    assert line == ""


def test_a_row_that_does_not_read_leaves_metrics_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    store = ReportStore(tmp_path / "data")
    assert store.open() and store.put(deployment_pod_report("node-a", 1, minutes_ago=2))
    store.close()
    db = store.path
    with sqlite3.connect(db) as conn:  # a row written by something else, or damaged
        conn.execute("""UPDATE reports SET workload = '{"workload": 1}'""")

    async def scrape() -> str:
        state = await build_service(make_settings(tmp_path), Seams(token="t" * 32))
        try:
            return (await asyncio.to_thread(state.metrics.render)).decode()
        finally:
            await state.stop()

    text = asyncio.run(scrape())
    assert "pfi_store_ready 1.0" in text and not [x for x in text.splitlines() if x.startswith("pfi_finding_")]
    # the store skips the row it cannot read and says which (once), so the findings never see it
    assert "report seed01 is unreadable and skipped" in caplog.text

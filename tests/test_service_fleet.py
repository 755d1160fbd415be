"""The fleet view served for real: two nodes (and a dead third) on loopback, each with its own store,
asking each other over HTTP. One workload's reports on both nodes are one row on either node's API
and page; the second node's Alertmanager and Slack summaries say the workload is also on the first;
the list is paged and its parameters checked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from app.models import utcnow
from app.service.report_store import ReportStore
from app.service.web.app import create_app
from tests.e2e.sample_reports import file_fault_report
from tests.service_support import (
    AUTH,
    TOKEN,
    FakeEngine,
    Instance,
    Recorder,
    bind_loopback,
    firing,
    make_settings,
    reports,
    wait_for,
)

pytestmark = pytest.mark.servers  # real uvicorn instances on loopback

POD_KEY = "pod:shop/cart-cache-7d9f"  # the pod of make_report (FakeEngine), no owner: the pod is the row


@contextmanager
def two_nodes(tmp_path: Path, am: Recorder, slack: Recorder) -> Iterator[dict[str, httpx.Client]]:
    socks = {n: bind_loopback() for n in ("a", "b")}
    urls = {n: f"http://127.0.0.1:{s.getsockname()[1]}" for n, s in socks.items()}
    dead = bind_loopback()
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    with ExitStack() as stack:
        out: dict[str, httpx.Client] = {}
        for n, other in (("a", "b"), ("b", "a")):
            settings = make_settings(
                tmp_path / n,
                node_name=f"node-{n}",
                node_ip=f"10.0.3.{ord(n)}",
                static_peers=f"node-{other}={urls[other]},node-c={dead_url}",
                peer_fetch_timeout_seconds=2,
                alertmanager_url=am.url,
                slack_webhook_url=f"{slack.url}/services/T0/B0/secret",
            )
            # API and UI in one event loop, as `serve` runs them (the UI asks peers with the API's client)
            inst = stack.enter_context(Instance(create_app(settings, investigator=FakeEngine(), token=TOKEN), socks[n]))
            out[n] = stack.enter_context(httpx.Client(base_url=inst.url, timeout=20))
            out[f"ui-{n}"] = stack.enter_context(httpx.Client(base_url=inst.ui_url, timeout=20))
        yield out


def test_one_workload_on_two_nodes_is_one_row_and_the_summaries_say_so(tmp_path: Path) -> None:
    with Recorder() as am, Recorder() as slack, two_nodes(tmp_path, am, slack) as c:
        c["a"].post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="a1"), headers=AUTH)
        wait_for(lambda: reports(c["a"]), what="report on A")
        wait_for(lambda: len(am.requests) >= 1 and len(slack.requests) >= 1, what="A's summaries")
        first = am.requests[0]["body"][0]
        assert "also on" not in first["annotations"]["summary"] and "also_on" not in first["annotations"]

        c["b"].post("/api/v1/alerts", json=firing({"node": "node-b"}, fingerprint="b1"), headers=AUTH)
        wait_for(lambda: len(am.requests) >= 2 and len(slack.requests) >= 2, timeout=20, what="B's summaries")
        alert = am.requests[1]["body"][0]
        assert alert["labels"]["node"] == "node-b"
        assert alert["annotations"]["summary"].endswith("(also on 1 other node: node-a)")
        assert alert["annotations"]["also_on"] == "also on 1 other node: node-a"
        assert "The same workload also on 1 other node: node-a" in slack.requests[1]["body"]["blocks"][0]["text"]["text"]

        for n in ("a", "b"):  # the same one row whichever node is asked
            resp = c[n].get("/api/v1/workloads", headers=AUTH)
            assert resp.status_code == 200, resp.text
            doc = resp.json()
            assert doc["schema_version"] == "1.0" and doc["scope"] == "fleet"
            assert doc["total"] == 1 and doc["next_offset"] is None
            (row,) = doc["workloads"]
            assert row["workload"]["key"] == POD_KEY and row["workload"]["label"] == "pod shop/cart-cache-7d9f"
            assert row["nodes"] == ["node-a", "node-b"] and row["reports"] == 2
            assert row["cause"] == "container_memory_limit" and row["file"] == "/data/index.bin"
            assert [u for u in doc["unreachable"] if u.startswith("node-c")], doc["unreachable"]
            # this node's own rows only, for peers
            local = c[n].get("/api/v1/workloads?scope=node", headers=AUTH).json()
            assert [w["node"] for w in local["workloads"]] == [f"node-{n}"] and local["reports"] == 1

            page = c[f"ui-{n}"].get("/")  # two nodes with reports: the fleet page is the landing page
            assert page.status_code == 200 and "Workloads across the fleet" in page.text
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert "<script" not in page.text
            rows = re.findall(r'<tr class="workload" data-key="([^"]*)"', page.text)
            assert rows == [POD_KEY]
            ids = {w: reports(c[w])[0]["id"] for w in ("a", "b")}
            own, other = n, "b" if n == "a" else "a"
            assert f'href="/reports/{ids[own]}"' in page.text
            assert f'href="/reports/{ids[other]}?node=node-{other}"' in page.text
            assert c[f"ui-{n}"].get("/reports").text.count('href="/reports/') == 2  # the list is still there
        assert c["ui-a"].get("/workloads", headers={"host": "evil.example"}).status_code == 421


def test_paged_sorted_and_checked(tmp_path: Path) -> None:
    # 250 workloads in A's store before it starts (a store file written by an earlier run)
    store = ReportStore(tmp_path / "a" / "data", retention_count=1000)
    assert store.open()
    base = file_fault_report()
    top = base.processes[0]
    assert top.pod is not None
    for i in range(250):
        pod = top.pod.model_copy(update={"name": f"job-{i:03d}", "owner": None})
        started = utcnow() - timedelta(minutes=i)
        assert store.put(
            base.model_copy(
                update={
                    "id": f"r{i:03d}",
                    "node": "node-a",
                    "started_at": started,
                    "processes": [top.model_copy(update={"pod": pod})],
                }
            )
        )
    store.close()
    with Recorder() as am, Recorder() as slack, two_nodes(tmp_path, am, slack) as c:
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            doc = c["b"].get(f"/api/v1/workloads?limit=100&offset={offset}", headers=AUTH).json()
            assert doc["total"] == 250
            seen.extend(w["workload"]["key"] for w in doc["workloads"])
            offset = doc["next_offset"]
        assert len(seen) == len(set(seen)) == 250
        assert seen[0] == "pod:search/job-000"  # newest first
        asc = c["a"].get("/api/v1/workloads?sort=last_seen&order=asc&limit=1", headers=AUTH).json()
        assert asc["workloads"][0]["workload"]["key"] == "pod:search/job-249"
        since = (utcnow() - timedelta(minutes=9, seconds=30)).isoformat()
        recent = c["a"].get("/api/v1/workloads", params={"since": since}, headers=AUTH).json()
        assert recent["total"] == 10

        for bad in ("sort=bogus", "order=up", "limit=0", "limit=5000", "offset=-1", "since=2026-01-01T00:00:00"):
            resp = c["a"].get(f"/api/v1/workloads?{bad}", headers=AUTH)
            assert resp.status_code == 422, (bad, resp.text)
        assert c["a"].get("/api/v1/workloads").status_code == 401

        # A's own reports only: the page is the report list until a second node has one
        assert "Major page fault reports" in c["ui-a"].get("/").text
        page = c["ui-a"].get("/workloads?sort=workload&order=asc")
        assert page.status_code == 200
        keys = re.findall(r'<tr class="workload" data-key="([^"]*)"', page.text)
        assert keys[:2] == ["pod:search/job-000", "pod:search/job-001"] and len(keys) == 100
        assert 'rel="next"' in page.text and "rows 1–100 of 250" in page.text
        nxt = re.search(r'href="(/workloads\?[^"]*offset=100[^"]*)" rel="next"', page.text)
        assert nxt is not None
        page2 = c["ui-a"].get(nxt.group(1).replace("&amp;", "&"))
        assert re.findall(r'data-key="([^"]*)"', page2.text)[0] == "pod:search/job-100"
        assert c["ui-a"].get("/workloads?sort=bogus").status_code == 422

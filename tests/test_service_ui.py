"""The UI address's routes: every node's reports (peers asked), a peer's report page, progress,
an unreachable peer. The HTML itself is the UI module's (tests/test_ui*.py); here: the data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from app.service.web.app import create_app, create_ui_app
from tests.service_support import (
    AUTH,
    TOKEN,
    FakeEngine,
    LiveServer,
    bind_loopback,
    firing,
    make_settings,
    reports,
    wait_for,
)


@contextmanager
def nodes_with_ui(tmp_path: Path, engine_b: FakeEngine) -> Iterator[dict[str, httpx.Client]]:
    """node-a (API + UI) knows node-b and a dead node-c as peers; node-b is API only."""
    sock_b = bind_loopback()
    url_b = f"http://127.0.0.1:{sock_b.getsockname()[1]}"
    dead = bind_loopback()
    url_c = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    with ExitStack() as stack:
        sa = make_settings(
            tmp_path / "a", static_peers=f"node-b={url_b},node-c={url_c}", peer_fetch_timeout_seconds=2
        )
        sb = make_settings(tmp_path / "b", node_name="node-b", node_ip="10.0.3.8")
        api_a = create_app(sa, investigator=FakeEngine(), token=TOKEN)
        a = stack.enter_context(LiveServer(api_a))
        ui_a = stack.enter_context(LiveServer(create_ui_app(api_a)))
        b = stack.enter_context(LiveServer(create_app(sb, investigator=engine_b, token=TOKEN), sock_b))
        yield {
            "a": stack.enter_context(httpx.Client(base_url=a.url, timeout=10)),
            "ui": stack.enter_context(httpx.Client(base_url=ui_a.url, timeout=10)),
            "b": stack.enter_context(httpx.Client(base_url=b.url, timeout=10)),
        }


@pytest.mark.servers
def test_index_lists_every_node_and_pages_come_from_the_peer(tmp_path: Path) -> None:
    engine_b = FakeEngine(hold=True)
    with nodes_with_ui(tmp_path, engine_b) as c:
        c["a"].post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="a1"), headers=AUTH)
        (row_a,) = wait_for(lambda: reports(c["a"]), what="report on A")
        # An investigation running on B shows with its progress on A's index.
        running_b = c["b"].post("/api/v1/alerts", json=firing({"node": "node-b"}), headers=AUTH).json()
        rid_b = running_b["accepted"][0]["id"]
        wait_for(engine_b.started.is_set, what="B running")

        index = c["ui"].get("/")
        assert index.status_code == 200
        assert row_a["id"] in index.text
        assert "node-b" in index.text and "tracing with perf-major" in index.text  # B's progress
        assert "node-c" in index.text  # unreachable, said so

        # B's running investigation, seen from A's UI: the progress page.
        page = c["ui"].get(f"/reports/{rid_b}?node=node-b")
        assert page.status_code == 200 and "tracing with perf-major" in page.text
        assert c["ui"].get(f"/reports/{rid_b}.json?node=node-b").status_code == 202

        engine_b.release.set()
        wait_for(lambda: reports(c["b"]), what="report on B")
        index = c["ui"].get("/reports")
        assert f"/reports/{rid_b}?node=node-b" in index.text
        # The finished report of B, fetched from B through A's UI (with and without ?node=).
        for url in (f"/reports/{rid_b}?node=node-b", f"/reports/{rid_b}"):
            page = c["ui"].get(url)
            assert page.status_code == 200 and "cart-cache-7d9f" in page.text, url
        doc = c["ui"].get(f"/reports/{rid_b}.json").json()
        assert doc["id"] == rid_b and doc["node"] == "node-b"
        local = c["ui"].get(f"/reports/{row_a['id']}")
        assert local.status_code == 200 and "cart-cache-7d9f" in local.text

        assert c["ui"].get("/reports/nope").status_code == 404
        assert c["ui"].get("/reports/..%2F..%2Fetc").status_code == 404
        assert c["ui"].get("/reports/nope.json").status_code == 404

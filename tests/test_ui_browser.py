"""The report pages in a real browser: Debian chromium, headless, driven by Playwright.

Screenshots land in .pytest_cache/d/ui-screenshots/ (and the test's tmp dir) to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.service.ui import RunningRow, render_index_page, render_report_page, render_running_page
from tests.e2e.browser import browser_context, chromium_missing, layout_problems, serve_dir
from tests.e2e.sample_reports import (
    LONG_CGROUP,
    LONG_PATH,
    T0,
    deployment_pod_report,
    empty_report,
    failed_report,
    file_fault_report,
    fleet_page_html,
    host_report,
    hostile_report,
    index_row,
    lead_up_report,
    quiet_report,
    swap_report,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

_missing = chromium_missing()
if _missing:
    pytestmark.append(pytest.mark.skip(reason=f"no browser: {_missing}"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    reports = {
        "file": file_fault_report(),
        "swap": swap_report(),
        "empty": empty_report(),
        "hostile": hostile_report(),
        "leadup": lead_up_report(),
        "quiet": quiet_report(),
        "failed": failed_report(),
    }
    rows = []
    for name, r in reports.items():
        (d / f"{name}.html").write_text(render_report_page(r))
        rows.append(index_row(r, f"/{name}.html"))
    running = RunningRow(
        node="worker-3",
        started_at=T0,
        progress=0.4,
        message="tracing with perf-major",
        trigger="alert NodeMemoryMajorPagesFaults",
    )
    (d / "index.html").write_text(
        render_index_page(rows, running=[running], unreachable=["worker-9: timeout"])
    )
    (d / "running.html").write_text(render_running_page(running))
    fleet = [deployment_pod_report(f"worker-{i}", i) for i in (1, 2, 4, 6, 7)] + [swap_report(), host_report()]
    (d / "fleet.html").write_text(fleet_page_html(fleet))
    return d


@pytest.fixture(scope="module")
def base_url(site) -> str:
    with serve_dir(site) as url:
        yield url


@pytest.fixture(scope="module")
def shots(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return Path(cache.mkdir("ui-screenshots")) if cache else tmp_path_factory.mktemp("ui-screenshots")


def _no_horizontal_overflow(page) -> None:
    sw, iw = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert sw <= iw, f"page is {sw}px wide in a {iw}px window"


def test_report_page_in_chromium(base_url, tmp_path, shots):
    r = file_fault_report()
    top = r.processes[0]
    with browser_context(tmp_path / "profile", javascript=False) as ctx:  # the page needs no JavaScript
        page = ctx.new_page()
        resp = page.goto(f"{base_url}/file.html")
        assert resp is not None and resp.ok
        verdict = page.locator("#verdict .summary")
        assert verdict.is_visible()
        assert verdict.inner_text().strip() == r.verdict.summary
        # the verdict is at the top of the first screen, and big
        box = verdict.bounding_box()
        assert box is not None and box["y"] < 400
        assert float(verdict.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 22
        pod = page.locator("#verdict .culprit", has_text=f"{top.pod.namespace}/{top.pod.name}")
        assert pod.is_visible()
        assert page.get_by_role("cell", name=f"{top.pod.namespace}/{top.pod.name}").first.is_visible()
        chart = page.locator("#chart figure.chart > svg")
        chart.scroll_into_view_if_needed()
        assert chart.is_visible()
        cbox = chart.bounding_box()
        assert cbox is not None and cbox["width"] > 300 and cbox["height"] > 100
        lines = page.locator("#chart polyline.series")
        assert lines.count() == len(r.processes) + 1  # + node total
        for i in range(lines.count()):
            lb = lines.nth(i).bounding_box()
            assert lb is not None and lb["width"] > 100  # drawn across the window
        assert page.locator("#chart figcaption").inner_text().count("peak") == len(r.processes) + 1
        assert page.locator("#sources .bar.big").first.bounding_box()["width"] > 200
        _no_horizontal_overflow(page)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        shutil.copy(tmp_path / "report.png", shots / "report-1280.png")


def test_report_page_narrow_window(base_url, tmp_path, shots):
    r = swap_report()
    with browser_context(tmp_path / "profile", javascript=False, width=390, height=844) as ctx:
        page = ctx.new_page()
        page.goto(f"{base_url}/swap.html")
        assert page.locator("#verdict .summary").is_visible()
        assert r.verdict.summary in page.locator("#verdict").inner_text()
        assert page.locator("#verdict .culprit", has_text="cache/redis-0").is_visible()
        cbox = page.locator("#chart figure.chart > svg").bounding_box()
        assert cbox is not None and 300 < cbox["width"] <= 390
        # chart labels stay readable when the chart shrinks
        size = page.locator("#chart svg text").first.evaluate("e => e.getBoundingClientRect().height")
        assert size >= 8
        _no_horizontal_overflow(page)  # wide tables scroll inside their card, not the page
        page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)
        shutil.copy(tmp_path / "narrow.png", shots / "report-390.png")


def test_index_running_and_empty_pages(base_url, tmp_path, shots):
    with browser_context(tmp_path / "profile", javascript=False) as ctx:
        page = ctx.new_page()
        page.goto(f"{base_url}/index.html")
        assert page.get_by_text("search/search-indexer-7d9f8b6c5-q2x8z").first.is_visible()
        assert page.get_by_text("worker-9: timeout").is_visible()
        bar = page.locator("#running .progress > span").bounding_box()
        track = page.locator("#running .progress").bounding_box()
        assert bar and track and abs(bar["width"] / track["width"] - 0.4) < 0.02
        page.locator("a[href=\"/file.html\"]", has_text=file_fault_report().verdict.summary).click()
        page.wait_for_url("**/file.html")
        assert page.locator("#verdict .summary").is_visible()
        page.goto(f"{base_url}/index.html")
        page.screenshot(path=str(shots / "index-1280.png"), full_page=True)
        page.goto(f"{base_url}/empty.html")
        assert page.get_by_text("No process had major faults in this window").first.is_visible()
        assert page.locator("polyline").count() == 0
        page.goto(f"{base_url}/running.html")
        assert page.locator("meta[http-equiv=refresh]").count() == 1
        assert page.get_by_text("tracing with perf-major").is_visible()


# every page kind: a report (with the lead-up and long paths), the reports list, the fleet, a quiet
# report and a failed one
PAGE_KINDS = ["leadup", "index", "fleet", "quiet", "failed"]


@pytest.mark.parametrize("width", [1280, 800])
def test_every_page_fits_its_cards(base_url, tmp_path, shots, width):
    """At a desktop's 1280 px and a laptop's 800 px: no table or pre wider than its card, nothing past a
    card's edge, cards of a row balanced or stacked (issue 29: the lead-up table was cut at 1280 px)."""
    with browser_context(tmp_path / "profile", javascript=False, width=width) as ctx:
        page = ctx.new_page()
        for kind in PAGE_KINDS:
            resp = page.goto(f"{base_url}/{kind}.html")
            assert resp is not None and resp.ok
            assert layout_problems(page) == [], f"{kind} at {width} px"
            page.screenshot(path=str(shots / f"layout-{kind}-{width}.png"), full_page=True)
            if kind == "leadup":
                # the lead-up's last column is there, inside its card
                last = page.locator("#lead-up th", has_text="last active").bounding_box()
                card = page.locator("#lead-up").bounding_box()
                assert last and card and last["x"] + last["width"] <= card["x"] + card["width"]
                # long paths wrap: on several lines, inside their card
                for where, text in (("#sources", LONG_PATH), ("#lead-up", LONG_CGROUP)):
                    cell = page.locator(f"{where} td.path", has_text=text[-40:]).first
                    box, lh = cell.bounding_box(), cell.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
                    assert box and box["height"] >= 2.5 * lh, f"{text} is not wrapped in {where}"
            if kind == "fleet":
                dep = page.locator("tr.workload", has_text="Deployment search/search-indexer")
                assert dep.is_visible() and "limit 1,536 MiB" in dep.inner_text()
                assert page.get_by_role("link", name="nodes").is_visible()  # the sort links stay


def test_hostile_report_runs_nothing(base_url, tmp_path):
    dialogs: list[str] = []
    with browser_context(tmp_path / "profile", javascript=True) as ctx:
        page = ctx.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base_url}/hostile.html")
        page.wait_for_load_state("load")
        assert page.locator("script").count() == 0
        assert page.locator("img").count() == 0
        # the hostile strings are shown as text
        assert page.get_by_text('verdict <script>alert("x")</script>').is_visible()
        page.goto(f"{base_url}/index.html")
        page.wait_for_timeout(300)
    assert dialogs == [] and errors == []


FLEET_N = 12
FLEET_DEPLOYMENT_NODES = [1, 2, 4, 6, 7, 9, 11]  # as in the storm test


def _seed_fleet(tmp: Path) -> list[str]:
    """Store files of twelve nodes, as an earlier run left them: seven hold a report of one of
    search/search-indexer's pods; node 3 a swapping pod without an owner; nodes 0 and 5 a host
    unit (postgresql.service)."""
    from app.service.report_store import ReportStore
    from tests.e2e.sample_reports import deployment_pod_report

    names = [f"fleet-{i:02d}" for i in range(FLEET_N)]
    for i, node in enumerate(names):
        docs = []
        if i in FLEET_DEPLOYMENT_NODES:
            docs.append(deployment_pod_report(node, i))
        if i == 3:
            docs.append(swap_report().model_copy(update={"node": node, "id": "redis03"}))
        if i in (0, 5):
            unit = host_report()
            unit.processes[0].cgroup = "/system.slice/postgresql.service"
            docs.append(unit.model_copy(update={"node": node, "id": f"pg{i:02d}"}))
        store = ReportStore(tmp / node / "data")
        assert store.open()
        for d in docs:
            assert store.put(d)
        store.close()
    return names


@pytest.mark.servers  # twelve real instances on loopback
def test_fleet_page_one_row_per_workload_on_every_instance(tmp_path, shots):
    """Twelve real instances (API + UI in one loop each, peers over loopback HTTP): each one's fleet
    page, opened in Chromium without JavaScript, shows the Deployment as one row naming its seven
    nodes; a node link opens that node's report through the instance; a column head sorts."""
    from contextlib import ExitStack

    from app.service.web.app import create_app
    from tests.service_support import TOKEN, Instance, listening_socket, make_settings

    names = _seed_fleet(tmp_path)
    socks = [listening_socket() for _ in names]
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    want = [names[i] for i in FLEET_DEPLOYMENT_NODES]
    with ExitStack() as stack:
        uis = []
        for i, node in enumerate(names):
            peers = ",".join(f"{names[j]}={urls[j]}" for j in range(FLEET_N) if j != i)
            settings = make_settings(tmp_path / node, node_name=node, static_peers=peers, peer_fetch_timeout_seconds=10)
            uis.append(stack.enter_context(Instance(create_app(settings, token=TOKEN), socks[i])).ui_url)
        ctx = stack.enter_context(browser_context(tmp_path / "profile", javascript=False, height=1000))
        page = ctx.new_page()
        for i, ui in enumerate(uis):
            resp = page.goto(f"{ui}/")  # reports of several nodes: the landing page is the fleet
            assert resp is not None and resp.ok
            assert page.locator("h1").inner_text() == "Workloads across the fleet"
            unreachable = page.locator("#unreachable")
            assert unreachable.count() == 0, unreachable.inner_text()
            rows = page.locator("tr.workload")
            assert rows.count() == 3
            labels = [rows.nth(k).locator("b.label").inner_text() for k in range(3)]
            assert labels.count("Deployment search/search-indexer") == 1, labels
            dep = page.locator("tr.workload", has_text="Deployment search/search-indexer")
            assert dep.is_visible()
            assert sorted(dep.locator("td.nodes li a").all_inner_texts()) == want
            assert dep.locator("td.nodes b.num").inner_text() == "7"
            assert dep.locator("td").nth(2).inner_text() == "7"  # reports
            assert "Container memory limit" in dep.locator("td.cause").inner_text()
            assert "/data/index.bin" in dep.inner_text()
            # the latest recommendation: the limit and the command for the Deployment
            assert "limit 1,536 MiB" in dep.inner_text(), dep.inner_text()
            assert "set resources deployment/search-indexer -c indexer --limits=memory=1536Mi" in dep.inner_text()
            _no_horizontal_overflow(page)
            if i == 0:
                page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
                shutil.copy(tmp_path / "fleet.png", shots / "fleet-1280.png")
                if Path("/work/coord").is_dir():
                    shutil.copy(tmp_path / "fleet.png", "/work/coord/fleet.png")
        # sorted by nodes, fewest first: the swapping pod (one node) heads the list
        page.get_by_role("link", name="nodes").click()
        page.wait_for_url("**/workloads?sort=nodes&order=desc")
        assert page.locator("tr.workload b.label").first.inner_text() == "Deployment search/search-indexer"
        page.get_by_role("link", name="nodes ▼").click()
        page.wait_for_url("**/workloads?sort=nodes&order=asc")
        assert page.locator("tr.workload b.label").first.inner_text() == "pod cache/redis-0"
        # a node's link opens that node's report, fetched from its peer
        page.locator("tr.workload", has_text="Deployment search/search-indexer").get_by_role("link", name=names[9]).click()
        page.wait_for_url(f"**/reports/seed09?node={names[9]}")
        assert "search-indexer-7d9f8b6c5-00009" in page.locator("#verdict").inner_text() or page.get_by_text(
            "search-indexer-7d9f8b6c5-00009"
        ).first.is_visible()

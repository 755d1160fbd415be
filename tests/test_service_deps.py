"""What a route gets (app.service.deps): the routes that show reports (the UI's pages; the API's
reports, workloads and investigations) are given `Browse` (app.service.root), the part of the
service they read, not the whole `Service`. In process (tests/inprocess.py): no server, fast tier."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import HTTPException

from app.service.deps import get_browse, get_state, require_token
from app.service.report_store import ReportStore
from tests.inprocess import in_process
from tests.service_support import make_report


def test_report_routes_answer_from_browse_alone(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "data")
    assert store.open()
    report = make_report("node-a")
    assert store.put(report)
    store.close()
    rid = report.id

    def whole_service() -> None:
        raise HTTPException(500, "a report route asked for the whole service")

    async def run() -> None:
        async with in_process(tmp_path) as apps:
            browse = apps.api_app.state.svc.browse
            for app in (apps.api_app, apps.ui_app):
                app.dependency_overrides[get_state] = whole_service
                app.dependency_overrides[get_browse] = lambda: browse
            # The token check reads the service's token (tests/test_service_hardening.py checks it).
            apps.api_app.dependency_overrides[require_token] = lambda: None
            try:
                for path in ("/", "/reports", "/workloads", f"/reports/{rid}"):
                    page = await apps.ui.get(path)
                    assert page.status_code == 200, (path, page.text[-500:])
                    assert "cart-cache" in page.text, path
                doc = await apps.ui.get(f"/reports/{rid}.json")
                assert doc.status_code == 200 and doc.json()["id"] == rid
                listing = await apps.api.get("/api/v1/reports")
                assert listing.status_code == 200, listing.text
                assert listing.json()["node"] == "node-a"
                assert [r["id"] for r in listing.json()["reports"]] == [rid]
                one = await apps.api.get(f"/api/v1/reports/{rid}")
                assert one.status_code == 200 and one.json()["id"] == rid
                missing = await apps.api.get("/api/v1/reports/nosuchreport")
                assert missing.status_code == 404 and "on node node-a" in missing.json()["detail"]
                for scope in ("node", "fleet"):
                    rows = await apps.api.get("/api/v1/workloads", params={"scope": scope})
                    assert rows.status_code == 200, rows.text
                    assert [w["reports"] for w in rows.json()["workloads"]] == [1], rows.text
                running = await apps.api.get("/api/v1/investigations")
                assert running.status_code == 200 and running.json() == {"node": "node-a", "investigations": []}
                # the override is in force: a route that reads more than Browse still asks for the service
                assert (await apps.api.get("/readyz")).status_code == 500
            finally:
                for app in (apps.api_app, apps.ui_app):
                    app.dependency_overrides.clear()

    asyncio.run(run())

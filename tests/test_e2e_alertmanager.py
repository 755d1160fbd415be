"""End to end with the real thing.

Debian's node-exporter, Prometheus (node-mixin `NodeMemoryMajorPagesFaults`, threshold and `for:`
lowered) and Alertmanager on loopback; Alertmanager's webhook with a bearer token goes to
`pagefault-inspector serve`; a real process re-reads a mapped file. The alert fires, the service
investigates this node, the report names that process and its file, `MajorPageFaultsReport` arrives
back in Alertmanager, and the report page shows it in a real browser.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from app.models import Report
from tests.e2e.browser import browser_context, chromium_missing
from tests.e2e.service import run_service, service_missing
from tests.e2e.stack import (
    ALERTNAME,
    free_port,
    http_get,
    http_json,
    missing_binaries,
    prometheus_stack,
    wait_for,
)
from tests.workloads import file_fault_workload

pytestmark = [pytest.mark.machine, pytest.mark.e2e, pytest.mark.root, pytest.mark.workloads, pytest.mark.servers, pytest.mark.browser,
              pytest.mark.timeout(150)]

_why = [f"not installed: {b}" for b in missing_binaries()]
if shutil.which("gcc") is None:
    _why.append("gcc not found: cannot build the fault workload")
if (m := service_missing()) is not None:
    _why.append(m)
if _why:
    pytestmark.append(pytest.mark.skip(reason="; ".join(_why)))

REPORT_ALERT = "MajorPageFaultsReport"
COMM = "pfi-e2e-reader"  # the workload's comm (<= 15 bytes)


def _reports(svc) -> list[dict]:
    status, body = http_json("GET", f"{svc.url}/api/v1/reports", token=svc.token)
    assert status == 200, (status, body)
    return body["reports"] if isinstance(body, dict) else body


def test_alert_to_report_to_alertmanager(tmp_path, root_required, request):
    t0 = time.monotonic()
    node = socket.gethostname()
    token = "e2e-" + os.urandom(12).hex()
    # Alertmanager's URL is only known once the stack runs, and the stack needs the service's URL:
    # pick the service's port first, start the stack, then the service pointing at it.
    api_port = free_port()
    webhook = f"http://127.0.0.1:{api_port}/api/v1/alerts"
    with prometheus_stack(tmp_path / "stack", webhook_url=webhook, token=token) as stack:
        env = {
            "PFI_NODE_NAME": node,
            "PFI_NODE_IP": "127.0.0.1",  # instance="127.0.0.1:<port>" names this node
            "PFI_INVESTIGATION_SECONDS": "5",
            "PFI_ALERTMANAGER_URL": stack.alertmanager_url,
        }
        with (
            run_service(tmp_path / "svc", token, env, port=api_port) as svc,
            file_fault_workload(tmp_path / "e2e-data.bin", size_mb=64, comm=COMM) as wl,
        ):

            def diag() -> str:
                return f"{svc.tail()}\n{stack.logs(15)}\nprometheus alerts: {stack.prometheus_alerts()}"

            # 1. the node-mixin alert fires on the workload's faults and reaches the service
            firing = stack.wait_alert_firing(ALERTNAME, timeout=45)
            assert firing["labels"]["instance"] == stack.instance

            # 2. the service investigates this node and stores a report naming the workload
            def complete_report():
                if not svc.proc.alive():
                    raise AssertionError(f"the service died:\n{svc.tail()}")
                for r in _reports(svc):
                    if r.get("status") == "complete" and r.get("alertname") == ALERTNAME:
                        return r
                return None

            summary = wait_for("a complete report in GET /api/v1/reports", complete_report, 40, 0.5, diag)
            status, doc = http_json("GET", f"{svc.url}/api/v1/reports/{summary['id']}", token=svc.token)
            assert status == 200, doc
            report = Report.model_validate(doc)
            assert report.node == node
            assert report.trigger.kind == "alert" and report.trigger.alertname == ALERTNAME
            assert report.trigger.labels.get("instance") == stack.instance
            assert report.processes, f"no processes in the report: {doc}"
            ranking = [(p.comm, p.pid, round(p.major_faults_per_second)) for p in report.processes[:6]]
            mine = [i for i, p in enumerate(report.processes) if p.pid == wl.pid]
            assert mine, f"the workload {COMM}/{wl.pid} is not in the report; ranking: {ranking}"
            rank = mine[0]
            top = report.processes[rank]
            assert top.comm == COMM
            # On a quiet node (CI) the workload is the top process. Other engineers' fault workloads may
            # run on a shared machine at the same time: then whatever is ranked above it must fault at
            # least as fast as it does (a real competitor), never a process the ranking got wrong.
            above = report.processes[:rank]
            assert all(p.major_faults_per_second >= top.major_faults_per_second for p in above), ranking
            assert all(p.major_faults_per_second >= 0.5 * top.major_faults_per_second for p in above), (
                f"the workload is ranked {rank + 1}, behind processes faulting much less: {ranking}"
            )
            if rank:
                request.node.user_properties.append(("competing_faulters", ranking))
                print(f"note: {len(above)} other heavy faulter(s) ran concurrently; ranking {ranking}")
            if rank == 0:
                assert summary.get("top_pid") in (None, wl.pid)
            assert top.major_faults_per_second > 50
            assert top.pod is None  # no kubelet here: a host process
            file_sources = [s for s in top.sources if s.kind == "file" and s.path == str(wl.path)]
            assert file_sources, (
                f"no file source on {wl.path}: {[s.model_dump() for s in top.sources]}; "
                f"tracer {report.tracer.model_dump()}; warnings {report.warnings}"
            )
            if report.tracer.exact:
                assert file_sources[0].share >= 0.9, top.sources

            # 3. MajorPageFaultsReport arrives in Alertmanager, routed like any other alert
            def report_alert():
                for a in stack.alertmanager_alerts(REPORT_ALERT):
                    if a["labels"].get("node") == node:
                        return a
                return None

            am = wait_for(f"{REPORT_ALERT} in Alertmanager's GET /api/v2/alerts", report_alert, 20, 0.5, diag)
            assert am["labels"]["alertname"] == REPORT_ALERT
            assert am["labels"].get("severity") == "info"
            assert am["annotations"].get("summary") == report.verdict.summary
            assert report.id in am["annotations"].get("report_url", "")
            assert COMM in am["annotations"].get("description", "")

            # the outcome of the post-back is recorded in the report
            def sink_recorded():
                _, d = http_json("GET", f"{svc.url}/api/v1/reports/{report.id}", token=svc.token)
                return next((s for s in d.get("sinks", []) if "alertmanager" in s["sink"].lower()), None)

            sink = wait_for("the alertmanager sink outcome in the report", sink_recorded, 10, 0.5, diag)
            assert sink["ok"], sink

            # 4. the report pages on the UI address, in a real browser (a machine without one skips
            # the test after steps 1-3 passed, saying so: never a silent pass without the browser)
            status, index = http_get(f"{svc.ui_url}/")
            assert status == 200, index[:500]
            assert node in index and report.verdict.summary.split(":")[0][:40] in index.replace("&#39;", "'")
            if (no_browser := chromium_missing()) is None:
                cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
                shots = cache.mkdir("ui-screenshots") if cache else tmp_path
                with browser_context(tmp_path / "profile", javascript=False) as ctx:
                    page = ctx.new_page()
                    page.goto(f"{svc.ui_url}/")
                    page.get_by_role("link", name=report.verdict.summary).first.click()
                    page.wait_for_load_state("load")
                    verdict = page.locator("#verdict .summary")
                    assert verdict.is_visible() and verdict.inner_text().strip() == report.verdict.summary
                    assert page.locator("#verdict .culprit", has_text=COMM).is_visible()
                    svg = page.locator("#chart figure.chart > svg")
                    box = svg.bounding_box()
                    assert box is not None and box["width"] > 200 and box["height"] > 80
                    assert page.locator("#sources td.path", has_text=str(wl.path)).first.is_visible()
                    page.screenshot(path=str(shots / "e2e-report.png"), full_page=True)

    assert time.monotonic() - t0 < 120, "the end-to-end run should stay well under two minutes"
    if no_browser is not None:
        pytest.skip(f"steps 1-3 passed; the browser step did not run: {no_browser}")

#!/usr/bin/env python3
"""Draw the chart's Grafana dashboard (dashboards/fleet.json) from a real Prometheus's answers, with
the report pages' chart code (app.service.fleet.dashboard), and screenshot it with headless
Chromium: docs/fleet-dashboard.png. Grafana is not needed (nor reachable here).

    .venv/bin/python scripts/render_dashboard.py [--out docs/fleet-dashboard.png] [--seconds 40]

The data: what tests/test_fleet_prometheus.py sets up (Debian's Prometheus scraping twelve real
inspectors on loopback, one Deployment's reports on seven nodes, a pod's on one, a node-exporter
standing in for storm-01), then an alert storm on all twelve nodes half way through, so the
Deployment's node count climbs from 7 to 12. Every panel's every target is asked as Grafana would
(`query_range` for time series, instant queries for the others) with namespace and workload "All".
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.investigation.diagnose import mib  # noqa: E402
from app.service.fleet.dashboard import PanelResult, render_dashboard  # noqa: E402
from app.service.web.app import create_app  # noqa: E402
from tests.e2e.browser import browser_context, serve_dir  # noqa: E402
from tests.e2e.stack import recording_receiver  # noqa: E402
from tests.fleet_support import dashboard  # noqa: E402
from tests.service_support import AUTH, TOKEN, Instance, listening_socket  # noqa: E402
from tests.test_fleet_prometheus import NAMES, N, StormEngine, _prometheus, _seed  # noqa: E402

VARIABLES = {"namespace": ".*", "workload": ".*", "job": "node-exporter"}


def _expr(expr: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: VARIABLES.get(m.group(1), "$" + m.group(1)), expr)


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def _value_text(unit: str, v: float) -> str:
    if unit == "bytes":
        return mib(int(v))
    if unit == "ops":
        return f"{v:,.0f}/s"
    return f"{v:g}"


def panels(prom: str, seconds: int) -> list[PanelResult]:
    out = []
    end = time.time()
    for p in dashboard()["panels"]:
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        result = PanelResult(title=p["title"], kind="", description=p.get("description", ""), unit=unit)
        if p["type"] == "timeseries":
            result.kind, result.seconds = "timeseries", seconds
            for t in p["targets"]:
                r = httpx.get(f"{prom}/api/v1/query_range", params={
                    "query": _expr(t["expr"]), "start": end - seconds, "end": end, "step": 1}, timeout=10).json()
                for s in r["data"]["result"]:
                    by_t = {round(float(ts)): float(v) for ts, v in s["values"]}
                    steps = [by_t.get(round(end - seconds) + i, 0.0) for i in range(seconds + 1)]
                    result.series.append((_legend(t.get("legendFormat", ""), s["metric"]), steps))
        elif p["type"] == "table":
            result.kind = "table"
            (t,) = p["targets"]
            r = httpx.get(f"{prom}/api/v1/query", params={"query": _expr(t["expr"])}, timeout=10).json()
            keep = ["owner_kind", "namespace", "owner_name", "node", "cause", "source_kind", "report_id"]
            result.columns = [*keep, "reported (UTC)"]
            for s in sorted(r["data"]["result"], key=lambda s: (s["metric"].get("owner_name", ""), s["metric"]["node"])):
                when = datetime.fromtimestamp(float(s["value"][1]) / 1000, UTC).strftime("%H:%M:%S")
                result.rows.append([s["metric"].get(k, "") for k in keep] + [when])
        else:
            result.kind = "bars"
            for t in p["targets"]:
                r = httpx.get(f"{prom}/api/v1/query", params={"query": _expr(t["expr"])}, timeout=10).json()
                for s in r["data"]["result"]:
                    v = float(s["value"][1])
                    result.bars.append((_legend(t.get("legendFormat", ""), s["metric"]), v, _value_text(unit, v)))
        out.append(result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fleet-dashboard.png")
    parser.add_argument("--seconds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pfi-dashboard-") as tmp_dir, ExitStack() as stack:
        tmp = Path(tmp_dir)
        _seed(tmp)
        socks = [listening_socket() for _ in range(N)]
        ports = [s.getsockname()[1] for s in socks]
        (tmp / "prom").mkdir()
        prom = stack.enter_context(_prometheus(tmp / "prom", ports))
        receiver = stack.enter_context(recording_receiver(path="/api/v2/alerts"))
        apis = []
        for i in range(N):
            settings = Settings(
                node_name=NAMES[i], node_ip=f"10.0.9.{i + 1}", kubelet_url="https://127.0.0.1:1",
                data_dir=tmp / NAMES[i], apiserver_url=None, recorder_interval_seconds=0,
                alertmanager_url=receiver.url.removesuffix("/api/v2/alerts"), prometheus_url=prom,
                static_peers=",".join(f"{NAMES[j]}=http://127.0.0.1:{ports[j]}" for j in range(N) if j != i),
            )
            stack.enter_context(Instance(create_app(settings, investigator=StormEngine(), token=TOKEN), socks[i]))
            apis.append(stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{ports[i]}", timeout=30)))
        time.sleep(args.seconds / 2)
        for i, client in enumerate(apis):  # the storm: every node's alert
            alert = {"status": "firing", "labels": {"alertname": "NodeMemoryMajorPagesFaults", "node": NAMES[i]},
                     "startsAt": "2026-12-07T04:00:00Z", "fingerprint": f"fp{i:02d}"}
            client.post("/api/v1/alerts", headers=AUTH,
                        json={"version": "4", "status": "firing", "receiver": "pfi", "alerts": [alert]})
        time.sleep(args.seconds / 2)
        html = render_dashboard(dashboard()["title"], panels(prom, args.seconds))
        (tmp / "site").mkdir()
        (tmp / "site" / "index.html").write_text(html)
        with serve_dir(tmp / "site") as url, browser_context(tmp / "profile", javascript=False, width=1400) as ctx:
            page = ctx.new_page()
            page.goto(f"{url}/index.html")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
        print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()

"""Counting the requests a storm makes for the "also on N other nodes" line (issue 28).

N simulated instances in one event loop: each a real `ServiceState` (its own SQLite store holding its
node's report of Deployment search/search-indexer, static peers naming the N - 1 others) whose
outbound HTTP goes through one counting transport. Each instance then computes its report's line,
all at once, as N nodes' deliveries do in a storm. The transport answers as the others would: a
peer's `GET /api/v1/workloads?scope=node` from that peer's own store, and Prometheus's
`/api/v1/query` from every instance's finding samples (the gauges its /metrics would show), for the
two queries the fleet asks (a simulated Prometheus; tests/test_fleet_prometheus.py runs the real one).

Written against the API the service had before issue 28 too (ServiceState.start, also_on), so the
same harness counts the old code path:

    PYTHONPATH=<a checkout of efcd8f2> .venv/bin/python tests/fleet_storm.py 12 100
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from app.config import FIELD_GROUP, Settings
from app.service.state import ServiceState
from tests.e2e.sample_reports import deployment_pod_report

PROM = "http://prometheus.sim:9090"


def _peer_url(i: int) -> str:
    return f"http://storm-{i:03d}.sim:8080"


class CountingFleet:
    """The transport: counts requests by target (`peer`, `prometheus`) and answers them."""

    def __init__(self) -> None:
        self.states: dict[str, ServiceState] = {}  # by host
        self.count: Counter[str] = Counter()
        self._samples: list[Any] | None = None  # every instance's findings (the stores do not change)

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = urlsplit(str(request.url))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.netloc == "prometheus.sim:9090":
            self.count["prometheus"] += 1
            return httpx.Response(200, json=self._prometheus(query["query"]))
        self.count["peer"] += 1
        state = self.states[url.netloc]
        if url.path != "/api/v1/workloads" or query.get("scope") != "node":
            return httpx.Response(404, json={"detail": "not simulated"})
        from datetime import datetime

        since = datetime.fromisoformat(query["since"]) if "since" in query else None
        rows = state.store.workloads(since=since, key=query.get("key"), limit=int(query.get("limit", 1000)))
        body = {"node": state.settings.node.node_name, "scope": "node", "reports": state.store.count(finished=True),
                "workloads": [r.model_dump(mode="json") for r in rows]}
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    def _prometheus(self, promql: str) -> dict[str, Any]:
        """The two selectors the fleet sends: `{__name__=~"a|b"}` and `name{workload="key"}`."""
        names: set[str] | None = None
        workload: str | None = None
        if m := re.fullmatch(r'\{__name__=~"([^"]+)"\}', promql):
            names = set(m.group(1).split("|"))
        elif m := re.fullmatch(r'(\w+)\{workload="((?:[^"\\]|\\.)*)"\}', promql):
            names, workload = {m.group(1)}, re.sub(r"\\(.)", r"\1", m.group(2))
        else:
            return {"status": "error", "errorType": "bad_data", "error": f"not simulated: {promql}"}
        if self._samples is None:  # (ServiceState.findings is issue 28's: only that code asks Prometheus)
            self._samples = [s for state in self.states.values() for s in state.findings()]  # type: ignore[attr-defined]
        result = [
            {"metric": {"__name__": s.name, **{k: v for k, v in s.labels.items() if v}}, "value": [0, repr(s.value)]}
            for s in self._samples
            if s.name in names and (workload is None or s.labels["workload"] == workload)
        ]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


async def storm_requests(n: int, *, prometheus: bool, peer_sample: int | None = None) -> dict[str, Any]:
    """Requests N instances make for their reports' "also on" lines, by target, and the lines."""
    fleet = CountingFleet()
    transport = httpx.MockTransport(fleet.handle)
    names = [f"storm-{i:03d}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="pfi-fleet-storm-") as tmp:
        states = []
        reports = []
        try:
            for i, name in enumerate(names):
                extra: dict[str, Any] = {}
                if "prometheus_url" in FIELD_GROUP:
                    extra["prometheus_url"] = PROM if prometheus else None
                    if peer_sample is not None:
                        extra["fleet_peer_sample"] = peer_sample
                settings = Settings(
                    node_name=name,
                    node_ip=f"10.1.{i // 250}.{i % 250 + 1}",
                    kubelet_url="https://127.0.0.1:1",
                    data_dir=Path(tmp) / name,
                    static_peers=",".join(f"{names[j]}={_peer_url(j)}" for j in range(n) if j != i),
                    apiserver_url=None,
                    recorder_interval_seconds=0,
                    **extra,
                )
                state = await ServiceState.start(settings, transport=transport, token="t" * 32)
                states.append(state)
                fleet.states[f"storm-{i:03d}.sim:8080"] = state
                report = deployment_pod_report(name, i % 100, minutes_ago=1).model_copy(update={"id": f"s{i:04d}"})
                assert state.store.put(report)
                reports.append(report)
            from app.service.fleet import also_on

            lines = await asyncio.gather(*(also_on(s, r) for s, r in zip(states, reports, strict=True)))
        finally:
            for state in states:
                await state.stop()
    return {"instances": n, "requests": sum(fleet.count.values()), "by_target": dict(fleet.count),
            "lines": list(lines)}


def main(argv: list[str]) -> None:
    modes: list[tuple[str, dict[str, Any]]] = [("peers", {"prometheus": False})]
    if "prometheus_url" in FIELD_GROUP:
        modes.append(("prometheus", {"prometheus": True}))
    for n in [int(a) for a in argv] or [12, 100]:
        for mode, kw in modes:
            found = asyncio.run(storm_requests(n, **kw))
            print(json.dumps({"mode": mode, **{k: v for k, v in found.items() if k != "lines"},
                              "line_example": found["lines"][0]}))


if __name__ == "__main__":
    main(sys.argv[1:])

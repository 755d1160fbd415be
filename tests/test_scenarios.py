"""The diagnosis scenario matrix: real workloads on this kernel, each with the verdict it must get.

One row per scenario (tests/workloads/scenarios.py ROWS): a workload that faults for one known reason,
investigated for 3 s with an exact tracer and/or procfs only; the row asserts the cause, the dominant
source kind, the subject (pod or host process), the subject-true wording, and that nothing blames the
node when the node's own evidence says it is fine. The accuracy table is printed at the end of the run
(tests/scenario_report.py). Node-wide pressure comes from a captured procfs tree (PFI_PROC_ROOT) made
synthetic as described in tests/fixtures/SOURCES.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.config import Settings
from app.tracers.registry import make_tracer
from tests.scenario_report import OUTCOMES
from tests.workloads import CGROUP_MEMORY_ROOT
from tests.workloads.scenarios import ROWS, UNIFIED_ROOT, Row, run_row

KUBELET_TOKEN = "scenario-kubelet-token"
PODLIST = Path(__file__).parent / "fixtures/kubelet/podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json"


def _skip_reason(row: Row) -> str | None:
    if row.kind == "replay":
        return None
    if os.geteuid() != 0:
        return "needs root (cgroups, swap, tracers)"
    for tool in ("gcc", *(("mkswap", "swapon", "swapoff") if row.kind in ("anon", "shm") else ())):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if row.layout != "none" and not (CGROUP_MEMORY_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}"
    if row.layout == "hybrid" and not (UNIFIED_ROOT / "cgroup.procs").exists():
        return f"no unified cgroup tree at {UNIFIED_ROOT}"
    if row.tracer == "auto":
        ok = any(make_tracer(n, Settings()).available()[0] for n in ("perf-major", "bpftrace-major"))
        if not ok:
            return "no exact tracer (perf-major, bpftrace-major) available"
    return None


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.name} [{r.tracer}]" for r in ROWS])
def test_scenario(row: Row, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _skip_reason(row)
    if reason:
        pytest.skip(reason)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kw: dict = {}
    if row.subject == "pod":
        from tests.tls_standin import StandIn

        certs = request.getfixturevalue("certs")
        kubelet = request.getfixturevalue("serve")(StandIn(path="/pods", token=KUBELET_TOKEN, body=PODLIST.read_bytes()))
        token = tmp_path / "token"
        token.write_text(KUBELET_TOKEN)
        kw = {"kubelet_url": kubelet.url, "kubelet_token_file": token, "kubelet_ca_file": certs.ca}
    out = run_row(row, tmp_path / "row", kw)
    OUTCOMES.append(out)
    assert out.ok, f"{row.name} [{row.tracer}]: {'; '.join(out.problems)}\nsummary: {out.summary}"
    if row.subject == "pod":
        # named by the kubelet (TLS stand-in), not only by the cgroup's uid
        assert "scraper/e2e-statefulset-0" in out.summary, out.summary

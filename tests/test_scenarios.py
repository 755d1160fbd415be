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
import time
from pathlib import Path

import pytest

from app.config import Settings
from tests.scenario_report import OUTCOMES
from tests.service_support import require_tracers
from tests.workloads import memory_hierarchy, no_memory_controller_reason
from tests.workloads.scenarios import ROWS, Row, run_row, skip_reason

KUBELET_TOKEN = "scenario-kubelet-token"
PODLIST = Path(__file__).parent / "fixtures/kubelet/podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json"


# A real workload in cgroups made for it. In the second pass the rows share the machine with the other
# process's tests: each investigates only its own workload's pids; a zram row holds the swap lock
# exclusive (tests/machine_lock.py, taken by zram_swap), a disk-swap row shared.
_REAL = (pytest.mark.root, pytest.mark.workloads)


@pytest.mark.matrix  # all rows, replayed ones too: the run's accuracy table is printed from one process
@pytest.mark.parametrize(
    "row", [pytest.param(r, marks=() if r.kind == "replay" else _REAL) for r in ROWS],
    ids=[f"{r.name} [{r.tracer}]" for r in ROWS],
)
def test_scenario(row: Row, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = skip_reason(row)
    if reason:
        pytest.skip(reason)
    if row.tracer == "auto":
        require_tracers("perf-major")  # auto's first choice, and it works here: the row must run on it
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
    # auto: perf-major, one fault in N above PFI_EXACT_MAX_RATE (the limit rows then size on the procfs basis)
    assert out.tracer.split(" 1/")[0] == ("perf-major" if row.tracer == "auto" else row.tracer), out.tracer
    if row.subject == "pod":
        # named by the kubelet (TLS stand-in), not only by the cgroup's uid
        assert "scraper/e2e-statefulset-0" in out.summary, out.summary
        if out.recommended_mib is not None:  # issue 16: the command changes the pod's owner, quoted
            assert out.command and out.command.startswith("kubectl -n scraper ") and " e2e-statefulset" in \
                out.command.replace("/", " "), out.command


@pytest.mark.matrix
@pytest.mark.root
@pytest.mark.workloads
def test_first_pass_at_a_full_limit_is_cold_reads(tmp_path: Path) -> None:
    """The reviewer's case on this kernel: a 128 MiB file read through mmap in a 64 MiB group, watched
    during its first pass (no wait): the group sits at its limit with page cache but nothing is read
    twice, so the group's workingset_refault_file stays flat and the limit is not blamed."""
    from app.investigation.engine import investigate
    from tests.workloads.scenarios import LIMIT_MB, scenario_workload, unique_parent

    if os.geteuid() != 0 or shutil.which("gcc") is None:
        pytest.skip("needs root (cgroups) and gcc")
    if (hierarchy := memory_hierarchy()) is None:
        pytest.skip(no_memory_controller_reason())
    # 256 MiB: the first pass (~8 s here) outlasts the wait for the full limit (~2 s) and the window.
    with scenario_workload("reread", cgroup=f"{unique_parent()}/job", limit_mb=LIMIT_MB,
                           data=tmp_path / "d.bin", size_mb=4 * LIMIT_MB) as proc:
        assert proc.cgroup is not None
        deadline = time.monotonic() + 15
        while int((proc.cgroup / hierarchy.usage_file).read_text()) < 0.95 * (LIMIT_MB << 20):
            assert time.monotonic() < deadline, "the group never filled up to its limit"
            time.sleep(0.1)
        report = investigate(Settings(tracer="procfs", kubelet_url=None, apiserver_fallback=False), seconds=2.0,
                             pids=[proc.pid])
    top = report.processes[0]
    assert top.pid == proc.pid and top.cgroup_memory is not None
    assert (top.cgroup_memory.usage_ratio or 0) >= 0.9, "the limit binds (usage at it) all through the window"
    assert top.cgroup_file_refaults is not None and top.cgroup_file_refaults < 0.05 * top.major_faults
    assert top.verdict is not None and top.verdict.cause.value == "cold_file_reads", top.verdict.summary
    assert "first reads" in top.verdict.summary


@pytest.mark.root
@pytest.mark.workloads
@pytest.mark.parametrize("tracer", ["auto", "procfs"])
def test_short_window_says_at_least(tracer: str, tmp_path: Path) -> None:
    """Issue 16: a 1 s window on a 128 MiB re-read at a 64 MiB limit sees only part of the working set
    (one pass takes several seconds here): the recommendation must say `at_least`, and still be above
    the current limit."""
    from app.investigation.engine import investigate
    from tests.workloads.scenarios import LIMIT_MB, _past_first_pass, scenario_workload, unique_parent

    row = Row("short window", "reread", tracer, "container_memory_limit", "file", "host")
    if reason := skip_reason(row):
        pytest.skip(reason)
    with scenario_workload("reread", cgroup=f"{unique_parent()}/job", data=tmp_path / "d.bin") as proc:
        _past_first_pass(proc)
        report = investigate(Settings(tracer=tracer, kubelet_url=None, apiserver_fallback=False), seconds=1.0,
                             pids=[proc.pid])
    top = report.processes[0]
    assert top.verdict is not None and top.verdict.cause.value == "container_memory_limit", top.verdict
    rec = top.verdict.recommendation
    assert rec is not None and rec.at_least, rec
    assert rec.recommended_limit_bytes > LIMIT_MB << 20
    from app.investigation.recommend import headline

    assert " to at least " in headline(rec)

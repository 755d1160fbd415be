"""The engine's wiring (wires no other test held, issue 25): cut one and a test here fails.

Each test runs the real engine on the captured procfs tree (tests/fixtures/proctree-file-and-pod-swap,
replayed on the sampler's clock: tests/proctree.py), so the values are deterministic and asserted exactly:
- the owner resolver reaches the recommendation (engine: add_recommendations(owners=pods.owners));
- Settings.noise_floor reaches both diagnoses (engine: diagnose_process / diagnose_report);
- smaps bounds the recommendation, on the exact path (Rss counted once with the pages read back) and on
  the procfs estimate (the faulting memory's size caps the pages read back);
- the fleet leaves a quiet report out (fleet.QUIET_CAUSES), as the engine makes one, processes listed.
No root, perf or gcc.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.config import Settings
from app.investigation.engine import Edges, investigate
from app.investigation.fleet import facts_of, workload_of
from app.investigation.recommend import MARGIN_ESTIMATED, MARGIN_EXACT, MIN_STEP, round_up
from app.models import Cause, Report
from app.tracers.procfs_only import ProcfsTracer
from tests.proctree import POD_UID, ReplayTracer, ReplayTree
from tests.tls_standin import ApiServer, Certs, StandIn

TREE = Path(__file__).parent / "fixtures/proctree-file-and-pod-swap"
PODLIST = Path(__file__).parent / "fixtures/kubelet/podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json"
MIB = 1 << 20
SWAP_MB = 24  # the capture's swap workload: swap_workload(size_mb=24, limit_mb=12) (tests/proctree.py capture)
KUBELET_TOKEN = "wires-kubelet-token-0123456789"
SA_TOKEN = "wires-sa-token-0123456789"


def _settings(tree: ReplayTree, **kw: object) -> Settings:
    base: dict[str, object] = {"proc_root": tree.proc_root, "cgroup_root": tree.cgroup_root, "kubelet_url": None,
                               "apiserver_fallback": False, "node_name": "node-a"}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def _run(tree: ReplayTree, settings: Settings, exact: bool) -> Report:
    tracer = ReplayTracer(tree) if exact else ProcfsTracer(settings)
    with tree.play(0.4):
        return investigate(settings, seconds=3, edges=Edges(tracers=[tracer]))


def _swapper(report: Report, tree: ReplayTree):  # type: ignore[no-untyped-def]
    (p,) = [p for p in report.processes if p.pid == tree.pid("swap")]
    return p


@pytest.fixture
def tree(tmp_path: Path) -> ReplayTree:
    return ReplayTree(TREE, tmp_path / "tree")


# One run each, shared by the tests below (a replay is deterministic; each costs its 3 s window).
@pytest.fixture(scope="module")
def procfs_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReplayTree, Report]:
    tree = ReplayTree(TREE, tmp_path_factory.mktemp("procfs") / "tree")
    return tree, _run(tree, _settings(tree), exact=False)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReplayTree, Report]:
    tree = ReplayTree(TREE, tmp_path_factory.mktemp("quiet") / "tree")
    return tree, _run(tree, _settings(tree, noise_floor=1_000_000.0), exact=False)


# --- owners: the engine hands the pod directory's owner resolver to the recommendation ----------------


def test_the_recommendation_names_the_deployment_the_api_server_tells(
    tree: ReplayTree, tmp_path: Path, certs: Certs, serve, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The captured pod, made (SYNTHETIC: its ownerReferences only) a ReplicaSet's pod: the kubelet's PodList
    names the ReplicaSet; only the owner resolver, asking the API server, knows the Deployment above it.
    With owners=None at the engine's call the command would change a ReplicaSet."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    podlist = json.loads(PODLIST.read_text())
    (pod,) = [p for p in podlist["items"] if p["metadata"]["uid"] == POD_UID]
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "e2e-web-5f7b9c",
                                           "uid": "0d7c5a1e-0000-4000-8000-000000000001", "controller": True}]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, json.dumps(podlist).encode()))
    api = ApiServer([])
    api.objects["/apis/apps/v1/namespaces/scraper/replicasets/e2e-web-5f7b9c"] = {"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "e2e-web", "controller": True}]}}
    api.objects["/api/v1/nodes/node-a"] = {"status": {"allocatable": {"memory": "16Gi"}}}
    stand = serve(StandIn("", SA_TOKEN, routes=api))
    (tmp_path / "kubelet-token").write_text(KUBELET_TOKEN)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(SA_TOKEN)
    shutil.copy(certs.ca, sa / "ca.crt")
    settings = _settings(tree, kubelet_url=kubelet.url, kubelet_token_file=tmp_path / "kubelet-token",
                         kubelet_ca_file=certs.ca, apiserver_fallback=True, apiserver_url=stand.url,
                         apiserver_token_file=sa / "token", apiserver_ca_file=sa / "ca.crt",
                         apiserver_timeout_seconds=30)  # the first call imports the kubernetes client
    s = _swapper(_run(tree, settings, exact=True), tree)
    assert s.pod is not None and (s.pod.namespace, s.pod.name) == ("scraper", "e2e-statefulset-0")
    assert s.verdict is not None and s.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT
    rec = s.verdict.recommendation
    assert rec is not None and rec.owner is not None
    assert (rec.owner.kind, rec.owner.name, rec.owner.resolved) == ("Deployment", "e2e-web", True)
    assert rec.owner.via is not None and rec.owner.via.name == "e2e-web-5f7b9c"
    assert rec.command is not None and "deployment/e2e-web" in rec.command and "replicaset" not in rec.command.lower()
    assert "/apis/apps/v1/namespaces/scraper/replicasets/e2e-web-5f7b9c" in stand.requests


# --- the noise floor: Settings.noise_floor reaches both diagnoses ------------------------------------


def test_a_noise_floor_above_the_captured_rates_makes_the_report_quiet(
    quiet_run: tuple[ReplayTree, Report], procfs_run: tuple[ReplayTree, Report]
) -> None:
    """The captured processes fault ~5,000/s: under a floor of 1,000,000/s each process and the report are
    quiet, and the floor named is the one set (not the 50/s default, under which they have their causes)."""
    _, report = quiet_run
    assert report.processes, "a quiet report still lists the top processes"
    assert [p.verdict.cause if p.verdict else None for p in report.processes[:2]] == [Cause.QUIET, Cause.QUIET]
    assert report.verdict.cause is Cause.QUIET and "1,000,000/s" in report.verdict.summary, report.verdict.summary
    assert all("1,000,000/s" in p.verdict.summary for p in report.processes[:2] if p.verdict)
    assert not any(p.verdict and p.verdict.recommendation for p in report.processes)
    tree, loud = procfs_run
    s = _swapper(loud, tree)
    assert s.verdict is not None and s.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT
    assert loud.verdict.cause is not Cause.QUIET


# --- smaps bounds the recommendation ----------------------------------------------------------------


def test_exact_recommendation_counts_smaps_rss_once(tree: ReplayTree) -> None:
    """24 MiB of anonymous memory, 12 MiB of it resident (its Rss, in smaps) and the rest swapped out,
    in a 12 MiB group: the memory that faults needs its 24 MiB, counted once with what is resident.
    Without smaps the resident 12 MiB would count again as "other" and it would ask for 48 MiB."""
    s = _swapper(_run(tree, _settings(tree), exact=True), tree)
    rec = s.verdict.recommendation if s.verdict else None
    assert rec is not None
    assert any(f"needs {SWAP_MB} MiB" in b and "resident now (smaps Rss)" in b for b in rec.basis), rec.basis
    assert any(b.endswith("0 MiB of it outside the memory that faults") for b in rec.basis), rec.basis
    limit = tree.manifest["limit_bytes"]
    want = max(round_up(int(SWAP_MB * MIB * (1 + MARGIN_EXACT))), round_up(limit + MIN_STEP))
    assert rec.recommended_limit_bytes == want == 32 * MIB, rec.basis


def test_estimated_recommendation_is_bounded_by_the_faulting_memory(procfs_run: tuple[ReplayTree, Report]) -> None:
    """procfs: 15,655 major faults (61 MiB) in the window, but the memory that faults is 24 MiB (smaps
    Rss + Swap): the pages read back are pages of those 24 MiB. Without the bound: 61 MiB x 1.15 = 80 MiB (rounded up to 16 MiB)."""
    tree, report = procfs_run
    s = _swapper(report, tree)
    rec = s.verdict.recommendation if s.verdict else None
    assert rec is not None and rec.confidence == "low"
    assert any(f"bounded by the {SWAP_MB} MiB of memory that faults (smaps" in b for b in rec.basis), rec.basis
    want = max(round_up(int(SWAP_MB * MIB * (1 + MARGIN_ESTIMATED))), round_up(tree.manifest["limit_bytes"] + MIN_STEP))
    assert rec.recommended_limit_bytes == want == 32 * MIB, rec.basis


# --- the fleet leaves quiet reports out ------------------------------------------------------------------


def test_a_quiet_report_is_no_fleet_row(quiet_run: tuple[ReplayTree, Report], procfs_run: tuple[ReplayTree, Report]
                                        ) -> None:
    """The engine's own quiet report (processes listed for context, cause 'quiet') blames no workload; the
    same tree at the default floor blames a workload."""
    _, quiet = quiet_run
    assert quiet.verdict.cause is Cause.QUIET and quiet.processes
    assert workload_of(quiet) is None and facts_of(quiet) is None
    _, loud = procfs_run
    assert loud.verdict.cause is not Cause.QUIET
    w = workload_of(loud)
    assert w is not None and w.kind == "host"  # no kubelet here: named by its cgroup or command

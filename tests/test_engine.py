"""The whole investigation on real faults on this machine (root): rank, trace, resolve, diagnose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from app.config import Settings
from app.investigation import engine
from app.investigation.engine import Edges, investigate
from app.models import Cause, SourceKind
from app.tracers import leftovers
from app.tracers._supervise import SupervisedProcess
from app.tracers.base import TraceRequest, TraceResult
from tests.service_support import require_tracers
from tests.workloads import exact_enough

WINDOW = 4.0


def _settings(**kw) -> Settings:
    kw.setdefault("kubelet_url", None)
    kw.setdefault("apiserver_fallback", False)
    return Settings(**kw)


def _top(report, pid):
    """The workload's row: ranked first, or below only processes that made more major faults (a shared node
    may run a heavier faulter than the test's workload: ranked above it, never below)."""
    assert report.processes, f"no process reported; warnings={report.warnings}"
    rows = [(p.pid, p.comm, p.major_faults) for p in report.processes]
    mine = [i for i, p in enumerate(report.processes) if p.pid == pid]
    assert mine, f"workload {pid} not reported: {rows}"
    faults = [p.major_faults for p in report.processes]
    assert faults == sorted(faults, reverse=True), rows
    ours = report.processes[mine[0]]
    assert all(p.comm != "pfi-workload" for p in report.processes[: mine[0]]), rows  # none of ours above it
    return ours


# bpftrace-kprobe where kprobes work (EKS nodes); here it skips with the probe's reason (tests/strict.py)
@pytest.mark.machine  # node-wide: another test's pfi-workload must not fault beside it
@pytest.mark.parametrize("backend", ["perf-major", "bpftrace-major", "bpftrace-kprobe"])
def test_file_workload_is_top_with_its_file(backend, root_required, file_workload):
    require_tracers(backend)
    report = investigate(_settings(tracer=backend), seconds=WINDOW)
    assert report.tracer.backend == backend and report.tracer.exact
    top = _top(report, file_workload.pid)
    assert top.comm == "pfi-workload"
    src = top.sources[0]
    assert src.kind is SourceKind.FILE
    assert src.path == str(file_workload.path)
    assert src.share >= 0.9
    assert src.hot_ranges, "a file source names its hot offset ranges"
    # exact backends: the traced count agrees with majflt over the tracer's own window
    assert top.traced_majflt, "the engine measured majflt at the tracer's start and stop"
    # a tracer that stops late must not pass: the report counts over its interval, within 2% (issue 27)
    assert not report.tracer.counts_past_window, report.tracer.errors
    assert exact_enough(top.traced_faults, top.traced_majflt, backend), (
        top.traced_faults, top.traced_majflt, report.tracer.errors)
    assert top.exact is True and top.major_faults == top.traced_majflt
    assert report.tracer.dropped == 0
    assert top.major_faults_per_second > 500
    assert len(top.series) >= int(WINDOW) - 1 and sum(top.series) <= top.major_faults
    assert top.verdict is not None and top.verdict.cause is Cause.COLD_FILE_READS
    if report.processes[0].pid == file_workload.pid:  # the node's verdict is about its top process
        assert str(file_workload.path) in report.verdict.summary
    assert report.node_stats.pgmajfault_per_second > 0


# issue 27: above exact_max_rate faults/s on the node, auto records one fault in N (perf -c N): the workload
# pays the sample's cost once in N faults. A tracer named in the settings still records every fault.
@pytest.mark.machine  # node-wide, like the test above
@pytest.mark.parametrize("tracer", ["auto", "perf-major"])
def test_a_fast_node_is_sampled_and_says_so(tracer, root_required, file_workload):
    require_tracers("perf-major")
    limit = 1000  # the re-reader makes 8-17k faults/s here (a few thousand beside busy loops): N >= 2
    report = investigate(_settings(tracer=tracer, exact_max_rate=limit), seconds=WINDOW)
    top = _top(report, file_workload.pid)
    assert report.tracer.backend == "perf-major" and report.tracer.exact
    assert top.sources[0].kind is SourceKind.FILE and top.sources[0].path == str(file_workload.path)
    assert top.major_faults == top.traced_majflt  # the process's count is majflt over the tracer's interval
    if tracer == "perf-major":  # named: every fault, checked against majflt
        assert report.tracer.sample_period == 1 and top.exact is True
        return
    n = report.tracer.sample_period
    assert n >= 2, (n, top.major_faults_per_second, report.tracer.notes)
    assert report.tracer.notes[0].startswith(f"sampled one major fault in {n}: the node made "), report.tracer.notes
    # the estimate (samples x N) lands near majflt: the workload made most of the node's faults
    assert abs(top.traced_faults - top.traced_majflt) <= 0.1 * top.traced_majflt, (top.traced_faults, top.traced_majflt, n)
    assert report.tracer.events * n >= 0.9 * top.traced_majflt
    assert top.exact is None and top.exact_why.startswith(f"sampled one fault in {n}")
    assert not any("not exact" in w for w in report.warnings), report.warnings
    assert top.verdict is not None and top.verdict.cause is Cause.COLD_FILE_READS


def test_swap_workload_is_swap(root_required, swap_workload):
    require_tracers("perf-major")  # auto's first choice: the swap verdict rests on exact addresses
    # the pid filter: on a shared machine another run's workload may fault more than this one
    report = investigate(_settings(), seconds=WINDOW, pids=[swap_workload.pid])
    assert report.tracer.backend == "perf-major", report.tracer
    top = _top(report, swap_workload.pid)
    assert top.sources[0].kind is SourceKind.SWAP and top.sources[0].share >= 0.9
    # the cgroup it runs in is at its limit: the verdict says so
    assert top.cgroup_memory is not None and top.cgroup_memory.max_bytes == 64 << 20
    assert top.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT
    assert report.node_stats.pswpin_per_second > 0


@pytest.mark.machine  # node-wide (_top)
def test_procfs_backend_estimates_file(root_required, file_workload):
    report = investigate(_settings(tracer="procfs"), seconds=3)
    assert report.tracer.backend == "procfs" and not report.tracer.exact
    top = _top(report, file_workload.pid)
    assert top.sources and top.sources[0].kind is SourceKind.FILE and top.sources[0].estimated
    assert top.verdict.confidence == "low"


@pytest.mark.machine  # node-wide (_top)
def test_auto_falls_back_when_perf_and_bpftrace_are_missing(root_required, file_workload, tmp_path):
    report = investigate(_settings(perf_path=str(tmp_path / "no-perf"), bpftrace_path=str(tmp_path / "no-bpftrace")),
                         seconds=2)
    assert report.tracer.backend == "procfs"
    skipped = {s.backend: s.reason for s in report.tracer.skipped}
    assert "perf-major" in skipped and "no-perf" in skipped["perf-major"]
    assert "bpftrace-major" in skipped and "no-bpftrace" in skipped["bpftrace-major"]
    assert _top(report, file_workload.pid).major_faults > 0  # still ranks


@pytest.mark.workloads  # falls back to perf-major: a real tracer (the marker guard, tests/needs.py)
def test_kprobe_backend_says_no_kprobes(root_required):
    report = investigate(_settings(tracer="bpftrace-kprobe"), seconds=1)
    skipped = {s.backend: s.reason for s in report.tracer.skipped}
    if report.tracer.backend == "bpftrace-kprobe":
        pytest.skip("this kernel has kprobes")
    assert "kprobe" in skipped["bpftrace-kprobe"].lower()


def test_pid_filter_and_cancel(root_required, file_workload):
    import threading

    cancel = threading.Event()
    # 2.5 s: auto counts the node's faults for 0.3 s before the window (the sample period), then perf starts
    # (up to a second on a busy machine): at 1.5 s the window was cancelled as perf began (failed once so)
    threading.Timer(2.5, cancel.set).start()
    t0 = time.monotonic()
    report = investigate(_settings(), seconds=30, pids=[file_workload.pid], cancel=cancel)
    assert time.monotonic() - t0 < 20
    assert report.status == "cancelled"
    # 2.5 s of a file workload at thousands of faults/s: ranked, and alone (the pid filter)
    assert [p.pid for p in report.processes] == [file_workload.pid], report.warnings
    assert report.processes[0].major_faults > 0
    assert not _tracers_running({os.getpid()})


def _tracers_running(parents: set[int]) -> list[str]:
    """perf/bpftrace processes left by `parents`: their children, or orphans (re-parented to init)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if comm in ("perf", "bpftrace") and (ppid in parents or ppid == 1):
                out.append(f"{d.name}/{comm}")
    return out


def _cli(*args: str, env: dict | None = None, replay: tuple | None = None, **kw) -> subprocess.Popen:
    """The CLI in a subprocess; `replay` (src, root, step seconds): a captured tree replayed on its samples."""
    e = dict(os.environ, PFI_APISERVER_FALLBACK="false")
    e.pop("PFI_KUBELET_URL", None)
    e.update(env or {})
    head = ["-m", "tests.proctree", "cli", *map(str, replay)] if replay else ["-m", "app.cli"]
    return subprocess.Popen([sys.executable, *head, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e, **kw)


def test_cli_json_is_the_report_and_nothing_else(root_required, file_workload):
    proc = _cli("investigate", "--seconds", "2", "--format", "json", "--top", "3", "--pid", str(file_workload.pid))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)  # stdout holds the document alone
    assert doc["schema_version"] and doc["processes"][0]["pid"] == file_workload.pid
    assert len(doc["processes"]) <= 3
    for key in ("id", "node", "started_at", "finished_at", "window_seconds", "trigger", "tracer", "node_stats",
                "verdict"):
        assert key in doc
    assert doc["trigger"]["kind"] == "manual"


def test_cli_text_report_names_the_file(root_required, file_workload):
    proc = _cli("investigate", "--seconds", "2", env={"COLUMNS": "200"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pfi-workload" in out and file_workload.path.name in out


def test_cli_sigterm_stops_cleanly(root_required, file_workload):
    proc = _cli("investigate", "--seconds", "60", "--format", "json")
    # SIGTERM in the window, once its tracer records (a fixed sleep raced the start-up on a loaded machine)
    deadline = time.monotonic() + 30
    while not _tracers_running({proc.pid}):
        assert proc.poll() is None and time.monotonic() < deadline, "the investigation never started a tracer"
        time.sleep(0.1)
    time.sleep(1.0)  # past the probe's short-lived perf, into the window
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err
    assert json.loads(out)["status"] == "cancelled"
    assert not _tracers_running({proc.pid})


@pytest.mark.workloads  # the probe runs perf record and bpftrace for real (the marker guard saw it)
def test_cli_probe_lists_every_backend():
    proc = _cli("probe", "--format", "json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    from app.tracers.registry import ORDER

    rows = {r["backend"]: r for r in json.loads(out)}
    assert list(rows) == ORDER  # every backend, in the order "auto" tries them
    assert rows["procfs"]["available"] is True
    assert all(r["reason"] for r in rows.values())


def test_cli_rejects_bad_settings():
    proc = _cli("investigate", env={"PFI_TRACER": "dtrace"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "tracer" in err.lower()


# A real pod of the captured kubelet PodList (minikube 1.35, containerd): its UID and container ID
# become the cgroup path of the swapping process, as the kubelet's cgroupfs driver lays them out.
POD_UID = "b5812e37-ce78-41e2-9d8d-d93a88e481d6"
CONTAINER_ID = "bcbcd3972a517ab0ed8df77d0a07d082c529278f206d0f4a29ebbe940996e9e5"
KUBELET_TOKEN = "engine-test-kubelet-token"


@pytest.mark.workloads
def test_process_in_pod_cgroup_is_named_through_tls_kubelet(root_required, certs, serve, tmp_path, monkeypatch):
    from tests.tls_standin import StandIn
    from tests.workloads import swap_workload

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    podlist = (Path(__file__).parent / "fixtures/kubelet/podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json")
    kubelet = serve(StandIn(path="/pods", token=KUBELET_TOKEN, body=podlist.read_bytes()))
    token = tmp_path / "token"
    token.write_text(KUBELET_TOKEN)
    settings = _settings(kubelet_url=kubelet.url, kubelet_token_file=token, kubelet_ca_file=certs.ca)
    with swap_workload(size_mb=96, limit_mb=48, name=f"kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}") as proc:
        # the pid filter: on a shared machine another run's workload may fault more than this one
        report = investigate(settings, seconds=3, pids=[proc.pid])
    assert kubelet.requests == ["/pods"]  # asked once, over TLS, with the token
    top = _top(report, proc.pid)
    assert report.attribution.source == "kubelet" and report.attribution.error is None
    assert top.pod is not None and not top.host_process
    assert (top.pod.namespace, top.pod.name, top.pod.container) == ("scraper", "e2e-statefulset-0", "compute-pi-digits")
    assert top.pod.uid == POD_UID and top.pod.container_id == CONTAINER_ID
    assert top.pod.owner is not None and (top.pod.owner.kind, top.pod.owner.name) == ("StatefulSet", "e2e-statefulset")
    assert top.pod.qos_class == "Burstable" and top.pod.resolved_by == "kubelet"
    assert "scraper/e2e-statefulset-0" in report.verdict.summary


def test_host_process_when_kubelet_unreachable(root_required, file_workload, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    report = investigate(_settings(kubelet_url="https://127.0.0.1:9", kubelet_timeout_seconds=1), seconds=2,
                         pids=[file_workload.pid])
    top = _top(report, file_workload.pid)
    assert top.host_process and top.pod is None  # not in a pod cgroup: no kubelet question needed


# --- the engine on a captured procfs tree: any user, no perf, no gcc ------------------------------------
# tests/fixtures/proctree-file-and-pod-swap (README there): this machine's /proc while a file-faulting
# host process and a swapping process in a pod-shaped cgroup ran, replayed step by step, with what
# perf-major recorded in the same window handed over by a replaying tracer.

TREE = Path(__file__).parent / "fixtures/proctree-file-and-pod-swap"
PODLIST = Path(__file__).parent / "fixtures/kubelet/podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json"
REPLAY_STEP = 0.4  # the 7 recorded steps are in by 2.4 s of a 3 s window


@pytest.fixture
def tree(captured_tree):
    return captured_tree


def _tree_settings(tree, **kw) -> Settings:
    return _settings(proc_root=tree.proc_root, cgroup_root=tree.cgroup_root, **kw)


def _pair(report, tree):
    fpid, spid = tree.pid("file"), tree.pid("swap")
    assert [p.pid for p in report.processes] == [fpid, spid], [(p.pid, p.comm) for p in report.processes]
    return report.processes


def _recorded_majflt(tree, pid: int) -> int:
    return tree.counter(pid, "majflt", -1) - tree.counter(pid, "majflt", 0)


def test_captured_tree_exact_trace_ranks_resolves_and_diagnoses(tree) -> None:
    from tests.proctree import ReplayTracer

    tracer = ReplayTracer(tree)
    with tree.play(REPLAY_STEP):
        report = investigate(_tree_settings(tree), seconds=3, edges=Edges(tracers=[tracer]))
    m = tree.manifest
    assert report.tracer.backend == "replay-perf-major" and report.tracer.exact
    assert report.tracer.reason == f"given by the caller: {tracer.name}" and report.tracer.skipped == []
    f, s = _pair(report, tree)  # ranked by majflt: kthreadd and the capturing python did not fault

    # the file-faulting host process: its faults resolved to the file through the captured maps
    assert f.comm == "pfi-workload" and f.cmdline.startswith(f"pfi-workload-file {m['file']}")
    assert f.major_faults == _recorded_majflt(tree, f.pid)
    assert f.traced_faults == tracer.doc["totals"][str(f.pid)]
    src = f.sources[0]
    # Every recorded address falls in the file's mapping (replayed on the sampler's clock: exact values).
    assert (src.kind, src.path, src.estimated, src.share) == (SourceKind.FILE, m["file"], False, 1.0)
    assert src.faults == f.traced_faults
    assert src.hot_ranges
    assert f.host_process and f.pod is None and not f.paths_in_container  # same mount ns as "self"
    assert f.read_bytes_per_second and f.read_bytes_per_second > 1 << 20
    assert f.verdict is not None and f.verdict.cause is Cause.COLD_FILE_READS
    assert m["file"] in report.verdict.summary

    # the swapping process: swap, in its container's cgroup at its limit
    assert (s.sources[0].kind, s.sources[0].share, s.sources[0].faults) == (
        SourceKind.SWAP, 1.0, tracer.doc["totals"][str(s.pid)])
    assert s.cgroup == m["cgroup"]
    assert s.cgroup_memory is not None and s.cgroup_memory.max_bytes == m["limit_bytes"]
    assert s.cgroup_memory.usage_ratio is not None and s.cgroup_memory.usage_ratio > 0.9
    assert s.verdict is not None and s.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT

    ns = report.node_stats
    assert ns.pgmajfault_per_second > 0 and ns.pswpin_per_second > 0
    assert ns.mem_total_bytes and ns.psi_memory is not None
    assert not [w for w in report.warnings if "permission denied" in w]


def test_captured_tree_pod_named_through_tls_kubelet(tree, certs, serve, tmp_path, monkeypatch) -> None:
    from tests.proctree import ReplayTracer
    from tests.tls_standin import StandIn

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubelet = serve(StandIn(path="/pods", token=KUBELET_TOKEN, body=PODLIST.read_bytes()))
    token = tmp_path / "token"
    token.write_text(KUBELET_TOKEN)
    settings = _tree_settings(tree, kubelet_url=kubelet.url, kubelet_token_file=token, kubelet_ca_file=certs.ca)
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[ReplayTracer(tree)]))
    assert kubelet.requests == ["/pods"]  # asked once, over TLS, with the token
    assert report.attribution.source == "kubelet" and report.attribution.error is None
    f, s = _pair(report, tree)
    assert f.host_process and f.pod is None
    assert s.pod is not None and not s.host_process
    assert (s.pod.namespace, s.pod.name, s.pod.container) == ("scraper", "e2e-statefulset-0", "compute-pi-digits")
    assert s.pod.uid == tree.manifest["pod_uid"] and s.pod.container_id == tree.manifest["container_id"]
    assert s.pod.owner is not None and (s.pod.owner.kind, s.pod.owner.name) == ("StatefulSet", "e2e-statefulset")
    assert s.verdict is not None and "scraper/e2e-statefulset-0" in s.verdict.summary


@pytest.fixture(scope="module")
def estimated(tmp_path_factory):
    """One procfs-backend run on the captured tree (no addresses), shared by the estimate tests."""
    from app.tracers.procfs_only import ProcfsTracer
    from tests.proctree import ReplayTree

    tree = ReplayTree(TREE, tmp_path_factory.mktemp("estimated") / "tree")
    settings = _tree_settings(tree, tracer="procfs")
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[ProcfsTracer(settings)]))
    assert report.tracer.backend == "procfs" and not report.tracer.exact
    return _pair(report, tree)


def test_captured_tree_procfs_estimate_file(estimated) -> None:
    """No addresses (procfs backend): the file is told from read_bytes, and said to be estimated."""
    f, _ = estimated
    assert f.sources[0].kind is SourceKind.FILE and f.sources[0].estimated
    assert (f.sources[0].share, f.sources[0].faults) == (1.0, f.major_faults)  # a deterministic replay: exact
    assert f.verdict is not None and f.verdict.confidence == "low"
    assert f.traced_faults == 0


def test_captured_tree_procfs_estimate_swap(estimated) -> None:
    """read_bytes counts swap-ins too (every read bio is charged to the task): in this capture the
    swapping process read 63.8 MB, about its majflt in pages. The estimate must still say swap, from
    the evidence that separates them (its cgroup's anon refaults, VmSwap falling), and say so."""
    _, s = estimated
    assert s.sources[0].kind is SourceKind.SWAP and s.sources[0].estimated
    assert s.sources[0].evidence


def test_captured_tree_pid_filter(tree) -> None:
    from tests.proctree import ReplayTracer

    spid = tree.pid("swap")
    with tree.play(REPLAY_STEP):
        report = investigate(_tree_settings(tree), seconds=2, pids=[spid], edges=Edges(tracers=[ReplayTracer(tree)]))
    assert [p.pid for p in report.processes] == [spid]
    assert report.processes[0].sources[0].kind is SourceKind.SWAP


def test_captured_tree_through_the_cli(tree) -> None:
    """PFI_PROC_ROOT/PFI_CGROUP_ROOT point the command at the tree (no tracer binaries: procfs)."""
    env = {"PFI_PROC_ROOT": str(tree.proc_root), "PFI_CGROUP_ROOT": str(tree.cgroup_root),
           "PFI_PERF_PATH": "/nonexistent/perf", "PFI_BPFTRACE_PATH": "/nonexistent/bpftrace"}
    # The CLI's main, replayed on its own engine's samples (a slow start-up on a loaded machine once let a
    # real-time replay finish before the first sample: no process rose).
    proc = _cli("investigate", "--seconds", "3", "--format", "json", env=env,
                replay=(tree.src, tree.root, REPLAY_STEP))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["tracer"]["backend"] == "procfs"
    assert [p["pid"] for p in doc["processes"][:2]] == [tree.pid("file"), tree.pid("swap")]
    assert doc["processes"][0]["sources"][0]["kind"] == "file"


def test_an_empty_tracer_list_investigates_with_procfs_and_says_so(tree) -> None:
    """No candidates from the caller: procfs (always there) is used, and the report says it is not exact."""
    report = investigate(_tree_settings(tree), seconds=1, edges=Edges(tracers=[]))
    assert report.tracer.backend == "procfs" and not report.tracer.exact
    assert report.tracer.reason == "given by the caller: procfs"


def test_captured_tree_cancel_ends_the_window(tree) -> None:
    import threading

    from tests.proctree import ReplayTracer

    cancel = threading.Event()
    # cancelled as the second sample is taken (2 s in, on the replay's clock) of a 30 s window
    with tree.play(REPLAY_STEP, on_tick=lambda k: k == 2 and cancel.set()):
        report = investigate(_tree_settings(tree), seconds=30, cancel=cancel, edges=Edges(tracers=[ReplayTracer(tree)]))
    assert report.status == "cancelled" and report.window_seconds == 2.0
    assert "the investigation was cancelled before the window ended" in report.warnings
    assert report.processes and report.processes[0].pid == tree.pid("file")


def test_captured_tree_kubelet_unreachable_is_a_finding(tree, monkeypatch) -> None:
    from tests.proctree import ReplayTracer

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = _tree_settings(tree, kubelet_url="https://127.0.0.1:9", kubelet_timeout_seconds=1)
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[ReplayTracer(tree)]))
    _, s = _pair(report, tree)
    assert report.attribution.error and any(w.startswith("pod names: ") for w in report.warnings)
    # the pod is still known from its cgroup, by UID and container ID only
    assert s.pod is not None and not s.host_process and s.pod.resolved_by == "cgroup" and s.pod.name is None
    assert (s.pod.uid, s.pod.container_id) == (tree.manifest["pod_uid"], tree.manifest["container_id"])
    assert s.sources[0].kind is SourceKind.SWAP  # the rest of the report still stands
    assert s.verdict is not None and s.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT


def test_captured_tree_cli_text_names_the_file(tree) -> None:
    env = {"PFI_PROC_ROOT": str(tree.proc_root), "PFI_CGROUP_ROOT": str(tree.cgroup_root), "COLUMNS": "200",
           "PFI_PERF_PATH": "/nonexistent/perf", "PFI_BPFTRACE_PATH": "/nonexistent/bpftrace"}
    proc = _cli("investigate", "--seconds", "3", env=env, replay=(tree.src, tree.root, REPLAY_STEP))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pfi-workload" in out and str(tree.pid("file")) in out and "procfs" in out


# Runs as nobody when root (root reads any file): a process's io the inspector may not read is
# reported as a privilege problem, not silently left out.
_DENIED_ENGINE = """
import json, sys
from pathlib import Path
from app.config import Settings
from app.investigation import engine
from app.investigation.engine import Edges, investigate
from app.tracers.procfs_only import ProcfsTracer
root, pid = Path(sys.argv[1]), int(sys.argv[2])
s = Settings(proc_root=root / "proc", cgroup_root=root / "cgroup", kubelet_url=None, apiserver_fallback=False)
report = investigate(s, seconds=1, pids=[pid], edges=Edges(tracers=[ProcfsTracer(s)]))
print(json.dumps(report.warnings))
"""


def test_captured_tree_unreadable_io_is_a_report_warning() -> None:
    import shutil
    import tempfile

    from tests.proctree import ReplayTree

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv not found: cannot drop to nobody")
    work = Path(tempfile.mkdtemp(prefix="pfi-test-denied-"))
    try:
        work.chmod(0o755)  # nobody must get to the tree
        tree = ReplayTree(TREE, work / "tree")
        fpid = tree.pid("file")
        (tree.proc_root / str(fpid) / "io").chmod(0)  # as /proc/PID/io of another user's process
        cmd = [sys.executable, "-c", _DENIED_ENGINE, str(tree.root), str(fpid)]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert res.returncode == 0, res.stderr
        denied = [w for w in json.loads(res.stdout) if w.startswith("permission denied")]
        assert len(denied) == 1 and "/proc/PID/io" in denied[0] and f"pids {fpid}" in denied[0]
        assert "CAP_SYS_PTRACE" in denied[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Stubborn:
    """A tracer that ignores its stop: its process ignores SIGINT and SIGTERM and run() waits for it
    to end (or, with in_python, sleeps in Python past every deadline)."""

    exact = True

    def __init__(self, name: str, in_python: float = 0.0) -> None:
        self.name = name
        self.in_python = in_python
        self.pid: int | None = None
        self.start: int | None = None
        self.began: float | None = None
        self.returned: float | None = None

    def available(self) -> tuple[bool, str]:
        return True, "test stub"

    def run(self, request: TraceRequest) -> TraceResult:
        self.began = time.monotonic()
        if request.on_start:
            request.on_start()
        try:
            if self.in_python:
                time.sleep(self.in_python)
            else:
                with SupervisedProcess(["sh", "-c", "trap '' INT TERM; exec sleep 60"], nice=0) as p:
                    self.pid, self.start = p.pid, leftovers.starttime(p.pid)
                    p.wait(60)  # ignores request.cancel
        finally:
            self.returned = time.monotonic()
        return TraceResult(backend=self.name, exact=True)


@pytest.fixture
def short_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "TRACER_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the engine's reap looks only here
    return _settings(kubelet_url=None)


def test_a_tracer_that_ignores_its_stop_is_killed_before_the_report(short_grace) -> None:
    stub = _Stubborn("stubborn")
    try:
        report = investigate(short_grace, seconds=0.3, pids=[os.getpid()], edges=Edges(tracers=[stub]))
        assert stub.pid is not None
        assert not leftovers.alive(stub.pid, stub.start), "the tracer process outlived its investigation"
        assert stub.returned is not None, "the tracer thread still ran when the report came back"
        assert any("did not stop" in w and "killed the process group of its 1 process" in w
                   for w in report.warnings), report.warnings
    finally:
        if stub.pid is not None and leftovers.alive(stub.pid, stub.start):
            os.kill(stub.pid, signal.SIGKILL)


def test_the_next_investigation_waits_for_a_previous_tracer_thread(short_grace, monkeypatch) -> None:
    monkeypatch.setattr(engine, "STRAGGLER_WAIT_SECONDS", 10.0)
    stuck = _Stubborn("stuck", in_python=4.0)  # no process to kill: only its thread overruns (~2 s past the report)
    first = investigate(short_grace, seconds=0.3, pids=[os.getpid()], edges=Edges(tracers=[stuck]))
    assert stuck.returned is None
    assert any("its thread still runs" in w for w in first.warnings), first.warnings
    second_tracer = _Stubborn("second", in_python=0.01)
    second = investigate(short_grace, seconds=0.3, pids=[os.getpid()], edges=Edges(tracers=[second_tracer]))
    assert stuck.returned is not None and second_tracer.began is not None
    assert second_tracer.began >= stuck.returned, "two investigations' tracers ran side by side"
    assert any("waited" in w and "previous investigation" in w for w in second.warnings), second.warnings

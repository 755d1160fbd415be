"""The workloads everyone tests with: they fault where they say, at a steady rate, and leave
nothing behind (process, cgroup, swap file)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import tests.workloads as workloads
from app.config import Settings
from app.parsers.cgroup import parse_cgroup
from tests.strict import need_tracer
from tests.workloads import SWAP_FILE, _swap_users, majflt, memory_cgroup, memory_hierarchy, swap_workload


def _rate(pid: int, seconds: float = 1.0) -> float:
    a = majflt(pid)
    time.sleep(seconds)
    return (majflt(pid) - a) / seconds


def _mapping_of(pid: int, start: int) -> str:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= start < hi:
            return line
    raise AssertionError(f"{start:#x} not mapped in {pid}")


# --- where the memory group goes: v1, hybrid, v2 (a fake cgroupfs, no root needed) ---------------------


class FakeCgroupfs:
    """What the kernel does on mkdir/rmdir in a cgroup v2 tree, as far as memory_cgroup relies on it:
    a new group gets cgroup.procs and cgroup.subtree_control, and memory.max only when its parent's
    subtree_control has memory; rmdir takes the files with it."""

    def __init__(self, root: Path, root_controls: str = "cpu io memory pids") -> None:
        self.root = root
        root.mkdir()
        (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
        (root / "cgroup.subtree_control").write_text(root_controls + "\n")
        (root / "cgroup.procs").write_text("1\n")

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        (path / "cgroup.procs").write_text("")
        (path / "cgroup.subtree_control").write_text("")
        if "memory" in (path.parent / "cgroup.subtree_control").read_text().split():
            (path / "memory.max").write_text("max\n")

    def rmdir(self, path: Path, tries: int) -> None:
        for f in path.iterdir():
            if f.is_file():
                f.unlink()
        path.rmdir()


def test_memory_group_on_a_v2_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the memory controller is on the unified tree (EKS AL2023 and BottleRocket nodes, Debian 12),
    the group is made there: memory enabled for the children of every folder made on the way, the
    limit in memory.max, everything made removed again."""
    fs = FakeCgroupfs(tmp_path / "cgroup")
    monkeypatch.setattr(workloads, "make_group", fs.mkdir)
    monkeypatch.setattr(workloads, "rmdir_when_free", fs.rmdir)
    h = memory_hierarchy(fs.root)
    assert h is not None and (h.root, h.version, h.limit_file) == (fs.root, 2, "memory.max")
    name = "kubepods/burstable/pod0f9a1c52/" + "ab" * 32
    with memory_cgroup(name, 48, cgroup_root=fs.root) as group:
        top = group.relative_to(fs.root).parts[0]
        assert top.startswith("pfi-test-") and group == fs.root / top / name
        assert (group / "memory.max").read_text() == str(48 << 20), "the limit, in the v2 file"
        for d in (fs.root / top, *[fs.root / top / p for p in Path(name).parents if str(p) != "."]):
            assert (d / "cgroup.subtree_control").read_text() == "+memory", d
        assert (group / "cgroup.subtree_control").read_text() == "", "the leaf holds processes: no controllers"
    assert not (fs.root / top).exists()
    assert (fs.root / "cgroup.subtree_control").read_text() == "cpu io memory pids\n", "the root left alone"


def test_memory_group_v2_root_without_memory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FakeCgroupfs(tmp_path / "cgroup", root_controls="cpu io pids")
    monkeypatch.setattr(workloads, "make_group", fs.mkdir)
    with pytest.raises(RuntimeError, match="not enabled for the children of"), memory_cgroup("job", 48, fs.root):
        pass
    assert [p.name for p in fs.root.iterdir() if p.is_dir()] == []


def test_memory_hierarchy_prefers_v1_and_says_when_there_is_none(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    (hybrid / "memory").mkdir(parents=True)
    (hybrid / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (hybrid / "unified").mkdir()
    (hybrid / "unified" / "cgroup.controllers").write_text("\n")  # the hybrid unified tree: no controllers
    h = memory_hierarchy(hybrid)
    assert h is not None and (h.root, h.version, h.limit_file, h.usage_file) == (
        hybrid / "memory", 1, "memory.limit_in_bytes", "memory.usage_in_bytes")
    v2_without_memory = tmp_path / "v2"
    v2_without_memory.mkdir()
    (v2_without_memory / "cgroup.controllers").write_text("cpu io pids\n")
    assert memory_hierarchy(v2_without_memory) is None
    assert memory_hierarchy(tmp_path / "nothing") is None


def test_memory_group_here_is_where_the_controller_is() -> None:
    """This machine's answer (v1 or hybrid: the memory hierarchy; v2: the unified root)."""
    h = memory_hierarchy()
    assert h is not None, workloads.no_memory_controller_reason()
    if (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")).exists():
        assert (h.root, h.version) == (Path("/sys/fs/cgroup/memory"), 1)
    else:
        assert (h.root, h.version) == (Path("/sys/fs/cgroup"), 2)


# --- the workloads ---------------------------------------------------------------------------------


@pytest.mark.workloads
def test_file_workload_faults_on_its_file(file_workload) -> None:
    proc = file_workload
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "pfi-workload"
    assert proc.end - proc.start == 64 << 20
    assert _mapping_of(proc.pid, proc.start).endswith(str(proc.path))
    assert _rate(proc.pid) > 1000


def test_swap_workload_swaps_in_its_cgroup(swap_workload) -> None:
    proc = swap_workload
    hierarchy = memory_hierarchy()
    assert hierarchy is not None
    assert proc.cgroup is not None and proc.cgroup.parent == hierarchy.root
    assert proc.cgroup.name.startswith("pfi-test-swap-")
    assert str(proc.pid) in (proc.cgroup / "cgroup.procs").read_text().split()
    assert int((proc.cgroup / hierarchy.limit_file).read_text()) == 64 << 20
    assert len(_mapping_of(proc.pid, proc.start).split()) == 5  # anonymous: no path
    assert _rate(proc.pid) > 1000


@pytest.mark.workloads
@pytest.mark.parametrize("kind", ["anon", "shmem"])
def test_kubepods_shaped_cgroup_is_nested_and_removed_with_its_parents(root_required, kind: str) -> None:
    uid, cid = "0f9a1c52-7c1e-4b0e-9d0a-2f1e3c4d5e6f", "ab" * 32
    name = f"kubepods/burstable/pod{uid}/{cid}"
    with swap_workload(size_mb=96, limit_mb=48, name=name, kind=kind) as proc:
        cg = Path(f"/proc/{proc.pid}/cgroup").read_text()
        hierarchy = memory_hierarchy()
        assert hierarchy is not None
        # never at the root of the hierarchy, where a real kubelet's kubepods could be
        where = ":memory:" if hierarchy.version == 1 else "0::"
        m = re.search(rf"^{'[0-9]+' if hierarchy.version == 1 else ''}{where}/(pfi-test-\d+-\d+)/{re.escape(name)}$", cg,
                      re.MULTILINE)
        assert m, cg
        parent = hierarchy.root / m[1]
        assert proc.cgroup == parent / name
        # the parser still finds pod and container from the end of the path
        ref = parse_cgroup(cg)
        assert (ref.pod_uid, ref.qos, ref.container_id, ref.version) == (uid, "burstable", cid, hierarchy.version)
        if kind == "shmem":
            assert "memfd:pfi-workload-shmem" in _mapping_of(proc.pid, proc.start)
        pid = proc.pid
    assert not parent.exists()  # created here, so removed with everything under it
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.workloads
def test_nothing_left_after_a_failing_test(root_required) -> None:
    with pytest.raises(RuntimeError, match="boom"), swap_workload(size_mb=96, limit_mb=48) as proc:
        pid, group = proc.pid, proc.cgroup
        raise RuntimeError("boom")
    assert not Path(f"/proc/{pid}").exists()
    assert group is not None and not group.exists()
    # The test swap file is off again unless another live test run still uses it.
    assert _swap_users() or str(SWAP_FILE) not in Path("/proc/swaps").read_text()


def test_tool_fixtures_resolve(need_perf: None, need_bpftrace: None) -> None:
    """When need_perf/need_bpftrace let a test run, the configured perf and bpftrace are there and start."""
    settings = Settings()
    for tool, name in ((settings.tracing.perf_path, "perf"), (settings.tracing.bpftrace_path, "bpftrace")):
        path = shutil.which(tool)
        assert path is not None, f"{name} ({tool}) is not on PATH, yet its fixture did not skip"
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and name in res.stdout.lower(), res.stdout + res.stderr


@pytest.mark.workloads
def test_tool_fixtures_skip_with_the_backends_reason(root_required: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the tool is not installed, the fixture skips and says why in the backend's own words."""
    monkeypatch.setenv("PFI_PERF_PATH", "/nonexistent/pfi-test-perf")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"perf-major not available: .*/nonexistent/pfi-test-perf"):
        need_tracer("perf-major")


@pytest.mark.workloads
@pytest.mark.machine  # compares /proc/swaps and the sysctls before and after: nothing else may change them
def test_zram_swap_workload_swaps_in_from_zram_and_leaves_the_machine_as_it_was(root_required) -> None:
    reason = workloads.zram_unavailable_reason()
    if reason:
        pytest.skip(reason)
    before = {k: f.read_text() for k, f in workloads._SYSCTL.items()}
    with swap_workload(size_mb=128, limit_mb=64, swap="zram") as proc:
        swaps = Path("/proc/swaps").read_text().splitlines()[1:]
        ours = [line.split() for line in swaps if line.split()[0].startswith("/dev/zram")]
        assert ours, swaps
        dev = ours[-1][0]
        assert Path("/proc/sys/vm/swappiness").read_text().strip() == "200"
        assert Path("/proc/sys/vm/page-cluster").read_text().strip() == "0"
        assert _rate(proc.pid) > 1000
        # the pages live compressed in the zram device: it holds data now
        name = dev.removeprefix("/dev/")
        orig = int(Path(f"/sys/block/{name}/mm_stat").read_text().split()[0])
        assert orig > 16 << 20
        rec = [p for p in workloads.run_state_dir().glob("zram-*")]
        assert len(rec) == 1 and rec[0].read_text().split()[0] == name
    assert dev not in Path("/proc/swaps").read_text()
    assert not Path(f"/sys/block/{name}").exists()
    assert {k: f.read_text() for k, f in workloads._SYSCTL.items()} == before


@pytest.mark.workloads
@pytest.mark.machine  # compares /proc/swaps before and after, and runs cleanup
def test_zram_left_by_a_killed_run_is_undone_by_cleanup(root_required, tmp_path: Path) -> None:
    reason = workloads.zram_unavailable_reason()
    if reason:
        pytest.skip(reason)
    before = {k: f.read_text() for k, f in workloads._SYSCTL.items()}
    # a run that made a zram swap and was SIGKILLed before undoing it
    script = ("import os, signal, tests.workloads as w\n"
              "from tests import needs\n"
              "needs._active = None\n"
              "cm = w.zram_swap(disksize_mb=64)\n"
              "z = cm.__enter__()\n"
              "print(z.device, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([".venv/bin/python", "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PFI_TEST_RUN_STATE": str(tmp_path)})
    dev = out.stdout.strip()
    assert dev.startswith("/dev/zram"), out
    assert dev in Path("/proc/swaps").read_text()
    logged: list[str] = []
    workloads.cleanup_dead_runs(tmp_path, log=logged.append)
    assert dev not in Path("/proc/swaps").read_text()
    assert not Path(f"/sys/block/{dev.removeprefix('/dev/')}").exists()
    assert {k: f.read_text() for k, f in workloads._SYSCTL.items()} == before
    assert any("zram swap" in line for line in logged), logged

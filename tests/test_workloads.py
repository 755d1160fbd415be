"""The workloads everyone tests with: they fault where they say, at a steady rate, and leave
nothing behind (process, cgroup, swap file)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from app.config import Settings
from app.parsers.cgroup import parse_cgroup
from tests.conftest import _need as need_tool
from tests.workloads import CGROUP_MEMORY_ROOT, SWAP_FILE, _swap_users, majflt, swap_workload


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


def test_file_workload_faults_on_its_file(file_workload) -> None:
    proc = file_workload
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "pfi-workload"
    assert proc.end - proc.start == 64 << 20
    assert _mapping_of(proc.pid, proc.start).endswith(str(proc.path))
    assert _rate(proc.pid) > 1000


def test_swap_workload_swaps_in_its_cgroup(swap_workload) -> None:
    proc = swap_workload
    assert proc.cgroup is not None and proc.cgroup.parent == CGROUP_MEMORY_ROOT
    assert proc.cgroup.name.startswith("pfi-test-swap-")
    assert str(proc.pid) in (proc.cgroup / "cgroup.procs").read_text().split()
    assert int((proc.cgroup / "memory.limit_in_bytes").read_text()) == 64 << 20
    assert len(_mapping_of(proc.pid, proc.start).split()) == 5  # anonymous: no path
    assert _rate(proc.pid) > 1000


@pytest.mark.parametrize("kind", ["anon", "shmem"])
def test_kubepods_shaped_cgroup_is_nested_and_removed_with_its_parents(root_required, kind: str) -> None:
    uid, cid = "0f9a1c52-7c1e-4b0e-9d0a-2f1e3c4d5e6f", "ab" * 32
    name = f"kubepods/burstable/pod{uid}/{cid}"
    with swap_workload(size_mb=96, limit_mb=48, name=name, kind=kind) as proc:
        cg = Path(f"/proc/{proc.pid}/cgroup").read_text()
        # never at the root of the hierarchy, where a real kubelet's kubepods could be
        m = re.search(rf":memory:/(pfi-test-\d+-\d+)/{re.escape(name)}\n", cg)
        assert m, cg
        parent = CGROUP_MEMORY_ROOT / m[1]
        assert proc.cgroup == parent / name
        # the parser still finds pod and container from the end of the path
        ref = parse_cgroup(cg)
        assert (ref.pod_uid, ref.qos, ref.container_id, ref.version) == (uid, "burstable", cid, 1)
        if kind == "shmem":
            assert "memfd:pfi-workload-shmem" in _mapping_of(proc.pid, proc.start)
        pid = proc.pid
    assert not parent.exists()  # created here, so removed with everything under it
    assert not Path(f"/proc/{pid}").exists()


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
    for tool, name in ((settings.perf_path, "perf"), (settings.bpftrace_path, "bpftrace")):
        path = shutil.which(tool)
        assert path is not None, f"{name} ({tool}) is not on PATH, yet its fixture did not skip"
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and name in res.stdout.lower(), res.stdout + res.stderr


def test_tool_fixtures_skip_with_the_backends_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the tool cannot work, the fixture skips and says why in the backend's own words."""
    monkeypatch.setenv("PFI_PERF_PATH", "/nonexistent/pfi-test-perf")
    with pytest.raises(pytest.skip.Exception, match=r"perf-major not available: .*/nonexistent/pfi-test-perf"):
        need_tool("perf-major")

"""app.collectors.cgroupmem: real v1/v2 files laid into a tree, and a real cgroup v1 group on this machine."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.collectors.cgroupmem import cgroup_memory_problem, read_cgroup_memory, read_cgroup_memory_why
from app.collectors.procfs import ProcFS
from app.parsers.cgroup import CgroupRef, parse_cgroup

FIX = Path(__file__).parent / "fixtures" / "cgroup"
V2_CGROUP = (FIX / "v2-systemd-kubepods-besteffort-docker-scope.txt").read_text()


def _lay_v2(base: Path, ref: CgroupRef, max_value: str, controllers: str = "cpuset cpu io memory pids\n") -> Path:
    group = base / ref.path.lstrip("/")
    group.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers)  # what a v2 root with the memory controller lists
    for name in ("memory.current", "memory.stat", "memory.pressure"):
        (group / name).write_bytes((FIX / f"v2-kubepods-besteffort-docker-{name}").read_bytes())
    (group / "memory.max").write_text(max_value)  # SYNTHETIC: not in the capture
    return group


@pytest.mark.parametrize(("layout", "quirk"), [("", "pure v2 host"), ("unified", "hybrid host: <root>/unified")])
def test_v2_real_files(tmp_path: Path, layout: str, quirk: str) -> None:
    ref = parse_cgroup(V2_CGROUP)
    assert ref.version == 2
    _lay_v2(tmp_path / layout if layout else tmp_path, ref, "max\n")
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None
    assert (mem.version, mem.path, mem.current_bytes) == (2, ref.path, 48648192)
    assert mem.max_bytes is None and mem.usage_ratio is None  # "max": no limit
    assert (mem.anon_bytes, mem.file_bytes, mem.pgmajfault) == (44892160, 1044480, 0)
    assert (mem.workingset_refault_file, mem.workingset_refault_anon) == (0, 0)
    assert mem.high_bytes is None and mem.swap_bytes is None  # files absent in the capture
    assert mem.pressure is not None
    assert (mem.pressure.some_total_us, mem.pressure.full_total_us) == (6937313991, 6934649214)


def test_v2_limit_and_ratio(tmp_path: Path) -> None:
    ref = parse_cgroup(V2_CGROUP)
    group = _lay_v2(tmp_path, ref, "67108864\n")
    (group / "memory.high").write_text("60000000\n")
    (group / "memory.swap.current").write_text("4096\n")
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None
    assert (mem.max_bytes, mem.high_bytes, mem.swap_bytes) == (64 << 20, 60000000, 4096)
    assert mem.usage_ratio == round(48648192 / (64 << 20), 4)


def test_v1_real_memory_stat(tmp_path: Path) -> None:
    """v1 memory.stat from a real ssh.service group; usage/limit files written here (SYNTHETIC values)."""
    ref = parse_cgroup((FIX / "v1-v2-hybrid-host-ssh-service.txt").read_text())
    assert (ref.version, ref.path) == (1, "/system.slice/ssh.service")
    group = tmp_path / "memory" / "system.slice" / "ssh.service"
    group.mkdir(parents=True)
    (group / "memory.stat").write_bytes((FIX / "v1-ssh-service-memory.stat").read_bytes())
    (group / "memory.usage_in_bytes").write_text("11026432\n")
    # Quirk: v1 says "no limit" with PAGE_COUNTER_MAX pages in bytes.
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None
    assert (mem.version, mem.current_bytes, mem.max_bytes, mem.usage_ratio) == (1, 11026432, None, None)
    assert (mem.file_bytes, mem.anon_bytes, mem.pgmajfault) == (7299072, 3637248, 0)
    assert mem.swap_bytes is None and mem.pressure is None
    (group / "memory.memsw.usage_in_bytes").write_text("11030528\n")
    assert read_cgroup_memory(tmp_path, ref).swap_bytes == 4096  # type: ignore[union-attr]


def test_missing_and_escaping_paths(tmp_path: Path) -> None:
    assert read_cgroup_memory(tmp_path, CgroupRef("/nope", 2, None, None, None, None)) is None
    assert read_cgroup_memory(tmp_path, CgroupRef("/nope", 1, None, None, None, None)) is None
    # Quirk: a path seen from inside a cgroup namespace ("/../..") must not be joined to the root.
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "memory.current").write_text("1\n")
    ref = parse_cgroup((FIX / "v2-cgroupns-relative-dotdot-docker-scope-no-final-newline.txt").read_text())
    assert read_cgroup_memory(tmp_path / "x" / "y", ref) is None
    assert read_cgroup_memory(tmp_path, CgroupRef("/../x", 2, None, None, None, None)) is None


# --- a real cgroup v1 memory group ------------------------------------------------------------------

V1_MEMORY = Path("/sys/fs/cgroup/memory")
LIMIT = 64 << 20


@pytest.fixture
def v1_group() -> Iterator[Path]:
    """A memory cgroup pfi-test-cgmem-<pid> limited to 64 MiB; removed in teardown even on failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    if not (V1_MEMORY / "memory.limit_in_bytes").exists():
        pytest.skip(f"no cgroup v1 memory controller at {V1_MEMORY}")
    group = V1_MEMORY / f"pfi-test-cgmem-{os.getpid()}"
    group.mkdir(exist_ok=True)
    try:
        (group / "memory.limit_in_bytes").write_text(str(LIMIT))
        yield group
    finally:
        for _ in range(50):
            pids = (group / "cgroup.procs").read_text().split() if group.exists() else []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.root
@pytest.mark.workloads  # a real cgroup and a real workload in it (the marker guard, tests/needs.py)
def test_real_v1_group(v1_group: Path, tmp_path: Path) -> None:
    """A process in a real group: 24 MiB anonymous memory and a cold 8 MiB file read through mmap."""
    data = tmp_path / "cold.bin"
    with open(data, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    code = (
        "import mmap,os,sys\n"
        "sys.stdin.readline()\n"  # wait until moved into the group
        "anon = bytearray(24 << 20)\n"
        "for i in range(0, len(anon), 4096): anon[i] = 1\n"
        f"f = open({str(data)!r}, 'rb'); os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)\n"
        "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "s = sum(m[i] for i in range(0, len(m), 4096))\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        (v1_group / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"

        ref = ProcFS().cgroup(child.pid)  # this machine: v1 memory controller, "0::/" unified line
        assert ref is not None
        assert (ref.version, ref.path, ref.pod_uid) == (1, f"/{v1_group.name}", None)
        mem = read_cgroup_memory(Path("/sys/fs/cgroup"), ref)
        assert mem is not None
        usage = int((v1_group / "memory.usage_in_bytes").read_text())
        assert mem.version == 1 and mem.max_bytes == LIMIT
        assert abs(mem.current_bytes - usage) < (4 << 20)  # type: ignore[operator]
        assert mem.current_bytes >= 24 << 20  # type: ignore[operator]
        assert mem.anon_bytes >= 24 << 20  # type: ignore[operator]
        assert mem.file_bytes >= 1 << 20  # type: ignore[operator]
        assert mem.pgmajfault is not None and mem.pgmajfault > 0  # the cold mmap reads
        assert mem.usage_ratio == round(mem.current_bytes / LIMIT, 4)  # type: ignore[operator]
        assert mem.swap_bytes is not None and mem.swap_bytes >= 0  # memsw accounting exists here
        assert mem.workingset_refault_file is not None
    finally:
        child.kill()
        child.wait()


def test_v2_tree_without_memory_controller_says_why(tmp_path: Path) -> None:
    """Hybrid host: the unified tree has the group (systemd mirrors it) but no memory controller."""
    ref = parse_cgroup(V2_CGROUP)
    _lay_v2(tmp_path / "unified", ref, "max\n", controllers="\n")
    mem, why = read_cgroup_memory_why(tmp_path, ref)
    assert mem is None and why is not None and "memory controller" in why
    assert cgroup_memory_problem(tmp_path, ref, None) == why
    assert cgroup_memory_problem(tmp_path, CgroupRef("/", 2, None, None, None, None), None) is None


def test_pod_level_limit_binds_when_container_has_none(tmp_path: Path) -> None:
    """v2: the container has memory.max "max", its pod 64 MiB: the pod's limit is the one reported."""
    ref = parse_cgroup(V2_CGROUP)
    group = _lay_v2(tmp_path, ref, "max\n")
    pod = group.parent
    (pod / "memory.max").write_text(f"{64 << 20}\n")  # SYNTHETIC pod-level values
    (pod / "memory.current").write_text(f"{60 << 20}\n")
    (pod / "memory.high").write_text("max\n")
    (group / "memory.high").write_text(f"{50 << 20}\n")
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None
    assert mem.max_bytes == 64 << 20 and mem.limit_path == "/" + str(pod.relative_to(tmp_path))
    assert mem.usage_ratio == round(60 / 64, 4)  # the pod's usage against the pod's limit
    assert mem.high_bytes == 50 << 20 and mem.high_path == ref.path


@pytest.mark.root
@pytest.mark.workloads  # real cgroups (the marker guard, tests/needs.py)
def test_real_hybrid_tree_pod_in_v1_memory_and_unified(tmp_path: Path) -> None:
    """Issue 8 item 4 on this machine's real trees: a process in a kubepods-shaped group present in v1
    memory (64 MiB limit) and mirrored in the unified tree (no controllers) has that limit read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    from tests.workloads.scenarios import UNIFIED_ROOT, pod_path, scenario_cgroups

    if not (V1_MEMORY / "memory.limit_in_bytes").exists() or not (UNIFIED_ROOT / "cgroup.procs").exists():
        pytest.skip("needs the v1 memory hierarchy and the unified tree (hybrid layout)")
    name = pod_path("systemd")
    with scenario_cgroups(name, 64, unified=True) as groups:
        child = subprocess.Popen(["sleep", "30"])
        try:
            for g in groups:
                (g / "cgroup.procs").write_text(str(child.pid))
            text = Path(f"/proc/{child.pid}/cgroup").read_text()
            assert f"memory:/{name}" in text and f"0::/{name}" in text  # in both hierarchies
            ref = ProcFS().cgroup(child.pid)
            assert ref is not None and (ref.version, ref.path) == (1, f"/{name}")
            assert ref.pod_uid == "b5812e37-ce78-41e2-9d8d-d93a88e481d6" and ref.runtime == "containerd"
            mem = read_cgroup_memory(Path("/sys/fs/cgroup"), ref)
            assert mem is not None and mem.version == 1 and mem.max_bytes == 64 << 20
            assert mem.limit_path == f"/{name}"
            # The v2 reading of the same group says why it has nothing: no memory controller there.
            v2 = CgroupRef(f"/{name}", 2, ref.pod_uid, ref.qos, ref.container_id, ref.runtime)
            got, why = read_cgroup_memory_why(Path("/sys/fs/cgroup"), v2)
            assert got is None and why is not None and "memory controller" in why
        finally:
            child.kill()
            child.wait()


def test_ancestor_memory_high_compared_with_the_ancestors_usage(tmp_path: Path) -> None:
    """v2: the pod has memory.high 100 MiB and uses 99 MiB; the container (no high of its own) uses 10 MiB.
    The pod's high binds: its usage, not the container's, is what the kernel throttles on; and the
    other way round, a container near the pod's high number but a pod far below it does not bind."""
    from app.investigation.diagnose import high_binds

    ref = parse_cgroup(V2_CGROUP)
    group = _lay_v2(tmp_path, ref, "max\n")
    pod = group.parent
    (group / "memory.current").write_text(f"{10 << 20}\n")  # SYNTHETIC values, as the kernel prints them
    (group / "memory.high").write_text("max\n")
    (pod / "memory.max").write_text("max\n")
    (pod / "memory.high").write_text(f"{100 << 20}\n")
    (pod / "memory.current").write_text(f"{99 << 20}\n")
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None and mem.high_path == "/" + str(pod.relative_to(tmp_path))
    assert (mem.current_bytes, mem.high_bytes, mem.high_usage_bytes) == (10 << 20, 100 << 20, 99 << 20)
    assert high_binds(mem)
    (group / "memory.current").write_text(f"{99 << 20}\n")
    (pod / "memory.current").write_text(f"{20 << 20}\n")  # impossible for a real pod; isolates the compare
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None and mem.high_usage_bytes == 20 << 20
    assert not high_binds(mem)


def test_v2_zswpin_read_from_memory_stat(tmp_path: Path) -> None:
    ref = parse_cgroup(V2_CGROUP)
    group = _lay_v2(tmp_path, ref, "max\n")
    with (group / "memory.stat").open("a") as f:
        f.write("zswpin 37\nzswpout 90\n")  # SYNTHETIC lines, as kernels with zswap print them (6.1+)
    mem = read_cgroup_memory(tmp_path, ref)
    assert mem is not None and mem.zswpin == 37


def test_unmapped_swap_cache_from_a_real_v1_memory_stat() -> None:
    """Issue 22: swap readahead's pages sit in the swap cache, charged to the group, in no process's Rss;
    v1's rss is mapped anonymous memory only (kernels since 5.8): anon LRU - rss - shmem = 17.2 MiB."""
    from pathlib import Path

    from app.collectors.cgroupmem import _unmapped_swapcache
    from app.parsers.cgroup import parse_memory_stat

    text = (Path(__file__).parent / "fixtures/cgroupmem-swapcache/v1-memory.stat").read_text()
    stat = parse_memory_stat(text)
    assert _unmapped_swapcache(lambda k: stat.get(f"total_{k}", stat.get(k))) == 66686976 - 48635904
    assert _unmapped_swapcache(lambda k: None) is None  # a kernel without the LRU counters: not known

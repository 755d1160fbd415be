"""Shared fixtures: root, real fault workloads, and the tracer tools.

Every fixture that cannot run here skips with the reason (never passes silently). Workloads undo
everything they changed in teardown, also when the test fails (see tests/workloads).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netguard
from tests.machine_lock import machine_first, pytest_runtest_protocol  # noqa: F401 (the second pass's lock: `machine` tests run alone)
from tests.proctree import ReplayTree
from tests.tls_standin import certs, serve  # noqa: F401 (fixtures: TLS kubelet/API server stand-ins)
from tests.workloads import (
    WorkloadProcess,
    file_fault_workload,
    memory_hierarchy,
    no_memory_controller_reason,
    swap_workload,
)

pytest_plugins = [
    "tests.scenario_report",  # prints the diagnosis scenario matrix's accuracy table
    "tests.strict",  # skips: which may, which fail (CI=true, broken tracers), the summary line
]


FIXTURES = Path(__file__).parent / "fixtures"

# Loopback only, in this process and in every Python subprocess a test starts (tests/netguard.py).
netguard.install()
_GUARD_SITE = str(Path(__file__).parent / "netguard_site")
_ROOT = str(Path(__file__).parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_GUARD_SITE, _ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (_GUARD_SITE, _ROOT))]
)


# What a fixture needs is what every test that uses it needs (the markers of pyproject.toml; a test
# that starts a workload, tracer, server or browser without its marker fails: tests/needs.py).
_NEEDS_OF_FIXTURE = {
    "root_required": ("root",),
    "file_workload": ("workloads",),
    "swap_workload": ("root", "workloads"),
    "need_perf": ("root", "workloads"),
    "need_bpftrace": ("root", "workloads"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            for marker in _NEEDS_OF_FIXTURE.get(name, ()):
                item.add_marker(marker)
    machine_first(items)


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    """Fail any test whose code tried to reach beyond loopback (the guard refused it)."""
    netguard.take()
    yield
    tried = netguard.take()
    if tried:
        pytest.fail(f"the test tried to connect beyond loopback (refused): {', '.join(sorted(set(tried)))[:500]}")


@pytest.fixture
def captured_tree(tmp_path: Path) -> ReplayTree:
    """A writable copy of a real procfs tree of this machine (tests/fixtures/proctree-file-and-pod-swap):
    point Settings(proc_root=.proc_root, cgroup_root=.cgroup_root) at it; `with tree.play():` replays
    its recorded counters; ReplayTracer(tree) is an exact tracer with the recorded addresses, for
    investigate(edges=Edges(tracers=[...])). Needs no root, perf or gcc (tests/proctree.py)."""
    return ReplayTree(FIXTURES / "proctree-file-and-pod-swap", tmp_path / "tree")


@pytest.fixture
def root_required() -> None:
    from tests.needs import require_marker

    require_marker("root", "what needs root")
    if os.geteuid() != 0:
        pytest.skip("needs root (swap, cgroups, perf/bpftrace on the whole node)")


@pytest.fixture
def file_workload(tmp_path: Path) -> Iterator[WorkloadProcess]:
    """A process re-reading a 64 MiB mmapped file: ~8-17k file-backed major faults/s.
    `.start`/`.end` is the mapping, `.path` the file."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: cannot build tests/workloads/file_faults.c")
    with file_fault_workload(tmp_path / "pfi-test-data.bin", size_mb=64) as proc:
        yield proc


@pytest.fixture(name="swap_workload")
def swap_workload_fixture(root_required: None) -> Iterator[WorkloadProcess]:
    """A process touching 128 MiB of anonymous memory in a memory cgroup (pfi-test-swap-<pid>-<n>, v1
    or v2: tests/workloads memory_cgroup) limited to 64 MiB: ~4-8k swap-in major faults/s. `.start`/`.end` is the mapping, `.cgroup` the group."""
    for tool in ("gcc", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot run the swap workload")
    if memory_hierarchy() is None:
        pytest.skip(no_memory_controller_reason())
    with swap_workload(size_mb=128, limit_mb=64) as proc:
        yield proc


@pytest.fixture
def need_perf(root_required: None) -> None:
    from tests.strict import need_tracer  # not at the top: tests.strict is a plugin (pytest_plugins)

    need_tracer("perf-major")


@pytest.fixture
def need_bpftrace(root_required: None) -> None:
    from tests.strict import need_tracer

    need_tracer("bpftrace-major")

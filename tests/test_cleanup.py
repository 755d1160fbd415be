"""scripts/cleanup.sh undoes what a crashed test run recorded, and nothing else: not a live run's
things, not a kubepods-shaped cgroup it did not make, not a process that merely has a test-like name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workloads import CGROUP_MEMORY_ROOT, cleanup_dead_runs, rmdir_when_free, starttime

REPO = Path(__file__).resolve().parent.parent
POD = "pod3f5e2a1b-9c8d-4e7f-a6b5-0c1d2e3f4a5b"
CID = "cd" * 32

# A test run that makes a kubepods-shaped cgroup and a process in it through the workload helper,
# records a process with no PR_SET_PDEATHSIG (so it survives its run, as a stray child can), says
# where they are, then waits: SIGKILL is the crash; "quit" on stdin ends it cleanly.
RUN = f"""
import subprocess, sys
from tests.workloads import forget, memory_cgroup, record_process
with memory_cgroup("kubepods/burstable/{POD}/{CID}", 64) as group:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    rec = record_process(child)
    (group / "cgroup.procs").write_text(str(child.pid))
    print(group, child.pid, flush=True)
    sys.stdin.readline()
    child.kill(); child.wait(); forget(rec)
"""


def _run(state: Path) -> tuple[subprocess.Popen, Path, int]:  # type: ignore[type-arg]
    env = dict(os.environ, PFI_TEST_RUN_STATE=str(state), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert len(line) == 2, f"test run did not start: {proc.wait(10)}"
    return proc, Path(line[0]), int(line[1])


def _alive(pid: int) -> bool:
    st = Path(f"/proc/{pid}/stat")
    try:
        return st.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def _decoy() -> Iterator[tuple[Path, int]]:
    """What a Kubernetes node has and cleanup must never touch: a kubepods-shaped cgroup made by
    someone else (not pfi-*), and a process in it whose name looks like one of ours."""
    top = CGROUP_MEMORY_ROOT / f"decoy-{os.getpid()}"
    group = top / "kubepods" / "burstable" / POD / CID
    group.mkdir(parents=True)
    proc = subprocess.Popen(["pfi-workload-decoy", "300"], executable="/bin/sleep")
    try:
        (group / "cgroup.procs").write_text(str(proc.pid))
        yield group, proc.pid
    finally:
        proc.kill()
        proc.wait()
        for d in (group, *group.parents):
            if d == CGROUP_MEMORY_ROOT:
                break
            with contextlib.suppress(OSError):
                rmdir_when_free(d, tries=40)


@pytest.mark.workloads  # its cgroups and processes are real (the marker guard, tests/needs.py)
def test_cleanup_removes_only_what_a_crashed_run_recorded(root_required, tmp_path: Path) -> None:
    if not (CGROUP_MEMORY_ROOT / "memory.limit_in_bytes").exists():
        pytest.skip(f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}")
    state = tmp_path / "run-state"
    crashed, crashed_group, stray = _run(state)
    live, live_group, live_child = _run(state)
    try:
        with _decoy() as (decoy_group, decoy_pid):
            # the crashed run's group is nested under its own pfi-test-<pid>-<n>/ parent
            top = crashed_group.relative_to(CGROUP_MEMORY_ROOT).parts[0]
            assert top.startswith("pfi-test-") and crashed_group.name == CID
            runs = {p.name: sorted(r.name.split("-")[0] for r in p.iterdir()) for p in state.iterdir()}
            assert runs == {f"{crashed.pid}-{starttime(crashed.pid)}": ["cgroup", "proc"],
                            f"{live.pid}-{starttime(live.pid)}": ["cgroup", "proc"]}

            crashed.kill()  # the crash: no undo ran, the stray child lives on in its group
            crashed.wait()
            assert _alive(stray) and crashed_group.exists()

            res = subprocess.run(["bash", str(REPO / "scripts/cleanup.sh")], capture_output=True, text=True,
                                 timeout=60, env=dict(os.environ, PFI_TEST_RUN_STATE=str(state)))
            assert res.returncode == 0, res.stderr
            assert f"killed pid {stray}" in res.stdout and "removed cgroup" in res.stdout

            # the crashed run's process and cgroups are gone, with its records
            assert not _alive(stray)
            assert not (CGROUP_MEMORY_ROOT / top).exists()
            assert not any(p.name.startswith(f"{crashed.pid}-") for p in state.iterdir())
            # the live run's are untouched
            assert _alive(live_child) and live_group.exists()
            assert any(p.name.startswith(f"{live.pid}-") for p in state.iterdir())
            # and so are the decoys: a kubepods-shaped group and a pfi-workload-named process
            assert _alive(decoy_pid) and decoy_group.exists()
            assert str(decoy_pid) in (decoy_group / "cgroup.procs").read_text().split()
        # the live run ends normally and undoes its own things
        assert live.stdin is not None
        live.stdin.write("quit\n")
        live.stdin.flush()
        assert live.wait(20) == 0
        assert not live_group.exists() and not _alive(live_child)
        assert not state.exists() or not list(state.iterdir())
    finally:
        for p in (crashed, live):
            if p.poll() is None:
                p.kill()
                p.wait()
        cleanup_dead_runs(state, log=lambda _m: None)  # whatever an assertion above left


class _Sleeper:
    """A `sleep 300` in its own session whose parent has exited (init reaps it, so a kill shows at
    once): a process that a broken cleanup could kill, never this test's own."""

    def __init__(self) -> None:
        out = subprocess.run(["setsid", "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True,
                             text=True, timeout=10, check=True)
        self.pid = int(out.stdout)
        self.start = starttime(self.pid)

    def alive(self) -> bool:
        return self.start is not None and starttime(self.pid) == self.start and _alive(self.pid)

    def gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.alive()


@contextlib.contextmanager
def _sleepers(n: int) -> Iterator[list[_Sleeper]]:
    procs = [_Sleeper() for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.alive():
                os.kill(p.pid, signal.SIGKILL)


def test_cleanup_refuses_records_that_are_not_test_things(tmp_path: Path) -> None:
    """A damaged or hostile record never makes cleanup remove a real cgroup or kill a reused pid."""
    with _sleepers(2) as (reused, recorded):
        dead_run = tmp_path / "999999999-1"  # no such process: a dead run
        dead_run.mkdir(parents=True)
        (dead_run / "cgroup-1").write_text("/sys/fs/cgroup/memory/kubepods\n")
        (dead_run / "cgroup-2").write_text(f"/sys/fs/cgroup/memory/pfi-test-1-1/../decoy-{os.getpid()}\n")
        # pid reused since: same pid, another start time
        (dead_run / "proc-3").write_text(f"{reused.pid} {reused.start + 1} pfi-workload-file\n")
        (dead_run / "swap-4").write_text("/etc/passwd\n")
        # the contrast: a process the dead run did start (pid and start time match) is stopped
        (dead_run / "proc-5").write_text(f"{recorded.pid} {recorded.start} pfi-workload-file\n")
        said: list[str] = []
        cleanup_dead_runs(tmp_path, log=said.append)
        assert reused.alive(), "killed a process whose pid was reused"
        assert recorded.gone_within(5), "the dead run's own process was left running"
        assert sum("refusing" in m for m in said) == 3, said
        assert Path("/etc/passwd").exists()
        assert not dead_run.exists()  # its records are dealt with


def test_cleanup_removes_a_dead_runs_shm_file_and_nothing_else(tmp_path: Path) -> None:
    """A killed run's /dev/shm/pfi-test-* file is removed (its swapped pages kept a zram device from being
    swapped off through a day of runs, so later "disk swap" rows swapped to zram); a record naming any other
    file is refused and the file stays."""
    ours = Path(f"/dev/shm/pfi-test-{os.getpid()}-cleanup")
    decoy = Path(f"/dev/shm/decoy-{os.getpid()}")
    try:
        ours.write_bytes(b"x" * 4096)
        decoy.write_bytes(b"y")
        dead_run = tmp_path / "999999999-1"
        dead_run.mkdir()
        (dead_run / "shm-1").write_text(f"{ours}\n")
        (dead_run / "shm-2").write_text(f"{decoy}\n")
        (dead_run / "shm-3").write_text("/dev/shm/../etc/pfi-test-x\n")
        said: list[str] = []
        cleanup_dead_runs(tmp_path, log=said.append)
        assert not ours.exists(), said
        assert decoy.exists() and sum("refusing shm record" in m for m in said) == 2, said
        assert not dead_run.exists()
    finally:
        ours.unlink(missing_ok=True)
        decoy.unlink(missing_ok=True)


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    """A run whose owner (pid and start time) still lives is not touched, its processes neither;
    the same records under a dead owner are undone."""
    with _sleepers(3) as (owner, child, orphan):
        run = tmp_path / f"{owner.pid}-{starttime(owner.pid)}"
        run.mkdir()
        (run / "proc-1").write_text(f"{child.pid} {child.start} pfi-workload-file\n")
        dead = tmp_path / f"{owner.pid}-{starttime(owner.pid) + 1}"  # that pid, another process: dead
        dead.mkdir()
        (dead / "proc-1").write_text(f"{orphan.pid} {orphan.start} pfi-workload-file\n")
        cleanup_dead_runs(tmp_path, log=lambda _m: None)
        assert (run / "proc-1").exists() and child.alive(), "a live run's process was stopped"
        assert owner.alive()
        assert orphan.gone_within(5) and not dead.exists(), "the dead run's process was left running"


def test_no_stop_by_name_in_scripts_tests_bench_or_app() -> None:
    """Stopping processes by name reaches every process of that name on the node, other users' and
    other pods' included: what a run started is stopped by its PID. This file is the one place that
    names the tools, to look for them."""
    offenders = []
    for path in [*REPO.joinpath("scripts").rglob("*"), *REPO.joinpath("tests").rglob("*.py"),
                 *REPO.joinpath("bench").rglob("*.py"), *REPO.joinpath("app").rglob("*.py"), REPO / "test.sh"]:
        if path.is_file() and path != Path(__file__).resolve():
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(REPO)}: {w}" for w in ("pkill", "killall") if w in text]
    assert not offenders

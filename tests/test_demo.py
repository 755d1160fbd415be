"""`pagefault-inspector demo` (app/demo.py): as root, a real limit verdict on a workload of its own,
and nothing of it left afterwards (process, cgroup, file), also when interrupted; without root, one
clear line and a non-zero exit."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.collectors.cgroupmem import memory_hierarchy
from app.demo import WINDOW_MAX, WINDOW_SECONDS
from app.tracers.leftovers import alive, starttime
from tests.workloads import forget_process, record_process

REPO = Path(__file__).resolve().parent.parent
CMD = [sys.executable, "-m", "app.cli", "demo"]
ENV = dict(os.environ, COLUMNS="250", PYTHONPATH=str(REPO))  # wide: the report's lines are not folded
STARTED = re.compile(r"demo: process (\d+) \(pfi-demo\) re-reads it through mmap in memory cgroup (\S+) \(v[12]\)")
WRITING = re.compile(r"demo: writing (\S+) \(128 MiB\)")
# The VM tier's guest (TCG) runs many times slower than a host: scripts/vm/guest.sh measures by how much,
# and the budgets below scale by it there (1 elsewhere).
SLOWDOWN = max(1.0, float(os.environ.get("PFI_VM_SLOWDOWN", "1") or 1))


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a memory cgroup, perf)")
    if memory_hierarchy(Path("/sys/fs/cgroup")) is None:
        pytest.skip("no memory cgroup controller under /sys/fs/cgroup")


def _made(stderr: str) -> tuple[int, Path, Path]:
    """The demo's workload pid, cgroup and file, as it says them on stderr."""
    started, writing = STARTED.search(stderr), WRITING.search(stderr)
    assert started and writing, stderr
    return int(started[1]), Path(started[2]), Path(writing[1])


def _until(proc: subprocess.Popen[bytes], marker: str) -> bytes:
    """The demo's stderr until it says `marker` (it is still running then)."""
    assert proc.stderr is not None
    err = b""
    deadline = time.monotonic() + 60
    while marker.encode() not in err:
        assert time.monotonic() < deadline and proc.poll() is None, err.decode()
        if select.select([proc.stderr], [], [], 0.5)[0]:
            err += os.read(proc.stderr.fileno(), 4096)
    return err


def _gone(pid: int, start: int | None, cgroup: Path, file: Path) -> None:
    assert not alive(pid, start), f"the demo's workload {pid} is still running"
    assert not cgroup.exists(), f"the demo's cgroup {cgroup} is still there"
    assert not file.exists(), f"the demo's file {file} is still there"


@pytest.mark.root
@pytest.mark.workloads
@pytest.mark.machine  # the demo investigates the whole node
def test_demo_prints_a_limit_verdict_naming_its_file_and_leaves_nothing() -> None:
    _needs_root()
    t0 = time.monotonic()
    res = subprocess.run(CMD, capture_output=True, text=True, timeout=min(900, 120 * SLOWDOWN), env=ENV, cwd="/")
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    pid, cgroup, file = _made(res.stderr)
    assert file.name.startswith("pfi-demo-") and cgroup.name == file.stem
    out = res.stdout
    assert "cause: container_memory_limit" in out, out
    # the pod-less subject, the file it re-reads, and the limit that binds
    assert f"host process pfi-demo (pid {pid}) re-reads {file} from disk" in out, out
    assert f"its memory cgroup /{cgroup.name} runs at" in out and "of its 64 MiB limit" in out, out
    assert "workingset_refault_file) rose by" in out  # the evidence: pages the limit evicted are read again
    # the fix: a limit in MiB for that cgroup, big enough for the 128 MiB file and not wasteful (issue 16's
    # bound: at most 2x the workload + 32 MiB), and the command that sets it
    limit = re.search(rf"limit: set memory\.(?:limit_in_bytes|max) of cgroup /{re.escape(cgroup.name)} to "
                      r"(?:at least )?([\d,]+) MiB", out)
    assert limit is not None, out
    mib = int(limit.group(1).replace(",", ""))
    # The number is what its basis lines compute (one 16 MiB step for their whole-MiB rounding): the memory
    # that faults is the 128 MiB file, and hardly anything else is resident in the demo's cgroup, since the
    # file's resident pages (smaps Rss) are counted once with it. Without smaps they count again as "other"
    # (224 MiB instead of 160): the old 128-288 range let that through.
    basis = re.search(r"\(([\d,]+) MiB for the memory that faults \+ ([\d,]+) MiB other resident\) x ([\d.]+), "
                      r"rounded up to 16 MiB = ([\d,]+) MiB", out)
    assert basis is not None, out
    faulting, other, factor, said = (float(g.replace(",", "")) for g in basis.groups())
    assert 128 <= faulting <= 128 + 16 and other < 16, basis.group(0)
    computed = -(-int((faulting + other) * factor) // 16) * 16
    assert said == mib and abs(mib - computed) <= 16, (basis.group(0), computed)
    assert re.search(rf"echo \d+ > {re.escape(str(cgroup))}/memory\.(?:limit_in_bytes|max)", out), out
    assert f"removed process {pid}, cgroup {cgroup}, file {file} (" in res.stderr
    _gone(pid, None, cgroup, file)
    # What it protects: a new user's first run (the README says about 15 s; 30 s is the budget issue 16
    # gave it), in the workloads pass, one test at a time; not a speed measurement.
    print(f"demo: {took:.0f} s, limit {mib} MiB; its stderr: " + " / ".join(res.stderr.strip().splitlines()[-4:]))
    # On a slow machine (the VM guest) the budget scales by its slowdown, and the window may grow to WINDOW_MAX
    # by design (one pass over the file at the rate it measured).
    budget = 30 * SLOWDOWN + (WINDOW_MAX - WINDOW_SECONDS if SLOWDOWN > 1 else 0)
    assert took < budget, f"the demo took {took:.1f} s (its budget for a user's first run: {budget:.0f} s)"


@pytest.mark.root
@pytest.mark.workloads
@pytest.mark.parametrize(("signum", "after"), [(signal.SIGINT, "re-reads it through mmap"),
                                              (signal.SIGTERM, "investigating for")])
def test_demo_interrupted_mid_run_removes_what_it_made(signum: signal.Signals, after: str) -> None:
    """Ctrl-C while the workload warms up, SIGTERM while the engine traces: the demo stops, kills its
    workload, removes its cgroup and its file, and exits with 128+signal."""
    _needs_root()
    proc = subprocess.Popen(CMD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd="/",
                            start_new_session=True)
    record_process(proc)
    try:
        err = _until(proc, after)
        pid, cgroup, file = _made(err.decode())
        start = starttime(pid)
        assert alive(pid, start) and cgroup.exists() and file.exists()  # all there while it runs
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=30)
        err += rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        forget_process(proc)
    assert proc.returncode == 128 + signum, err.decode()
    assert f"stopped by {signal.Signals(signum).name}" in err.decode()
    _gone(pid, start, cgroup, file)


def test_demo_without_root_says_why_in_one_line() -> None:
    cmd = CMD
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv not found: cannot drop to nobody")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CMD]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=ENV, cwd="/")
    assert res.returncode != 0
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "pagefault-inspector demo: needs root: it makes a memory cgroup with a 64 MiB limit and traces its "
        "workload's page faults (run it as root, e.g. sudo ./run.sh demo)"]


def test_leftovers_of_a_killed_demo_are_removed_only_when_their_owner_is_gone(tmp_path: Path) -> None:
    """A demo killed with SIGKILL leaves its (empty) cgroup and its file; the next one removes those
    whose pid+starttime process is gone, and nothing else."""
    from app.demo import reap_leftovers

    base, files = tmp_path / "cgroups", tmp_path / "files"
    base.mkdir()
    files.mkdir()
    me = f"pfi-demo-{os.getpid()}-{starttime(os.getpid())}"
    dead = f"pfi-demo-{os.getpid()}-1"  # this pid with another start time: another, gone process
    for name in (me, dead, "pfi-demo-other", "pfi-test-1"):
        (base / name).mkdir()
        (files / f"{name}.bin").write_bytes(b"x")
    (base / dead / "child").mkdir()  # a cgroup that is not empty is left alone
    notes = reap_leftovers(base, files)
    assert sorted(p.name for p in base.iterdir()) == sorted([me, dead, "pfi-demo-other", "pfi-test-1"])
    assert sorted(p.name for p in files.iterdir()) == sorted(f"{n}.bin" for n in (me, "pfi-demo-other", "pfi-test-1"))
    assert notes == [f"removed file {files / dead}.bin left by an earlier demo"]
    (base / dead / "child").rmdir()
    assert reap_leftovers(base, files) == [f"removed cgroup {base / dead} left by an earlier demo"]


def test_a_quiet_investigation_points_at_the_demo() -> None:
    """The first run on a node where nothing faults ends with where to see a finding (on stderr: the
    report on stdout stays the report). The node is a captured idle tree, so other test runs' faults
    do not count."""
    env = dict(ENV, PFI_PROC_ROOT=str(REPO / "tests/fixtures/proc-captures/idle/tick0"))
    res = subprocess.run([sys.executable, "-m", "app.cli", "investigate", "--seconds", "1", "--tracer", "procfs"],
                         capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "cause: no_major_faults" in res.stdout and "demo" not in res.stdout
    assert "nothing faults here: `pagefault-inspector demo` (as root) shows a finding" in res.stderr


def test_the_demo_finds_the_memory_controller_on_v1_hybrid_and_v2(tmp_path: Path) -> None:
    """Where the demo makes its group: v1 memory/ (also on hybrid hosts, where unified/ has no
    controllers), else the v2 tree whose cgroup.controllers lists memory (root or unified/)."""
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "unified").mkdir()
    (v1 / "unified" / "cgroup.controllers").write_text("")  # hybrid: the unified tree has no controllers
    assert memory_hierarchy(v1) == (1, v1 / "memory")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    assert memory_hierarchy(v2) == (2, v2)
    unified = tmp_path / "unified-memory"
    (unified / "unified").mkdir(parents=True)
    (unified / "unified" / "cgroup.controllers").write_text("memory pids\n")
    assert memory_hierarchy(unified) == (2, unified / "unified")
    none = tmp_path / "none"
    none.mkdir()
    (none / "cgroup.controllers").write_text("cpu pids\n")
    assert memory_hierarchy(none) is None


@pytest.mark.root
@pytest.mark.workloads
def test_a_demo_killed_with_sigkill_leaves_no_process_and_the_next_one_removes_the_rest() -> None:
    """SIGKILL cannot be caught: the workload dies with the demo (PR_SET_PDEATHSIG); the empty cgroup
    and the file stay until the next demo, which removes them since their owner is gone."""
    from app.demo import DEFAULT_DIR, reap_leftovers

    _needs_root()
    proc = subprocess.Popen(CMD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd="/",
                            start_new_session=True)
    record_process(proc)
    try:
        pid, cgroup, file = _made(_until(proc, "re-reads it through mmap").decode())
        start = starttime(pid)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        forget_process(proc)
    deadline = time.monotonic() + 10
    while alive(pid, start):
        assert time.monotonic() < deadline, f"the workload {pid} outlived the demo killed with SIGKILL"
        time.sleep(0.05)
    try:
        assert cgroup.exists() and file.exists()  # what only the next demo can remove
        notes = reap_leftovers(cgroup.parent, DEFAULT_DIR)
        assert f"removed cgroup {cgroup} left by an earlier demo" in notes
        assert f"removed file {file} left by an earlier demo" in notes
        _gone(pid, start, cgroup, file)
    finally:  # whatever failed above, nothing of this test's demo stays
        from app.collectors.cgroupmem import rmdir_when_free

        rmdir_when_free(cgroup, tries=40)
        file.unlink(missing_ok=True)


def test_demo_without_a_memory_controller_says_so_and_makes_nothing(tmp_path: Path) -> None:
    _needs_root()
    before = sorted(p.name for p in Path("/var/tmp").glob("pfi-demo-*"))
    res = subprocess.run(CMD, capture_output=True, text=True, timeout=60, cwd="/",
                         env=dict(ENV, PFI_CGROUP_ROOT=str(tmp_path)))
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [f"pagefault-inspector demo: no memory cgroup controller under {tmp_path} "
                                       "(v1 memory/ or a v2 tree whose cgroup.controllers lists memory)"]
    assert sorted(p.name for p in Path("/var/tmp").glob("pfi-demo-*")) == before


def test_the_warm_up_waits_longer_on_a_slow_machine_and_says_why_it_gives_up() -> None:
    """A TCG guest re-reads the demo's file at ~1,200 faults/s: its first pass (36,864 faults) takes
    ~30 s, past the 20 s a local disk needs. The demo waits on while the rate it sees ends the pass
    within WARMUP_MAX, and gives up with the rate and the time it would need when it does not."""
    from app.demo import WARMUP_MAX, WARMUP_TIMEOUT, warmup_gives_up

    needed, where = 36_864, Path("/var/tmp")
    assert warmup_gives_up(100, needed, WARMUP_TIMEOUT - 1, where) is None  # too early to judge
    assert warmup_gives_up(24_000, needed, 20.0, where) is None  # 1,200/s: ~11 s more
    assert warmup_gives_up(needed, needed, WARMUP_MAX + 5, where) is None  # done
    why = warmup_gives_up(2_000, needed, 20.0, where)  # 100/s: ~349 s more
    assert why is not None and "100/s" in why and "349 s more" in why and "/var/tmp" in why, why
    why = warmup_gives_up(0, needed, 20.0, where)  # nothing at all
    assert why is not None and "made only 0 major faults" in why, why


def test_the_window_sees_the_whole_file_once_at_the_warm_ups_rate() -> None:
    """A 5 s window at a TCG guest's ~1,200 faults/s saw 56 MiB of the 128 MiB file, and the demo recommended
    80 MiB, a limit under which its workload still faulted. The window is one pass at the warm-up's rate
    (+25%): 5 s on this host's ~11,000/s, 35 s at 1,200/s, at most 60 s."""
    from app.demo import pass_window

    pages = (128 << 20) // 4096
    assert pass_window(11_000, pages) == WINDOW_SECONDS
    assert pass_window(1_200, pages) == 35.0
    assert pass_window(100, pages) == pass_window(0, pages) == WINDOW_MAX

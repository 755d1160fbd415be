"""The suite fails when tracing breaks (tests/strict.py): a broken installed tracer fails instead of
skipping, an unexpected skip fails under CI=true, every run lists its skips by reason, and a test
that starts a real workload without its marker fails. No root needed: the tracer is a script that
fails its probe, and the policy is run on a tiny suite in a subprocess."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import strict

REPO = Path(__file__).resolve().parent.parent


def _broken_perf(tmp_path: Path) -> str:
    """An installed perf that fails its probe (as a perf without permission to open events does)."""
    perf = tmp_path / "perf"
    perf.write_text("#!/bin/sh\necho 'Error: simulated: No permission to enable major-faults event.' >&2\nexit 1\n")
    perf.chmod(perf.stat().st_mode | stat.S_IXUSR)
    return str(perf)


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """need_tracer's own root check sees root (the probe here is a script: root changes nothing)."""
    monkeypatch.setattr(strict.os, "geteuid", lambda: 0)
    monkeypatch.setattr(strict, "require_marker", lambda *_: None)  # only the probe runs: a script
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(strict.OPT_OUT, raising=False)


def test_an_installed_tracer_whose_probe_fails_fails_with_the_probes_reason(
    as_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFI_PERF_PATH", _broken_perf(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"perf-major not available: .*No permission to enable") as err:
        strict.need_tracer("perf-major")
    assert strict.OPT_OUT in str(err.value)


def test_opting_out_skips_instead_but_never_under_ci(
    as_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFI_PERF_PATH", _broken_perf(tmp_path))
    monkeypatch.setenv(strict.OPT_OUT, "1")
    with pytest.raises(pytest.skip.Exception, match="No permission to enable"):
        strict.need_tracer("perf-major")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        strict.need_tracer("perf-major")


def test_a_tool_that_is_not_installed_skips_and_ci_does_not_expect_it(
    as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFI_PERF_PATH", "/nonexistent/pfi-test-perf")
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/pfi-test-perf") as err:
        strict.need_tracer("perf-major")
    assert strict.expected(str(err.value)) is None, "under CI=true this skip fails the test"


KPROBE_TEST = "tests/test_tracers.py::test_exact_tracer_on_file_faults[bpftrace-kprobe]"
NO_KPROBES = "bpftrace-kprobe not available: no kprobes: kernel built without CONFIG_KPROBES (/proc/config.gz)"


def test_expected_reasons_say_why() -> None:
    assert strict.expected(NO_KPROBES, KPROBE_TEST)
    assert strict.expected("bpftrace-kprobe not available: no kprobes: /sys/kernel/tracing/kprobe_events missing "
                           "(CONFIG_KPROBES off)", "tests/test_engine.py::test_exact[bpftrace-kprobe]")
    assert strict.expected("perf-major not available: perf binary not found: 'perf'", KPROBE_TEST) is None
    assert strict.expected("the machine was not quiet: x made more faults", KPROBE_TEST) is None
    assert all(len(why.split()) >= 5 for *_, why in strict.EXPECTED_SKIPS), "each entry says why it is expected"


@pytest.mark.parametrize(("reason", "test"), [
    # a listed reason's words inside another reason (re.search let this one through)
    ("perf broken, but this kernel has kprobes", "tests/test_tracers.py::test_forced_unavailable_backend_falls_back_and_says_why"),
    ("perf-major not available: no permission; kprobes work here", "tests/test_tracers.py::test_forced_unavailable_backend_falls_back_and_says_why"),
    (NO_KPROBES + " and perf is broken", KPROBE_TEST),
    # a listed reason, but on a test it is not listed for: perf-major's test cannot skip for want of kprobes
    (NO_KPROBES, "tests/test_tracers.py::test_exact_tracer_on_file_faults[perf-major]"),
    (NO_KPROBES, "tests/test_service_scheduler.py::test_anything"),
    ("no IPv6 loopback here: [Errno 99]", "tests/test_engine.py::test_x"),
])
def test_reasons_are_matched_whole_and_per_test(reason: str, test: str) -> None:
    assert strict.expected(reason, test) is None


_SUITE = '''
import pytest
from tests.needs import require_marker

def test_ok():
    pass

@pytest.mark.parametrize("backend", ["bpftrace-kprobe"])
def test_kernel_limit(backend):
    pytest.skip("bpftrace-kprobe not available: no kprobes: kernel built without CONFIG_KPROBES (/proc/config.gz)")

def test_missing_tool():
    pytest.skip("not installed: prometheus")

@pytest.mark.workloads
def test_marked_workload():
    require_marker("workloads", "a real workload")

def test_unmarked_workload():
    require_marker("workloads", "a real workload")
'''


def _run_suite(tmp_path: Path, ci: bool, suite: str = _SUITE, extra: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """The tiny suite as tests/test_tracers.py under tmp_path (the test ids EXPECTED_SKIPS lists), and
    `extra` files beside it."""
    (tmp_path / "tests").mkdir(exist_ok=True)
    (tmp_path / "tests" / "test_tracers.py").write_text(textwrap.dedent(suite))
    for name, text in (extra or {}).items():
        (tmp_path / "tests" / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", strict.OPT_OUT)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # Only the plugin under test (-p tests.strict): the installed ones (schemathesis, hypothesis, xdist,
    # anyio, timeout) cost each tiny run ~1 s of imports and play no part in what it checks.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.strict", "-p", "no:cacheprovider", "-o", "addopts=",
         "-o", "markers=workloads: x", "--rootdir", str(tmp_path), str(tmp_path / "tests")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )


def test_every_run_lists_its_skips_and_ci_fails_an_unexpected_one(tmp_path: Path) -> None:
    here = _run_suite(tmp_path, ci=False)
    lines = here.stdout.splitlines()
    summary = next(line for line in lines if line.startswith("skips by reason"))
    assert summary.startswith("skips by reason (2): ")
    assert "1 x not installed: prometheus [NOT EXPECTED]" in summary
    assert "1 x bpftrace-kprobe not available: no kprobes" in summary
    assert "1 failed, 2 passed, 2 skipped" in here.stdout, here.stdout[-2000:]
    assert "test_unmarked_workload" in here.stdout and "is not marked 'workloads'" in here.stdout

    under_ci = _run_suite(tmp_path, ci=True)
    assert under_ci.returncode == 1
    assert "2 failed, 2 passed, 1 skipped" in under_ci.stdout, under_ci.stdout[-2000:]
    assert "not in tests/strict.py EXPECTED_SKIPS (for this test): not installed: prometheus" in under_ci.stdout


_XFAILS = '''
import pytest

@pytest.mark.xfail(reason="known bug")
def test_planted_failing_xfail():
    assert False

@pytest.mark.xfail(reason="known bug")
def test_planted_passing_xfail():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_strict_but_not_listed():
    assert False

def test_imperative_xfail():
    pytest.xfail("not today")
'''


def test_an_xfail_must_be_listed_and_strict(tmp_path: Path) -> None:
    run = _run_suite(tmp_path, ci=False, suite=_XFAILS)
    assert run.returncode == 1
    assert "4 failed" in run.stdout and "xfail" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
    assert run.stdout.count("xfail not listed in tests/strict.py EXPECTED_XFAILS") == 4, run.stdout[-3000:]


_MODULE_SKIP = '''
import pytest
pytest.importorskip("pfi_no_such_module_anywhere")

def test_never_runs():
    pass
'''


def test_a_module_skipped_at_collection_under_ci_is_summarised_as_failed(tmp_path: Path) -> None:
    run = _run_suite(tmp_path, ci=True, suite="def test_ok():\n    pass\n", extra={"test_needs_a_module.py": _MODULE_SKIP})
    assert run.returncode == 1, run.stdout[-2000:]
    last = run.stdout.strip().splitlines()[-1]
    assert "1 failed" in last and "skipped" not in last, last
    assert "FAILED tests/test_needs_a_module.py: skipped at collection under CI=true" in run.stdout
    here = _run_suite(tmp_path, ci=False, suite="def test_ok():\n    pass\n",
                      extra={"test_needs_a_module.py": _MODULE_SKIP})
    assert here.returncode == 0 and "1 passed, 1 skipped" in here.stdout.strip().splitlines()[-1], here.stdout[-2000:]


def test_ci_run_sets_ci_itself(tmp_path: Path) -> None:
    """.ci/run under a runner that does not set CI: the suite it starts still runs with CI=true."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "test.sh").write_text('#!/bin/sh\necho "CI=$CI args=$*"\n')
    (tmp_path / "test.sh").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env,
                         timeout=30, check=True)
    assert out.stdout.strip() == "CI=true args="


# --- the marker guard sees what a test does (tests/needs.py), whoever does it ----------------------------

_GUARD = '''
import os, subprocess, sys
import pytest

def _workload():  # a process named like a test workload; /bin/true does the work
    subprocess.run(["pfi-workload-planted", "0"], executable="/bin/true", check=True)

def test_raw_popen_of_a_workload_unmarked():
    _workload()

def test_swallowed_by_the_code_under_test():
    try:  # as the engine does when a tracer fails to start: falls back, and the test would pass
        _workload()
    except Exception:
        pass

def test_a_cgroup_made_by_a_raw_mkdir_unmarked():
    os.mkdir("/sys/fs/cgroup/pfi-test-guard-no-such-parent/x")  # refused before the kernel sees it

def test_a_workload_started_by_a_subprocess_unmarked():
    code = "import subprocess; subprocess.run(['pfi-workload-planted'], executable='/bin/true')"
    subprocess.run([sys.executable, "-c", code], check=False)

@pytest.mark.workloads
def test_marked():
    _workload()
    subprocess.run([sys.executable, "-c", "import subprocess; subprocess.run(['pfi-workload-x'], executable='/bin/true')"],
                   check=True)
'''

_REAL_PERF = '''

def test_the_apps_own_tracer_unmarked():
    from app.config import Settings
    from app.investigation.engine import investigate
    investigate(Settings(tracer="perf-major", kubelet_url=None, apiserver_fallback=False), seconds=1,
                pids=[os.getpid()])
'''


def test_the_marker_guard_catches_what_a_test_does(tmp_path: Path) -> None:
    """Unmarked tests that start a workload (raw Popen, inside code that swallows the error, from a Python
    subprocess), make a cgroup with a raw mkdir, or (as root, with perf) run the app's own tracer: each
    fails; the marked one passes."""
    suite = _GUARD
    real = os.geteuid() == 0 and shutil.which("perf") is not None
    if real:
        suite += _REAL_PERF
    run = _run_suite(tmp_path, ci=False, suite=suite)  # PYTHONPATH has tests/netguard_site (conftest)
    out = run.stdout
    failed = sorted(line.split("::")[1].split(" ")[0] for line in out.splitlines() if line.startswith("FAILED"))
    want = ["test_a_cgroup_made_by_a_raw_mkdir_unmarked", "test_a_workload_started_by_a_subprocess_unmarked",
            "test_raw_popen_of_a_workload_unmarked", "test_swallowed_by_the_code_under_test"]
    if real:
        want.append("test_the_apps_own_tracer_unmarked")
    assert failed == sorted(want), out[-4000:]
    assert "1 passed" in out.strip().splitlines()[-1], out[-2000:]
    assert "a cgroup (mkdir /sys/fs/cgroup/pfi-test-guard-no-such-parent/x)" in out
    assert "the workload process pfi-workload-planted" in out and "is not marked 'workloads'" in out
    if real:
        assert "the real tracer /usr/bin/perf" in out


@pytest.mark.parametrize(("executable", "args", "needs"), [
    (None, ["/usr/bin/perf", "record", "-e", "major-faults"], ("workloads",)),
    ("/usr/bin/perf_6.1", ["perf", "record"], ("workloads",)),
    ("/usr/bin/bpftrace", ["bpftrace", "-e", "x"], ("workloads",)),
    (None, ["/tmp/pytest-of-root/fake/perf", "record"], None),  # a test's fake tool: not a tracer
    (None, ["pfi-workload-file", "/tmp/x"], ("workloads",)),
    (None, ["/sbin/swapon", "/dev/zram0"], ("root", "workloads")),
    (None, ["ls", "-l"], None),
])
def test_what_an_exec_needs(executable: str | None, args: list[str], needs: tuple[str, ...] | None) -> None:
    from tests.needs import what_it_starts

    got = what_it_starts(executable, args)
    assert (got[0] if got else None) == needs, got


def test_a_test_reported_twice_is_named() -> None:
    """The closing lines name a test whose outcome came twice (run twice), and only that one: a skip in setup
    and a passing call of other tests are one outcome each."""
    def rep(nodeid: str, when: str, outcome: str) -> pytest.TestReport:
        return pytest.TestReport(nodeid, ("f.py", 1, nodeid), {}, outcome, None, when)

    stats: dict[str, list[object]] = {
        "passed": [rep("t::a", "call", "passed"), rep("t::b", "call", "passed"), rep("t::a", "call", "passed")],
        "skipped": [rep("t::c", "setup", "skipped")],
    }
    assert strict.ran_twice(stats) == ["t::a"]
    stats["passed"].pop()
    assert strict.ran_twice(stats) == []

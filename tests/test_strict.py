"""The suite fails when tracing breaks (tests/strict.py): a broken installed tracer fails instead of
skipping, an unexpected skip fails under CI=true, every run lists its skips by reason, and a test
that starts a real workload without its marker fails. No root needed: the tracer is a script that
fails its probe, and the policy is run on a tiny suite in a subprocess."""

from __future__ import annotations

import os
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


def test_expected_reasons_say_why() -> None:
    assert strict.expected("bpftrace-kprobe not available: no kprobes: kernel built without CONFIG_KPROBES "
                           "(/proc/config.gz)")
    assert strict.expected("perf-major not available: perf binary not found: 'perf'") is None
    assert strict.expected("the machine was not quiet: x made more faults") is None
    assert all(len(why.split()) >= 5 for _, why in strict.EXPECTED_SKIPS), "each entry says why it is expected"


_SUITE = '''
import pytest
from tests.needs import require_marker

def test_ok():
    pass

def test_kernel_limit():
    pytest.skip("bpftrace-kprobe not available: no kprobes: kernel built without CONFIG_KPROBES")

def test_missing_tool():
    pytest.skip("not installed: prometheus")

@pytest.mark.workloads
def test_marked_workload():
    require_marker("workloads", "a real workload")

def test_unmarked_workload():
    require_marker("workloads", "a real workload")
'''


def _run_suite(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(_SUITE))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", strict.OPT_OUT)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.strict", "-p", "no:cacheprovider", "-o", "addopts=",
         "-o", "markers=workloads: x", "--rootdir", str(tmp_path), str(tmp_path / "test_tiny.py")],
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
    assert "not in tests/strict.py EXPECTED_SKIPS: not installed: prometheus" in under_ci.stdout

"""When a test may skip, and when the run must fail instead.

A suite that skips whenever the code under test says "not available here" passes while the feature
is broken. So:

- `need_tracer(name)`: as root (and always under CI=true), a tracer whose tool is installed but whose
  probe says it does not work FAILS the test with the probe's reason; only a reason in EXPECTED_SKIPS
  (the kernel lacks kprobes, ...) skips. A person's machine may opt out with
  PFI_TEST_TRACERS_MAY_SKIP=1 (then it skips with the reason, as before).
- Under CI=true, every skip whose reason is not in EXPECTED_SKIPS fails the test (conftest's
  report hook), and a module skipped at collection fails the run.
- Every run ends with a line listing its skips grouped by reason (conftest's terminal summary).
- `tests.needs.require_marker(kind)`: the workload helpers, the servers and the browser call it, so a test that
  starts one without its marker (root, workloads, servers, browser) fails: `./test.sh --fast`
  deselects by those markers and must never start a real workload.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter

import pytest

from app.config import Settings
from app.tracers.registry import make_tracer
from tests.needs import require_marker, set_active

OPT_OUT = "PFI_TEST_TRACERS_MAY_SKIP"

# Skip reasons this machine may have, each with why it is expected (a regular expression on the
# reason pytest shows). Anything else that skips under CI=true fails.
EXPECTED_SKIPS: list[tuple[str, str]] = [
    (r"no kprobes: (kernel built without CONFIG_KPROBES|.*kprobe_events missing)",
     "the kernel, not the tool: this Firecracker VM's kernel has no kprobes (EKS nodes do); the kprobe "
     "backend's real-tracing tests run where kprobes work"),
    (r"this machine has kprobes|kprobes work here|this kernel has kprobes",
     "the inverse: tests about a kernel without kprobes, on one with them"),
    (r"no tracepoint exceptions:page_fault_user in .*arm64 has none",
     "arm64 kernels have no such tracepoint (the backend says so in its probe)"),
    (r"Python built without IPv6|no IPv6 loopback here",
     "a machine or container without IPv6 on loopback"),
    (r": the v1 path \(a (cgroupfs|hybrid)-layout pod\)|needs the v1 memory hierarchy and the unified tree",
     "a v1 or hybrid cgroup layout, which a v2-only node (EKS AL2023, BottleRocket, Debian 12) cannot have; "
     "the v2 path is tested by the same workloads there"),
    (r": the v2 path \(a systemd-layout pod\)",
     "the inverse: a kubepods.slice pod on a v2-only node's unified tree, which a v1 or hybrid host cannot "
     "have; these rows run in the VM tier's guest (./test.sh --vm)"),
    (r"runs in the VM tier's guest only",
     "checks of the cgroup-v2/kprobes/zram guest that scripts/vm/run.sh boots (./test.sh --vm)"),
]
_EXPECTED = [(re.compile(p), why) for p, why in EXPECTED_SKIPS]


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def expected(reason: str) -> str | None:
    """Why this skip reason is expected on a machine, or None when it is not."""
    for pattern, why in _EXPECTED:
        if pattern.search(reason):
            return why
    return None


def tracers_must_work() -> bool:
    """A broken installed tracer fails the test: always under CI, as root unless opted out."""
    if ci():
        return True
    return os.geteuid() == 0 and os.environ.get(OPT_OUT, "") not in ("1", "true", "yes")


# The tool each backend runs, as scripts/bootstrap.sh installs it.
_TOOL = {"perf-major": "perf", "perf-tracepoint": "perf", "bpftrace-major": "bpftrace",
         "bpftrace-kprobe": "bpftrace"}


def _installed(name: str, settings: Settings) -> bool:
    tool = _TOOL.get(name)
    if tool is None:
        return True
    if tool == "perf":
        from app.tracers import _perf

        return _perf.find_perf(settings.perf_path) is not None
    return shutil.which(settings.bpftrace_path) is not None


def need_tracer(*names: str, settings: Settings | None = None) -> None:
    """Skip (not root, tool not installed, an expected kernel limit) or fail (installed and broken,
    see tracers_must_work) unless every named backend works here."""
    require_marker("workloads", f"a real tracer ({', '.join(names)})")
    if os.geteuid() != 0:
        pytest.skip("needs root (perf/bpftrace on the whole node)")
    s = settings or Settings()
    for name in names:
        ok, why = make_tracer(name, s).available()
        if ok:
            continue
        reason = f"{name} not available: {why}"
        if _installed(name, s) and tracers_must_work() and expected(reason) is None:
            pytest.fail(f"{reason}\n(the tool is installed, so the probe's failure is a broken tracer: "
                        f"fix it, or set {OPT_OUT}=1 on a machine where it may skip)", pytrace=False)
        pytest.skip(reason)


# --- the markers a test needs: tests/needs.py ------------------------------------------------------

# --- the skips of a run ----------------------------------------------------------------------------


def skip_reason(longrepr: object) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ").strip()


def summary_line(reasons: list[str]) -> str:
    if not reasons:
        return "skips by reason: none"
    counts = Counter(reasons)
    parts = [f"{n} x {r}{'' if expected(r) else ' [NOT EXPECTED]'}" for r, n in counts.most_common()]
    return f"skips by reason ({len(reasons)}): " + "; ".join(parts)


# --- pytest hooks (tests/conftest.py registers this module as a plugin) -----------------------------

_collect_skips: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    set_active(m.name for m in item.iter_markers())
    try:
        yield
    finally:
        set_active(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and ci():
        reason = skip_reason(rep.longrepr)
        if expected(reason) is None:
            rep.outcome = "failed"
            rep.longrepr = (f"skipped under CI=true for a reason not in tests/strict.py EXPECTED_SKIPS: {reason}\n"
                            "(the machine should have what this test needs: install it, or add the reason "
                            "there with why it is expected)")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _collect_skips.append(skip_reason(report.longrepr))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ci() and any(expected(r) is None for r in _collect_skips) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # type: ignore[no-untyped-def]
    reasons = [skip_reason(r.longrepr) for r in terminalreporter.stats.get("skipped", [])]
    terminalreporter.write_sep("-", "skips")
    terminalreporter.write_line(summary_line(reasons))
    unexpected = sorted({r for r in reasons if expected(r) is None})
    if ci() and unexpected:
        terminalreporter.write_line(f"CI=true: {len(unexpected)} skip reason(s) not expected here fail the run")

"""When a test may skip, and when the run must fail instead.

A suite that skips whenever the code under test says "not available here" passes while the feature
is broken. So:

- `need_tracer(name)`: as root (and always under CI=true), a tracer whose tool is installed but whose
  probe says it does not work FAILS the test with the probe's reason; only a reason in EXPECTED_SKIPS
  (the kernel lacks kprobes, ...) skips. A person's machine may opt out with
  PFI_TEST_TRACERS_MAY_SKIP=1 (then it skips with the reason, as before).
- Under CI=true (.ci/run sets it), every skip whose reason is not in EXPECTED_SKIPS for that test fails
  the test (the whole reason must match, and the entry names the tests it covers), and a module skipped
  at collection fails the run and is summarised as FAILED, not "skipped".
- An xfail stands only when EXPECTED_XFAILS lists it and it is strict=True; otherwise the test fails.
- Every run ends with a line listing its skips grouped by reason (conftest's terminal summary).
- `tests.needs.require_marker(kind)`: the workload helpers, the servers and the browser call it, so a test that
  starts one without its marker (root, workloads, servers, browser) fails: `./test.sh --fast`
  deselects by those markers and must never start a real workload.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections import Counter

import pytest

from app.config import Settings
from app.tracers.registry import make_tracer
from tests.needs import install_guard, require_marker, set_active, take_violations

OPT_OUT = "PFI_TEST_TRACERS_MAY_SKIP"

# Skip reasons this machine may have: (the tests that may skip so: a regular expression their test id must
# match from its start; the reason: a regular expression the WHOLE reason must match, so that a planted
# "perf broken, but this kernel has kprobes" is not let through by its tail; why it is expected). Anything
# else that skips under CI=true fails. An xfail must be listed in EXPECTED_XFAILS and be strict=True.
_KPROBE_TESTS = r"tests/test_(tracers|engine|engine_fallback)\.py::[^\[]+\[(.*-)?bpftrace-kprobe(-.*)?\]"
EXPECTED_SKIPS: list[tuple[str, str, str]] = [
    (_KPROBE_TESTS,
     r"bpftrace-kprobe not available: no kprobes: (kernel built without CONFIG_KPROBES \(\S+\)"
     r"|\S+/kprobe_events missing \(CONFIG_KPROBES off\))",
     "the kernel, not the tool: this Firecracker VM's kernel has no kprobes (EKS nodes do); the kprobe "
     "backend's real-tracing tests run where kprobes work"),
    (r"tests/test_tracers\.py::(test_kprobe_backend_says_no_kprobes_and_fails_cleanly"
     r"|test_forced_unavailable_backend_falls_back_and_says_why)$|tests/test_engine\.py::test_kprobe_backend_says_no_kprobes$",
     r"this machine has kprobes: the test is about machines without|kprobes work here|this kernel has kprobes",
     "the inverse: tests about a kernel without kprobes, on one with them"),
    (r"tests/test_(tracers|engine)\.py::[^\[]+\[(.*-)?perf-tracepoint(-.*)?\]",
     r"perf-tracepoint not available: no tracepoint exceptions:page_fault_user in \S+/events \(e\.g\. arm64 has none\)",
     "arm64 kernels have no such tracepoint (the backend says so in its probe)"),
    (r"tests/test_listen\.py::",
     r"Python built without IPv6|no IPv6 loopback here: .+",
     "a machine or container without IPv6 on loopback"),
    (r"tests/test_scenarios\.py::test_scenario\[pod (v1|hybrid): ",
     r"no cgroup v1 memory controller at \S+: the v1 path \(a (cgroupfs|hybrid)-layout pod\)"
     r"|no unified cgroup tree at \S+: the v1 path \(a hybrid-layout pod\)",
     "a v1 or hybrid cgroup layout, which a v2-only node (EKS AL2023, BottleRocket, Debian 12) cannot have; "
     "the v2 path is tested by the same workloads there"),
    (r"tests/test_cgroupmem\.py::test_real_hybrid_tree_pod_in_v1_memory_and_unified$",
     r"needs the v1 memory hierarchy and the unified tree \(hybrid layout\)",
     "a hybrid layout, which a v2-only node cannot have"),
    (r"tests/test_scenarios\.py::test_scenario\[pod v2: ",
     r"no memory controller on the unified tree at \S+: the v2 path \(a systemd-layout pod\)",
     "the inverse: a kubepods.slice pod on a v2-only node's unified tree, which a v1 or hybrid host cannot "
     "have; these rows run in the VM tier's guest (./test.sh --vm)"),
    (r"tests/test_vm_guest\.py::",
     r"runs in the VM tier's guest only \(\./test\.sh --vm boots it\)",
     "checks of the cgroup-v2/kprobes/zram guest that scripts/vm/run.sh boots (./test.sh --vm)"),
]
_EXPECTED = [(re.compile(t), re.compile(r), why) for t, r, why in EXPECTED_SKIPS]

# Tests that may be marked xfail (always with strict=True): (test id pattern, reason pattern, why). None now.
EXPECTED_XFAILS: list[tuple[str, str, str]] = []
_XFAILS = [(re.compile(t), re.compile(r), why) for t, r, why in EXPECTED_XFAILS]

_current_test: str | None = None  # the running test's id (need_tracer asks expected() without one)


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _listed(table: list[tuple[re.Pattern[str], re.Pattern[str], str]], reason: str, test: str | None) -> str | None:
    test = test if test is not None else _current_test
    for tests, pattern, why in table:
        if pattern.fullmatch(reason) and test is not None and tests.match(test):
            return why
    return None


def expected(reason: str, test: str | None = None) -> str | None:
    """Why this skip reason is expected for this test (its id; default: the running test), or None when
    it is not: the whole reason must match an entry of EXPECTED_SKIPS whose tests include this one."""
    return _listed(_EXPECTED, reason.strip(), test)


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

        return _perf.find_perf(settings.tracing.perf_path) is not None
    return shutil.which(settings.tracing.bpftrace_path) is not None


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


def summary_line(skips: list[tuple[str, str]]) -> str:
    """(test id, reason) of every skip: counted by reason, each unexpected one marked."""
    if not skips:
        return "skips by reason: none"
    counts = Counter(r for _, r in skips)
    bad = {r for t, r in skips if expected(r, t) is None}
    parts = [f"{n} x {r}{' [NOT EXPECTED]' if r in bad else ''}" for r, n in counts.most_common()]
    return f"skips by reason ({len(skips)}): " + "; ".join(parts)


# --- pytest hooks (tests/conftest.py registers this module as a plugin) -----------------------------

_collect_skips: list[tuple[str, str]] = []  # (module id, reason) of modules skipped at collection


def pytest_configure(config: pytest.Config) -> None:
    # The marker guard: what a test does (exec perf/bpftrace or a workload, write a cgroup), in this process
    # and in its Python subprocesses, which report to this file (tests/needs.py).
    install_guard(log=f"/tmp/pfi-test-guard-{os.getpid()}.log")


def pytest_unconfigure(config: pytest.Config) -> None:
    with contextlib.suppress(OSError):
        os.unlink(f"/tmp/pfi-test-guard-{os.getpid()}.log")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    global _current_test
    set_active(m.name for m in item.iter_markers())
    _current_test = item.nodeid
    try:
        yield
    finally:
        set_active(None)
        _current_test = None


def _xfail_refused(item: pytest.Item, reason: str) -> str | None:
    """Why this xfail may not stand: only a listed reason, with strict=True (an xfail that is not strict
    passes whatever the test does; a planted failing one did)."""
    marker = item.get_closest_marker("xfail")
    if _listed(_XFAILS, reason.removeprefix("reason: ").strip(), item.nodeid) is None:
        return f"xfail not listed in tests/strict.py EXPECTED_XFAILS for this test: {reason!r}"
    if marker is None or not marker.kwargs.get("strict", False):
        return "xfail without strict=True: it would pass whether or not the test fails"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    caught = take_violations()
    if caught:  # the marker guard (tests/needs.py), also when the code under test swallowed its error
        rep.outcome = "failed"
        rep.longrepr = "\n".join(caught)
        return
    if hasattr(rep, "wasxfail"):
        refused = _xfail_refused(item, str(rep.wasxfail))
        if refused is not None:
            rep.outcome = "failed"
            rep.longrepr = refused
            del rep.wasxfail
        return
    if rep.skipped and ci():
        reason = skip_reason(rep.longrepr)
        if expected(reason, item.nodeid) is None:
            rep.outcome = "failed"
            rep.longrepr = (f"skipped under CI=true for a reason not in tests/strict.py EXPECTED_SKIPS (for this "
                            f"test): {reason}\n(the machine should have what this test needs: install it, or add "
                            "the test and the reason there with why it is expected)")


def _collect_unexpected() -> list[tuple[str, str]]:
    return [(t, r) for t, r in _collect_skips if expected(r, t) is None]


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _collect_skips.append((report.nodeid, skip_reason(report.longrepr)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ci() and _collect_unexpected() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # type: ignore[no-untyped-def]
    stats = terminalreporter.stats
    skips = [(r.nodeid, skip_reason(r.longrepr)) for r in stats.get("skipped", [])]
    terminalreporter.write_sep("-", "skips")
    terminalreporter.write_line(summary_line(skips))
    if not ci():
        return
    # Under CI=true a module skipped at collection for a reason not listed fails the run: say FAILED, not
    # "skipped", in pytest's own closing lines too (they are written after this hook).
    failed_modules = _collect_unexpected()
    if failed_modules:
        bad = {t for t, _ in failed_modules}
        moved = [r for r in stats.get("skipped", []) if isinstance(r, pytest.CollectReport) and r.nodeid in bad]
        stats["skipped"] = [r for r in stats.get("skipped", []) if r not in moved]
        stats.setdefault("failed", []).extend(moved)
        for t, r in failed_modules:
            terminalreporter.write_line(f"FAILED {t}: skipped at collection under CI=true for a reason not in "
                                        f"tests/strict.py EXPECTED_SKIPS: {r}", red=True)

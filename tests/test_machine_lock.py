"""The second pass's lock (tests/machine_lock.py): a `machine` test runs alone, the others side by side."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.machine_lock import ENV, PassLock, keep_after, machine_first, module_held

ROOT = Path(__file__).parent.parent


def _take(folder: Path, mode: str, log: list[str], name: str, hold: threading.Event) -> threading.Thread:
    def run() -> None:
        lock = PassLock(folder)
        lock.want(mode)
        log.append(f"{name} in")
        hold.wait(10)
        log.append(f"{name} out")
        lock.release()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _until(cond: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_shared_holders_run_together_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    log: list[str] = []
    go_a, go_b, go_x = threading.Event(), threading.Event(), threading.Event()
    a = _take(tmp_path, "shared", log, "a", go_a)
    b = _take(tmp_path, "shared", log, "b", go_b)
    _until(lambda: {"a in", "b in"} <= set(log))  # two shared holders at once
    x = _take(tmp_path, "exclusive", log, "x", go_x)
    time.sleep(0.3)
    assert "x in" not in log  # waits while a and b hold it
    go_a.set()
    a.join(5)
    time.sleep(0.2)
    assert "x in" not in log  # b still holds it
    go_b.set()
    b.join(5)
    _until(lambda: "x in" in log)
    go_x.set()
    x.join(5)
    assert log.index("x in") > max(log.index("a out"), log.index("b out"))


def test_a_waiting_exclusive_holder_goes_before_later_shared_ones(tmp_path: Path) -> None:
    """The turnstile: a stream of short shared tests in one process does not starve the other's `machine` test."""
    log: list[str] = []
    go_a, go_x, go_c = threading.Event(), threading.Event(), threading.Event()
    a = _take(tmp_path, "shared", log, "a", go_a)
    _until(lambda: "a in" in log)
    x = _take(tmp_path, "exclusive", log, "x", go_x)
    time.sleep(0.3)
    c = _take(tmp_path, "shared", log, "c", go_c)  # asks after x: must wait for x, though a only holds it shared
    time.sleep(0.3)
    assert "c in" not in log and "x in" not in log
    go_a.set()
    _until(lambda: "x in" in log)
    time.sleep(0.2)
    assert "c in" not in log  # x runs alone
    go_x.set()
    _until(lambda: "c in" in log)
    go_c.set()
    for t in (a, x, c):
        t.join(5)
    assert log.index("x out") < log.index("c in")


def _item(module: Any, marks: tuple[str, ...] = ()) -> Any:
    return SimpleNamespace(module=module, get_closest_marker=lambda name: name if name in marks else None)


def test_a_module_marked_machine_as_a_whole_holds_its_lock_from_its_first_test_to_its_last() -> None:
    whole = SimpleNamespace(pytestmark=[pytest.mark.root, pytest.mark.machine])
    single = SimpleNamespace(pytestmark=pytest.mark.root)
    a1, a2, b1 = _item(whole, ("machine",)), _item(whole, ("machine",)), _item(single, ("machine",))
    assert module_held(a1) and not module_held(b1)
    shared = _item(single)
    assert keep_after(a1, a2)  # a module-scoped fixture (a zram device) lives between them
    assert keep_after(a2, b1) and keep_after(b1, _item(single, ("machine",)))  # machine tests in a row: held
    assert not keep_after(b1, shared) and not keep_after(a2, None)  # released before a shared test, or the end


def test_machine_tests_go_first_in_their_order_only_in_the_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = SimpleNamespace(pytestmark=[])
    items = [_item(mod, m) for m in ((), ("machine",), (), ("machine",), ())]
    for i, item in enumerate(items):
        item.n = i
    alone = list(items)
    monkeypatch.delenv(ENV, raising=False)
    machine_first(alone)
    assert [i.n for i in alone] == [0, 1, 2, 3, 4]  # not in the second pass: as collected
    monkeypatch.setenv(ENV, "/nonexistent")
    machine_first(items)
    assert [i.n for i in items] == [1, 3, 0, 2, 4]


_PROBE = """
import glob, os, time, pytest
LOG = os.environ["PROBE_LOG"]

def _mark(what):
    with open(LOG, "a") as f:
        f.write("%s %.6f\\n" % (what, time.monotonic()))

@pytest.mark.parametrize("i", range(N))
MARKERdef test_NAME(i):
    if BARRIER and i == 0:
        # both processes' first shared tests hold the lock at once, whenever each process got here
        open(LOG + ".in." + str(os.getpid()), "w").close()
        deadline = time.monotonic() + 60
        while len(glob.glob(LOG + ".in.*")) < 2:
            assert time.monotonic() < deadline, "the other process's shared test never held the lock beside this one"
            time.sleep(0.01)
    _mark("NAME-in")
    time.sleep(SLEEP)
    _mark("NAME-out")
"""


def _probe_suite(tmp_path: Path, name: str, n: int, sleep: float, machine: bool) -> Path:
    path = tmp_path / f"test_probe_{name}.py"
    text = textwrap.dedent(_PROBE).replace("MARKER", "@pytest.mark.machine\n" if machine else "")
    text = text.replace("BARRIER", "False" if machine else "True")
    path.write_text(text.replace("NAME", name).replace("SLEEP", str(sleep)).replace("range(N)", f"range({n})"))
    return path


def test_two_pytest_processes_never_run_a_machine_test_beside_another(tmp_path: Path) -> None:
    """The plugin as ./test.sh runs it: two pytest processes, one lock folder; one runs a shared test then two
    `machine` tests, the other a stream of shared tests. Their first shared tests meet (each waits, inside
    its test, for the other's to be inside: shared holders run together, on a busy machine too, where the
    two processes start seconds apart), and no test overlaps a machine test."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.machine_lock"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    machine: alone\n")
    log = tmp_path / "log"
    shared = _probe_suite(tmp_path, "shared", 8, 0.25, machine=False)  # the other process, 2 s after they meet
    meet = _probe_suite(tmp_path, "meet", 1, 0.05, machine=False)  # this one: meets, then asks for the machine
    alone = _probe_suite(tmp_path, "alone", 2, 0.4, machine=True)
    env = {**os.environ, "PROBE_LOG": str(log), "PFI_PASS_LOCK": str(tmp_path / "lock"),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(tmp_path),
           "-c", str(tmp_path / "pytest.ini")]
    procs = [subprocess.Popen([*cmd, str(shared)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True),
             subprocess.Popen([*cmd, str(meet), str(alone)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    spans: dict[str, list[list[float]]] = {}
    open_at: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        what, t = line.split()
        name, edge = what.rsplit("-", 1)
        if edge == "in":
            open_at.setdefault(name, []).append(float(t))
        else:
            spans.setdefault(name, []).append([open_at[name].pop(0), float(t)])
    assert len(spans["alone"]) == 2 and len(spans["shared"]) == 8 and len(spans["meet"]) == 1
    for a0, a1 in spans["alone"]:
        overlapping = [s for s in spans["shared"] if s[0] < a1 and s[1] > a0]
        assert not overlapping, (a0, a1, overlapping)


def test_holds_nest_and_the_strongest_one_is_taken(tmp_path: Path) -> None:
    """A zoo disk row: vm_sysctls holds the swap lock exclusive, swap_enabled inside it shared."""
    lock, other = PassLock(tmp_path, "swap"), PassLock(tmp_path, "swap")
    with lock.hold("shared"):
        assert lock.mode == "shared"
        with lock.hold("exclusive"):
            assert lock.mode == "exclusive"
            with lock.hold("shared"):
                assert lock.mode == "exclusive"
        assert lock.mode == "shared"
        other.want("shared")  # shared again: another holder gets in at once
        other.release()
    assert lock.mode is None
    other.want("exclusive")  # nothing is held any more
    other.release()


def test_swap_hold_does_nothing_outside_the_second_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests import machine_lock

    monkeypatch.delenv(machine_lock.ENV, raising=False)
    with machine_lock.swap_hold("exclusive"):
        assert machine_lock._swap is None
    monkeypatch.setenv(machine_lock.ENV, str(tmp_path))
    monkeypatch.setattr(machine_lock, "_swap", None)
    with machine_lock.swap_hold("exclusive"):
        assert machine_lock._swap is not None and machine_lock._swap.mode == "exclusive"
    assert machine_lock._swap.mode is None

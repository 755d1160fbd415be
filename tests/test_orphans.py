"""No tracer outlives its investigation (issue 8, item 3), with real perf and bpftrace.

- SIGKILL of `investigate` and of `serve` 4 s into a perf-major and a bpftrace-major window: 2 s
  later no tracer process that run started is alive. The tracers are found through the owner files
  of the run's work folders (pid + start time) and the processes working in those folders, never by
  name; each test has its own TMPDIR.
- A service whose tracer did escape (a predecessor without PR_SET_PDEATHSIG) is cleaned up by the
  next service at start-up, and by `python -m app.tracers.leftovers`.
- bpftrace programs end themselves after window + grace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.tracers import _bpftrace, leftovers
from app.tracers.registry import make_tracer
from tests.test_service_support import bind_loopback, wait_for
from tests.workloads import WorkloadProcess

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["perf-major", "bpftrace-major"]
INTO_WINDOW = 4.0
AFTER_KILL = 2.0
NO_PDEATHSIG = "import app.tracers._proc as p; p.PDEATHSIG = 0; "  # a predecessor whose tracers escape


def _need(*names: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for name in names:
        ok, why = make_tracer(name, Settings()).available()
        if not ok:
            pytest.skip(f"{name} not available here: {why}")


def _free_port() -> int:
    s = bind_loopback()
    port = int(s.getsockname()[1])
    s.close()
    return port


def _env(tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(TMPDIR=str(tmpdir), PYTHONPATH=str(ROOT), PFI_APISERVER_FALLBACK="false", **extra)
    return env


def _window_tracers(tmpdir: Path, owner: int) -> dict[int, int | None]:
    """The tracers of owner's window folders (not its probes'), from their owner files."""
    out: dict[int, int | None] = {}
    for folder in tmpdir.glob("pfi-*"):
        if "-probe-" in folder.name:
            continue
        doc = leftovers.read_owner(folder)
        if doc and doc["owner"]["pid"] == owner:
            out.update({t["pid"]: t["starttime"] for t in doc["tracers"]})
    return out


def _alive(tracers: dict[int, int | None]) -> list[int]:
    return [pid for pid, start in tracers.items() if leftovers.alive(pid, start)]


def _working_in(tmpdir: Path) -> list[int]:
    """Every process whose working directory is under tmpdir (tracers run in their work folder)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(d / "cwd").startswith(str(tmpdir) + "/"):
                    found.append(int(d.name))
    return found


@contextlib.contextmanager
def _cleanup(tmpdir: Path) -> Iterator[None]:
    """Whatever happens, stop what was started in tmpdir (by owner file / working directory)."""
    try:
        yield
    finally:
        leftovers.reap(tmpdir)
        for pid in _working_in(tmpdir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _kill_into_window(proc: subprocess.Popen, tmpdir: Path) -> dict[int, int | None]:  # type: ignore[type-arg]
    """Wait until proc's tracer window runs, SIGKILL proc INTO_WINDOW s later; its tracers."""
    tracers = wait_for(lambda: _window_tracers(tmpdir, proc.pid), timeout=60, what="the tracer's window")
    time.sleep(INTO_WINDOW)
    tracers = _window_tracers(tmpdir, proc.pid)
    assert _alive(tracers), "the tracer should run 4 s into a 30 s window"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return tracers


# --- SIGKILL of investigate and of serve -------------------------------------------------------------


def test_sigkill_of_investigate_leaves_no_tracer(tmp_path: Path, file_workload: WorkloadProcess) -> None:
    _need(*BACKENDS)
    procs = {}
    with _cleanup(tmp_path):
        for name in BACKENDS:
            tmpdir = tmp_path / name
            tmpdir.mkdir()
            procs[name] = (tmpdir, subprocess.Popen(
                [sys.executable, "-m", "app.cli", "investigate", "--seconds", "30", "--format", "json",
                 "--tracer", name, "--pid", str(file_workload.pid)],
                env=_env(tmpdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        killed = {name: _kill_into_window(proc, tmpdir) for name, (tmpdir, proc) in procs.items()}
        time.sleep(AFTER_KILL)
        for name, tracers in killed.items():
            assert tracers and not _alive(tracers), f"{name}: tracers left running: {_alive(tracers)}"
            assert _working_in(procs[name][0]) == [], name
        # What is left is folders; the next run removes them (and says so).
        tmpdir = procs["perf-major"][0]
        assert list(tmpdir.glob("pfi-perf-*"))
        res = subprocess.run([sys.executable, "-m", "app.tracers.leftovers", "--json"], env=_env(tmpdir),
                             capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(res.stdout)["folders"] and not list(tmpdir.glob("pfi-perf-*"))


def _serve(tmpdir: Path, tracer: str, *, prelude: str = "") -> tuple[subprocess.Popen, str, str]:  # type: ignore[type-arg]
    api, ui = _free_port(), _free_port()
    env = _env(tmpdir, PFI_LISTEN_ADDRESS=f"127.0.0.1:{api}", PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{ui}",
               PFI_TRACER=tracer, PFI_INVESTIGATION_SECONDS="30", PFI_DATA_DIR=str(tmpdir / "data"))
    proc = subprocess.Popen([sys.executable, "-c", prelude + "from app.service.server import serve; serve()"],
                            env=env, cwd=tmpdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{api}"
    wait_for(lambda: _ok(f"{base}/healthz"), timeout=30, what="serve() up")
    token = (tmpdir / "data" / "webhook-token").read_text().strip()
    return proc, base, token


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _alert(base: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    node = httpx.get(f"{base}/api/v1/investigations", headers=auth, timeout=10).json()["node"]
    body = {"version": "4", "alerts": [
        {"status": "firing", "labels": {"alertname": "NodeMemoryMajorPagesFaults", "node": node}}]}
    r = httpx.post(f"{base}/api/v1/alerts", json=body, headers=auth, timeout=10)
    assert r.status_code == 202, r.text


def test_sigkill_of_serve_leaves_no_tracer(tmp_path: Path, file_workload: WorkloadProcess) -> None:
    _need(*BACKENDS)
    started = {}
    with _cleanup(tmp_path):
        try:
            for name in BACKENDS:
                tmpdir = tmp_path / name
                tmpdir.mkdir()
                proc, base, token = _serve(tmpdir, name)
                started[name] = (tmpdir, proc)
                _alert(base, token)
            killed = {name: _kill_into_window(proc, tmpdir) for name, (tmpdir, proc) in started.items()}
            time.sleep(AFTER_KILL)
            for name, tracers in killed.items():
                assert tracers and not _alive(tracers), f"{name}: tracers left running: {_alive(tracers)}"
                assert _working_in(started[name][0]) == [], name
        finally:
            for _, proc in started.values():
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)


def test_restarted_service_removes_what_a_killed_one_left(tmp_path: Path, file_workload: WorkloadProcess) -> None:
    """A predecessor whose perf escaped (no PR_SET_PDEATHSIG) is killed mid-window: its perf keeps
    recording, re-parented to init. The next `serve` stops that perf and removes its folder at start-up."""
    _need("perf-major")
    with _cleanup(tmp_path):
        old, base, token = _serve(tmp_path, "perf-major", prelude=NO_PDEATHSIG)
        try:
            _alert(base, token)
            tracers = _kill_into_window(old, tmp_path)
        finally:
            if old.poll() is None:
                old.kill()
            old.communicate(timeout=10)
        time.sleep(AFTER_KILL)
        assert _alive(tracers), "without PR_SET_PDEATHSIG the perf of the killed service should survive"
        folders = [f for f in tmp_path.glob("pfi-perf-*") if "-probe-" not in f.name]
        assert folders
        new, _, _ = _serve(tmp_path, "procfs")
        try:
            assert not _alive(tracers), "the restarted service did not stop the leftover perf"
            assert not any(f.exists() for f in folders)
        finally:
            new.send_signal(signal.SIGTERM)
            _, err = new.communicate(timeout=30)
        assert "leftovers of a killed investigation" in err


def test_leftovers_leaves_live_owners_and_unowned_folders_alone(tmp_path: Path) -> None:
    """No root needed: only folders with an owner file whose owner is gone are removed."""
    mine = Path(leftovers.make_workdir("pfi-perf-", Path("/proc")))
    mine = mine.rename(tmp_path / mine.name)  # owned by this live process
    unowned = tmp_path / "pfi-bt-unowned"  # no owner file: not ours to judge
    unowned.mkdir()
    dead = Path(leftovers.make_workdir("pfi-bt-", Path("/proc")))
    dead = dead.rename(tmp_path / dead.name)
    doc = leftovers.read_owner(dead)
    assert doc is not None
    doc["owner"] = {"pid": os.getpid(), "starttime": 1}  # this pid, but another start time: a reused pid
    (dead / leftovers.OWNER_FILE).write_text(json.dumps(doc))
    res = leftovers.reap(tmp_path)
    assert res.folders == [str(dead)] and not dead.exists()
    assert mine.exists() and unowned.exists()


def test_bpftrace_program_ends_itself(file_workload: WorkloadProcess) -> None:
    """The self-exit probe: a program nobody stops ends after its N seconds, printing its maps."""
    _need("bpftrace-major")
    settings = Settings()
    bt, _ = _bpftrace.resolve(settings)
    assert bt
    text = _bpftrace.program_text("major_faults.bt", None, exit_after=2)
    assert "interval:s:2 { exit(); }" in text
    t0 = time.monotonic()
    res = subprocess.run([bt, "-f", "json", "-e", text], capture_output=True, text=True, timeout=60,
                         env=_bpftrace.bpftrace_env(4096))
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert 2.0 <= took < 10, took
    assert '"@total"' in res.stdout  # exit() prints the maps like SIGINT does

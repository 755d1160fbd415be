"""The strict tools the project holds itself to (pyproject.toml, .importlinter): ruff over app, tests and
bench; mypy --strict over app; the import contracts of app (lint-imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (it is in the test extras)")
    return path


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the `app` package under `root` (not whichever one the venv has installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_ruff_clean():
    res = subprocess.run([_tool("ruff"), "check", "app", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:]


@pytest.mark.mypy
def test_mypy_strict_clean():
    res = subprocess.run(
        [_tool("mypy"), "--strict", "app"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]


def test_import_contracts_kept():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert "0 broken" in res.stdout


def test_import_contracts_catch_what_they_forbid(tmp_path: Path):
    """The contracts are not vacuous: a copy of app/ with one forbidden import per contract breaks
    each of them, and the import the kubernetes contract allows stays allowed."""
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")

    def add(module: str, line: str) -> None:
        path = tmp_path / (module.replace(".", "/") + ".py")
        path.write_text(path.read_text() + f"\n{line}  # noqa\n" if path.exists() else f"{line}\n")

    add("app.parsers.procfs", "import app.service.state")  # a parser reaching up
    add("app.investigation.diagnose", "import app.service.report_store")  # the investigation reaching the service
    add("app.tracers.perf_major", "import app.tracers.bpftrace_major")  # one backend using another
    add("app.tracers._supervise", "import app.tracers.registry")  # a shared helper knowing the backends
    add("app.collectors.kubelet", "import kubernetes")  # the kubernetes client outside its module
    add("app.service.report_store", "import app.service.ui.render")  # a service wing reaching up
    add("app.service.cluster.kube", "import app.service.delivery.sinks")  # ...and another
    add("app.service.newroom", "import app.models")  # a new room of the service in no layer
    add("app.collectors.apiserver", "import kubernetes")  # ...and inside it: allowed

    res = _lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert "Contracts: 0 kept, 4 broken." in out, out[-6000:]
    for broken in (
        "app.parsers.procfs -> app.service.state",
        "app.investigation.diagnose -> app.service.report_store",
        "app.tracers.perf_major -> app.tracers.bpftrace_major",
        "app.tracers._supervise -> app.tracers.registry",
        "app.collectors.kubelet -> kubernetes",
        "app.service.report_store -> app.service.ui.render",
        "app.service.cluster.kube -> app.service.delivery.sinks",
        "app.service.newroom",
    ):
        assert broken in out, f"{broken} not reported:\n{out[-6000:]}"
    assert "app.collectors.apiserver -> kubernetes" not in out

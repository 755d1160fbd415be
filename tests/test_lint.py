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

    add("app.parsers.procfs", "import app.service.root")  # a parser reaching up
    add("app.investigation.diagnose", "import app.service.report_store")  # the investigation reaching the service
    add("app.tracers.perf_major", "import app.tracers.bpftrace_major")  # one backend using another
    add("app.tracers._supervise", "import app.tracers.registry")  # a shared helper knowing the backends
    add("app.collectors.kubelet", "import kubernetes")  # the kubernetes client outside its module
    add("app.service.report_store", "import app.service.ui.render")  # a service wing reaching up
    add("app.service.cluster.kube", "import app.service.delivery.sinks")  # ...and another
    add("app.service.scheduler", "import app.service.pipeline")  # the queue reaching the pipeline it feeds
    add("app.service.fleet.view", "import app.service.alerts.intake")  # two wings of one floor
    add("app.service.html.env", "import app.service.ui.render")  # what pages are written with, reaching a page
    add("app.service.newroom", "import app.models")  # a new room of the service in no layer
    add("app.newtop", "import app.models")  # a new top-level module in no layer
    add("app.investigation.engine", "import app.tracers._perf")  # a private module used from outside
    add("app.collectors.apiserver", "import kubernetes")  # ...and inside it: allowed

    res = _lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert "Contracts: 0 kept, 5 broken." in out, out[-6000:]
    for broken in (
        "app.parsers.procfs -> app.service.root",
        "app.investigation.diagnose -> app.service.report_store",
        "app.tracers.perf_major -> app.tracers.bpftrace_major",
        "app.tracers._supervise -> app.tracers.registry",
        "app.collectors.kubelet -> kubernetes",
        "app.service.report_store -> app.service.ui.render",
        "app.service.cluster.kube -> app.service.delivery.sinks",
        "app.service.scheduler -> app.service.pipeline",
        "app.service.fleet.view -> app.service.alerts.intake",
        "app.service.html.env -> app.service.ui.render",
        "app.service.newroom",
        "app.newtop",
        "app.investigation.engine -> app.tracers._perf",
    ):
        assert broken in out, f"{broken} not reported:\n{out[-6000:]}"
    assert "app.collectors.apiserver -> kubernetes" not in out


def test_an_ignore_that_matches_nothing_fails(tmp_path: Path):
    """A stale `ignore_imports` line (the import it excused is gone) fails the contracts instead of
    waiting to excuse the next import that matches it."""
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / ".importlinter").read_text()
    stale = "    app.collectors.apiserver -> kubernetes\n"
    assert stale in text
    (tmp_path / ".importlinter").write_text(text.replace(stale, stale + "    app.parsers.perf -> kubernetes\n"))
    res = _lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-6000:]
    assert "app.parsers.perf -> kubernetes" in out, out[-6000:]


def test_every_private_module_is_guarded():
    """Each `_name` module of app is in the private-modules contract (a new one cannot slip past)."""
    text = (ROOT / ".importlinter").read_text()
    contract = text.split("[importlinter:contract:private-modules]", 1)[1].split("[importlinter:", 1)[0]
    forbidden = contract.split("forbidden_modules =", 1)[1].split("allow_indirect_imports", 1)[0].split()
    private = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "app").rglob("_*.py")
        if not p.name.startswith("__")
    )
    assert private and sorted(forbidden) == private


def test_house_has_no_circles_and_no_arrow_up():
    """scripts/house_measure.py (grimp, which import-linter ships) over app: no import circles, no
    import from a lower layer to a higher one (also inside functions), no private module used from
    outside its package, every module in a layer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "house_measure.py"), str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for line in (
        "import circles (modules importing each other, directly or round a loop): 0",
        "arrows that run back up (a lower layer importing a higher one): 0",
        "private modules imported from outside their package: 0",
        "modules in no layer: 0",
    ):
        assert line in out, out[-4000:]

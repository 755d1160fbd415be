"""What an install ships: every file under app/ that is not Python source (the UI templates, the bpftrace
programs) is package data, and every package-data pattern in pyproject.toml names files that exist.

The suite runs against the source tree (PYTHONPATH or an editable install), where a template that the
package data forgets is still found; so this builds the package the way a wheel is built
(setuptools' build_py, which collects the modules and package data a wheel holds) and looks inside.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = {".py", ".pyc"}


def _shipped_files(tmp_path: Path) -> set[str]:
    src, out = tmp_path / "src", tmp_path / "build"
    shutil.copytree(ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib", str(out)],
        cwd=src, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_every_data_file_under_app_is_shipped(tmp_path: Path):
    in_tree = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "app").rglob("*")
        if p.is_file() and p.suffix not in SOURCE_SUFFIXES and "__pycache__" not in p.parts
    }
    assert {"app/service/html/templates/report.html", "app/tracers/programs/major_faults.bt"} <= in_tree
    shipped = _shipped_files(tmp_path)
    assert in_tree - shipped == set(), "files under app/ that an install would lack"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - shipped == set(), "modules an install would lack"


def test_package_data_patterns_name_existing_files():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data, "no package data declared"
    for package, patterns in package_data.items():
        folder = ROOT / package.replace(".", "/")
        assert (folder / "__init__.py").is_file(), f"package-data for {package}, which is not a package"
        for pattern in patterns:
            assert any(folder.glob(pattern)), f"package-data {package}: {pattern!r} matches no file"

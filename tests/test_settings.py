"""Settings explain themselves, and the tracer names have one home (app.tracers.registry) that the
settings, the CLI, the chart's schema and the README agree with."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.tracers.registry import CHOICES, ORDER, make_tracer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_described(name: str):
    """What the field holds, and why its default; a duration or size names its unit."""
    description = Settings.model_fields[name].description or ""
    assert len(description.split()) >= 8, f"PFI_{name.upper()}: describe what it holds and why the default"
    if name.endswith("_seconds"):
        assert "second" in description, f"PFI_{name.upper()}: say the unit"
    if name.endswith("_bytes"):
        assert re.search(r"bytes|[KMG]iB", description), f"PFI_{name.upper()}: say the unit"
    if name.endswith("_days"):
        assert "days" in description, f"PFI_{name.upper()}: say the unit"


def test_config_has_no_issue_notes():
    text = (ROOT / "app" / "config.py").read_text()
    assert not re.search(r"\(issue \d+\)|[Aa]dded for", text)


# Written out here, not built from the registry: the names a user types (PFI_TRACER, the chart, the
# README) and the order "auto" tries them in are a promise; a renamed or reordered backend must fail here.
KNOWN = ("auto", "perf-major", "bpftrace-major", "bpftrace-kprobe", "perf-tracepoint", "procfs")


def test_backend_names_come_from_their_classes():
    assert CHOICES == KNOWN
    assert list(KNOWN[1:]) == ORDER
    assert [make_tracer(name, Settings()).name for name in ORDER] == ORDER


@pytest.mark.parametrize("name", KNOWN)
def test_settings_accept_every_registry_name(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PFI_TRACER", name)
    assert Settings().tracer == name


def test_settings_refuse_an_unknown_tracer_naming_the_known_ones(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PFI_TRACER", "ftrace")
    with pytest.raises(ValidationError) as err:
        Settings()
    message = str(err.value)
    assert "unknown tracer 'ftrace'" in message
    assert all(name in message for name in KNOWN)


def test_cli_offers_the_registry_names():
    res = subprocess.run(
        [sys.executable, "-m", "app.cli", "investigate", "--tracer", "ftrace"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    offered = re.search(r"choose from (.*)\)", res.stderr)
    assert offered is not None, res.stderr
    assert re.findall(r"'([^']+)'", offered.group(1)) == list(KNOWN)


def test_chart_schema_offers_the_registry_names():
    schema = json.loads((ROOT / "charts" / "pagefault-inspector" / "values.schema.json").read_text())
    assert sorted(schema["properties"]["config"]["properties"]["tracer"]["enum"]) == sorted(KNOWN)


def test_readme_names_every_backend():
    readme = (ROOT / "README.md").read_text()
    usage = re.search(r"--tracer ([a-z|-]+)\]", readme)
    assert usage is not None and sorted(usage.group(1).split("|")) == sorted(KNOWN)
    table = set(re.findall(r"^\| `([a-z-]+)` \|", readme, flags=re.MULTILINE))
    assert table == set(KNOWN[1:])

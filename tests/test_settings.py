"""Settings explain themselves, and the tracer names have one home (app.tracers.registry) that the
settings, the CLI, the chart's schema and the README agree with."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import FIELD_GROUP, GROUPS, Settings, TracingSettings
from app.tracers.registry import CHOICES, ORDER, make_tracer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(FIELD_GROUP))
def test_every_setting_is_described(name: str):
    """What the field holds, and why its default; a duration or size names its unit."""
    description = GROUPS[FIELD_GROUP[name]].model_fields[name].description or ""
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
    assert Settings().tracing.tracer == name


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


# --- settings by part: the groups are new, the names a user sets are not --------------------------------

# The test tiers' and benchmarks' own switches (./test.sh --vm, the tracer skips, bench/): not settings.
TOOL_VARIABLES = ("PFI_VM_", "PFI_TEST_", "PFI_BENCH_", "PFI_SCREENSHOTS")
CHART = ROOT / "charts" / "pagefault-inspector"


def documented_names() -> set[str]:
    """Every PFI_ name a user can read about: the chart (values, schema, templates), the README, docs/."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(CHART.rglob("*.yaml")),
             *sorted(CHART.rglob("*.tpl")), *sorted(CHART.rglob("*.json"))]
    names: set[str] = set()
    for path in texts:
        names |= set(re.findall(r"\bPFI_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return {n for n in names if not n.startswith(TOOL_VARIABLES)}


def _group_of(name: str) -> type:
    return GROUPS[FIELD_GROUP[name]]


def _distinctive(name: str) -> tuple[str, object]:
    """A value for the field `name` unlike its default, valid, as the variable's text and as it reads back."""
    info = _group_of(name).model_fields[name]
    default = info.get_default(call_default_factory=True)
    kind = next(a for a in getattr(info.annotation, "__args__", (info.annotation,)) if a is not type(None))
    if name == "tracer":
        return "bpftrace-kprobe", "bpftrace-kprobe"
    if name == "log_format":
        return "json", "json"
    if kind is bool:
        return str(not default).lower(), not default
    if kind is Path:
        return f"/pfi-check/{name}", Path(f"/pfi-check/{name}")
    if kind is str:
        return f"check-{name}", f"check-{name}"
    assert kind in (int, float), (name, kind)
    for step in (7, -7, 1, -1) if kind is int else (0.25, -0.25):
        value = default + step
        try:
            _group_of(name)(**{name: value})
        except ValidationError:
            continue
        return str(value), value
    raise AssertionError(f"no valid value near {name}'s default {default!r}")


def test_every_documented_variable_is_a_setting():
    documented = documented_names()
    assert {"PFI_TRACER", "PFI_KUBELET_URL", "PFI_SLACK_WEBHOOK_URL", "PFI_PROMETHEUS_URL"} <= documented
    assert documented - {f"PFI_{name.upper()}" for name in FIELD_GROUP} == set()


def test_every_variable_lands_in_its_group_under_its_old_name(monkeypatch: pytest.MonkeyPatch):
    """PFI_FOO_BAR was Settings().foo_bar; it is now Settings().<group>.foo_bar, the same field name, for
    every name the docs and the chart use and every field. All are set at once, each to a value unlike
    its default, so a variable read by the wrong group or by none reads back wrong."""
    names = documented_names() | {f"PFI_{name.upper()}" for name in FIELD_GROUP}
    want: dict[str, object] = {}
    for variable in sorted(names):
        field = variable.removeprefix("PFI_").lower()
        text, want[field] = _distinctive(field)
        monkeypatch.setenv(variable, text)
    settings = Settings()
    for field, value in want.items():
        group = getattr(settings, FIELD_GROUP[field])
        assert getattr(group, field) == value, f"PFI_{field.upper()} -> settings.{FIELD_GROUP[field]}.{field}"
        assert value != _group_of(field).model_fields[field].get_default(call_default_factory=True)
    # The construction shorthand puts the same keywords in the same places.
    for variable in names:
        monkeypatch.delenv(variable)
    assert Settings(**want) == settings


def test_every_group_is_described_and_names_are_not_shared():
    assert set(Settings.model_fields) == set(GROUPS)
    for attr, group in GROUPS.items():
        assert Settings.model_fields[attr].annotation is group
        assert len((Settings.model_fields[attr].description or "").split()) >= 8, attr
    assert len(FIELD_GROUP) == sum(len(g.model_fields) for g in GROUPS.values())


def test_unknown_variables_are_still_ignored(monkeypatch: pytest.MonkeyPatch):
    before = Settings()
    monkeypatch.setenv("PFI_NO_SUCH_SETTING", "1")
    for attr in GROUPS:  # a group's name is no variable either
        monkeypatch.setenv(f"PFI_{attr.upper()}", "{not json")
    assert Settings() == before
    assert Settings(no_such_setting=1) == before  # as before: the shorthand ignores what it does not know


@pytest.mark.parametrize(
    ("name", "bad", "why"),
    [
        ("tracer", "ftrace", "unknown tracer 'ftrace'"),
        ("recorder_interval_seconds", "0.2", "must be 0 (off) or at least 0.5 seconds"),
        ("top", "0", "greater than or equal to 1"),
        ("log_format", "xml", "should match pattern"),
        ("kubelet_port", "70000", "less than or equal to 65535"),
    ],
)
def test_validators_still_run(name: str, bad: str, why: str, monkeypatch: pytest.MonkeyPatch):
    """From the environment and from the construction shorthand alike."""
    monkeypatch.setenv(f"PFI_{name.upper()}", bad)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert why in str(err.value) and name in str(err.value)
    monkeypatch.delenv(f"PFI_{name.upper()}")
    with pytest.raises(ValidationError) as err:
        Settings(**{name: bad})
    assert why in str(err.value) and name in str(err.value)


def test_the_shorthand_and_the_environment_fill_one_group_together(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PFI_KUBELET_PORT", "10255")
    monkeypatch.setenv("PFI_KUBELET_CACHE_SECONDS", "7")
    s = Settings(kubelet_url=None, kubelet_cache_seconds=0)
    assert (s.kubelet.kubelet_url, s.kubelet.kubelet_port, s.kubelet.kubelet_cache_seconds) == (None, 10255, 0)
    assert s.kubelet.model_fields_set >= {"kubelet_url", "kubelet_cache_seconds", "kubelet_port"}
    assert "data_dir" not in s.store.model_fields_set  # nothing set it (the service then picks its own)
    copy = s.updated(kubelet_port=1, data_dir=Path("/x"))
    assert (copy.kubelet.kubelet_port, copy.kubelet.kubelet_cache_seconds, copy.store.data_dir) == (1, 0, Path("/x"))
    assert "data_dir" in copy.store.model_fields_set
    assert s.kubelet.kubelet_port == 10255  # the original is untouched
    with pytest.raises(KeyError, match="no such setting: kubelet_prot"):
        s.updated(kubelet_prot=1)


# The top-level wiring may take the whole Settings; every other part is typed against its group(s).
WIRING = {"cli.py", "demo.py", "investigation/engine.py", "service/state.py", "service/scheduler.py",
          "service/web/app.py", "service/web/server.py"}
WHOLE_SETTINGS = re.compile(r"(:|->)\s*\"?\bSettings\b(?!\.)|\bSettings \||\| Settings\b|\[Settings\]")


def test_only_the_wiring_takes_the_whole_settings():
    app = ROOT / "app"
    whole = {str(p.relative_to(app)) for p in app.rglob("*.py") if WHOLE_SETTINGS.search(p.read_text())}
    assert whole - {"config.py"} <= WIRING


# --- the tracers' start deadlines are settings ------------------------------------------------------------


def _silent_tool(tmp_path: Path, name: str) -> str:
    """A stand-in for perf or bpftrace that starts and then says nothing (never acks, never attaches)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(("backend", "tool", "says"), [
    ("perf-major", "perf", "no ack within 1s (PFI_PERF_START_TIMEOUT_SECONDS)"),
    ("bpftrace-major", "bpftrace", "no probes attached within 1s (PFI_BPFTRACE_START_TIMEOUT_SECONDS)"),
])
def test_a_tracer_that_does_not_start_is_given_up_after_its_setting(
    backend: str, tool: str, says: str, tmp_path: Path
):
    from app.tracers.base import TraceRequest

    settings = Settings(**{f"{tool}_path": _silent_tool(tmp_path, tool), f"{tool}_start_timeout_seconds": 1})
    t0 = time.monotonic()
    result = make_tracer(backend, settings).run(TraceRequest(seconds=1))
    took = time.monotonic() - t0
    assert any("did not start" in e and says in e for e in result.errors), result.errors
    default = TracingSettings.model_fields[f"{tool}_start_timeout_seconds"].default
    assert took < default, f"gave up after {took:.1f}s, not after the 1 s set (default {default:g} s)"

"""The tracer names in the settings are the registry's, in its order; an unknown one is refused, and
the settings load without importing the tracers. (Issue 19.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import TRACER_CHOICES, TRACER_NAMES, Settings
from app.tracers import registry


def test_settings_name_the_registry_backends_in_order():
    """app.config keeps the backend names as a literal (it no longer imports the tracers); they are
    the registry's backends, by their classes' own names, in the order auto tries them."""
    assert tuple(registry.ORDER) == TRACER_NAMES
    assert [registry.make_tracer(n, Settings()).name for n in TRACER_NAMES] == list(TRACER_NAMES)
    assert registry.CHOICES == TRACER_CHOICES == ("auto", *TRACER_NAMES)


def test_registry_refuses_names_that_differ():
    with pytest.raises(RuntimeError, match="differ from app.config.TRACER_NAMES"):
        registry.check_names(["perf-major", "procfs"], ("procfs", "perf-major"))
    with pytest.raises(RuntimeError):
        registry.check_names([*registry.ORDER, "ftrace"], TRACER_NAMES)
    registry.check_names(list(registry.ORDER), TRACER_NAMES)


def test_settings_refuse_an_unknown_tracer(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PFI_TRACER", "ftrace")
    with pytest.raises(ValidationError, match="unknown tracer 'ftrace'; one of auto, perf-major"):
        Settings()


def test_settings_load_without_the_tracers():
    """The settings module imports no tracer (the 9-module circle through app.config is gone)."""
    import subprocess
    import sys

    code = "import sys, app.config; app.config.Settings(); print(sorted(m for m in sys.modules if m.startswith('app.tracers')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

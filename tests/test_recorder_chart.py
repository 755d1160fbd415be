"""The chart's watch-mode values reach the pod as the settings the service reads (real Helm engine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
pytest.importorskip("yaml")

from app.config import Settings  # noqa: E402
from tests.test_chart import CHART_DIR, env, render  # noqa: E402


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _settings(e: dict[str, dict[str, Any]]) -> Settings:
    return Settings(watch_threshold=e["PFI_WATCH_THRESHOLD"]["value"], watch_for_seconds=e["PFI_WATCH_FOR_SECONDS"]["value"])


def test_watch_off_by_default_and_set_by_values(chart: Any) -> None:
    s = _settings(env(render(chart)))
    assert s.recorder.watch_threshold == 0 and s.recorder.watch_for_seconds == 900
    s = _settings(env(render(chart, {"watch": {"threshold": 500, "forSeconds": 300}})))
    assert s.recorder.watch_threshold == 500 and s.recorder.watch_for_seconds == 300


@pytest.mark.parametrize("bad", [{"threshold": -1}, {"forSeconds": "15m"}, {"treshold": 500}])
def test_watch_values_are_typed(chart: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"(?i)watch|threshold|forSeconds|additional"):
        chart.validate_schema({"watch": bad})


def test_recorder_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 0.5"):
        Settings(recorder_interval_seconds=0.1)
    assert Settings(recorder_interval_seconds=0).recorder.recorder_interval_seconds == 0  # off
    with pytest.raises(ValueError):
        Settings(recorder_retention_seconds=10)

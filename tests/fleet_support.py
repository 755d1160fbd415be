"""The chart's fleet rules and dashboard as the tests use them: rendered by the real Helm engine
(helm-python-sdk) and read from the chart's dashboards/fleet.json, with Grafana's variables filled in
as Grafana would for one choice of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "pagefault-inspector"
DASHBOARD = CHART_DIR / "dashboards" / "fleet.json"


def fleet_rule_groups(**rules: Any) -> list[dict[str, Any]]:
    """spec.groups of the chart's fleet PrometheusRule (fleet.rules.enabled, `rules` on top)."""
    import helm_python as helm
    import yaml

    values = {"fleet": {"rules": {"enabled": True, **rules}}}
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="pagefault-inspector", namespace="pfi", is_install=True)
    objs = [o for src, text in rendered.items() if src.endswith(".yaml") for o in yaml.safe_load_all(text) if o]
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule" and o["metadata"]["name"].endswith("-fleet")]
    return list(rule["spec"]["groups"])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panel_queries(variables: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, `$name` replaced by variables[name]
    (a variable the dict lacks fails: the dashboard must not use one it does not define)."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)] if m.group(1) in variables
                          else _unknown(m.group(1)), target["expr"])
            out.append((panel["title"], expr))
    return out


def _unknown(name: str) -> str:
    if name.isdigit():  # a regex back-reference of label_replace ("$1"), not a variable
        return "$" + name
    raise KeyError(f"the dashboard uses ${name}, which the test does not fill in")

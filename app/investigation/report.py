"""The one place a report is put together: what the engine found, plus what only its caller knows
(the id the service gave it, the alert that started it and those that joined, the flight recorder's
lead-up and the verdict that reads it). The service's report pipeline and the CLI both call
`build_report`; nothing patches a report after it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.investigation.lead_up import NO_HISTORY_CLI, apply_lead_up
from app.models import History, Report, Trigger

__all__ = ["CLI_LEAD_UP", "LeadUp", "build_report"]


@dataclass(frozen=True)
class LeadUp:
    """What the flight recorder had for a report: its history, or why there is none."""

    history: History | None
    reason: str | None = None


CLI_LEAD_UP = LeadUp(None, NO_HISTORY_CLI)  # the recorder runs only in the service


def build_report(result: Report, *, report_id: str, triggers: Sequence[Trigger], lead_up: LeadUp) -> Report:
    """The report as stored, shown and sent. `result`: the engine's (or a failure's) report;
    `triggers`: the alerts of the investigation, the first one started it (none: the engine's own
    trigger stays, e.g. the CLI's)."""
    joined = {"trigger": triggers[0], "joined": list(triggers[1:])} if triggers else {}
    report = result.model_copy(update={"id": report_id, "history_reason": lead_up.reason, **joined})
    return apply_lead_up(report, lead_up.history)

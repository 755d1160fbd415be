"""Findings as metrics (issue 28): a node's latest finding per workload as Prometheus series, and
the series of every node read back into the fleet's rows. Pure.

One finding is one workload's last report on one node (`NodeWorkload`, what the store answers).
It becomes one series in each of the gauges below, all with the same labels, so that two of them
divide without `on(...)`:

    node         this node (the inspector's own label: the scrape's `instance` is its pod IP)
    workload     the fleet's key of the workload (workload:<ns>/<Kind>/<name>, pod:..., cgroup:...)
    kind         workload | pod | host
    namespace    the culprit's namespace ('' for host processes)
    owner_kind   Deployment, StatefulSet, ... ; `Pod` for a pod without an owner
    owner_name   the owner's name; the pod's name for a pod without an owner
    container    the culprit's container ('' when not known)
    unit         host processes: the cgroup (a systemd unit's); '' otherwise
    cause        the report's verdict (container_memory_limit, swap, ...)
    source_kind  file | swap | zram | shmem | code | '' (the culprit's dominant source)
    report_id    the report, for a link to its page (`/reports/<id>?node=<node>`)

Owners, not pods or PIDs: a Deployment's pods on one node are one series. File paths are never
labels (they are in the report, one link away). A node exports at most `max_workloads` findings
(the newest), each only while its report is younger than the findings' age, so a node sends at
most SERIES_PER_FINDING x max_workloads series, and a fixed node stops being counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app.investigation.fleet import NodeLink, NodeWorkload, Recommendation, ReportFacts, Workload

__all__ = [
    "FLEET_QUERY",
    "GAUGES",
    "LABELS",
    "Sample",
    "also_on_query",
    "node_rows_of",
    "samples_of",
]

PREFIX = "pfi_finding_"
RATE = PREFIX + "major_faults_per_second"
CURRENT = PREFIX + "memory_limit_bytes"
RECOMMENDED = PREFIX + "recommended_limit_bytes"
REPORTED = PREFIX + "report_timestamp_seconds"
FIRST = PREFIX + "first_seen_timestamp_seconds"
REPORTS = PREFIX + "reports"

# name -> help; every finding has each of them, except a limit that is not known
GAUGES: dict[str, str] = {
    RATE: "Major faults per second of the culprit of the workload's last report on this node",
    CURRENT: "Memory limit the culprit ran under in its last report, in bytes (absent: none or unknown)",
    RECOMMENDED: "Memory limit the last report recommends, in bytes (absent: it recommends none)",
    REPORTED: "Start of the workload's last report on this node, in seconds since the epoch",
    FIRST: "Start of the workload's first report on this node within the findings' age, in seconds",
    REPORTS: "Reports of the workload on this node within the findings' age",
}
SERIES_PER_FINDING = len(GAUGES)
LABELS = (
    "node", "workload", "kind", "namespace", "owner_kind", "owner_name", "container", "unit", "cause",
    "source_kind", "report_id",
)
LABEL_MAX = 600  # a label value longer than this is cut (the workload key is already cut at 600)

# The fleet: every node's findings, the gauges a row needs, in one instant query.
FLEET_QUERY = "{__name__=~\"" + "|".join((REPORTED, FIRST, REPORTS, RECOMMENDED, CURRENT, RATE)) + "\"}"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _ts(dt: datetime) -> float:
    return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt).timestamp()


def _labels(node: str, row: NodeWorkload) -> dict[str, str]:
    w, facts = row.workload, row.latest
    owner_kind, owner_name = w.owner_kind or "", w.owner_name or ""
    if w.kind == "pod":
        owner_kind, owner_name = "Pod", w.pod or ""
    report_id = row.links[0].report_id if row.links else ""
    values = {
        "node": node,
        "workload": w.key,
        "kind": w.kind,
        "namespace": w.namespace or "",
        "owner_kind": owner_kind,
        "owner_name": owner_name,
        "container": facts.container or "",
        "unit": (w.cgroup or "") if w.kind == "host" else "",
        "cause": facts.cause,
        "source_kind": facts.fault_kind or "",
        "report_id": report_id,
    }
    return {k: v[:LABEL_MAX] for k, v in values.items()}


def samples_of(node: str, rows: Iterable[NodeWorkload]) -> list[Sample]:
    """One node's findings (its store's rows, newest first, already bounded by the caller) as
    samples of GAUGES."""
    out: list[Sample] = []
    for row in rows:
        labels = _labels(node, row)
        facts = row.latest
        rec = facts.recommendation
        values: list[tuple[str, float | None]] = [
            (RATE, facts.major_faults_per_second if facts.major_faults_per_second is not None else 0.0),
            (CURRENT, facts.current_limit_bytes),
            (RECOMMENDED, rec.recommended_limit_bytes if rec is not None else None),
            (REPORTED, _ts(row.last_seen)),
            (FIRST, _ts(row.first_seen)),
            (REPORTS, row.reports),
        ]
        out.extend(Sample(name, labels, float(v)) for name, v in values if v is not None)
    return out


def _promql_string(value: str) -> str:
    """A PromQL double-quoted string literal (Go escaping: backslash and quote; control characters
    as \\x escapes would also do, but keys hold none: they come from names and cgroup paths)."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + out + '"'


def also_on_query(key: str) -> str:
    """The nodes whose latest finding blames workload `key` (one series a node)."""
    return f"{REPORTED}{{workload={_promql_string(key)}}}"


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _workload(labels: dict[str, str]) -> Workload:
    kind = labels.get("kind", "")
    key = labels.get("workload", "")
    ns = labels.get("namespace") or None
    if kind == "workload":
        return Workload(
            key=key, kind="workload", namespace=ns, owner_kind=labels.get("owner_kind") or None,
            owner_name=labels.get("owner_name") or None,
        )
    if kind == "pod":
        return Workload(key=key, kind="pod", namespace=ns, pod=labels.get("owner_name") or None)
    comm = key[5:] if key.startswith("comm:") else None
    return Workload(key=key, kind="host", cgroup=labels.get("unit") or None, comm=comm)


def node_rows_of(samples: Sequence[Sample]) -> list[NodeWorkload]:
    """Every node's finding series back into one row a (workload, node), as a node's store would
    answer them, for app.investigation.fleet.merge. A finding without its report time (a partial
    scrape, a foreign series) is left out. What the series do not hold is not invented: `file`,
    `summary` and the command stay in the report (the row links to it), and `causes` is the latest
    cause counted once per report."""
    by_finding: dict[tuple[str, str], dict[str, Sample]] = {}
    for s in samples:
        node, key = s.labels.get("node", ""), s.labels.get("workload", "")
        if not node or not key or s.name not in GAUGES:
            continue
        by_finding.setdefault((node, key), {})[s.name] = s
    rows = []
    for (node, _key), gauges in by_finding.items():
        reported = gauges.get(REPORTED)
        if reported is None:
            continue
        labels = reported.labels
        last = _dt(reported.value)
        first = _dt(gauges[FIRST].value) if FIRST in gauges else last
        reports = int(gauges[REPORTS].value) if REPORTS in gauges else 1
        cause = labels.get("cause") or "unknown"
        rec = gauges.get(RECOMMENDED)
        current = gauges.get(CURRENT)
        rate = gauges.get(RATE)
        facts = ReportFacts(
            workload=_workload(labels),
            cause=cause,
            fault_kind=labels.get("source_kind") or None,
            recommendation=Recommendation(recommended_limit_bytes=int(rec.value)) if rec is not None else None,
            container=labels.get("container") or None,
            major_faults_per_second=rate.value if rate is not None else None,
            current_limit_bytes=int(current.value) if current is not None else None,
        )
        report_id = labels.get("report_id", "")
        rows.append(
            NodeWorkload(
                workload=facts.workload,
                node=node,
                reports=max(1, reports),
                first_seen=min(first, last),
                last_seen=last,
                causes={cause: max(1, reports)},
                latest=facts,
                links=[NodeLink(node=node, report_id=report_id, started_at=last)] if report_id else [],
            )
        )
    return rows

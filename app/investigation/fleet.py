"""One culprit on many nodes is one row: reports grouped by the workload they blame. Pure.

A Deployment whose pods thrash at their limit raises the alert on every node that runs one; each
node's report stands alone. Here each report is reduced to its culprit's workload and a few facts
(`ReportFacts`, stored with the report), one node's reports to one row a workload
(`NodeWorkload`, what a node's store answers), and the rows of every node to one row a workload
across the fleet (`WorkloadRow`, what the fleet page and `GET /api/v1/workloads` show).

The culprit of a report is its top process, or, when the verdict names the recorder's lead-up
(`stopped_before_window`), the lead-up's top container. Its workload:
- a pod with an owner: namespace + the owner's kind and name (`PodRef.owner` is the top-level
  owner once resolved: a Deployment, not its ReplicaSet), `workload:<ns>/<Kind>/<name>`;
- a pod without one (or not resolved): the pod, `pod:<ns>/<name>` (`pod-uid:<uid>` without a name);
- a host process: its cgroup (a systemd unit is its cgroup), `cgroup:<path>`; without a cgroup,
  its command name, `comm:<comm>`.
A report with no process, or whose verdict says the node is quiet (`quiet`, `no_major_faults`:
its top processes are listed for context, not blamed), blames nothing and has no workload.

Every list here is bounded by its caller's limits (rows, nodes named, links kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from app.investigation.diagnose import dominant
from app.models import Cause, ProcessReport, Report, SourceKind

__all__ = [
    "ALSO_ON_WINDOW",
    "NODE_LINKS_MAX",
    "SCHEMA_VERSION",
    "SORT_KEYS",
    "NodeLink",
    "NodeWorkload",
    "Recommendation",
    "ReportFacts",
    "Workload",
    "WorkloadRow",
    "also_on_text",
    "facts_of",
    "merge",
    "node_rows",
    "sort_rows",
    "workload_of",
]

SCHEMA_VERSION = "1.0"  # of the rows `GET /api/v1/workloads` answers with; add fields freely
ALSO_ON_WINDOW = timedelta(hours=1)  # "also on N other nodes" counts reports this recent
NODE_LINKS_MAX = 3  # links to one node's reports kept in a row (its newest)
NAMES_IN_TEXT = 3  # node names written out in "also on 11 other nodes: a, b, c, ..."
# Causes that blame nobody: the quiet verdict (read as text: it may be newer than this module's Cause).
QUIET_CAUSES = frozenset({"quiet", str(Cause.NO_MAJOR_FAULTS)})
KEY_MAX = 600  # a key longer than this (a pathological cgroup path) is cut: it stays one row


WorkloadKind = Literal["workload", "pod", "host"]


class Workload(BaseModel):
    """What a row is about. `key` identifies it across nodes; the rest is for showing it."""

    key: str
    kind: WorkloadKind
    namespace: str | None = None
    owner_kind: str | None = None  # Deployment, StatefulSet, DaemonSet, Job... (kind "workload")
    owner_name: str | None = None
    pod: str | None = None  # the pod's name (kind "pod"), or the culprit pod of the latest report
    cgroup: str | None = None  # host processes: the cgroup (a systemd unit's, usually)
    comm: str | None = None  # the culprit's command name, as last seen

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """How the row is named on pages and in chat: `Deployment shop/cart`, `pod shop/cart-0`,
        `unit postgresql.service`, `host process postgres`."""
        if self.kind == "workload":
            return f"{self.owner_kind} {self.namespace or '?'}/{self.owner_name}"
        if self.kind == "pod":
            return f"pod {self.namespace or '?'}/{self.pod}" if self.pod else f"pod {self.key[8:16]}…"
        if self.cgroup:
            leaf = self.cgroup.rstrip("/").rsplit("/", 1)[-1] or "/"
            return f"unit {leaf}" if leaf.endswith((".service", ".scope", ".slice")) else f"cgroup {self.cgroup}"
        return f"host process {self.comm or '?'}"


class Recommendation(BaseModel):
    """The latest report's concrete recommendation (the advice's limit and command), when it had one."""

    recommended_limit_bytes: int | None = None
    command: str | None = None
    current_limit_bytes: int | None = None  # the limit it replaces (issue 28)


class ReportFacts(BaseModel):
    """One report reduced to what the fleet view needs (stored with the report, a few hundred bytes)."""

    workload: Workload
    cause: str
    summary: str = ""
    fault_kind: str | None = None  # the culprit's dominant source kind: file, code, swap, shmem
    file: str | None = None  # its top path of that kind
    recommendation: Recommendation | None = None
    # Added for issue 28 (findings as metrics; absent in rows stored before it):
    container: str | None = None  # the culprit's container
    major_faults_per_second: float | None = None  # the culprit's rate over the window
    current_limit_bytes: int | None = None  # the memory limit it ran under (None: none, or unknown)


class NodeLink(BaseModel):
    """A report of the workload on one node: where the row links to."""

    node: str
    report_id: str
    started_at: datetime


class NodeWorkload(BaseModel):
    """One node's reports of one workload: what one node's store answers."""

    workload: Workload
    node: str
    reports: int
    first_seen: datetime
    last_seen: datetime
    causes: dict[str, int] = Field(default_factory=dict)  # cause -> reports
    latest: ReportFacts
    links: list[NodeLink] = Field(default_factory=list)  # newest first, at most NODE_LINKS_MAX


class WorkloadRow(BaseModel):
    """One workload across the fleet."""

    workload: Workload
    nodes: list[str]  # sorted
    reports: int
    first_seen: datetime
    last_seen: datetime
    cause: str  # the dominant cause: the one most reports name (ties: the latest report's)
    causes: dict[str, int] = Field(default_factory=dict)
    fault_kind: str | None = None  # of the latest report
    file: str | None = None
    summary: str = ""  # the latest report's verdict
    recommendation: Recommendation | None = None  # the latest report's
    links: list[NodeLink] = Field(default_factory=list)  # the newest report of each node, by node


# --- one report -----------------------------------------------------------------------------------


def _cut(key: str) -> str:
    return key if len(key) <= KEY_MAX else key[:KEY_MAX]


def _process_workload(p: ProcessReport) -> Workload:
    pod = p.pod
    if pod is not None:
        owner = pod.owner
        if owner is not None and owner.kind and owner.name:
            return Workload(
                key=_cut(f"workload:{pod.namespace or ''}/{owner.kind}/{owner.name}"),
                kind="workload",
                namespace=pod.namespace,
                owner_kind=owner.kind,
                owner_name=owner.name,
                pod=pod.name,
                comm=p.comm,
            )
        key = f"pod:{pod.namespace or ''}/{pod.name}" if pod.name else f"pod-uid:{pod.uid}"
        return Workload(key=_cut(key), kind="pod", namespace=pod.namespace, pod=pod.name, comm=p.comm)
    if p.cgroup:
        return Workload(key=_cut(f"cgroup:{p.cgroup}"), kind="host", cgroup=p.cgroup, comm=p.comm)
    return Workload(key=_cut(f"comm:{p.comm}"), kind="host", comm=p.comm)


def workload_of(report: Report) -> Workload | None:
    """The workload the report blames (module docstring), or None when it blames nothing."""
    h = report.history
    if report.verdict.cause == Cause.STOPPED_BEFORE_WINDOW and h is not None and h.cgroups:
        top = h.cgroups[0]
        pod = top.pod
        if pod is None:
            return Workload(key=_cut(f"cgroup:{top.cgroup}"), kind="host", cgroup=top.cgroup)
        key = f"pod:{pod.namespace or ''}/{pod.name}" if pod.name else f"pod-uid:{pod.uid}"
        return Workload(key=_cut(key), kind="pod", namespace=pod.namespace, pod=pod.name)
    if not report.processes or str(report.verdict.cause) in QUIET_CAUSES:
        return None
    return _process_workload(report.processes[0])


def _recommendation(report: Report) -> Recommendation | None:
    """The limit and command of `verdict.recommendation` of the report, else of its top process (when the
    report blames that process: a group that stopped before the window is another workload, and the top
    process's limit and command are not its own)."""
    verdicts = [report.verdict]
    blames_top = report.verdict.cause != Cause.STOPPED_BEFORE_WINDOW
    if blames_top and report.processes and report.processes[0].verdict is not None:
        verdicts.append(report.processes[0].verdict)
    for v in verdicts:
        if v.recommendation is not None:
            rec = v.recommendation
            return Recommendation(recommended_limit_bytes=rec.recommended_limit_bytes,
                                  command=rec.command[:500] if rec.command else None,
                                  current_limit_bytes=rec.current_limit_bytes)
    return None


def facts_of(report: Report) -> ReportFacts | None:
    """The report reduced to its workload and the facts shown for it; None when it blames nothing."""
    w = workload_of(report)
    if w is None:
        return None
    kind = file = container = rate = current = None
    rec = _recommendation(report)
    if report.processes and report.verdict.cause != Cause.STOPPED_BEFORE_WINDOW:
        top = report.processes[0]
        k, _share, path = dominant(top)
        kind, file = (k.value if k is not None else None), path
        swapped = [s for s in top.sources if s.kind == SourceKind.SWAP]
        if kind == SourceKind.SWAP.value and swapped and all(s.swap_device == "zram" for s in swapped):
            kind = "zram"  # the findings' source_kind: swap that lives compressed in node RAM
        container = top.pod.container if top.pod is not None else None
        rate = top.major_faults_per_second
        current = top.cgroup_memory.max_bytes if top.cgroup_memory is not None else None
    if rec is not None and rec.current_limit_bytes is not None:
        current = rec.current_limit_bytes  # the limit the recommendation replaces (the pod's, maybe)
    return ReportFacts(
        workload=w,
        cause=str(report.verdict.cause),
        summary=report.verdict.summary[:500],
        fault_kind=kind,
        file=file[:500] if file else None,
        recommendation=rec,
        container=container[:253] if container else None,
        major_faults_per_second=rate,
        current_limit_bytes=current,
    )


# --- one node, then the fleet ---------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def node_rows(node: str, reports: Iterable[tuple[str, datetime, ReportFacts]]) -> list[NodeWorkload]:
    """One node's reports (id, started_at, facts) -> one row a workload, newest first. For reports
    held in memory; the store computes the same rows in SQL (app.service.report_store)."""
    rows: dict[str, NodeWorkload] = {}
    for rid, started, facts in sorted(reports, key=lambda r: _utc(r[1]), reverse=True):
        started = _utc(started)
        row = rows.get(facts.workload.key)
        if row is None:
            rows[facts.workload.key] = NodeWorkload(
                workload=facts.workload,
                node=node,
                reports=1,
                first_seen=started,
                last_seen=started,
                causes={facts.cause: 1},
                latest=facts,
                links=[NodeLink(node=node, report_id=rid, started_at=started)],
            )
            continue
        row.reports += 1
        row.first_seen = min(row.first_seen, started)
        row.causes[facts.cause] = row.causes.get(facts.cause, 0) + 1
        if len(row.links) < NODE_LINKS_MAX:
            row.links.append(NodeLink(node=node, report_id=rid, started_at=started))
    return list(rows.values())


def merge(rows: Iterable[NodeWorkload]) -> list[WorkloadRow]:
    """Every node's rows -> one row a workload (key), newest first. A node answering twice (its
    own store and a peer's copy of the list) counts once: the later answer for (key, node) is
    dropped."""
    by_key: dict[str, list[NodeWorkload]] = {}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r.workload.key, r.node) in seen:
            continue
        seen.add((r.workload.key, r.node))
        by_key.setdefault(r.workload.key, []).append(r)
    out = []
    for parts in by_key.values():
        latest = max(parts, key=lambda r: _utc(r.last_seen))
        causes: dict[str, int] = {}
        for r in parts:
            for cause, n in r.causes.items():
                causes[cause] = causes.get(cause, 0) + n
        top = max(causes.values(), default=0)
        tied = [c for c, n in causes.items() if n == top]
        cause = latest.latest.cause if latest.latest.cause in tied or not tied else sorted(tied)[0]
        out.append(
            WorkloadRow(
                workload=latest.workload,
                nodes=sorted({r.node for r in parts}),
                reports=sum(r.reports for r in parts),
                first_seen=min(_utc(r.first_seen) for r in parts),
                last_seen=_utc(latest.last_seen),
                cause=cause,
                causes=causes,
                fault_kind=latest.latest.fault_kind,
                file=latest.latest.file,
                summary=latest.latest.summary,
                recommendation=latest.latest.recommendation,
                links=sorted((r.links[0] for r in parts if r.links), key=lambda link: link.node),
            )
        )
    out.sort(key=lambda r: r.last_seen, reverse=True)
    return out


SORT_KEYS = ("last_seen", "first_seen", "nodes", "reports", "workload", "cause")


def sort_rows(rows: Sequence[WorkloadRow], by: str = "last_seen", descending: bool = True) -> list[WorkloadRow]:
    """Sorted by one of SORT_KEYS (unknown: last_seen); ties broken by the workload's key, so that
    pages of the same list do not overlap."""
    keys: dict[str, Any] = {
        "last_seen": lambda r: r.last_seen,
        "first_seen": lambda r: r.first_seen,
        "nodes": lambda r: len(r.nodes),
        "reports": lambda r: r.reports,
        "workload": lambda r: r.workload.label.lower(),
        "cause": lambda r: r.cause,
    }
    primary = keys.get(by, keys["last_seen"])
    ordered = sorted(rows, key=lambda r: r.workload.key)
    return sorted(ordered, key=primary, reverse=descending)


def also_on_text(
    nodes: Sequence[str], names: int = NAMES_IN_TEXT, sampled: tuple[int, int] | None = None
) -> str:
    """`also on 11 other nodes: a, b, c, ...` ('' for none); nodes as given (sorted by the caller).
    `sampled` (asked, known): only a sample of the peers was asked, so the count is a floor:
    `also on at least 2 other nodes (16 of 99 peers asked): a, b`."""
    if not nodes:
        return ""
    shown = ", ".join(nodes[:names]) + (", ..." if len(nodes) > names else "")
    plural = "node" if len(nodes) == 1 else "nodes"
    if sampled is not None:
        asked, known = sampled
        return f"also on at least {len(nodes)} other {plural} ({asked} of {known} peers asked): {shown}"
    return f"also on {len(nodes)} other {plural}: {shown}"

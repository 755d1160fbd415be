"""What a peer may answer, as models: a peer's JSON is read into these or refused whole.

A peer is another pod of this DaemonSet, but it is reached over the network and may run another
version, be broken or lie: nothing it says reaches a page unvalidated. The models mirror our own
answers field for field (`ReportSummary.as_dict` of app.service.report_store for the report list,
`Investigation.as_dict` of app.service.scheduler for running investigations; tests/test_hostile.py
checks our own answers validate), and are bounded: each string, each list, each timestamp (it must
name an instant that exists in UTC, so sorting and formatting it cannot fail later). Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from app.investigation.fleet import NodeWorkload
from app.models import Trigger

TEXT_MAX = 4_000  # characters of one field (a verdict summary is cut at 2,000 when stored)
TRIGGERS_MAX = 1_000  # alerts joined to one investigation


def _instant(value: str) -> str:
    """An ISO 8601 time with a zone that exists in UTC (0001-01-01T00:00:00+14:00 does not)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("a time without a zone")
    try:
        return parsed.astimezone(UTC).isoformat(timespec="microseconds")
    except OverflowError:
        raise ValueError("a time out of range once in UTC") from None


Text = Annotated[str, Field(max_length=TEXT_MAX)]
Instant = Annotated[str, Field(max_length=64), AfterValidator(_instant)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer peer may add fields


class ReportRow(_Answer):
    """One row of GET /api/v1/reports (ReportSummary)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    node: Text
    started_at: Instant
    finished_at: Instant | None = None
    status: Text
    summary: Text
    backend: Text | None = None
    cause: Text | None = None
    top_process: Text | None = None
    top_pid: int | None = None
    top_faults_per_second: float | None = None
    top_namespace: Text | None = None
    top_pod: Text | None = None
    top_container: Text | None = None
    alertname: Text | None = None
    alerts: int = 0
    unreadable: bool = False


class InvestigationRow(_Answer):
    """One row of GET /api/v1/investigations (Investigation.as_dict)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    node: Text
    state: Text
    queued_at: Instant
    started_at: Instant | None = None
    window_seconds: float | None = None
    progress: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    message: Text = ""
    triggers: Annotated[list[Trigger], Field(max_length=TRIGGERS_MAX)] = []


REPORT_ROWS: TypeAdapter[list[ReportRow]] = TypeAdapter(list[ReportRow])
INVESTIGATION_ROWS: TypeAdapter[list[InvestigationRow]] = TypeAdapter(list[InvestigationRow])


def rows_of(doc: Any, key: str, adapter: TypeAdapter[list[Any]], max_rows: int) -> list[dict[str, Any]]:
    """`doc[key]` validated row by row with `adapter`, as plain dicts. Raises ValueError (a
    pydantic ValidationError is one) saying what is wrong: not an object, no list, more rows than
    `max_rows`, a row that is not a row."""
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object but {type(doc).__name__}")
    rows = doc.get(key)
    if not isinstance(rows, list):
        raise ValueError(f"no `{key}` list")
    if len(rows) > max_rows:
        raise ValueError(f"{len(rows)} rows in `{key}`, more than the {max_rows} asked for")
    return [r.model_dump(mode="json") for r in adapter.validate_python(rows)]


def _exists_in_utc(dt: datetime) -> bool:
    try:
        dt.astimezone(UTC)
    except OverflowError:
        return False
    return True


def workload_rows(node: str, docs: list[Any], max_rows: int) -> list[NodeWorkload]:
    """A peer's `GET /api/v1/workloads?scope=node` rows (app.investigation.fleet.NodeWorkload, as
    our own store answers them). Raises ValueError naming the first bad row: more rows than asked
    for, a row that does not parse, a time that does not exist in UTC (the merge compares them in
    UTC), a row for another node (a peer answers for its own node only)."""
    if len(docs) > max_rows:
        raise ValueError(f"{len(docs)} workload rows, more than the {max_rows} asked for")
    out = []
    for i, doc in enumerate(docs):
        row = NodeWorkload.model_validate(doc)
        times = [row.first_seen, row.last_seen, *(link.started_at for link in row.links)]
        if not all(_exists_in_utc(t) for t in times):
            raise ValueError(f"workload row {i}: a time out of range once in UTC")
        if row.node != node:
            raise ValueError(f"workload row {i} is for node {row.node[:100]!r}, not {node}")
        out.append(row)
    return out

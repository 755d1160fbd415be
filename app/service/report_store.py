"""The report store: one SQLite file under the data dir (the chart mounts a host path there).

One table, one row a report: `id, node, started_at, finished_at, status, summary, json` (+ the
alerts that triggered or joined it, `triggers`). WAL journal; every write is one transaction
(`INSERT OR REPLACE`), so a report is either fully there or not at all. Retention by count and age
runs after each write.

When the file is corrupt or cannot be written, the store says so (`ready`/`reason`, used by
/readyz, and a log line) and keeps the reports it could not write in memory (bounded), retrying
them on the next write and from the service's retry loop: reports in flight are not lost to a
full disk or a read-only mount. It never deletes or replaces a file it cannot read.

Synchronous; the service calls it through `asyncio.to_thread`. A lock serialises the connection.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.models import Report, Trigger

log = logging.getLogger(__name__)

DB_NAME = "reports.sqlite3"
PENDING_MAX = 100  # reports kept in memory while the database cannot be written

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    summary TEXT NOT NULL,
    json TEXT NOT NULL,
    triggers TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS reports_started ON reports (started_at DESC);
CREATE INDEX IF NOT EXISTS reports_node_started ON reports (node, started_at DESC);
CREATE TABLE IF NOT EXISTS outbox (
    report_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (report_id, sink)
);
"""
DIR_MODE = 0o700  # the store holds command lines: the data dir and its files are private
FILE_MODE = 0o600
INTERRUPTED = (
    "The service stopped while this investigation ran (a crash, an OOM kill or SIGKILL): "
    "no result was recorded."
)

# The summary columns read from the JSON document by SQLite (json1), so a listing never parses
# whole reports in Python.
_SUMMARY_SELECT = """
SELECT id, node, started_at, finished_at, status, summary,
       json_extract(json, '$.tracer.backend'),
       json_extract(json, '$.verdict.cause'),
       json_extract(json, '$.processes[0].comm'),
       json_extract(json, '$.processes[0].pid'),
       json_extract(json, '$.processes[0].major_faults_per_second'),
       json_extract(json, '$.processes[0].pod.namespace'),
       json_extract(json, '$.processes[0].pod.name'),
       json_extract(json, '$.processes[0].pod.container'),
       json_extract(json, '$.trigger.alertname'),
       json_array_length(triggers)
FROM reports
"""


def _ts(value: datetime | None) -> str | None:
    """Fixed-width UTC ISO text: sorts like the instants it names."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass
class ReportSummary:
    id: str
    node: str
    started_at: str
    finished_at: str | None
    status: str
    summary: str
    backend: str | None
    cause: str | None
    top_process: str | None
    top_pid: int | None
    top_faults_per_second: float | None
    top_namespace: str | None
    top_pod: str | None
    top_container: str | None
    alertname: str | None
    alerts: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_report(cls, report: Report, triggers: list[Trigger]) -> ReportSummary:
        top = report.processes[0] if report.processes else None
        pod = top.pod if top else None
        return cls(
            id=report.id,
            node=report.node,
            started_at=_ts(report.started_at) or "",
            finished_at=_ts(report.finished_at),
            status=report.status,
            summary=report.verdict.summary,
            backend=report.tracer.backend,
            cause=str(report.verdict.cause),
            top_process=top.comm if top else None,
            top_pid=top.pid if top else None,
            top_faults_per_second=top.major_faults_per_second if top else None,
            top_namespace=pod.namespace if pod else None,
            top_pod=pod.name if pod else None,
            top_container=pod.container if pod else None,
            alertname=report.trigger.alertname,
            alerts=len(triggers),
        )


def private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700, also when it already existed."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make `path` 0600 (create it empty when missing)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    if (path.stat().st_mode & 0o777) != FILE_MODE:
        os.chmod(path, FILE_MODE)


class ReportStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        retention_count: int = 500,
        retention_days: float = 30.0,
        pending_max: int = PENDING_MAX,
    ) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.retention_count = retention_count
        self.retention_days = retention_days
        self.pending_max = pending_max
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # report id -> (report, triggers, sinks to deliver it to: outbox rows written with it)
        self._pending: OrderedDict[str, tuple[Report, list[Trigger], list[str]]] = OrderedDict()
        self._outbox_done: dict[str, set[str]] = {}  # outbox rows to delete once the DB is back
        self.reason: str | None = "not opened"
        self.set_aside = 0  # reports that could not be serialised at all (counted, logged, skipped)
        self.interrupted: list[str] = []  # ids marked failed at open: they were running at a crash
        self._checked_interrupted = False  # only at the first open: later ones may see our own rows

    # --- state ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._conn is not None and self.reason is None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _fail(self, what: str, exc: BaseException) -> None:
        reason = f"report store {self.path}: {what}: {exc}"
        if reason != self.reason:
            log.error("%s (reports are kept in memory and retried)", reason)
        self.reason = reason

    def open(self) -> bool:
        """Open (or create) the database; False with `reason` set when it cannot be used."""
        with self._lock:
            return self._open_locked()

    def _open_locked(self) -> bool:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            self._fail("cannot open", exc)
            return False
        self._make_private()
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            self._fail("cannot open", exc)
            return False
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
        except sqlite3.Error as exc:
            conn.close()
            self._fail("unusable", exc)
            return False
        if not self._checked_interrupted:
            try:
                self._mark_interrupted(conn)
                self._checked_interrupted = True
            except sqlite3.Error as exc:  # read-only for now: the next open tries again
                log.warning("report store %s: cannot mark interrupted reports yet: %s", self.path, exc)
        self._conn = conn
        self.reason = None
        log.info("report store at %s", self.path)
        return True

    def _make_private(self) -> None:
        """The data dir 0700, the database 0600 (SQLite gives its -wal and -shm files the database's
        mode), also when they existed. Best effort: a read-only mount still opens for reading."""
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            for extra in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + extra)
                if side.exists() and (side.stat().st_mode & 0o777) != FILE_MODE:
                    os.chmod(side, FILE_MODE)
        except OSError as exc:
            log.warning("report store %s: cannot make the data private (0700/0600): %s", self.path, exc)

    def _mark_interrupted(self, conn: sqlite3.Connection) -> None:
        """Rows still `running` at open belong to a process that died mid-investigation (this
        process has not started one yet): they become `failed` reports that say so."""
        rows = conn.execute("SELECT id, json FROM reports WHERE status = 'running'").fetchall()
        for rid, doc in rows:
            try:
                report = Report.model_validate_json(doc)
            except ValueError:
                log.error("report %s: a running row that cannot be read is left as it is", rid)
                continue
            failed = report.model_copy(
                update={
                    "status": "failed",
                    "finished_at": None,
                    "verdict": report.verdict.model_copy(update={"summary": INTERRUPTED}),
                }
            )
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "UPDATE reports SET status = 'failed', summary = ?, json = ? WHERE id = ?",
                    (INTERRUPTED, failed.model_dump_json(), rid),
                )
            self.interrupted.append(rid)
            log.warning("report %s: %s", rid, INTERRUPTED)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._pending:
                log.error("report store closed with %d report(s) not written", len(self._pending))

    # --- writes -----------------------------------------------------------------------------
    def put(
        self, report: Report, triggers: list[Trigger] | None = None, *, outbox: list[str] | None = None
    ) -> bool:
        """Write (or replace) one report, with outbox rows for the sinks named in `outbox` (in the
        same transaction). False: not written now, kept in memory and retried."""
        triggers = list(triggers or [])
        with self._lock:
            self._pending[report.id] = (report, triggers, list(outbox or []))
            self._pending.move_to_end(report.id)
            while len(self._pending) > self.pending_max:
                dropped, _ = self._pending.popitem(last=False)
                log.error(
                    "report %s dropped: store unwritable and %d reports waiting", dropped, self.pending_max
                )
            return self._flush_locked()

    def delivered(self, report: Report, triggers: list[Trigger], sinks: list[str]) -> bool:
        """The report with its sink results; the outbox rows of `sinks` go in the same write."""
        with self._lock:
            done = self._outbox_done.setdefault(report.id, set())
            done.update(sinks)
            while len(self._outbox_done) > self.pending_max:
                self._outbox_done.pop(next(iter(self._outbox_done)))
            self._pending[report.id] = (report, list(triggers), [])
            self._pending.move_to_end(report.id)
            return self._flush_locked()

    def retry_pending(self) -> bool:
        """Reopen if needed and write what waits. True when nothing waits any more."""
        with self._lock:
            if (self._conn is None or self.reason is not None) and not self._open_locked():
                return False
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        if self._conn is None:
            return False
        try:
            while self._pending:
                rid, (report, triggers, outbox) = next(iter(self._pending.items()))
                try:
                    doc = report.model_dump_json()
                    trig = json.dumps([t.model_dump(mode="json") for t in triggers])
                    doc.encode("utf-8")
                    trig.encode("utf-8")
                except (ValueError, TypeError) as exc:  # not encodable (a lone surrogate...): skip it
                    del self._pending[rid]
                    self._outbox_done.pop(rid, None)
                    self.set_aside += 1
                    log.error(
                        "report %s set aside: it cannot be serialised (%s: %s); the store goes on",
                        rid,
                        type(exc).__name__,
                        str(exc)[:200].encode("utf-8", "backslashreplace").decode(),
                    )
                    continue
                self._write(self._conn, report, doc, trig, outbox, self._outbox_done.get(rid, set()))
                del self._pending[rid]
                self._outbox_done.pop(rid, None)
            self._retain(self._conn)
        except sqlite3.Error as exc:
            self._fail("cannot write", exc)
            return False
        self.reason = None
        return True

    @staticmethod
    def _write(
        conn: sqlite3.Connection, report: Report, doc: str, trig: str, outbox: list[str], done: set[str]
    ) -> None:
        with conn:  # one transaction
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR REPLACE INTO reports (id, node, started_at, finished_at, status, summary, json,"
                " triggers) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report.id,
                    report.node,
                    _ts(report.started_at),
                    _ts(report.finished_at),
                    report.status,
                    report.verdict.summary[:2000],
                    doc,
                    trig,
                ),
            )
            now = _ts(datetime.now(UTC))
            for sink in outbox:
                conn.execute(
                    "INSERT OR IGNORE INTO outbox (report_id, sink, created_at) VALUES (?, ?, ?)",
                    (report.id, sink, now),
                )
            for sink in done:
                conn.execute("DELETE FROM outbox WHERE report_id = ? AND sink = ?", (report.id, sink))

    def _retain(self, conn: sqlite3.Connection) -> None:
        cutoff = _ts(datetime.now(UTC) - timedelta(days=self.retention_days))
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM reports WHERE started_at < ? AND status != 'running'", (cutoff,))
            conn.execute(
                "DELETE FROM reports WHERE id NOT IN (SELECT id FROM reports ORDER BY started_at DESC LIMIT ?)"
                " AND status != 'running'",
                (self.retention_count,),
            )
            conn.execute("DELETE FROM outbox WHERE report_id NOT IN (SELECT id FROM reports)")

    # --- the outbox -------------------------------------------------------------------------
    def outbox(self, limit: int = 100, exclude: Collection[str] = ()) -> list[tuple[str, list[str]]]:
        """Deliveries not done yet (oldest first): (report id, sink names), at most `limit` reports,
        none of those in `exclude` (being delivered, or already tried by the caller)."""
        with self._lock:
            if self._conn is None:
                return []
            try:
                rows = self._conn.execute(
                    "SELECT report_id, sink FROM outbox"
                    " WHERE report_id NOT IN (SELECT value FROM json_each(?))"
                    " ORDER BY created_at, report_id LIMIT ?",
                    (json.dumps(sorted(exclude)), limit * 8),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                return []
        out: dict[str, list[str]] = {}
        for rid, sink in rows:
            if rid in out or len(out) < limit:
                out.setdefault(rid, []).append(sink)
        return list(out.items())

    # --- reads ------------------------------------------------------------------------------
    def get(self, report_id: str) -> Report | None:
        with self._lock:
            if report_id in self._pending:
                return self._pending[report_id][0]
            if self._conn is None:
                return None
            try:
                row = self._conn.execute("SELECT json FROM reports WHERE id = ?", (report_id,)).fetchone()
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                return None
        return Report.model_validate_json(row[0]) if row else None

    def triggers(self, report_id: str) -> list[Trigger]:
        with self._lock:
            if report_id in self._pending:
                return list(self._pending[report_id][1])
            if self._conn is None:
                return []
            try:
                row = self._conn.execute("SELECT triggers FROM reports WHERE id = ?", (report_id,)).fetchone()
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                return []
        return [Trigger.model_validate(t) for t in json.loads(row[0])] if row else []

    def list(self, *, node: str | None = None, limit: int = 50) -> list[ReportSummary]:
        """Newest first; the reports waiting in memory are included. A `running` row (written when
        an investigation starts) is not listed: the scheduler shows what runs."""
        out: list[ReportSummary] = []
        with self._lock:
            out.extend(
                ReportSummary.from_report(r, t)
                for r, t, _ in self._pending.values()
                if (node is None or r.node == node) and r.status != "running"
            )
            if self._conn is not None:
                sql = (
                    _SUMMARY_SELECT
                    + " WHERE status != 'running'"
                    + (" AND node = ?" if node else "")
                    + " ORDER BY started_at DESC LIMIT ?"
                )
                params: tuple[Any, ...] = (node, limit) if node else (limit,)
                try:
                    rows = self._conn.execute(sql, params).fetchall()
                except sqlite3.Error as exc:
                    self._fail("cannot read", exc)
                    rows = []
                seen = {s.id for s in out}
                out.extend(ReportSummary(*row) for row in rows if row[0] not in seen)
        out.sort(key=lambda s: s.started_at, reverse=True)
        return out[:limit]

    def count(self) -> int:
        with self._lock:
            if self._conn is None:
                return len(self._pending)
            try:
                stored = int(self._conn.execute("SELECT count(*) FROM reports").fetchone()[0])
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                stored = 0
            return stored + len(self._pending)

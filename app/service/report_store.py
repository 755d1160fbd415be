"""The report store: one SQLite file under the data dir (the chart mounts a host path there).

One table, one row a report: `id, node, started_at, finished_at, status, summary, json` (+ the
alerts that triggered or joined it, `triggers`; the workload the report blames, `workload_key`
indexed with `started_at`, and its facts, `workload`: app.investigation.fleet). A store file
written before the workload columns existed gets them at open, filled from each report's JSON. WAL journal; every write is one transaction
(`INSERT OR REPLACE`), so a report is either fully there or not at all. Retention by count and age
runs after each write.

When the file is corrupt or cannot be written, the store says so (`ready`/`reason`, used by
/readyz, and a log line) and keeps the reports it could not write in memory (bounded), retrying
them on the next write and from the service's retry loop: reports on their way are not lost to a
full disk or a read-only mount. It never deletes or replaces a file it cannot read.

Synchronous; the service calls it through `asyncio.to_thread`. A lock serialises the connection.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.investigation.fleet import NODE_LINKS_MAX, NodeLink, NodeWorkload, ReportFacts, facts_of
from app.models import Report, Trigger

log = logging.getLogger(__name__)

DB_NAME = "reports.sqlite3"
PENDING_MAX = 100  # reports kept in memory while the database cannot be written
UNREADABLE_MAX = 10_000  # unreadable row ids remembered (a store holds the retention's count)

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    summary TEXT NOT NULL,
    json TEXT NOT NULL,
    triggers TEXT NOT NULL DEFAULT '[]',
    workload_key TEXT,
    workload TEXT
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
# After the migration adds the columns (an index on a missing column would fail the schema script).
WORKLOAD_INDEX = "CREATE INDEX IF NOT EXISTS reports_workload ON reports (workload_key, started_at DESC)"
WORKLOAD_COLUMNS = ("workload_key", "workload")
BACKFILL_BATCH = 200  # rows filled per transaction when an old store file gets the workload columns
NO_WORKLOAD = ""  # workload_key of a report that blames nothing (filled: not to be looked at again)
WORKLOADS_MAX = 1000  # rows one node's store answers at most (newest workloads first)
INTERRUPTED = (
    "The service stopped while this investigation ran (a crash, an OOM kill or SIGKILL): "
    "no result was recorded."
)

# The summary columns read from the JSON document by SQLite (json1), so a listing never parses
# whole reports in Python. json_extract fails the whole query on one malformed document: each is
# guarded by json_valid, so a broken row is listed (as unreadable) and the others with it.
_SUMMARY_SELECT = """
SELECT id, node, started_at, finished_at, status, summary,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.tracer.backend') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.verdict.cause') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].comm') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].pid') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].major_faults_per_second') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].pod.namespace') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].pod.name') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.processes[0].pod.container') END,
       CASE WHEN json_valid(json) THEN json_extract(json, '$.trigger.alertname') END,
       CASE WHEN json_valid(triggers) THEN json_array_length(triggers) ELSE 0 END,
       NOT json_valid(json)
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
    unreadable: bool = False  # its stored JSON is malformed: only the columns above `backend` are known

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


ROOT_DATA_DIR = Path("/var/lib/pagefault-inspector")  # as root without PFI_DATA_DIR (the chart mounts it)
# The files of the data dir: a symlink in their place could point the store at anything.
DATA_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", "webhook-token")


def data_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be our data dir (it holds command lines and the webhook token), or None.

    Ours: a directory owned by our effective uid, not group- or world-writable, whose files are
    not symlinks and are ours. A missing one is created 0700. Never chmods what is not ours: a
    directory another user owns may hold a token they planted and would read our reports."""
    euid = os.geteuid()
    fix = f"set PFI_DATA_DIR to a directory of uid {euid} with mode 0700"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        st = path.stat()
    except OSError as exc:
        return f"data dir {path}: cannot create or read it ({exc.strerror or exc}): {fix}"
    if not path.is_dir():
        return f"data dir {path}: not a directory: {fix}"
    if st.st_uid != euid:
        return f"data dir {path}: owned by uid {st.st_uid}, not by this process (uid {euid}): {fix}"
    if st.st_mode & 0o022:
        return (
            f"data dir {path}: mode {st.st_mode & 0o7777:04o} lets others write into it:"
            f" chmod 0700 {path}, or {fix}"
        )
    for name in DATA_FILES:
        try:
            fst = os.lstat(path / name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"data dir {path}: cannot read {name} ({exc.strerror or exc}): {fix}"
        if stat.S_ISLNK(fst.st_mode):
            return f"data dir {path}: {name} is a symlink: remove it, or {fix}"
        if fst.st_uid != euid:
            return f"data dir {path}: {name} is owned by uid {fst.st_uid}, not {euid}: remove it, or {fix}"
    return None


def private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700, also when it already existed, when it is ours
    (another user's directory is never chmod-ed: `serve` refuses it, see data_dir_problem)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    st = path.stat()
    if (st.st_mode & 0o777) != DIR_MODE and st.st_uid == os.geteuid():
        os.chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make `path` 0600 (create it empty when missing); a symlink is not followed (OSError)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        if (os.fstat(fd).st_mode & 0o777) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _workload_columns(report: Report) -> tuple[str, str | None]:
    """(workload_key, workload facts JSON) of a report; NO_WORKLOAD and None when it blames nothing."""
    facts = facts_of(report)
    if facts is None:
        return NO_WORKLOAD, None
    return facts.workload.key, facts.model_dump_json(exclude_none=True)


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
        self.workloads_reason: str | None = None  # why the fleet view cannot read this store
        # Rows that cannot be read (malformed JSON, not a report): id -> what is wrong. Skipped
        # wherever they are met, logged once each, counted by /metrics; bounded.
        self.unreadable: OrderedDict[str, str] = OrderedDict()

    # --- state ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._conn is not None and self.reason is None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def unreadable_count(self) -> int:
        return len(self.unreadable)

    def _skip_row(self, rid: str, what: str, exc: BaseException | None = None) -> None:
        """A stored row that cannot be read: logged the first time it is met (not per request),
        remembered by id, counted. The store stays ready: one row is not the store."""
        if rid in self.unreadable:
            return
        detail = f"{what}: {str(exc)[:200]}" if exc is not None else what
        self.unreadable[rid] = detail
        while len(self.unreadable) > UNREADABLE_MAX:
            self.unreadable.popitem(last=False)
        log.error("report store %s: report %s is unreadable and skipped (%s)", self.path, rid, detail)

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
        try:
            self._migrate_workloads(conn)
        except sqlite3.Error as exc:  # read-only: reports are read and listed, the fleet view waits
            self.workloads_reason = f"report store {self.path}: no workload columns yet: {exc}"
            log.warning("%s", self.workloads_reason)
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

    def _migrate_workloads(self, conn: sqlite3.Connection) -> None:
        """A store file from before the fleet view: add the workload columns and their index, then
        fill them from each report's JSON, BACKFILL_BATCH rows a transaction (the table holds at
        most the retention's count). Rows written since fill themselves at write."""
        have = {row[1] for row in conn.execute("PRAGMA table_info(reports)")}
        missing = [c for c in WORKLOAD_COLUMNS if c not in have]
        if missing:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for column in missing:
                    conn.execute(f"ALTER TABLE reports ADD COLUMN {column} TEXT")
            log.info("report store %s: added the column(s) %s", self.path, ", ".join(missing))
        conn.execute(WORKLOAD_INDEX)
        filled = 0
        while True:
            rows = conn.execute(
                "SELECT id, json FROM reports WHERE workload_key IS NULL LIMIT ?", (BACKFILL_BATCH,)
            ).fetchall()
            if not rows:
                break
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for rid, doc in rows:
                    try:
                        key, facts = _workload_columns(Report.model_validate_json(doc))
                    except ValueError:
                        key, facts = NO_WORKLOAD, None  # unreadable: listed as it is, in no workload
                    conn.execute(
                        "UPDATE reports SET workload_key = ?, workload = ? WHERE id = ?", (key, facts, rid)
                    )
            filled += len(rows)
        if filled:
            log.info("report store %s: workload of %d stored report(s) filled in", self.path, filled)
        self.workloads_reason = None

    def _make_private(self) -> None:
        """The data dir 0700, the database 0600 (SQLite gives its -wal and -shm files the database's
        mode), also when they existed. Best effort: a read-only mount still opens for reading."""
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            for extra in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + extra)
                if side.exists() and not side.is_symlink() and (side.stat().st_mode & 0o777) != FILE_MODE:
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
                self._write(
                    self._conn,
                    report,
                    doc,
                    trig,
                    outbox,
                    self._outbox_done.get(rid, set()),
                    workload=self.workloads_reason is None,
                )
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
        conn: sqlite3.Connection,
        report: Report,
        doc: str,
        trig: str,
        outbox: list[str],
        done: set[str],
        *,
        workload: bool = True,
    ) -> None:
        row: tuple[Any, ...] = (
            report.id,
            report.node,
            _ts(report.started_at),
            _ts(report.finished_at),
            report.status,
            report.verdict.summary[:2000],
            doc,
            trig,
        )
        columns = "id, node, started_at, finished_at, status, summary, json, triggers"
        if workload:  # the columns exist (the migration ran)
            row += _workload_columns(report)
            columns += ", workload_key, workload"
        with conn:  # one transaction
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT OR REPLACE INTO reports ({columns}) VALUES ({', '.join('?' * len(row))})", row
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
            if row is None:
                return None
            try:
                return Report.model_validate_json(row[0])
            except ValueError as exc:  # malformed JSON, or JSON that is not a report
                self._skip_row(report_id, "not a report", exc)
                return None

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
            if row is None:
                return []
            try:
                return [Trigger.model_validate(t) for t in json.loads(row[0])]
            except (ValueError, TypeError) as exc:
                self._skip_row(report_id, "its alerts are not readable", exc)
                return []

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
                for row in rows:
                    if row[0] in seen:
                        continue
                    summary = ReportSummary(*row)
                    summary.unreadable = bool(summary.unreadable)
                    if summary.unreadable:
                        self._skip_row(summary.id, "malformed JSON")
                    out.append(summary)
        out.sort(key=lambda s: s.started_at, reverse=True)
        return out[:limit]

    def workloads(
        self, *, since: datetime | None = None, key: str | None = None, limit: int = WORKLOADS_MAX
    ) -> builtins.list[NodeWorkload]:
        """This store's reports grouped by the workload they blame (app.investigation.fleet), the
        most recently seen first, at most `limit` workloads; only reports started at or after
        `since`, only workload `key` when given. Indexed on (workload_key, started_at): "reports
        of workload W in the last hour" reads W's recent rows only. Finished reports only; the
        ones waiting in memory for a broken store are not grouped until written."""
        where = "workload_key IS NOT NULL AND workload_key != '' AND status != 'running'"
        params: list[Any] = []
        if key is not None:
            where += " AND workload_key = ?"
            params.append(key)
        if since is not None:
            where += " AND started_at >= ?"
            params.append(_ts(since))
        out: builtins.list[NodeWorkload] = []
        with self._lock:
            if self._conn is None or self.workloads_reason is not None:
                return []
            try:
                groups = self._conn.execute(
                    f"SELECT workload_key, node, count(*), min(started_at), max(started_at) FROM reports"
                    f" WHERE {where} GROUP BY workload_key, node ORDER BY max(started_at) DESC LIMIT ?",
                    (*params, limit),
                ).fetchall()
                for wkey, node, n, first, last in groups:
                    latest = self._conn.execute(
                        f"SELECT id, started_at, workload FROM reports WHERE {where}"
                        " AND workload_key = ? AND node = ? ORDER BY started_at DESC LIMIT ?",
                        (*params, wkey, node, NODE_LINKS_MAX),
                    ).fetchall()
                    causes = self._conn.execute(
                        "SELECT CASE WHEN json_valid(workload) THEN json_extract(workload, '$.cause') END,"
                        f" count(*) FROM reports WHERE {where}"
                        " AND workload_key = ? AND node = ? GROUP BY 1",
                        (*params, wkey, node),
                    ).fetchall()
                    row = self._workload_row(node, int(n), first, last, causes, latest)
                    if row is not None:
                        out.append(row)
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                return []
        return out

    def _workload_row(
        self,
        node: str,
        n: int,
        first: str,
        last: str,
        causes: builtins.list[tuple[Any, Any]],
        latest: builtins.list[tuple[str, str, str | None]],
    ) -> NodeWorkload | None:
        """One group's row from its newest readable facts; unreadable rows (a workload cell that is
        JSON but not a workload, a date that is not one) are skipped and noted, not raised."""
        for rid, _, doc in latest:
            try:
                facts = ReportFacts.model_validate_json(doc or "")
                links = [
                    NodeLink(node=node, report_id=r, started_at=datetime.fromisoformat(at))
                    for r, at, _ in latest
                ]
                return NodeWorkload(
                    workload=facts.workload,
                    node=node,
                    reports=n,
                    first_seen=datetime.fromisoformat(first),
                    last_seen=datetime.fromisoformat(last),
                    causes={str(c): int(k) for c, k in causes if c},
                    latest=facts,
                    links=links,
                )
            except (ValueError, TypeError) as exc:
                self._skip_row(rid, "its workload is not readable", exc)
        return None

    def count(self, *, finished: bool = False) -> int:
        """Reports held (stored and waiting in memory); `finished`: not the `running` rows."""
        with self._lock:
            pending = sum(1 for r, _, _ in self._pending.values() if not finished or r.status != "running")
            if self._conn is None:
                return pending
            sql = "SELECT count(*) FROM reports" + (" WHERE status != 'running'" if finished else "")
            try:
                stored = int(self._conn.execute(sql).fetchone()[0])
            except sqlite3.Error as exc:
                self._fail("cannot read", exc)
                stored = 0
            return stored + pending

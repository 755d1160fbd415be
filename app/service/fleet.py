"""The fleet view's data: every node's reports grouped by the workload they blame.

This node's store answers for this node (`ReportStore.workloads`); each peer answers for its own
(`GET /api/v1/workloads?scope=node`), asked the way the report index asks for reports: every peer
from the peer directory, concurrently (at most PEER_CONCURRENCY at once), with the token and the
peer fetch timeout; a peer that does not answer is named as unreachable. The rows are merged by
app.investigation.fleet, so whichever instance is asked, the same reports give the same rows.

Cost: one request a peer per fleet listing (like the report index), each answered from an index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError

from app.investigation.fleet import ALSO_ON_WINDOW, NodeWorkload, WorkloadRow, also_on_text, facts_of, merge
from app.models import Report, utcnow
from app.service.cluster.answers import workload_rows
from app.service.cluster.peers import Peer, PeerError
from app.service.report_store import WORKLOADS_MAX
from app.service.state import ServiceState

log = logging.getLogger(__name__)

PEER_CONCURRENCY = 32  # peers asked at once: a fleet of thousands is asked in waves, not all at once
T = TypeVar("T")


async def ask_peers(
    state: ServiceState, ask: Callable[[Peer], Awaitable[T]]
) -> tuple[list[tuple[Peer, T]], list[str]]:
    """`ask` every peer (at most PEER_CONCURRENCY at once): the answers, and the peers that did not
    answer with the reason (`node (HTTP 503)`), plus the peer directory's own problem."""
    peers = await state.peers.peers()
    gate = asyncio.Semaphore(PEER_CONCURRENCY)

    async def one(peer: Peer) -> T:
        async with gate:
            return await ask(peer)

    results = await asyncio.gather(*(one(p) for p in peers), return_exceptions=True)
    answers: list[tuple[Peer, T]] = []
    unreachable: list[str] = []
    for peer, result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation and the like are not a peer's answer
            reason = str(result) if isinstance(result, PeerError | ValidationError) else type(result).__name__
            unreachable.append(f"{peer.node} ({reason[:200]})")
            continue
        answers.append((peer, result))
    if state.peers.error:
        unreachable.append(f"peer list: {state.peers.error}")
    return answers, unreachable


def _rows_of(peer: Peer, docs: list[dict[str, object]]) -> list[NodeWorkload]:
    """A peer's rows, validated as our own (app.service.cluster.answers.workload_rows); one that
    does not parse makes the whole answer bad: the peer is named ("answered badly") on the page,
    once, instead of a log line per row."""
    try:
        return workload_rows(peer.node, docs, WORKLOADS_MAX)
    except ValueError as exc:
        raise PeerError(f"answered badly: {' '.join(str(exc).splitlines()[:3])[:300]}") from None


@dataclass
class Fleet:
    rows: list[WorkloadRow]
    unreachable: list[str] = field(default_factory=list)
    nodes_with_reports: int = 0  # nodes that answered with at least one report (finished or not)


async def fleet(state: ServiceState, *, since: datetime | None = None, key: str | None = None) -> Fleet:
    """Every node's rows (this store's and each peer's), merged: one row a workload."""
    client = state.peer_client()
    local, local_count = await asyncio.gather(
        asyncio.to_thread(state.store.workloads, since=since, key=key),
        asyncio.to_thread(state.store.count, finished=True),
    )

    async def ask(peer: Peer) -> tuple[list[NodeWorkload], int]:
        docs, count = await client.workloads(peer, since=since, key=key, limit=WORKLOADS_MAX)
        return _rows_of(peer, docs), count

    answers, unreachable = await ask_peers(state, ask)
    rows = list(local)
    nodes = 1 if local_count else 0
    for _peer, (peer_rows, count) in answers:
        rows.extend(peer_rows)
        nodes += 1 if count else 0
    return Fleet(rows=merge(rows), unreachable=unreachable, nodes_with_reports=nodes)


async def also_on(state: ServiceState, report: Report) -> str:
    """`also on 11 other nodes: a, b, c, ...` when the workload the report blames had reports on
    other nodes in the last hour (ALSO_ON_WINDOW); '' when not, or when it blames nothing. Peers
    that do not answer are left out (logged): the report is posted all the same."""
    facts = facts_of(report)
    if facts is None:
        return ""
    try:
        found = await fleet(state, since=utcnow() - ALSO_ON_WINDOW, key=facts.workload.key)
    except Exception:  # the summary goes out without it rather than not at all
        log.exception("report %s: cannot ask the peers about workload %s", report.id, facts.workload.label)
        return ""
    if found.unreachable:
        log.info(
            "report %s: %d peer(s) not asked about %s: %s",
            report.id,
            len(found.unreachable),
            facts.workload.label,
            "; ".join(found.unreachable[:5]),
        )
    others = sorted({n for row in found.rows for n in row.nodes} - {report.node})
    return also_on_text(others)


def since_minutes(minutes: int | None) -> datetime | None:
    return None if minutes is None else utcnow() - timedelta(minutes=minutes)

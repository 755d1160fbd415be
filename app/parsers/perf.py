"""`perf script` output -> major-fault addresses per (pid, page). Pure: text in, counts out.

Lines as perf 6.1 prints them (captured in tests/fixtures/tracers/):

    `perf script -F pid,comm,addr --show-lost-events` (event major-faults, recorded with -d):
        "    pfi-workload  7675     7f0c2d6a9000"              comm, pid, data address (hex, no 0x)
        "    pfi-workload  8181 PERF_RECORD_LOST lost 8040"     samples the ring buffer lost
    `perf script -F pid,comm,trace` (tracepoint exceptions:page_fault_user):
        "    pfi-workload  7675 address=0x7f0c2d6a9000 ip=0x55d0c6a4d2b1 error_code=0x4"

comm is right-aligned and may hold spaces, digits and parentheses ("Web Content", "kworker/0:1",
"a (b) 12"), so the line is matched from the right: the last integer before the payload is the pid.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import and_, floordiv, itemgetter, sub

PAGE_MASK = ~0xFFF  # 4 KiB pages, as app.tracers.base

# comm is greedy, so a comm ending in digits ("worker 3") stays whole: the pid is the last integer
# before exactly one of the payloads.
_LINE_GREEDY = re.compile(
    r"^\s*(?:(?P<comm>.*\S)\s+)?(?P<pid>-?\d+)\s+"
    r"(?:(?P<addr>[0-9a-fA-F]+)"
    r"|PERF_RECORD_LOST lost (?P<lost>\d+)"
    r"|address=0x(?P<taddr>[0-9a-fA-F]+)\b.*?)\s*$"
)


@dataclass
class PerfSample:
    pid: int
    comm: str
    address: int


@dataclass
class PerfLost:
    pid: int
    count: int


def parse_line(line: str) -> PerfSample | PerfLost | None:
    """One `perf script` line; None for anything that is not a sample or a lost record."""
    m = _LINE_GREEDY.match(line)
    if not m:
        return None
    pid = int(m["pid"])
    if m["lost"] is not None:
        return PerfLost(pid, int(m["lost"]))
    hexaddr = m["addr"] if m["addr"] is not None else m["taddr"]
    return PerfSample(pid, (m["comm"] or "").strip(), int(hexaddr, 16))


@dataclass
class FaultCounts:
    """Faults aggregated per (pid, page), bounded to max_pages distinct keys."""

    max_pages: int = 262_144
    faults: dict[int, dict[int, int]] = field(default_factory=dict)
    totals: dict[int, int] = field(default_factory=dict)  # every sample per pid, kept or not
    comms: dict[int, str] = field(default_factory=dict)
    events: int = 0  # samples seen
    dropped: int = 0  # samples seen but not kept (over max_pages) + samples perf lost
    lost: int = 0  # PERF_RECORD_LOST: samples the kernel could not hand to perf
    unparsed: int = 0
    pages: int = 0
    # When each pid's distinct pages were first seen: pid -> second since the first timed sample -> new
    # pages (issue 16: is the working set still growing at the window's end?). Bounded by pids x seconds.
    new_pages: dict[int, dict[int, int]] = field(default_factory=dict)
    first_ns: int | None = None
    # add_batch's counts per (pid, page), kept pages only, in first-seen order; folded into `faults` by
    # settle() (and before any add_sample), so `faults` is whole only after settle().
    _pending: Counter[tuple[int, int]] = field(default_factory=Counter, repr=False)

    def feed(self, line: str) -> None:
        # Fast path for the common "comm pid addr" line (comm may hold spaces: split from the
        # right); anything else goes through the full parse_line.
        parts = line.rsplit(None, 2)
        if len(parts) == 3 and parts[1].isdigit():
            try:
                address = int(parts[2], 16)
            except ValueError:
                pass
            else:
                self.add_sample(int(parts[1]), parts[0], address)
                return
        rec = parse_line(line)
        if rec is None:
            if line.strip():
                self.unparsed += 1
            return
        if isinstance(rec, PerfLost):
            self.lost += rec.count
            self.events += rec.count  # seen by the kernel, so counted, but without an address
            self.dropped += rec.count
            return
        self.add_sample(rec.pid, rec.comm, rec.address)

    def add_sample(self, pid: int, comm: str, address: int, time_ns: int | None = None) -> None:
        if self._pending:
            self.settle()
        self.events += 1
        self.totals[pid] = self.totals.get(pid, 0) + 1
        if pid not in self.comms and comm.strip():
            self.comms[pid] = comm.strip()
        per_pid = self.faults.get(pid)
        if per_pid is None:
            per_pid = self.faults[pid] = {}
        page = address & PAGE_MASK
        if page in per_pid:
            per_pid[page] += 1
        elif self.pages < self.max_pages:
            per_pid[page] = 1
            self.pages += 1
            if time_ns is not None:
                self._first_seen(pid, time_ns)
        else:
            self.dropped += 1


    def add_batch(self, pids: Sequence[int], addrs: Sequence[int], times: Sequence[int | None] | None = None) -> None:
        """add_sample(pid, "", addr, time) for each sample, in order, with the same result, but counted in
        C (Counter over (pid, page) keys) rather than one Python call per sample: Python work is per
        distinct pid and per page seen for the first time. Call settle() before reading `faults`."""
        n = len(pids)
        if not n:
            return
        self.events += n
        totals, faults = self.totals, self.faults
        one = pids[0]
        by_pid = {one: n} if pids.count(one) == n else Counter(pids)  # mostly one process a batch: no Counter
        for pid, seen in by_pid.items():
            totals[pid] = totals.get(pid, 0) + seen
            if pid not in faults:
                faults[pid] = {}  # as add_sample: every pid sampled has an entry, if only empty
        keys = list(zip(pids, map(and_, addrs, repeat(PAGE_MASK)), strict=True))
        pending = self._pending
        before = len(pending)
        pending.update(keys)
        new = len(pending) - before
        if not new:
            return
        # The keys this batch added, in first-seen order (a dict keeps insertion order); those settled
        # into `faults` earlier are not new pages.
        added = list(islice(reversed(pending), new))[::-1]
        if any(faults.values()):  # pages settled before (or added by add_sample)
            old = [k for k in added if k[1] in faults[k[0]]]
            for k in old:
                faults[k[0]][k[1]] += pending.pop(k)
            if old:
                added = [k for k in added if k in pending]
        room = max(0, self.max_pages - self.pages)
        for k in added[room:]:  # over max_pages: every sample of a page not kept is dropped
            self.dropped += pending.pop(k)
        kept = added[:room]
        self.pages += len(kept)
        if times is not None and kept:
            first = dict(zip(reversed(keys), reversed(times), strict=True))  # the earliest sample of each key wins
            whens = list(map(first.__getitem__, kept))
            if None in whens:  # samples without a time (mixed sample types): one at a time
                for k, when in zip(kept, whens, strict=True):
                    if when is not None:
                        self._first_seen(k[0], when)
                return
            if self.first_ns is None:
                self.first_ns = whens[0]
            # _first_seen for every kept page, its arithmetic mapped in C: min(max(0, (t - first) // 1e9), MAX)
            seconds = map(min, map(max, repeat(0), map(floordiv, map(sub, whens, repeat(self.first_ns)),
                                                           repeat(1_000_000_000))), repeat(MAX_SECONDS))
            for (pid, second), pages in Counter(zip(map(itemgetter(0), kept), seconds, strict=True)).items():
                per_pid = self.new_pages.setdefault(pid, {})
                per_pid[second] = per_pid.get(second, 0) + pages

    def settle(self) -> None:
        """Fold add_batch's counts into `faults`."""
        faults = self.faults
        for (pid, page), k in self._pending.items():
            per_pid = faults.get(pid)
            if per_pid is None:
                per_pid = faults[pid] = {}
            per_pid[page] = per_pid.get(page, 0) + k
        self._pending.clear()

    def _first_seen(self, pid: int, time_ns: int) -> None:
        if self.first_ns is None:
            self.first_ns = time_ns
        second = min(max(0, (time_ns - self.first_ns) // 1_000_000_000), MAX_SECONDS)
        per_pid = self.new_pages.setdefault(pid, {})
        per_pid[second] = per_pid.get(second, 0) + 1


MAX_SECONDS = 86_400  # the growth series' last bucket: a window is never this long


def parse_script(lines: Iterable[str], max_pages: int = 262_144) -> FaultCounts:
    counts = FaultCounts(max_pages=max_pages)
    for line in lines:
        counts.feed(line)
    return counts

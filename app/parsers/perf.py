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
from collections.abc import Iterable
from dataclasses import dataclass, field

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

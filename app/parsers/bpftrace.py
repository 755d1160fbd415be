"""bpftrace `-f json` output (NDJSON) of programs/major_faults.bt and handle_mm_fault.bt -> major
faults per (pid, page). Pure: lines in, counts out.

Lines as bpftrace 0.17 prints them (captured in tests/fixtures/tracers/):

    {"type": "attached_probes", "data": {"probes": 2}}
    {"type": "printf", "data": "pfi-ready\n"}                               BEGIN: all attached
    {"type": "map", "data": {"@comm": {"12788": "pfi-workload"}}}
    {"type": "map", "data": {"@faults": {"12788,140121902002176": 8}}}     key "pid,page" (decimal)
    {"type": "map", "data": {"@total": {"12788": 16664}}}
    {"type": "lost_events", "data": {"events": 12}}                         (perf buffer overrun)

Blank lines appear between records; other types (printf, time, helper_error...) are ignored or
kept as errors. @total counts every fault, @faults only those its map had room for, so
dropped = sum(@total) - sum(@faults).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class BpftraceFaults:
    faults: dict[int, dict[int, int]] = field(default_factory=dict)
    totals: dict[int, int] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)
    attached_probes: int | None = None
    ready: bool = False  # BEGIN ran: every probe was attached
    lost_events: int = 0
    saw_faults_map: bool = False  # the maps were printed (bpftrace reached its exit)
    saw_total_map: bool = False
    errors: list[str] = field(default_factory=list)
    unparsed: int = 0

    @property
    def events(self) -> int:
        return sum(self.totals.values())

    @property
    def kept(self) -> int:
        return sum(sum(p.values()) for p in self.faults.values())

    @property
    def dropped(self) -> int:
        return max(0, self.events - self.kept) + self.lost_events

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            rec = json.loads(line)
            kind, data = rec["type"], rec.get("data")
        except (ValueError, KeyError, TypeError):
            self.unparsed += 1
            return
        if kind == "attached_probes":
            self.attached_probes = int(data["probes"])
        elif kind == "printf":
            self.ready = self.ready or READY in str(data)
        elif kind == "map" and isinstance(data, dict):
            for name, values in data.items():
                self._map(name, values)
        elif kind == "lost_events":
            self.lost_events += int(data.get("events", 0))
        elif kind in ("helper_error", "error"):
            self.errors.append(f"bpftrace {kind}: {data}")

    def _map(self, name: str, values: object) -> None:
        if not isinstance(values, dict):
            return
        if name == "@faults":
            self.saw_faults_map = True
            for key, count in values.items():
                pid_s, _, page_s = key.partition(",")
                pid, page = int(pid_s), int(page_s)
                per_pid = self.faults.setdefault(pid, {})
                per_pid[page] = per_pid.get(page, 0) + int(count)
        elif name == "@total":
            self.saw_total_map = True
            for pid_s, count in values.items():
                self.totals[int(pid_s)] = self.totals.get(int(pid_s), 0) + int(count)
        elif name == "@comm":
            for pid_s, comm in values.items():
                self.comms[int(pid_s)] = str(comm)


def parse_json_lines(lines: Iterable[str]) -> BpftraceFaults:
    out = BpftraceFaults()
    for line in lines:
        out.feed(line)
    return out


READY = "pfi-ready"


def is_ready(line: str) -> bool:
    """The line the programs' BEGIN prints. bpftrace runs BEGIN once every probe is attached; its
    own "attached_probes" line comes earlier, before the programs are even loaded (~1 s here), so
    starting the window there would count faults the probes never saw."""
    return READY in line and '"printf"' in line

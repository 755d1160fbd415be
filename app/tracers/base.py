"""The one small interface every tracer backend implements.

A backend reports fault addresses aggregated per (pid, page): `faults[pid][page_address] = count`.
Page addresses are the fault address with the low 12 bits cleared (4 KiB pages; good enough to find
the mapping and a file offset, and it keeps aggregation bounded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.config import NodeSettings, TracingSettings

PAGE_MASK = ~0xFFF


class TracerSettings(Protocol):
    """What a backend reads of the settings: its own group, and the node's kernel paths (procfs, sysfs,
    cgroup) to size its buffers and check its pids. `app.config.Settings` is one."""

    @property
    def tracing(self) -> TracingSettings: ...

    @property
    def node(self) -> NodeSettings: ...


@dataclass
class TraceResult:
    backend: str
    exact: bool  # every event is a major fault (False: minor faults are mixed in)
    faults: dict[int, dict[int, int]] = field(default_factory=dict)  # pid -> page address -> count
    totals: dict[int, int] = field(default_factory=dict)  # pid -> events seen (including dropped)
    comms: dict[int, str] = field(default_factory=dict)  # pid -> comm as the tracer saw it
    events: int = 0  # events seen in all
    dropped: int = 0  # events seen but whose address was not kept (map full, output cut)
    output_bytes: int = 0  # raw bytes the tracer produced
    truncated: bool = False  # output cut at the size bound or the deadline
    errors: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    parse_seconds: float = 0.0
    exited_early: bool = False  # the tracer process ended by itself inside the window (not the size bound)
    # its probes stayed attached after the window (a stop acted on late, or killed): the counts include faults
    # made after the window's end, so they are still major faults but no longer the window's
    counts_past_window: bool = False
    lost: int = 0  # samples the kernel could not hand over (perf ring buffer full)
    ring_pages: int | None = None  # perf -m used (pages per CPU)
    ring_pages_wanted: int | None = None  # what it would have used with no lock limit
    memlock_raised_bytes: int | None = None  # the tracer's RLIMIT_MEMLOCK was raised to this
    map_keys: int | None = None  # bpftrace BPFTRACE_MAP_KEYS_MAX used
    map_keys_wanted: int | None = None  # what it would have used with no memory limit
    map_full: bool = False  # the page map reached map_keys: pages were dropped
    notes: list[str] = field(default_factory=list)  # limits met and how the tracer was fitted to them
    # pid -> second of the window -> distinct pages first faulted in that second (backends with sample
    # times: perf-major); empty when the backend cannot tell (bpftrace prints its maps once, at the end).
    new_pages: dict[int, dict[int, int]] = field(default_factory=dict)
    # 1: every event was recorded. N > 1: one event in N was (perf -c N); faults and totals are the
    # samples times N (estimates), distinct pages and new_pages undercount (new_pages is left empty)
    sample_period: int = 1

    def add(self, pid: int, address: int, count: int = 1) -> None:
        page = address & PAGE_MASK
        per_pid = self.faults.setdefault(pid, {})
        per_pid[page] = per_pid.get(page, 0) + count


class Clock:
    """What an investigation reads the time from and waits with: the machine's monotonic clock. The
    engine, its sampler and a backend that only holds the window (procfs) go through it, so a test can
    replay a captured window on a virtual clock (tests/virtual_clock.py) instead of waiting it out. A
    backend that runs a real tracer process waits in real time whatever the clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """event.wait(timeout): whether the event was set."""
        return event.wait(max(0.0, timeout))

    def join(self, thread: threading.Thread, timeout: float) -> None:
        thread.join(max(0.0, timeout))

    def start(self, thread: threading.Thread) -> None:
        """Start a thread that waits on this clock (the engine's tracer thread)."""
        thread.start()


REAL_CLOCK = Clock()


# Called by a backend exactly once when tracing really starts (probes attached, counters enabled)
# and once when it really stops, so the engine can read majflt at the same instants. It may return when
# (monotonic s) the counters were read: a backend with sample times bounds its samples there (perf-major).
Marker = Callable[[], float | None]


@dataclass
class TraceRequest:
    seconds: float
    pids: list[int] | None = None  # None: the whole node
    cancel: threading.Event = field(default_factory=threading.Event)
    on_start: Marker | None = None
    on_stop: Marker | None = None
    max_output_bytes: int = 256 * 1024 * 1024
    max_pages: int = 262_144
    clock: Clock = REAL_CLOCK  # the investigation's (Clock): what a backend that only holds the window waits on
    # record one event in this many (a backend that can sample: perf-major; the others record every one)
    sample_period: int = 1


class Tracer(Protocol):
    name: str
    exact: bool

    def available(self) -> tuple[bool, str]:
        """(True, what works) or (False, why not: missing binary, no kprobes, permission...)."""
        ...

    def run(self, request: TraceRequest) -> TraceResult:
        """Trace for request.seconds (or until request.cancel), then return what was seen.

        Must never leave a process behind: kill the tracer at the deadline, on cancel and on any
        exception, and use whatever partial output there is.
        """
        ...

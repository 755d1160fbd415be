"""The flight recorder: every memory cgroup's and the node's major-fault counter, kept in a fixed-size
ring so a report can show the lead-up to its alert (issue 12). Blocking and synchronous: the service
calls `FaultRecorder.sample()` from its own thread (app/service/recorder.py).

What is read, every interval:
  node       /proc/vmstat `pgmajfault`
  groups     memory.stat of each "unit" of the memory hierarchy: `pgmajfault` on cgroup v2 (already
             hierarchical), `total_pgmajfault` on v1 (the group and its children). On hybrid hosts
             (v1 controllers + an empty v2 tree) the v1 memory hierarchy is the one with the counters.

Units never nest, so their counts add up (discover_units):
  - a container's group, wherever it is (kubepods.slice/.../cri-containerd-<id>.scope,
    /kubepods/burstable/pod<uid>/<id>, docker-<id>.scope): the path is read by app.parsers.cgroup;
  - a host-level group: a child of the root, of a child of the root, or of a `*.slice`
    (system.slice/containerd.service, user.slice/user-0.slice/session-3.scope, init.scope) that
    holds no container; nothing under kubepods counts as a host group. Processes sitting in a
    group that has units below it (v1 allows that) are counted by the node's series only.

Series: one per container *by name* (namespace/pod/container, looked up once per new cgroup through
the PodDirectory and cached), so a container that restarts (a new cgroup) continues its series and a
pod that is gone keeps it until it ages out of the retention. Host groups are keyed by path.

Memory is fixed: `slots` intervals (retention / interval, at most MAX_SLOTS) of 4-byte counts for the
node and for at most MAX_SERIES series. A series is made on its group's first fault (idle groups take
no slot); when full, the oldest gone series are dropped first, then live ones idle for the retention.
"""

from __future__ import annotations

import math
import os
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from app.collectors.cgroupmem import memory_hierarchy
from app.models import History, HistoryCgroup, HistoryPod, PodRef
from app.parsers.cgroup import CgroupRef, parse_cgroup

__all__ = [
    "FaultRecorder",
    "Layout",
    "MAX_SERIES",
    "MAX_SLOTS",
    "Tick",
    "Unit",
    "detect_layout",
    "discover_units",
    "read_counter",
]


MAX_SLOTS = 8640  # intervals kept (a day at 10 s)
MAX_SERIES = 1024  # containers and host groups with a series
MAX_DIRS = 20_000  # directories one discovery walk may visit
MAX_DEPTH = 12
U32 = 0xFFFFFFFF
LOOKUP_RETRIES = 4  # a pod the kubelet did not name yet is asked again, this many times at most
LOOKUP_BACKOFF_TICKS = (1, 3, 6, 12)


class PodLookup(Protocol):
    def pod_for(self, ref: CgroupRef | None) -> PodRef | None: ...


# --- where the counters are -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    base: Path  # the memory hierarchy's root directory
    version: int  # 1 or 2
    key: bytes  # the memory.stat key holding the group's (hierarchical) major faults


def detect_layout(cgroup_root: Path) -> Layout | None:
    """The hierarchy holding memory counters under `cgroup_root` (/sys/fs/cgroup), or None: the one
    memory-hierarchy rule (cgroupmem.memory_hierarchy): v1 memory/ (also on hybrid hosts, whose v2 tree at
    unified/ has no controllers), else the v2 tree whose cgroup.controllers lists memory (root or unified/)."""
    found = memory_hierarchy(Path(cgroup_root))
    if found is None:
        return None
    version, base = found
    return Layout(base, version, b"total_pgmajfault" if version == 1 else b"pgmajfault")


def read_counter(text: bytes, key: bytes) -> int | None:
    """The value of `key` in memory.stat or /proc/vmstat text ('key value' lines). Pure."""
    if text.startswith(key + b" "):
        i = 0
    else:
        i = text.find(b"\n" + key + b" ")
        if i < 0:
            return None
        i += 1
    j = text.find(b"\n", i)
    try:
        return int(text[i + len(key) + 1 : j if j >= 0 else len(text)])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Unit:
    path: str  # "/kubepods/burstable/pod<uid>/<id>", relative to the hierarchy's root
    ref: CgroupRef | None  # pod UID and container id read from the path; None: a host group


def _ref_of(path: str, version: int) -> CgroupRef | None:
    try:
        ref = parse_cgroup(f"0::{path}")
    except ValueError:
        return None
    if ref.pod_uid is None and ref.container_id is None:
        return None
    return CgroupRef(path=path, version=version, pod_uid=ref.pod_uid, qos=ref.qos,
                     container_id=ref.container_id, runtime=ref.runtime)


def discover_units(
    layout: Layout, max_dirs: int = MAX_DIRS, refs: dict[str, CgroupRef | None] | None = None
) -> tuple[list[Unit], bool]:
    """The units of the hierarchy (see the module docstring) and whether the walk was cut short.
    `refs` memoises what each path's name says (paths do not change meaning), across walks."""
    memo: dict[str, CgroupRef | None] = {} if refs is None else refs
    units: list[Unit] = []
    visited = 0
    truncated = False

    def walk(d: str, rel: str, depth: int, parent_groups_units: bool, in_kube: bool) -> bool:
        nonlocal visited, truncated
        name = rel.rsplit("/", 1)[-1]
        if depth == 0:
            ref = None
        elif rel in memo:
            ref = memo[rel]
        else:
            ref = memo[rel] = _ref_of(rel, layout.version)
        if ref is not None and ref.container_id is not None:
            units.append(Unit(rel, ref))
            return True
        kube = in_kube or ref is not None or name.startswith("kubepods")
        # Children of the root, of its children and of slices are host groups (services, sessions,
        # a sandbox's per-session groups) unless a container sits below them.
        groups_units = depth <= 1 or name.endswith(".slice")
        found = False
        if depth < MAX_DEPTH:
            try:
                entries = [e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
            except OSError:
                entries = []  # removed meanwhile, or not readable
            for child in sorted(entries):
                if visited >= max_dirs:
                    truncated = True
                    break
                visited += 1
                child_rel = f"{rel}/{child}" if rel != "/" else f"/{child}"
                found = walk(f"{d}/{child}", child_rel, depth + 1, groups_units, kube) or found
        if not found and not kube and depth > 0 and parent_groups_units:
            units.append(Unit(rel, ref))
            return True
        return found

    walk(str(layout.base), "/", 0, False, False)
    return units, truncated


# --- the ring ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Series:
    key: str
    cgroup: str
    pod: HistoryPod | None
    values: array  # type: ignore[type-arg]  # 'I', one per slot
    upto: int = -1  # the last tick written
    live_paths: int = 0  # cgroups feeding it now


@dataclass(slots=True)
class _Group:
    """A cgroup seen by the walker, and which series it feeds."""

    unit: Unit
    key: str
    pod: HistoryPod | None = None  # what its series is named (made on its first fault)
    last: int | None = None  # the counter at the last read
    lookups: int = 0
    retry_tick: int | None = None  # ask the pod directory again at this tick (pod not named yet)
    born: int = 0  # the tick it was found at


@dataclass
class Tick:
    """What one sample saw (for metrics and watch mode)."""

    at: float  # wall clock, seconds since the epoch
    interval: float  # seconds since the previous sample (0 for the first)
    node_delta: int
    node_rate: float  # node major faults/s over the interval
    groups: int
    duration: float  # seconds the sample took
    truncated: bool = False


def _key_of(unit: Unit, pod: PodRef | None) -> tuple[str, HistoryPod | None]:
    if unit.ref is None:
        return f"cg:{unit.path}", None
    if pod is not None and pod.name:
        container = pod.container or (unit.ref.container_id or "")[:12]
        hp = HistoryPod(namespace=pod.namespace, name=pod.name, uid=pod.uid, container=pod.container)
        return f"pod:{pod.namespace}/{pod.name}/{container}", hp
    uid = unit.ref.pod_uid
    if uid is None:  # a container outside Kubernetes (plain docker): its path names it
        return f"cg:{unit.path}", None
    return f"uid:{uid}/{unit.ref.container_id}", HistoryPod(uid=uid)


def _named(pod: HistoryPod | None) -> bool:
    return pod is None or (pod.name is not None and pod.container is not None)


class FaultRecorder:
    """The ring of major-fault counts. `sample()` reads once; `history()` cuts a lead-up out of it.

    Thread-safe: one thread samples, others read histories."""

    def __init__(
        self,
        cgroup_root: Path,
        proc_root: Path,
        *,
        interval: float,
        retention: float,
        pods: PodLookup | None = None,
        max_series: int = MAX_SERIES,
        max_dirs: int = MAX_DIRS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.cgroup_root = Path(cgroup_root)
        self.proc_root = Path(proc_root)
        self.interval = float(interval)
        self.slots = max(2, min(MAX_SLOTS, math.ceil(retention / interval) + 1))
        self.retention = (self.slots - 1) * self.interval
        self.pods = pods
        self.max_series = max_series
        self.max_dirs = max_dirs
        self.clock = clock
        self.layout = detect_layout(self.cgroup_root)
        self._lock = threading.Lock()  # the ring and the series (sample's update vs history)
        self._sampling = threading.Lock()  # one sample at a time
        self._times = array("d", [0.0] * self.slots)
        self._node = array("I", [0] * self.slots)
        self._tick = -1  # the last tick written
        self._node_last: int | None = None
        self._groups: dict[str, _Group] = {}  # cgroup path -> group
        self._series: dict[str, _Series] = {}  # key -> series
        self._refs: dict[str, CgroupRef | None] = {}  # what each path's name says (discover_units)
        self.dropped_series = 0  # new series refused because MAX_SERIES live ones exist
        self.samples = 0
        self.errors: list[str] = []  # the last sample's problems (bounded)

    # --- sampling --------------------------------------------------------------------------------

    def _read_node(self) -> int | None:
        try:
            with open(self.proc_root / "vmstat", "rb") as f:
                return read_counter(f.read(), b"pgmajfault")
        except OSError:
            return None

    def _read_group(self, path: str) -> int | None:
        assert self.layout is not None
        try:
            with open(f"{self.layout.base}{path}/memory.stat", "rb") as f:
                return read_counter(f.read(), self.layout.key)
        except OSError:
            return None

    def _new_series(self, key: str, cgroup: str, pod: HistoryPod | None) -> _Series | None:
        if len(self._series) >= self.max_series:
            gone = [s for s in self._series.values() if s.live_paths == 0]
            if not gone:
                # Live but idle: nothing it recorded is left in the ring (it faults again: a new series).
                gone = [s for s in self._series.values() if s.upto <= self._tick - self.slots]
            if not gone:
                self.dropped_series += 1
                return None
            oldest = min(gone, key=lambda s: s.upto)
            del self._series[oldest.key]
        s = _Series(key, cgroup, pod, array("I", [0]) * self.slots)
        self._series[key] = s
        return s

    def _lookup(self, unit: Unit) -> tuple[str, HistoryPod | None]:
        pod: PodRef | None = None
        if unit.ref is not None and unit.ref.pod_uid is not None and self.pods is not None:
            # The directory reports an unreachable kubelet in its attribution, never by raising: what
            # it raises is a bug, and the sample fails with its traceback (the service logs it).
            pod = self.pods.pod_for(unit.ref)
        return _key_of(unit, pod)

    def _rekey(self, group: _Group, key: str, pod: HistoryPod | None) -> None:
        """A group first recorded under its pod UID is now named: move (or add) its series."""
        old = self._series.get(group.key)
        group.key, group.pod = key, pod
        new = self._series.get(key)
        if old is None or old.live_paths > 1:
            # Nothing recorded yet, or another cgroup still feeds the old series: its data stays.
            # (A series is made on the group's first fault, not here.)
            if old is not None:
                old.live_paths -= 1
            if new is not None:
                new.live_paths += 1
                new.cgroup = group.unit.path
            return
        self._series.pop(old.key, None)
        if new is None:  # renamed in place
            old.key, old.pod, old.live_paths = key, pod, 1
            self._series[key] = old
            return
        lo = max(self._tick - self.slots + 1, 0)
        for k in range(lo, self._tick + 1):  # add what the old series holds into the named one
            a = self._get(old, k)
            if a:
                self._put(new, k, min(U32, a + self._get(new, k)))
        new.live_paths += 1
        new.cgroup = group.unit.path

    def _get(self, s: _Series, k: int) -> int:
        if k > s.upto or k <= self._tick - self.slots or k < 0:
            return 0
        return int(s.values[k % self.slots])

    def _put(self, s: _Series, k: int, v: int) -> None:
        if k > s.upto:
            for j in range(max(s.upto + 1, k - self.slots + 1), k):
                s.values[j % self.slots] = 0  # intervals it was not written: nothing
            s.upto = k
        s.values[k % self.slots] = v

    def sample(self) -> Tick:
        """Read every counter once and append the deltas as one interval. The reads and the kubelet
        lookups happen outside the ring's lock, so a history is never kept waiting by them."""
        t0 = time.perf_counter()
        with self._sampling:
            tick = self._tick + 1  # only this (serialised) method moves it
            units: list[Unit] = []
            truncated = False
            if self.layout is not None:
                if len(self._refs) > 2 * self.max_dirs:
                    self._refs.clear()  # bounded: paths of groups long gone
                units, truncated = discover_units(self.layout, self.max_dirs, self._refs)
            names: dict[str, tuple[str, HistoryPod | None]] = {}
            for unit in units:
                g = self._groups.get(unit.path)
                if g is None or (g.retry_tick is not None and tick >= g.retry_tick):
                    names[unit.path] = self._lookup(unit)
            values = {u.path: self._read_group(u.path) for u in units}
            node = self._read_node()
            now = self.clock()
            with self._lock:
                return self._apply(t0, now, tick, node, units, truncated, names, values)

    def _apply(
        self,
        t0: float,
        now: float,
        tick: int,
        node: int | None,
        units: list[Unit],
        truncated: bool,
        names: dict[str, tuple[str, HistoryPod | None]],
        values: dict[str, int | None],
    ) -> Tick:
        first = self._tick < 0
        slot = tick % self.slots
        prev_at = self._times[self._tick % self.slots] if not first else now
        errors: list[str] = []
        node_delta = 0
        if node is None:
            errors.append(f"cannot read pgmajfault from {self.proc_root / 'vmstat'}")
        elif self._node_last is not None:
            node_delta = node - self._node_last if node >= self._node_last else 0
        if node is not None:
            self._node_last = node

        if self.layout is None:
            errors.append(f"no memory cgroup hierarchy under {self.cgroup_root}: only the node is recorded")
        if truncated:
            errors.append(f"more than {self.max_dirs:,} cgroups: the rest are not recorded")
        deltas, feeders = self._deltas(tick, first, units, names, values)
        self._times[slot] = now
        self._node[slot] = min(U32, node_delta)
        self._tick = tick
        self._store(tick, deltas, feeders)
        self.samples += 1
        self.errors = errors[:10]
        dt = now - prev_at
        return Tick(
            at=now,
            interval=dt,
            node_delta=node_delta,
            node_rate=node_delta / dt if dt > 0 else 0.0,
            groups=len(self._groups),
            duration=time.perf_counter() - t0,
            truncated=truncated,
        )

    def _deltas(self, tick: int, first: bool, units: list[Unit], names: dict[str, tuple[str, HistoryPod | None]],
                values: dict[str, int | None]) -> tuple[dict[str, int], dict[str, _Group]]:
        """Each series key's faults since the last sample (of the groups found now), and a group behind each
        key that has some (names a new series); groups gone since are dropped first (they make room)."""
        deltas: dict[str, int] = {}
        feeders: dict[str, _Group] = {}  # a group behind each key with faults (names a new series)
        seen = {u.path for u in units}
        for path in [p for p in self._groups if p not in seen]:  # gone first: they make room
            gone = self._groups.pop(path)
            s = self._series.get(gone.key)
            if s is not None:
                s.live_paths = max(0, s.live_paths - 1)
        for unit in units:
            group = self._groups.get(unit.path)
            if group is None:
                key, pod = names[unit.path]
                group = _Group(unit, key, pod, lookups=1, born=tick)
                if not _named(pod) and LOOKUP_RETRIES > 0:
                    group.retry_tick = tick + LOOKUP_BACKOFF_TICKS[0]
                self._groups[unit.path] = group
                # Only join a series that exists: one is made on the first fault, so idle groups
                # (a thousand empty ones) do not fill MAX_SERIES before the pods that fault.
                s = self._series.get(key)
                if s is not None:
                    s.live_paths += 1
                    s.cgroup = unit.path
            elif unit.path in names:
                key, pod = names[unit.path]
                group.lookups += 1
                if _named(pod) or group.lookups > LOOKUP_RETRIES:
                    group.retry_tick = None
                else:
                    group.retry_tick = tick + LOOKUP_BACKOFF_TICKS[min(group.lookups - 1, 3)]
                if key != group.key:
                    self._rekey(group, key, pod)
            value = values.get(unit.path)
            if value is None:
                continue
            if group.last is None:
                # Found on the first sweep (or first readable later): a baseline. Found after the
                # first sweep: the group is new (a container that just started, a cron job's pod)
                # and all its faults are since it was made.
                delta = value if not first and group.born == tick else 0
            elif value >= group.last:
                delta = value - group.last
            else:
                delta = value  # the counter went back: a new group at the same path
            group.last = value
            if delta:
                deltas[group.key] = deltas.get(group.key, 0) + delta
                feeders.setdefault(group.key, group)
        return deltas, feeders

    def _store(self, tick: int, deltas: dict[str, int], feeders: dict[str, _Group]) -> None:
        """Put this interval's deltas in their series (a key's first fault makes its series); free the
        series whose every interval aged out and whose cgroups are gone."""
        paths_of: dict[str, int] | None = None
        for key, delta in deltas.items():
            s = self._series.get(key)
            if s is None:  # the first fault of this key: now it gets a series
                g = feeders[key]
                s = self._new_series(key, g.unit.path, g.pod)
                if s is None:
                    continue
                if paths_of is None:
                    paths_of = {}
                    for other in self._groups.values():
                        paths_of[other.key] = paths_of.get(other.key, 0) + 1
                s.live_paths = paths_of.get(key, 0)
            self._put(s, tick, min(U32, delta))
        # Series whose every readable interval aged out and whose cgroups are gone free their slot.
        oldest = tick - self.slots + 1
        for key in [k for k, s in self._series.items() if s.live_paths == 0 and s.upto <= oldest]:
            del self._series[key]

    # --- reading ---------------------------------------------------------------------------------

    @property
    def series_count(self) -> int:
        return len(self._series)

    def _ticks_between(self, since: float, until: float) -> list[int]:
        """Ticks whose interval ends in (since, until + interval/2], oldest first; tick 0 is a baseline."""
        lo = max(1, self._tick - self.slots + 2)  # the interval of tick k starts at tick k-1's time
        out = []
        for k in range(lo, self._tick + 1):
            t = self._times[k % self.slots]
            if since < t <= until + self.interval / 2:
                out.append(k)
        return out

    def history(self, since: datetime, until: datetime, top: int = 10) -> History | None:
        """The lead-up from `since` to `until`: the node's series and the `top` series by faults.
        None when nothing was recorded in it yet."""
        with self._lock:
            ks = self._ticks_between(since.timestamp(), until.timestamp())
            if not ks:
                return None
            times = self._times
            slots = self.slots

            def at(k: int) -> datetime:
                return datetime.fromtimestamp(times[k % slots], UTC)

            rows: list[tuple[int, _Series, list[int]]] = []
            slot_of = [k % slots for k in ks]
            for s in self._series.values():
                if s.upto < ks[0]:
                    continue
                values = s.values
                vals = [values[i] if k <= s.upto else 0 for k, i in zip(ks, slot_of, strict=True)]
                total = sum(vals)
                if total > 0:
                    rows.append((total, s, vals))
            rows.sort(key=lambda r: r[0], reverse=True)
            cgroups = []
            for total, s, vals in rows[:top]:
                active = [i for i, v in enumerate(vals) if v > 0]
                peak = 0.0
                for i in active:
                    dt = times[ks[i] % slots] - times[(ks[i] - 1) % slots]
                    peak = max(peak, vals[i] / dt if dt > 0 else 0.0)
                cgroups.append(
                    HistoryCgroup(
                        cgroup=s.cgroup,
                        pod=s.pod.model_copy() if s.pod else None,
                        major_faults=total,
                        series=vals,
                        first_active_at=at(ks[active[0]] - 1),
                        last_active_at=at(ks[active[-1]]),
                        peak_per_second=round(peak, 1),
                        gone=s.live_paths == 0,
                    )
                )
            node = [int(self._node[k % slots]) for k in ks]
            first_kept = max(1, self._tick - slots + 2)
            return History(
                interval_seconds=self.interval,
                since=at(ks[0] - 1),
                until=at(ks[-1]),
                node_series=node,
                node_major_faults=sum(node),
                recorded_since=at(first_kept - 1),
                cgroups=cgroups,
            )

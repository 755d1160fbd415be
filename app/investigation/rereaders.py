"""read() re-readers (issue 22): memory cgroups whose page cache is evicted and read back at their limit
without major faults, found from every group's memory.stat at the window's start and end.

A process that re-reads a file through read()/pread() larger than what its limit leaves for the page cache
makes the group's workingset_refault_file rise (12,524 pages/s seen for 128 MiB at 64) while no majflt
rises: the node's major-fault alert is not about it, but the limit costs it a disk read per page. A group
is one when, over the window:

- its file refaults rose by at least MIN_REFAULTS_PER_SECOND,
- at least FAULTLESS_SHARE of them came back without a major fault of the group (pgmajfault),
- its processes hold open regular files that none of them maps (what read() reads; a mapped file's
  refaults without a fault each are its read-ahead, counted by the limit recommendation already).

The deepest such group is named (v2 counts a group's children in it; a parent is left out when a child is
one), MAX_REREADERS of them, most refaults first. Beside a culprit, the report names them (the limit costs
them reads too) and a re-reader under the culprit's limit is counted in its recommendation; alone, the
report says the alert is not explained by it, and what limit stops the re-reading (recommend.reread_limit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.collectors.cgroupmem import read_cgroup_memory
from app.collectors.cgroupscan import GroupCounters, group_pids, open_files, scan_refaults
from app.collectors.procfs import ProcFS
from app.models import Cause, CgroupMemory, NodeStats, PodRef, ProcessReport, Report, Rereader
from app.parsers.cgroup import CgroupRef, parse_cgroup
from app.tracers.base import REAL_CLOCK, Clock

from .diagnose import mib, near_limit
from .recommend import blames_limit, command_line, limit_key, reread_limit

MIN_REFAULTS_PER_SECOND = 500.0  # the alert's own threshold, in pages read back a second
FAULTLESS_SHARE = 0.25
MAX_REREADERS = 5
PAGE = 4096


@dataclass
class Found:
    """A re-reading group with what it was measured to have (the I/O done)."""

    path: str
    refaults: int
    majflt: int
    mem: CgroupMemory | None
    pids: list[int]
    comms: list[str]
    read_files: dict[tuple[int, int], tuple[str, int]]  # open, not mapped: what read() re-reads


Scan = tuple[float, dict[str, GroupCounters]]  # (monotonic time of the scan, counters)


def start(cgroup_root: Path | None, clock: Clock = REAL_CLOCK) -> Scan:
    """Every memory cgroup's counters at the window's start (none without a cgroup root)."""
    return clock.monotonic(), (scan_refaults(cgroup_root)[1] if cgroup_root is not None else {})


def finish(cgroup_root: Path | None, procfs: ProcFS, before: Scan,
           clock: Clock = REAL_CLOCK) -> tuple[list[Found], float]:
    """The re-readers over the window, from the counters at its start and now, and the seconds between the
    two scans (the rates are over them: the tracer's hand-over makes them longer than the window)."""
    if cgroup_root is None or not before[1]:
        return [], 0.0
    version, after = scan_refaults(cgroup_root)
    seconds = max(clock.monotonic() - before[0], 1e-3)
    return gather(cgroup_root, procfs, version, candidates(before[1], after, seconds)), seconds


def candidates(before: Mapping[str, GroupCounters], after: Mapping[str, GroupCounters],
               seconds: float) -> list[tuple[str, int, int]]:
    """(cgroup path, file refaults, major faults) of the groups whose refaults rose at least
    MIN_REFAULTS_PER_SECOND, FAULTLESS_SHARE of them without a major fault; the deepest ones, most first. Pure."""
    out = []
    for path, b in after.items():
        a = before.get(path)
        if a is None:
            continue
        refaults, majflt = max(0, b.refault_file - a.refault_file), max(0, b.pgmajfault - a.pgmajfault)
        if refaults >= MIN_REFAULTS_PER_SECOND * max(seconds, 1e-3) and refaults - majflt >= FAULTLESS_SHARE * refaults:
            out.append((path, refaults, majflt))
    paths = {p for p, _, _ in out}
    deepest = [c for c in out if not any(q != c[0] and q.startswith(c[0].rstrip("/") + "/") for q in paths)]
    deepest.sort(key=lambda c: (-c[1], c[0]))
    return deepest


def _mapped(procfs: ProcFS, pids: list[int]) -> set[tuple[int, int]]:
    out = set()
    for pid in pids:
        for m in procfs.maps(pid) or ():
            if m.inode:
                major, _, minor = m.dev.partition(":")
                try:
                    out.add((os.makedev(int(major, 16), int(minor, 16)), m.inode))
                except ValueError:
                    continue
    return out


def gather(cgroup_root: Path, procfs: ProcFS, version: int, found: list[tuple[str, int, int]]) -> list[Found]:
    """The I/O for each candidate: its memory state, processes, and the files they read (open, unmapped)."""
    out = []
    for path, refaults, majflt in found:
        pids = group_pids(cgroup_root, path)
        files = open_files(procfs.root, pids)
        mapped = _mapped(procfs, pids)
        read_files = {k: v for k, v in files.items() if k not in mapped}
        if not read_files:
            continue  # nothing read by read(): refaults of mapped files (read-ahead)
        comms = []
        for pid in pids:
            st = procfs.stat(pid)
            if st is not None and st.comm not in comms:
                comms.append(st.comm)
        mem = read_cgroup_memory(cgroup_root, CgroupRef(path, version, None, None, None, None))
        out.append(Found(path, refaults, majflt, mem, pids, comms, read_files))
        if len(out) >= MAX_REREADERS:
            break
    return out


def reread_bytes(found: list[Found]) -> dict[str, tuple[int, int]]:
    """limit path -> (bytes re-read by read() in the window, the size of the files read): for the limit
    recommendation of a culprit whose limit they share."""
    out: dict[str, tuple[int, int]] = {}
    for f in found:
        if f.mem is None:
            continue
        key = limit_key(f.mem)
        read, size = out.get(key, (0, 0))
        out[key] = (read + max(0, f.refaults - f.majflt) * PAGE, size + sum(s for _, s in f.read_files.values()))
    return out


def cgroup_ref(path: str, version: int) -> CgroupRef:
    """What a cgroup path says of its pod and container (parse_cgroup on a made-up /proc/PID/cgroup line)."""
    return parse_cgroup(f"9:memory:{path}" if version == 1 else f"0::{path}")


def rereaders(found: list[Found], processes: list[ProcessReport], node: NodeStats, seconds: float,
              pod_of: Callable[[CgroupRef], PodRef | None] | None = None) -> list[Rereader]:
    """The report's entries, with a limit for each that is at its limit. `pod_of`: the pod of a cgroup
    (PodDirectory.pod_for), None: pods not looked up."""
    culprits = {limit_key(p.cgroup_memory) for p in processes if p.cgroup_memory is not None and blames_limit(p)}
    out = []
    for f in found:
        rate = f.refaults / max(seconds, 1e-3)
        files = sorted(f.read_files.values(), key=lambda v: -v[1])
        names = ", ".join(n for n, _ in files[:2]) + (f" and {len(files) - 2} more" if len(files) > 2 else "")
        who = "/".join(f.comms[:3]) or "its processes"
        shares = limit_key(f.mem) if f.mem is not None and limit_key(f.mem) in culprits else None
        pod = None
        if pod_of is not None and f.mem is not None:
            ref = cgroup_ref(f.path, f.mem.version)
            pod = pod_of(ref) if ref.pod_uid else None
        if pod is not None:
            who = f"pod {pod.namespace}/{pod.name}" + (f" container {pod.container}" if pod.container else "")
        limit = f.mem.max_bytes if f.mem is not None else None
        summary = (f"cgroup {f.path} ({who}) re-reads {names} by read(): its page cache refaulted "
                   f"{rate:,.0f} pages/s ({mib(int(rate) * PAGE)}/s) with {f.majflt:,} major faults"
                   + (f", at its limit of {mib(limit)}" if limit is not None else ""))
        rec = None
        if f.mem is not None and near_limit(f.mem):
            rec = reread_limit(f.mem, refaults=f.refaults - f.majflt,
                               file_bytes=sum(s for _, s in f.read_files.values()), node=node, seconds=seconds,
                               pod=pod)
        out.append(Rereader(cgroup=f.path, pids=f.pids, comms=f.comms, refaults=f.refaults,
                            refaults_per_second=round(rate, 1), major_faults=f.majflt, shares_limit_with=shares, pod=pod,
                            summary=summary, recommendation=rec))
    return out


def note(report: Report) -> None:
    """Name the re-readers in the report's verdict (in place): alone, the alert is not explained by them but
    they thrash their page cache (and the limit that stops it); beside a culprit, the limit costs them reads too."""
    if not report.rereaders:
        return
    v = report.verdict
    alone = v.cause in (Cause.QUIET, Cause.NO_MAJOR_FAULTS) or not any(
        p.verdict is not None and p.verdict.recommendation is not None for p in report.processes)
    lines = []
    for r in report.rereaders:
        fix = ""
        if r.recommendation is not None:
            rec = r.recommendation
            fix = (f"; a limit of {'at least ' if rec.at_least else ''}{mib(rec.recommended_limit_bytes)} stops it: "
                   + command_line(rec))
        if alone:
            lines.append(f"not what this node's major-fault alert is about, but {r.summary}: it is thrashing its page "
                         f"cache{fix}")
        else:
            lines.append(f"{r.summary}: the limit costs it reads too"
                         + (f" (it shares the limit of {r.shares_limit_with}, counted in its recommendation)"
                            if r.shares_limit_with else "") + fix)
    v.advice = [*v.advice, *lines]
    v.evidence = [*v.evidence, *(f"{r.cgroup}: workingset_refault_file +{r.refaults:,}, pgmajfault +{r.major_faults:,} "
                                 "in the window" for r in report.rereaders)]
    if alone:
        first = report.rereaders[0]
        v.summary += f"; but cgroup {first.cgroup} re-reads its files by read() at its limit ({first.refaults_per_second:,.0f} page-cache refaults/s, no major faults)"


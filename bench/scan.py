"""Row 4: one ranking sample (pid, majflt, comm of every process) with N extra sleeping processes,
ours (`ProcFS().sample_all()`) against `ps -eo pid,maj_flt,comm` and psutil.

psutil has no public major-fault field; `process_iter(["pid", "name"])` reads /proc/PID/stat for the
name, the same file majflt is in, so it is the cheapest psutil can do and a fair stand-in.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Iterator

from app.collectors.procfs import ProcFS

from .common import build, group, kill_group, log, median_time

try:  # a baseline, in the test extras; without it that column says n/a
    import psutil
except ModuleNotFoundError as exc:
    if exc.name != "psutil":
        raise
    psutil = None


@contextlib.contextmanager
def sleepers(n: int) -> Iterator[int]:
    """n sleeping child processes (plus their parent), all gone again afterwards."""
    exe = build("idle")
    with group([str(exe), str(n)], stdout=subprocess.PIPE) as proc:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        r, _, _ = select.select([fd], [], [], 60)
        line = os.read(fd, 100) if r else b""
        if not line.startswith(b"ready"):
            raise RuntimeError(f"idle spawner said {line!r}")
        try:
            yield int(line.split()[1])
        finally:
            pgid = proc.pid
            kill_group(proc)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # SIGKILL to thousands takes a moment to land
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)


def count_procs() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def measure(counts: list[int], runs: int = 5) -> list[dict]:
    out = []
    for n in counts:
        with sleepers(n):
            time.sleep(0.3)
            total = count_procs()
            log(f"  scan with {n} extra sleeping processes ({total} in all)")
            row: dict = {"extra": n, "processes": total}
            fs = ProcFS()
            row["ours"] = median_time(fs.sample_all, runs)
            row["ours_seen"] = len(fs.sample_all())
            row["ps"] = median_time(lambda: subprocess.run(
                ["ps", "-eo", "pid,maj_flt,comm"], stdout=subprocess.PIPE, check=True), runs)
            if psutil is not None:
                def ps_util() -> None:
                    for p in psutil.process_iter(["pid", "name"]):
                        _ = p.info
                row["psutil"] = median_time(ps_util, runs)
            out.append(row)
    return out


# --- the per-second sample during a window: incremental against the full scan ---------------------------


class FullScanView:
    """ProcFS without raw reads: the sampler then reads and parses every process every tick (its full
    scan), the baseline of the incremental scan."""

    def __init__(self, fs: ProcFS) -> None:
        self.fs = fs

    def sample_all(self):  # noqa: ANN201
        return self.fs.sample_all()

    def stat(self, pid: int):  # noqa: ANN201
        return self.fs.stat(pid)

    def vmstat(self) -> dict[str, int]:
        return self.fs.vmstat()

    def maps(self, pid: int):  # noqa: ANN201
        return self.fs.maps(pid)

    def io(self, pid: int):  # noqa: ANN201
        return self.fs.io(pid)

    def read_text(self, rel: str):  # noqa: ANN201
        return self.fs.read_text(rel)


def sampler_window(n_idle: int, seconds: int, workdir) -> dict:  # noqa: ANN001
    """A window of `seconds` over n_idle sleeping processes and two file workloads (one throttled to a
    quarter): the full-scan sampler and the incremental one (settings' default) tick side by side,
    in turns, each second; the CPU time of every call of each (first, marks, ticks) is measured
    (thread CPU time, kernel time included)."""
    import statistics

    from app.config import Settings
    from app.investigation.sampler import Sampler
    from tests import workloads

    out: dict = {}
    with sleepers(n_idle), workloads.file_fault_workload(workdir / "scan-a.bin", 64) as a, \
            workloads.file_fault_workload(workdir / "scan-b.bin", 64) as b, workloads.throttled(b.pid, 0.25):
        time.sleep(1.0)
        fs = ProcFS()
        every = Settings().investigation.scan_full_every_seconds
        samplers = {"full": Sampler(FullScanView(fs)), "incremental": Sampler(fs, full_every=every)}  # type: ignore[arg-type]
        cpu: dict[str, dict[str, list[float]]] = {k: {"first": [], "mark": [], "tick": [], "full tick": []}
                                                 for k in samplers}

        def timed(k: str, what: str, fn) -> None:  # noqa: ANN001
            t0 = time.thread_time()
            fn()
            cpu[k][what].append(time.thread_time() - t0)

        order = list(samplers)
        for k in order:
            timed(k, "first", samplers[k].first)
        for k in order:
            timed(k, "mark", lambda k=k: samplers[k].mark("start"))
        for n in range(1, seconds + 1):
            time.sleep(1.0)
            if n == seconds:
                for k in order:
                    timed(k, "mark", lambda k=k: samplers[k].mark("stop"))
            order.reverse()  # neither always goes first
            for k in order:
                s = samplers[k]
                before = s.full_scans
                timed(k, "tick", lambda s=s, n=n: s.tick(full=n == seconds))
                if s.full_scans > before and k == "incremental":
                    cpu[k]["full tick"].append(cpu[k]["tick"][-1])
        procs = len(fs.listing())
    for k, s in samplers.items():
        c = cpu[k]
        total = sum(c["first"]) + sum(c["mark"]) + sum(c["tick"])
        inc_ticks = [x for x in c["tick"] if x not in c["full tick"]] if k == "incremental" else []
        out[k] = {"window_cpu_pct": total / seconds * 100, "tick_ms": statistics.median(c["tick"]) * 1000,
                  "tick_mean_ms": statistics.mean(c["tick"]) * 1000,
                  "first_ms": c["first"][0] * 1000, "mark_ms": statistics.mean(c["mark"]) * 1000,
                  "full_ticks": s.full_scans, "ticks": s.ticks, "stat_reads": s.stat_reads,
                  "full_tick_ms": statistics.median(c["full tick"]) * 1000 if c["full tick"] else None,
                  "incremental_tick_ms": statistics.median(inc_ticks) * 1000 if inc_ticks else None,
                  # what the two can rank differently: processes of a few faults that start and exit between
                  # the two samplers' reads (they read in turns, not at one instant)
                  "ranked": [(tr.pid, tr.major_faults) for tr in s.ranked() if tr.major_faults >= 100][:5]}
    out["processes"] = procs
    out["seconds"] = seconds
    out["pids"] = (a.pid, b.pid)
    return out

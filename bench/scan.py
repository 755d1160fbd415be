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

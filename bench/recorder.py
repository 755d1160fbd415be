"""Benchmark 8: the flight recorder's cost at 300 containers (issue 12). Targets: under 0.5% of a core
and under 10 MiB.

- synthetic: a cgroup v2 tree under a temp dir shaped like a systemd-driver node (100 pods x 3
  containers, 30 system.slice services), every container's counter rising every interval (the worst
  case for the ring: every series written every time). The ring filled to its full retention.
- real: 300 real (empty) cgroup v1 memory groups under /sys/fs/cgroup/memory/pfi-bench-<pid>/kubepods/...
  (the kernel builds each memory.stat), plus the rest of this machine's hierarchy. Removed afterwards.

CPU is the recorder thread's: process CPU time per sample / interval. Memory is what tracemalloc
sees the recorder hold once its ring is full (arrays, dicts, the pod names).

    sudo .venv/bin/python -m bench.recorder      # or `python -m bench --only 8`
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

from .common import Results, Row, log, status

PODS, PER_POD, SERVICES = 100, 3, 30
INTERVAL, RETENTION = 10.0, 3600.0
TARGET_CPU_PCT, TARGET_MIB = 0.5, 10.0


class _Names:
    """A pods that names every pod at once (steady state: lookups are cached per cgroup)."""

    def pod_for(self, ref):  # type: ignore[no-untyped-def]
        from app.models import PodRef

        return PodRef(namespace="bench", name=f"pod-{ref.pod_uid[:8]}", uid=ref.pod_uid,
                      container=f"c-{ref.container_id[:6]}", resolved_by="kubelet")


def _ids(n_pods: int, per_pod: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n_pods):
        uid = str(uuid.uuid4())
        for _ in range(per_pod):
            out.append((uid, uuid.uuid4().hex + uuid.uuid4().hex))
    return out


def synthetic_tree(base: Path) -> list[Path]:
    """A v2 node: returns the containers' memory.stat files."""
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    stats = []
    for uid, cid in _ids(PODS, PER_POD):
        d = base / "kubepods.slice/kubepods-burstable.slice" / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice" \
            / f"cri-containerd-{cid}.scope"
        d.mkdir(parents=True)
        stats.append(d / "memory.stat")
    for i in range(SERVICES):
        d = base / "system.slice" / f"svc-{i}.service"
        d.mkdir(parents=True)
        (d / "memory.stat").write_text("anon 0\nfile 0\npgfault 0\npgmajfault 0\n")
    return stats


STAT_V2 = ("anon {a}\nfile 4096\nkernel 0\nkernel_stack 0\npagetables 0\nshmem 0\nfile_mapped 0\nfile_dirty 0\n"
           "file_writeback 0\nswapcached 0\ninactive_anon 0\nactive_anon 0\ninactive_file 0\nactive_file 0\n"
           "unevictable 0\nslab 0\nworkingset_refault_anon 0\nworkingset_refault_file 0\npgscan 0\npgsteal 0\n"
           "pgfault {f}\npgmajfault {m}\npgrefill 0\npgactivate 0\npgdeactivate 0\npglazyfree 0\nthp_fault_alloc 0\n")


def _write_counters(stats: list[Path], tick: int) -> None:
    for i, p in enumerate(stats):
        p.write_text(STAT_V2.format(a=4096 * i, f=tick * 50, m=tick * (i + 1)))


def measure_synthetic(workdir: Path) -> dict:
    from app.collectors.flight_recorder import FaultRecorder, Tick

    base = workdir / "cgroup"
    proc = workdir / "proc"
    proc.mkdir(parents=True)
    stats = synthetic_tree(base)
    clock = [1_800_000_000.0]

    def fill(rec: FaultRecorder, cpu: list[float]) -> Tick:
        for tick in range(rec.slots + 5):  # fill the ring, and wrap it
            _write_counters(stats, tick)
            (proc / "vmstat").write_text(f"pgfault {tick * 1000}\npgmajfault {tick * 300}\n")
            clock[0] += INTERVAL
            c0 = time.process_time()
            t = rec.sample()
            cpu.append(time.process_time() - c0)
        return t

    cpu: list[float] = []
    rec = FaultRecorder(base, proc, interval=INTERVAL, retention=RETENTION, pods=_Names(), clock=lambda: clock[0])
    t = fill(rec, cpu)  # CPU: without tracemalloc (it slows every allocation)
    from datetime import UTC, datetime, timedelta

    until = datetime.fromtimestamp(clock[0], UTC)
    h0 = time.perf_counter()
    h = rec.history(until - timedelta(minutes=30), until)
    hist_s = time.perf_counter() - h0
    assert h is not None and len(h.cgroups) == 10
    # Memory: a second recorder filled the same way, after the first warmed every cache.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rec2 = FaultRecorder(base, proc, interval=INTERVAL, retention=RETENTION, pods=_Names(), clock=lambda: clock[0])
    fill(rec2, [])
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del rec2
    steady = cpu[5:]  # after the first sweep (pod lookups)
    return {
        "groups": t.groups, "series": rec.series_count, "slots": rec.slots,
        "cpu_per_sample_s": statistics.median(steady),
        "first_sample_s": cpu[0], "held_mib": held / (1 << 20), "history_s": hist_s,
    }


@contextlib.contextmanager
def real_v1_groups(n_pods: int = PODS, per_pod: int = PER_POD) -> Iterator[Path]:
    """300 empty v1 memory groups under a unique pfi-bench-<pid>-<n> parent, removed afterwards."""
    root = Path("/sys/fs/cgroup/memory")
    parent = root / f"pfi-bench-{os.getpid()}-{int(time.time())}"
    made: list[Path] = []
    try:
        for uid, cid in _ids(n_pods, per_pod):
            pod = parent / "kubepods" / "burstable" / f"pod{uid}"
            for d in (parent, parent / "kubepods", parent / "kubepods" / "burstable", pod, pod / cid):
                if not d.exists():
                    d.mkdir()
                    made.append(d)
        yield parent
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


def measure_real(samples: int = 20) -> dict:
    from app.collectors.flight_recorder import FaultRecorder

    with real_v1_groups() as parent:
        rec = FaultRecorder(Path("/sys/fs/cgroup"), Path("/proc"), interval=INTERVAL, retention=RETENTION,
                            pods=_Names())
        first = rec.sample()
        cpu = []
        for _ in range(samples):
            c0 = time.process_time()
            t = rec.sample()
            cpu.append(time.process_time() - c0)
        mine = sum(1 for g in rec._groups if g.startswith("/" + parent.name + "/"))
    return {"groups": t.groups, "ours": mine, "cpu_per_sample_s": statistics.median(cpu),
            "first_sample_s": first.duration}


def _cpu_row(res: Results, what: str, cpu_per_sample_s: float, note: str) -> None:
    """The recorder's CPU per sample as a share of a core at its interval, against the target."""
    pct = cpu_per_sample_s / INTERVAL * 100
    res.add(Row("8 recorder", f"CPU, {what}, every {INTERVAL:g} s", pct, "% of a core", None, None,
                f"< {TARGET_CPU_PCT} %", status(pct < TARGET_CPU_PCT), note))


def section_recorder(res: Results, workdir: Path) -> None:
    log("[8] flight recorder at 300 containers")
    try:
        s = measure_synthetic(workdir / "recorder")
    except Exception as e:  # noqa: BLE001
        res.failed("8 recorder", "synthetic 300 containers", e)
        return
    _cpu_row(res, f"{s['groups']} groups (300 containers + 30 services, synthetic v2)",
             s["cpu_per_sample_s"], f"{s['cpu_per_sample_s'] * 1000:.1f} ms CPU per sample (median), first sweep "
             f"with pod lookups {s['first_sample_s'] * 1000:.0f} ms")
    res.add(Row("8 recorder", f"memory with the ring full ({s['slots'] - 1} intervals = {RETENTION:g} s, "
                f"{s['series']} series)", s["held_mib"], "MiB", None, None, f"< {TARGET_MIB:g} MiB",
                status(s["held_mib"] < TARGET_MIB), "tracemalloc: what the recorder holds"))
    res.add(Row("8 recorder", "history: top 10 of 330 series over 30 min", s["history_s"] * 1000, "ms", status="info"))
    if os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory/memory.stat").exists():
        res.missing("8 recorder", "CPU, real v1 memory cgroups", f"< {TARGET_CPU_PCT} %", "needs root and cgroup v1 memory")
        return
    try:
        r = measure_real()
    except Exception as e:  # noqa: BLE001
        res.failed("8 recorder", "CPU, real v1 memory cgroups", e)
        return
    _cpu_row(res, f"{r['groups']} real v1 memory cgroups ({r['ours']} made for this)", r["cpu_per_sample_s"],
             f"{r['cpu_per_sample_s'] * 1000:.1f} ms CPU per sample (median of 20); the kernel builds each memory.stat")


def main() -> int:
    res = Results()
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-recorder-", dir="/var/tmp"))
    try:
        section_recorder(res, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in res.rows:
        print(f"| {r.section} | {r.name} | {r.value if not isinstance(r.value, float) else f'{r.value:.3g}'} {r.unit} "
              f"| {r.target} | {r.status} | {r.note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Captured procfs trees: how one is taken from this machine, and how tests replay it.

A tree folder (tests/fixtures/proctree-*/) holds
    proc/                  /proc as the engine reads it: PID/{stat,status,cmdline,maps,smaps,io,cgroup},
                           PID/ns/mnt (a symlink to its real target text), self -> the capturing PID,
                           vmstat, meminfo, pressure/{memory,io,cpu}
    steps/K/               what changed every STEP_SECONDS while the tracer ran: PID/stat, PID/io, vmstat
                           (K = 0 before the tracer started, then in order)
    cgroup/memory/...      the v1 memory files of the pod's container group
    trace.json             what the real exact tracer (perf-major) recorded in the same window:
                           pid -> page address -> count, totals, comms, events
    manifest.json          which PID is which, the file, the pod, the limit, when it was taken

Capture (root, gcc, perf; takes ~10 s):  python -m tests.proctree capture tests/fixtures/proctree-NAME
Replay: `ReplayTree(folder, tmp_path)` copies it; `with tree.play(): investigate(...)` writes step K
into the copy at K * STEP_SECONDS, so the engine's once-a-second sampling sees counters move as
they did; `ReplayTracer(tree)` hands the engine the recorded trace through `investigate(edges=Edges(tracers=[...]))`.
Nothing here needs root, perf or gcc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.tracers.base import TraceRequest, TraceResult
from tests.virtual_clock import VirtualClock

STEP_SECONDS = 0.5
PER_PROCESS = ("stat", "status", "cmdline", "maps", "smaps", "io", "cgroup")
NODE_FILES = ("vmstat", "meminfo", "pressure/memory", "pressure/io", "pressure/cpu")
CGROUP_V1_FILES = ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat", "memory.memsw.usage_in_bytes",
                   "memory.max_usage_in_bytes", "memory.failcnt")

# A real pod of the captured kubelet PodList (minikube 1.35, containerd): its UID and container ID
# name the swapping process's cgroup, laid out as the kubelet's cgroupfs driver does.
POD_UID = "b5812e37-ce78-41e2-9d8d-d93a88e481d6"
CONTAINER_ID = "bcbcd3972a517ab0ed8df77d0a07d082c529278f206d0f4a29ebbe940996e9e5"


# --- replay -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sampler_clock(on_tick: Callable[[int], None]) -> Iterator[VirtualClock]:
    """A replay's fake clock: `on_tick(k)` runs in the engine's thread just before the sampler takes its
    k-th sample (k = 1, 2, ...; the baseline, sample 0, is whatever the tree holds when investigate
    starts). A replay that writes capture step k there is seen whole at sample k however late the
    machine's load makes that sample. And the window itself runs on a virtual clock (tests/virtual_clock.py,
    the engine's default_clock meanwhile), made by the thread that enters this and must call investigate:
    a 3 s window takes as long as its samples take to read, and its times are the same on any machine."""
    from app.investigation import engine

    real, real_clock = engine.Sampler, engine.default_clock
    clock = VirtualClock()

    class SteppedSampler(real):  # type: ignore[misc,valid-type]
        def tick(self, full: bool = False) -> None:
            on_tick(self.ticks + 1)
            super().tick(full)

    engine.Sampler = SteppedSampler  # type: ignore[misc]
    engine.default_clock = clock
    try:
        yield clock
    finally:
        engine.Sampler = real  # type: ignore[misc]
        engine.default_clock = real_clock



class ReplayTree:
    """A writable copy of a captured tree, with its recorded steps to play."""

    def __init__(self, src: Path, dest: Path) -> None:
        self.src = Path(src)
        self.manifest = json.loads((self.src / "manifest.json").read_text())
        self.root = Path(dest)
        shutil.copytree(self.src / "proc", self.root / "proc", symlinks=True)
        shutil.copytree(self.src / "cgroup", self.root / "cgroup", symlinks=True)
        self.steps = sorted((p for p in (self.src / "steps").iterdir() if p.is_dir()), key=lambda p: int(p.name))
        self.applied = -1
        self.apply(0)

    @property
    def proc_root(self) -> Path:
        return self.root / "proc"

    @property
    def cgroup_root(self) -> Path:
        return self.root / "cgroup"

    def pid(self, role: str) -> int:
        return int(self.manifest["pids"][role])

    def apply(self, k: int) -> None:
        """Write step k's files into the copy, each replaced whole (a reader never sees half a file)."""
        step = self.steps[min(k, len(self.steps) - 1)]
        for f in sorted(step.rglob("*")):
            if f.is_file():
                rel = f.relative_to(step)
                dest = self.proc_root / rel
                tmp = dest.with_name(f".{dest.name}.replay")
                shutil.copyfile(f, tmp)
                os.replace(tmp, dest)
        self.applied = k

    @contextlib.contextmanager
    def play(self, step_seconds: float = STEP_SECONDS,
             on_tick: Callable[[int], None] | None = None) -> Iterator[ReplayTree]:
        """Step 0 now, then the steps the engine's sampler would have seen by its k-th sample on the
        capture's clock (k seconds in, `step_seconds` a step): the replay moves on the sampler's ticks
        (sampler_clock), not on the wall clock, so a loaded machine that delays a tick still sees the
        counters of that tick together (held at the last step from then on); the window is on a virtual
        clock (sampler_clock's). `on_tick(k)` runs after step k's files are written (a test cancelling at a
        given sample). In this process only: for the CLI in a subprocess see cli_on_the_sampler_clock."""
        self.apply(0)
        last = len(self.steps) - 1

        def tick(k: int) -> None:
            self.apply(min(last, int(k / step_seconds + 1e-9)))
            if on_tick is not None:
                on_tick(k)

        with sampler_clock(tick):
            yield self

    def counter(self, pid: int, field: str, step: int) -> int:
        """majflt ('majflt') or io 'read_bytes' of pid as step `step` recorded it."""
        d = self.steps[step] / str(pid)
        if field == "majflt":
            text = (d / "stat").read_text()
            return int(text[text.rindex(")") + 2 :].split()[9])
        for line in (d / "io").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


class ReplayTracer:
    """An exact tracer that hands over what perf-major recorded while the tree was captured
    (the addresses are real: they fall into the captured maps). It holds the window like a real
    backend, on the investigation's clock: on_start, the window (or cancel), on_stop."""

    exact = True

    def __init__(self, tree: ReplayTree) -> None:
        self.doc = json.loads((tree.src / "trace.json").read_text())
        self.name = f"replay-{self.doc['backend']}"

    def available(self) -> tuple[bool, str]:
        return True, f"replays {self.doc['backend']}'s recorded trace"

    def run(self, request: TraceRequest) -> TraceResult:
        result = TraceResult(backend=self.name, exact=True)
        if request.on_start:
            request.on_start()
        clock = request.clock
        t0 = clock.monotonic()
        clock.wait(request.cancel, request.seconds)
        result.duration_seconds = clock.monotonic() - t0
        if request.on_stop:
            request.on_stop()
        wanted = set(request.pids) if request.pids else None
        for pid_s, pages in self.doc["faults"].items():
            pid = int(pid_s)
            if wanted is None or pid in wanted:
                result.faults[pid] = {int(a, 16): n for a, n in pages.items()}
                result.totals[pid] = self.doc["totals"][pid_s]
                result.comms[pid] = self.doc["comms"].get(pid_s, "")
        result.events = sum(result.totals.values())
        result.dropped = self.doc["dropped"]
        return result


# --- capture (root, once, by hand) ----------------------------------------------------------------------


def _copy(src: Path, dest: Path) -> bool:
    try:
        data = src.read_bytes()
    except OSError:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return True


def _snapshot_step(out: Path, pids: list[int]) -> None:
    out.mkdir(parents=True)
    for pid in pids:
        for name in ("stat", "io"):
            _copy(Path(f"/proc/{pid}/{name}"), out / str(pid) / name)
    _copy(Path("/proc/vmstat"), out / "vmstat")


def capture(dest: Path, seconds: float = 2.0) -> None:
    from app.config import Settings
    from app.tracers.registry import make_tracer
    from tests.workloads import file_fault_workload, swap_workload

    if dest.exists():
        raise SystemExit(f"{dest} exists; remove it first")
    tracer = make_tracer("perf-major", Settings())
    ok, why = tracer.available()
    if not ok:
        raise SystemExit(f"perf-major not available: {why}")
    data = Path(f"/var/tmp/pfi-capture-index-{os.getpid()}.bin")
    with file_fault_workload(data, size_mb=8) as fproc, swap_workload(
        size_mb=24, limit_mb=12, name=f"kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}"
    ) as sproc:
        assert sproc.cgroup is not None
        time.sleep(1.0)  # steady state
        pids = [fproc.pid, sproc.pid]
        steps = dest / "steps"
        _snapshot_step(steps / "0", pids)
        box: list[TraceResult] = []
        started = threading.Event()
        req = TraceRequest(seconds=seconds, pids=pids, on_start=started.set)
        thread = threading.Thread(target=lambda: box.append(tracer.run(req)))
        thread.start()
        started.wait(30)
        k = 1
        while thread.is_alive() and k < 20:
            time.sleep(STEP_SECONDS)
            _snapshot_step(steps / str(k), pids)
            k += 1
        thread.join()
        _snapshot_step(steps / str(k), pids)
        trace = box[0]
        me = os.getpid()
        proc = dest / "proc"
        for pid in [2, me, *pids]:
            for name in PER_PROCESS:
                if pid in (2, me) and name in ("maps", "smaps"):
                    continue  # nothing of theirs is resolved; keeps the fixture small
                _copy(Path(f"/proc/{pid}/{name}"), proc / str(pid) / name)
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/ns/mnt")
                (proc / str(pid) / "ns").mkdir(parents=True, exist_ok=True)
                os.symlink(target, proc / str(pid) / "ns" / "mnt")
        for pid in pids:  # the static stat/io are the values at the end
            for name in ("stat", "io"):
                _copy(steps / str(k) / str(pid) / name, proc / str(pid) / name)
        os.symlink(str(me), proc / "self")
        for name in NODE_FILES:
            _copy(Path("/proc") / name, proc / name)
        _copy(steps / str(k) / "vmstat", proc / "vmstat")
        rel = sproc.cgroup.relative_to("/sys/fs/cgroup")
        for name in CGROUP_V1_FILES:
            _copy(sproc.cgroup / name, dest / "cgroup" / rel / name)
        (dest / "trace.json").write_text(json.dumps({
            "backend": trace.backend, "events": trace.events, "dropped": trace.dropped,
            "duration_seconds": round(trace.duration_seconds, 3), "errors": trace.errors,
            "totals": {str(p): n for p, n in trace.totals.items()},
            "comms": {str(p): c for p, c in trace.comms.items()},
            "faults": {str(p): {f"{a:x}": n for a, n in sorted(pages.items())} for p, pages in trace.faults.items()},
        }, separators=(",", ":")))
        (dest / "manifest.json").write_text(json.dumps({
            "pids": {"file": fproc.pid, "swap": sproc.pid, "capture": me, "kthreadd": 2},
            "file": str(data), "file_size": 8 << 20,
            "cgroup": "/" + "/".join(rel.parts[1:]), "limit_bytes": 12 << 20,
            "pod_uid": POD_UID, "container_id": CONTAINER_ID,
            "step_seconds": STEP_SECONDS, "steps": k + 1,
            "kernel": os.uname().release, "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=1) + "\n")


def cli_on_the_sampler_clock(src: Path, root: Path, step_seconds: float, argv: list[str]) -> int:
    """`app.cli main(argv)` in this process with the copy at `root` (of the tree at `src`) replayed on the
    engine's samples (play): a CLI test's replay that a slow start-up on a loaded machine cannot outrun."""
    from app.cli import main

    tree = ReplayTree.__new__(ReplayTree)
    tree.src, tree.root = Path(src), Path(root)
    tree.manifest = json.loads((tree.src / "manifest.json").read_text())
    tree.steps = sorted((p for p in (tree.src / "steps").iterdir() if p.is_dir()), key=lambda p: int(p.name))
    with tree.play(step_seconds):
        return main(argv)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "cli":  # cli SRC ROOT STEP_SECONDS ARGS...: see cli_on_the_sampler_clock
        raise SystemExit(cli_on_the_sampler_clock(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]),
                                                  sys.argv[5:]))
    if len(sys.argv) != 3 or sys.argv[1] != "capture":
        raise SystemExit("usage: python -m tests.proctree capture DEST | cli SRC ROOT STEP_SECONDS ARGS...")
    capture(Path(sys.argv[2]))

"""One snapshot of a process per window: what the investigation reads of each reported process.

A counting ProcFS (every file read under the root, by pid and name) and a count of the cgroup memory
files read, over one whole investigation: on the captured tree (tests/fixtures/proctree-file-and-pod-swap)
with procfs estimates and with the exact tracer's recorded addresses, and node-wide among 5,000 real
processes. Each reported process's /proc files are read once at the window's end (ProcessSnapshot), besides
the sampler's stat ticks and its first maps/io/status/cgroup snapshot during the window; each memory
cgroup's files once there too. The ceiling (CEILING) is the count that must not creep back (issue 26)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from app.collectors import cgroupmem
from app.collectors.procfs import ProcFS
from app.config import Settings
from app.investigation.engine import Edges, investigate
from app.models import Cause, SourceKind

REPLAY_STEP = 0.4


class CountingProcFS(ProcFS):
    """A real ProcFS that counts what it reads: (pid, file name) -> reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: collections.Counter[tuple[str, str]] = collections.Counter()

    def _count(self, rel: str) -> None:
        pid, _, name = rel.partition("/")
        self.reads[(pid, name)] += 1

    def _read_bytes(self, rel: str) -> bytes | None:
        self._count(rel)
        return super()._read_bytes(rel)

    def stat_bytes(self, pids):  # type: ignore[no-untyped-def]
        pids = list(pids)
        for pid in pids:
            self._count(f"{pid}/stat")
        return super().stat_bytes(pids)

    def mnt_ns(self, pid: int | str) -> str | None:
        self._count(f"{pid}/ns/mnt")
        return super().mnt_ns(pid)

    def pagemap(self, pid: int, starts: list[int], pages: int) -> dict[int, bytes] | None:
        self._count(f"{pid}/pagemap")
        return super().pagemap(pid, starts, pages)


def _settings(tree, **kw) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(proc_root=tree.proc_root, cgroup_root=tree.cgroup_root, kubelet_url=None,
                    apiserver_fallback=False, **kw)


def _investigate(tree, monkeypatch: pytest.MonkeyPatch, exact: bool):  # type: ignore[no-untyped-def]
    """One replayed investigation with counting reads: (report, {(pid, file): reads}, {cgroup file: reads})."""
    from app.tracers.procfs_only import ProcfsTracer
    from tests.proctree import ReplayTracer

    files: collections.Counter[str] = collections.Counter()
    real_read = cgroupmem._read

    def counted(path: Path) -> str | None:
        files[os.path.relpath(path, tree.cgroup_root)] += 1
        return real_read(path)

    monkeypatch.setattr(cgroupmem, "_read", counted)
    settings = _settings(tree, tracer="perf-major" if exact else "procfs")
    procfs = CountingProcFS(tree.proc_root)
    tracer = ReplayTracer(tree) if exact else ProcfsTracer(settings)
    with tree.play(REPLAY_STEP):
        report = investigate(settings, seconds=3, edges=Edges(tracers=[tracer], procfs=procfs))
    return report, procfs.reads, files


# Per reported process, over the whole investigation: the sampler's first snapshot of a faulting process
# during the window (maps, io, VmSwap in status, cgroup) and the one at its end (ProcessSnapshot, and the
# final maps). Before the snapshot (main at 00ca26d), procfs: cgroup 3, smaps 2 for the process under its
# limit (the estimate and the recommendation each read it); exact: cgroup 3, status 3; memory files 3 each.
CEILING = {"cgroup": 2, "cmdline": 1, "io": 2, "maps": 2, "ns/mnt": 1, "status": 2, "smaps": 1, "pagemap": 1}


@pytest.mark.parametrize("exact", [False, True], ids=["procfs", "exact"])
def test_each_process_and_group_is_read_once_at_the_window_end(captured_tree, monkeypatch, exact) -> None:  # type: ignore[no-untyped-def]
    tree = captured_tree
    report, reads, files = _investigate(tree, monkeypatch, exact)
    fpid, spid = tree.pid("file"), tree.pid("swap")
    assert [p.pid for p in report.processes] == [fpid, spid]
    f, s = report.processes
    # the same answers as ever: the file, the swap under the pod's limit, a recommendation for it
    assert f.sources[0].kind is SourceKind.FILE and f.verdict is not None and f.verdict.cause is Cause.COLD_FILE_READS
    assert s.sources[0].kind is SourceKind.SWAP
    assert s.verdict is not None and s.verdict.cause is Cause.CONTAINER_MEMORY_LIMIT
    assert s.verdict.recommendation is not None and s.verdict.recommendation.recommended_limit_bytes
    assert s.cgroup_memory is not None and s.cgroup_memory.max_bytes == tree.manifest["limit_bytes"]
    assert s.cgroup_anon_refaults is not None  # the evidence read its group at both ends (the replay keeps it still)
    assert s.swap_bytes is not None and s.rss_bytes is not None
    for pid in (fpid, spid):
        mine = {name: n for (p, name), n in reads.items() if p == str(pid) and name != "stat"}
        over = {name: n for name, n in mine.items() if n > CEILING.get(name, 0)}
        assert not over, (pid, mine)
    assert (reads[(str(spid), "smaps")], reads[(str(fpid), "smaps")]) == (1, 0 if exact else 1)
    group = tree.manifest["cgroup"].lstrip("/")
    mine = {name: n for name, n in files.items() if name.startswith(f"memory/{group}/")}
    stat = mine.pop(f"memory/{group}/memory.stat")
    assert mine and max(mine.values()) == 2, mine  # the sampler's first snapshot, the window's end
    # memory.stat besides: once a tick for the refault series of a faulting group (recommend.refaults_rising,
    # one small file a tick like the processes' stat), at most one a second of the 3 s window and the last tick
    assert 2 <= stat <= 2 + 3 + 1, stat


@pytest.mark.root
@pytest.mark.workloads  # 5,000 sleepers and a real file re-reader
def test_each_reported_process_is_read_once_at_the_window_end_among_5000(tmp_path: Path) -> None:
    """The same ceiling node-wide on this machine among 5,000 sleeping processes (bench/idle.c, as the
    incremental-scan test), procfs and the exact tracer: before the snapshot the file re-reader's
    /proc/PID/cgroup was read 3 times, and with perf-major its status 3 times too."""
    import shutil

    from app.tracers.registry import make_tracer
    from tests.test_sampler_incremental import N_IDLE, sleepers
    from tests.workloads import file_fault_workload

    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: cannot build bench/idle.c and the fault workload")
    settings = Settings(kubelet_url=None, apiserver_fallback=False)
    tracers = [make_tracer("procfs", settings)]
    if shutil.which("perf"):
        tracers.append(make_tracer("perf-major", settings))
    with sleepers(N_IDLE, tmp_path), file_fault_workload(tmp_path / "f.bin", 64) as w:
        for tracer in tracers:
            procfs = CountingProcFS(Path("/proc"))
            report = investigate(settings, seconds=3, top=50, edges=Edges(tracers=[tracer], procfs=procfs))
            assert report.tracer.backend == tracer.name
            pids = [p.pid for p in report.processes]
            assert w.pid in pids, (tracer.name, [(p.pid, p.comm) for p in report.processes])
            for pid in pids:
                mine = {name: n for (p, name), n in procfs.reads.items() if p == str(pid) and name != "stat"}
                over = {name: n for name, n in mine.items() if n > CEILING.get(name, 0)}
                assert not over, (tracer.name, pid, mine)
            print(f"\n[{tracer.name}, {len(procfs.listing()):,} processes] the re-reader's reads: "
                  f"{ {name: n for (p, name), n in procfs.reads.items() if p == str(w.pid)} }")

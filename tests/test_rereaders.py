"""read() re-readers (issue 22): a memory cgroup whose page cache refaults without major faults is named, with
the limit that stops it; counted in a culprit's recommendation when it shares its limit. Pure parts on real
captured memory.stat files (tests/fixtures/cgroupscan, SOURCES.md); the live rows are in the zoo."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from app.collectors.cgroupscan import GroupCounters, group_pids, open_files, scan_refaults
from app.investigation.recommend import Group, recommend, reread_limit
from app.investigation.rereaders import Found, candidates, note, reread_bytes, rereaders
from app.models import (
    Cause,
    CgroupMemory,
    NodeStats,
    ProcessReport,
    Report,
    Source,
    SourceKind,
    TracerInfo,
    Verdict,
)

MIB = 1 << 20
FIX = Path(__file__).parent / "fixtures/cgroupscan"
NODE = NodeStats(mem_total_bytes=24 * 1024 * MIB)


def _tree(tmp: Path, stat: str) -> Path:
    """A v1 memory hierarchy: kubepods/pod/ctr (the re-reader, the captured stat) and a quiet sibling."""
    mem = tmp / "memory"
    (mem / "kubepods/pod1/ctr").mkdir(parents=True)
    (mem / "kubepods/pod2").mkdir(parents=True)
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    for d in (mem, mem / "kubepods", mem / "kubepods/pod1", mem / "kubepods/pod2"):
        (d / "memory.stat").write_text("cache 0\nworkingset_refault_file 5\npgmajfault 3\n")
    shutil.copy(FIX / stat, mem / "kubepods/pod1/ctr/memory.stat")
    (mem / "kubepods/pod1/ctr/cgroup.procs").write_text("4242\n4243\n")
    return tmp


def test_scan_reads_every_group_and_finds_the_one_re_reading(tmp_path: Path) -> None:
    """The captured pread() re-reader (128 MiB file at 64 MiB): workingset_refault_file 17,174 -> 39,979 in
    3 s, pgmajfault 0 -> 0: 7,602 refaults/s without a fault: a re-reader; the quiet groups are not."""
    version, before = scan_refaults(_tree(tmp_path / "a", "v1-pread-start.memory.stat"))
    _, after = scan_refaults(_tree(tmp_path / "b", "v1-pread-end.memory.stat"))
    assert version == 1 and set(before) == {"/", "/kubepods", "/kubepods/pod1", "/kubepods/pod1/ctr", "/kubepods/pod2"}
    assert after["/kubepods/pod1/ctr"] == GroupCounters(39_979, 0)
    assert candidates(before, after, 3.0) == [("/kubepods/pod1/ctr", 39_979 - 17_174, 0)]
    assert candidates(before, after, 60.0) == []  # 380 refaults/s over a minute: under the alert's 500/s
    assert group_pids(tmp_path / "b", "/kubepods/pod1/ctr") == [4242, 4243]
    assert group_pids(tmp_path / "b", "/../etc") == []


def test_candidates_leave_out_faulting_readers_and_parents() -> None:
    """An mmap re-reader's refaults are its major faults (no read()); v2 counts a child in its parent: the
    deepest group is the one named."""
    before = {"/a": GroupCounters(0, 0), "/a/ctr": GroupCounters(0, 0), "/mmap": GroupCounters(0, 0)}
    after = {"/a": GroupCounters(30_000, 10), "/a/ctr": GroupCounters(29_000, 10), "/mmap": GroupCounters(40_000, 39_000)}
    assert candidates(before, after, 5.0) == [("/a/ctr", 29_000, 10)]
    half = {"/mmap": GroupCounters(40_000, 20_000)}  # half without a fault: an mmap and a read() re-reader
    assert candidates({"/mmap": GroupCounters(0, 0)}, half, 5.0) == [("/mmap", 40_000, 20_000)]


def test_open_files_are_the_regular_files_held_open(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"x" * 12_288)
    with open(f, "rb"):
        found = open_files(Path("/proc"), [os.getpid()])
    st = f.stat()
    assert found[(st.st_dev, st.st_ino)] == (str(f), 12_288)
    assert open_files(Path("/proc"), [2**22 + 7]) == {}  # no such process: nothing, no error


def _mem(path: str = "/kubepods/pod1/ctr", file_mib: int = 63) -> CgroupMemory:
    return CgroupMemory(path=path, version=1, current_bytes=64 * MIB, max_bytes=64 * MIB, usage_ratio=1.0,
                        limit_path=path, file_bytes=file_mib * MIB)


def test_reread_limit_covers_the_files_read() -> None:
    """128 MiB re-read at 64 MiB: 89 MiB came back in the window (more than the resident cache leaves out):
    the files need their 128 MiB; (128 + 1 other) x 1.15 = 148 -> 160 MiB, with the command."""
    rec = reread_limit(_mem(), refaults=22_805, file_bytes=128 * MIB, node=NODE, seconds=3.0)
    assert rec.recommended_limit_bytes == 160 * MIB and not rec.at_least and rec.confidence == "low"
    assert rec.command == "echo 167772160 > /sys/fs/cgroup/memory/kubepods/pod1/ctr/memory.limit_in_bytes"
    short = reread_limit(_mem(), refaults=2_000, file_bytes=1024 * MIB, node=NODE, seconds=3.0)
    assert short.at_least and any("did not see them all" in b for b in short.basis)


def _report(processes: list[ProcessReport], verdict: Verdict) -> Report:
    now = datetime.now(UTC)
    return Report(node="n1", started_at=now, window_seconds=3.0, tracer=TracerInfo(backend="procfs", exact=False),
                  processes=processes, verdict=verdict)


def _found(path: str = "/kubepods/pod1/ctr") -> Found:
    return Found(path, 22_805, 0, _mem(path), [4242], ["indexer"], {(1, 2): ("/data/segments.db", 128 * MIB)})


def test_alone_the_report_says_the_alert_is_not_explained_but_names_the_thrashing() -> None:
    report = _report([], Verdict(summary="the node is quiet: 3 major faults/s", cause=Cause.QUIET))
    report.rereaders = rereaders([_found()], [], NODE, 3.0)
    note(report)
    r = report.rereaders[0]
    assert (r.cgroup, r.comms, r.refaults, r.shares_limit_with) == ("/kubepods/pod1/ctr", ["indexer"], 22_805, None)
    assert r.recommendation is not None and r.recommendation.recommended_limit_bytes == 160 * MIB
    assert "re-reads its files by read() at its limit (7,602 page-cache refaults/s" in report.verdict.summary
    line = report.verdict.advice[-1]
    assert line.startswith("not what this node's major-fault alert is about, but cgroup /kubepods/pod1/ctr (indexer) "
                           "re-reads /data/segments.db by read()")
    assert "thrashing its page cache; a limit of 160 MiB stops it: echo 167772160 > " in line


def _culprit(path: str) -> ProcessReport:
    mem = _mem(path)
    return ProcessReport(pid=7, comm="cache", major_faults=30_000, major_faults_per_second=10_000, cgroup_memory=mem,
                         cgroup_file_refaults=30_000,
                         sources=[Source(kind=SourceKind.FILE, path="/x", faults=30_000, share=1.0)],
                         verdict=Verdict(summary="re-reads /x at its limit", cause=Cause.CONTAINER_MEMORY_LIMIT))


def test_beside_a_culprit_named_and_counted_when_it_shares_the_limit() -> None:
    """A re-reader in another group: named, the limit costs it reads too. In the culprit's group: what of its
    files came back is counted in the culprit's recommendation, united with what of them is resident."""
    culprit = _culprit("/kubepods/pod9/ctr")
    assert culprit.verdict is not None
    v = culprit.verdict
    report = _report([culprit], v.model_copy())
    report.processes[0].verdict = v.model_copy(update={"recommendation": recommend(
        culprit, Group(pages=None, faults=30_000, growth={}, bound_bytes=64 * MIB), NODE, seconds=3.0,
        backend="procfs")})
    report.rereaders = rereaders([_found()], report.processes, NODE, 3.0)
    note(report)
    assert report.rereaders[0].shares_limit_with is None
    assert report.verdict.advice[-1].startswith("cgroup /kubepods/pod1/ctr (indexer) re-reads /data/segments.db")
    assert "the limit costs it reads too; a limit of 160 MiB stops it" in report.verdict.advice[-1]
    shared = rereaders([_found("/kubepods/pod9/ctr")], report.processes, NODE, 3.0)
    assert shared[0].shares_limit_with == "/kubepods/pod9/ctr"
    # Counted: the culprit's own estimate (64 MiB mapped) plus the re-read files, less their resident cache.
    bound = Group(pages=None, faults=30_000, growth={}, bound_bytes=64 * MIB, bound_resident_bytes=32 * MIB)
    alone = recommend(culprit, bound, NODE, seconds=3.0, backend="procfs")
    bound.reread = reread_bytes([_found("/kubepods/pod9/ctr")])["/kubepods/pod9/ctr"]
    assert bound.reread == (22_805 * 4096, 128 * MIB)
    counted = recommend(culprit, bound, NODE, seconds=3.0, backend="procfs")
    assert alone is not None and counted is not None
    # (64 + 32 other resident) x 1.15 -> 112. With the files: 89 MiB of them came back and 31 MiB of the other
    # resident is their page cache (63 MiB of cache, 32 of it the mapped file's): 89 more, (64 + 89 + 32) x 1.15
    # = 212.75 -> 224
    assert (alone.recommended_limit_bytes, counted.recommended_limit_bytes) == (112 * MIB, 224 * MIB)
    assert any("re-read 128 MiB of files by read()" in b for b in counted.basis)


def test_a_re_reader_in_a_pod_is_named_by_its_pod_and_told_where_its_limit_is() -> None:
    """A group under kubepods: the pod from its cgroup path (the kubelet's answer stood in by pod_of), and
    no file write for a command: the limit is the container's, in its owner's pod template."""
    from app.models import PodRef

    uid, cid = "0f3c2a1e-0000-4000-8000-000000000001", "a" * 64
    path = f"/kubepods/burstable/pod{uid}/{cid}"
    asked = []

    def pod_of(ref):  # type: ignore[no-untyped-def]
        asked.append((ref.pod_uid, ref.container_id))
        return PodRef(namespace="search", name="indexer-0", uid=uid, container="indexer")

    r = rereaders([_found(path)], [], NODE, 3.0, pod_of=pod_of)[0]
    assert asked == [(uid, cid)] and r.pod is not None and r.pod.name == "indexer-0"
    assert r.summary.startswith(f"cgroup {path} (pod search/indexer-0 container indexer) re-reads /data/segments.db")
    rec = r.recommendation
    assert rec is not None and rec.command is None and (rec.subject, rec.knob) == ("container", "resources.limits.memory")
    assert rec.command_reason == ("set resources.limits.memory: 160Mi on container indexer of pod search/indexer-0 "
                                  "(in its owner's pod template)")
    assert rereaders([_found()], [], NODE, 3.0, pod_of=pod_of)[0].pod is None  # not a pod's path: not asked
    assert len(asked) == 1

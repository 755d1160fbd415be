"""Address resolution, procfs-only estimation and the verdicts, on real captured maps files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.investigation.diagnose import diagnose_process, diagnose_report
from app.investigation.estimate import SwapEvidence, estimate_sources
from app.investigation.sources import mapping_kind, sources_from_pages
from app.models import (
    Cause,
    CgroupMemory,
    NodeStats,
    PodRef,
    Pressure,
    ProcessReport,
    Source,
    SourceKind,
)
from app.parsers.procfs import find_mapping, parse_maps, parse_smaps

FIX = Path(__file__).parent / "fixtures" / "proc"


@pytest.fixture(scope="module")
def jvm_maps():
    # Real JVM-in-a-container maps (DataDog/ddprof): "(deleted)" .so files, memfd, a jar mapped shared.
    return parse_maps((FIX / "maps-jvm-container-deleted-memfd.txt").read_text())


@pytest.fixture(scope="module")
def cat_maps():
    return parse_maps((FIX / "maps-cat-rwxs-vsyscall.txt").read_text())


@pytest.mark.parametrize(
    ("address", "kind", "path"),
    [
        # each case one kind of mapping, with the quirk it covers
        (0x5612BC2E1000 + 0x10, SourceKind.SWAP, "[heap]"),  # heap: anonymous, only swap can fault it
        (0x7FEA51A00000 + 0x1234, SourceKind.CODE, "/tmp/liblz4-java-964230997078175437.so"),  # r-xp: code
        # a deleted library is still code; the " (deleted)" suffix is not part of the path
        (0x7FEA6EC00000, SourceKind.CODE, "/tmp/libnetty_transport_native_epoll_x86_6413640138921322660888.so"),
        (0x7FECBC84A000 + 0x3000, SourceKind.SHMEM, "/memfd:allocation_ring_buffer"),  # memfd: tmpfs pages
        (0x7FEC6E9CE000 + 0x5000, SourceKind.FILE, "/usr/local/app/agent/dd-java-agent.jar"),  # r--s file
        (0x7FEC6F317000, SourceKind.FILE, "/usr/lib/locale/locale-archive"),  # r--p private file mapping
        (0x10, SourceKind.UNKNOWN, None),  # no mapping holds it
    ],
)
def test_classify_jvm_mappings(jvm_maps, address, kind, path):
    entry = find_mapping(jvm_maps, address)
    assert mapping_kind(entry) is kind
    assert (entry.path if entry else None) == path


def test_classify_kernel_pages_and_stack(cat_maps):
    assert mapping_kind(find_mapping(cat_maps, 0x7FFE921DD000)) is SourceKind.UNKNOWN  # [vdso]
    assert mapping_kind(find_mapping(cat_maps, 0xFFFFFFFFFF600000)) is SourceKind.UNKNOWN  # [vsyscall]
    assert mapping_kind(find_mapping(cat_maps, 0x7FFE9215C000 + 8)) is SourceKind.SWAP  # [stack]
    # rwxs: a shared writable executable file mapping is still program code
    assert mapping_kind(find_mapping(cat_maps, 0x55680AE29000)) is SourceKind.CODE


def test_resolve_groups_by_file_with_hot_ranges(jvm_maps):
    jar = 0x7FEC6E9CE000  # offset 0x01354000 in the jar
    pages = {jar + i * 4096: 3 for i in range(10)}  # 30 faults in the jar
    pages[0x5612BC2E1000] = 5  # heap
    pages[0x7FECBC84A000] = 1  # memfd
    sources = sources_from_pages(pages, [jvm_maps])
    assert [s.kind for s in sources] == [SourceKind.FILE, SourceKind.SWAP, SourceKind.SHMEM]
    top = sources[0]
    assert top.path == "/usr/local/app/agent/dd-java-agent.jar"
    assert top.faults == 30 and top.share == pytest.approx(30 / 36, abs=1e-3)
    assert top.inode == 1567502 and top.device == "00:10d"
    # file offsets, not addresses: the mapping starts at offset 0x01354000 (bucket 19 MiB)
    assert top.hot_ranges[0].start == (0x01354000 >> 20) << 20
    assert sum(r.faults for r in top.hot_ranges) == 30


def test_resolve_uses_older_snapshot_for_unmapped_address(jvm_maps, cat_maps):
    # The address is gone from the newest snapshot (cat's maps) but held in the older one.
    sources = sources_from_pages({0x7FEC6F317000: 7}, [jvm_maps, cat_maps])
    assert sources[0].kind is SourceKind.FILE and sources[0].path == "/usr/lib/locale/locale-archive"


def test_resolve_empty():
    assert sources_from_pages({}, []) == []


def test_estimate_without_addresses_prefers_swap_evidence():
    smaps = parse_smaps((FIX / "smaps-alertmanager-vmflags-trailing-space.txt").read_text())
    swapped = sum(e.swap_bytes for e in smaps)
    assert swapped > 0  # the real capture has swapped-out anonymous memory
    sources = estimate_sources(1000, read_bytes=0, smaps=smaps)
    assert sources and all(s.estimated for s in sources)
    assert sources[0].kind is SourceKind.SWAP
    assert sum(s.faults for s in sources) == pytest.approx(1000, abs=len(sources))


def test_estimate_file_reads_from_io():
    # 400 pages read from storage for 400 major faults and nothing swapped: all file.
    sources = estimate_sources(400, read_bytes=400 * 4096, smaps=[])
    assert [(s.kind, s.faults, s.share) for s in sources] == [(SourceKind.FILE, 400, 1.0)]


def _proc(sources, mem=None, pod=None, rate=1000.0) -> ProcessReport:
    return ProcessReport(pid=42, comm="cart-cache", major_faults=int(rate * 10), major_faults_per_second=rate,
                         sources=sources, cgroup_memory=mem, pod=pod)


POD = PodRef(namespace="shop", name="cart-cache-7d9f", uid="u1", container="cache")
LIMITED = CgroupMemory(path="/kubepods/x", version=2, current_bytes=63 << 20, max_bytes=64 << 20,
                       usage_ratio=63 / 64)


def test_verdict_code_refaults_at_limit():
    v = diagnose_process(_proc([Source(kind=SourceKind.CODE, path="/app/bin", faults=9, share=0.9),
                                Source(kind=SourceKind.FILE, path="/data", faults=1, share=0.1)], LIMITED, POD),
                         NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT
    assert "pod shop/cart-cache-7d9f container cache" in v.summary
    assert "the container runs at 98% of its 64 MiB memory limit" in v.summary
    assert any("raise the container's memory limit" in a for a in v.advice)


def test_verdict_swap_on_overcommitted_node():
    node = NodeStats(mem_total_bytes=100, mem_available_bytes=3, pswpout_per_second=900,
                     psi_memory=Pressure(some_avg10=22.0))
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], None, POD, rate=8000), node)
    assert v.cause is Cause.NODE_MEMORY_PRESSURE
    assert "swapped in at 8,000 pages/s" in v.summary and "the node is short of memory" in v.summary
    assert v.confidence == "high"


def test_verdict_swap_in_limited_container():
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], LIMITED, POD), NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT and "swapped back in" in v.summary


def test_verdict_cold_file_reads():
    v = diagnose_process(_proc([Source(kind=SourceKind.FILE, path="/data/index.bin", faults=10, share=1.0)]),
                         NodeStats())
    assert v.cause is Cause.COLD_FILE_READS
    assert v.summary.startswith("cold reads of /data/index.bin through mmap by host process cart-cache")


def test_verdict_estimated_is_low_confidence():
    v = diagnose_process(_proc([Source(kind=SourceKind.FILE, faults=10, share=1.0, estimated=True)]), NodeStats())
    assert v.confidence == "low"


def test_report_verdict_without_processes():
    quiet = diagnose_report([], NodeStats(), 30)
    assert quiet.cause is Cause.NO_MAJOR_FAULTS
    busy = diagnose_report([], NodeStats(pgmajfault=18_000, pgmajfault_per_second=600), 30)
    assert busy.cause is Cause.UNKNOWN and "600 major faults/s" in busy.summary
    # under the noise floor (a tenth of the alert's 500/s) the node is quiet, not a mystery
    trickle = diagnose_report([], NodeStats(pgmajfault=600, pgmajfault_per_second=20), 30)
    assert trickle.cause is Cause.QUIET and "the node is quiet: 20 major faults/s" in trickle.summary


def _cold(comm: str, pid: int, faults: int, seconds: float = 10, path: str = "/usr/bin/sleep") -> ProcessReport:
    return ProcessReport(pid=pid, comm=comm, major_faults=faults, major_faults_per_second=faults / seconds,
                         sources=[Source(kind=SourceKind.FILE, path=path, faults=faults, share=1.0)])


def test_the_first_run_on_a_quiet_node_says_quiet():
    """Issue 17's first run: a few program loads on an idle node gave 'cold reads of /usr/bin/sleep ...
    confidence high, give the node more memory'. Under the noise floor: quiet, what was seen, no advice
    to add memory, and no process gets a cause."""
    from app.config import Settings

    assert Settings().investigation.noise_floor == 500 / 10  # tied to node-mixin's NodeMemoryMajorPagesFaults (> 500)
    node = NodeStats(pgmajfault=31, pgmajfault_per_second=3.1, mem_total_bytes=100, mem_available_bytes=95)
    procs = [_cold("sleep", 9165, 12), _cold("python", 7596, 9, path="/usr/lib/python3.11/lib-dynload/pyexpat.so")]
    for p in procs:
        p.verdict = diagnose_process(p, node)
        assert p.verdict.cause is Cause.QUIET, p.verdict.summary
        assert "under the noise floor of 50/s: no finding" in p.verdict.summary and not p.verdict.advice
    assert "/usr/bin/sleep" in procs[0].verdict.evidence[0]
    v = diagnose_report(procs, node, 10)
    assert v.cause is Cause.QUIET and v.confidence == "high"
    assert v.summary.startswith("the node is quiet: 3.1 major faults/s over the 10 s window, under the noise floor "
                                "of 50/s; the most: sleep (pid 9165): 12 major faults (1.2/s) on /usr/bin/sleep")
    assert not any("memory" in a for a in v.advice)
    assert any("pyexpat.so" in e for e in v.evidence)  # the top processes are still listed
    # a trickle at ~10/s from one process (its own pages dropped): still quiet, node and process
    trickle = _cold("pfi-workload", 4242, 100)
    trickle.verdict = diagnose_process(trickle, NodeStats(pgmajfault=104, pgmajfault_per_second=10.4))
    assert trickle.verdict.cause is Cause.QUIET
    assert diagnose_report([trickle], NodeStats(pgmajfault=104, pgmajfault_per_second=10.4), 10).cause is Cause.QUIET
    # the floor is a setting: 0 makes every fault count again (but a handful is never high confidence)
    counted = diagnose_process(_cold("sleep", 9165, 12), node, noise_floor=0)
    assert counted.cause is Cause.COLD_FILE_READS and counted.confidence == "medium"


def test_a_busy_node_with_no_process_above_the_floor_has_no_culprit():
    """The node is above the floor but every process is under it (many small or short-lived faulters):
    no process is blamed; the headline says the faults are spread, low confidence."""
    node = NodeStats(pgmajfault=6000, pgmajfault_per_second=600)
    procs = [_cold("sh", 11, 300), _cold("sleep", 12, 200)]
    for p in procs:
        p.verdict = diagnose_process(p, node)
        assert p.verdict.cause is Cause.QUIET and "come from elsewhere" in p.verdict.evidence[1]
    v = diagnose_report(procs, node, 10)
    assert v.cause is Cause.UNKNOWN and v.confidence == "low"
    assert "no process made 50/s or more (the most: sh (pid 11): 300 major faults (30/s)" in v.summary


def test_a_culprit_making_a_small_share_of_a_busy_node_is_low_confidence():
    """A process above the floor that makes 2% of the node's faults keeps its cause, but the headline
    says how little of the node it explains, at low confidence."""
    node = NodeStats(pgmajfault=100_000, pgmajfault_per_second=10_000)
    procs = [_cold("indexer", 21, 2000, path="/data/idx"), _cold("sh", 22, 300)]
    for p in procs:
        p.verdict = diagnose_process(p, node)
    assert procs[0].verdict.cause is Cause.COLD_FILE_READS and procs[0].verdict.confidence == "high"
    v = diagnose_report(procs, node, 10)
    assert v.cause is Cause.COLD_FILE_READS and v.confidence == "low"
    assert "(the top process causes 2% of the node's major faults)" in v.summary
    assert any("the rest is elsewhere" in e for e in v.evidence)


def test_estimate_swap_from_cgroup_refaults_although_read_bytes_counts_swap_ins():
    """The issue's case: read_bytes equals the faults (swap-ins are charged to the task), but the
    cgroup's workingset_refault_anon says they were swap-ins."""
    smaps = parse_smaps((FIX / "smaps-alertmanager-vmflags-trailing-space.txt").read_text())
    ev = SwapEvidence(seconds=3, process_majflt=1000, cgroup_path="/pfi", cgroup_pgmajfault=1000,
                      cgroup_refault_anon=990, cgroup_refault_file=0)
    sources = estimate_sources(1000, read_bytes=1000 * 4096, smaps=smaps, evidence=ev)
    assert sources[0].kind is SourceKind.SWAP and sources[0].estimated
    assert sum(s.faults for s in sources if s.kind is SourceKind.SWAP) == 990
    assert "workingset_refault_anon +990" in sources[0].evidence[0]
    # the same counters with file refaults instead: file
    ev = SwapEvidence(process_majflt=1000, cgroup_path="/pfi", cgroup_pgmajfault=1000,
                      cgroup_refault_anon=0, cgroup_refault_file=1200)
    sources = estimate_sources(1000, read_bytes=1000 * 4096, smaps=smaps, evidence=ev)
    assert [(s.kind, s.faults) for s in sources] == [(SourceKind.FILE, 1000)]


def test_estimate_swap_readahead_does_not_hide_the_file_side():
    """96 MiB anon + 96 MiB file at swappiness 200 (the limit zoo, procfs): swap readahead counts an anon
    refault for each page it brings back, so the group's anon refaults (273,949) outnumber its major faults
    (87,893). Read as "all swap-ins", the file side (53,215 file refaults) was left out of the limit (R 192
    MiB where 200 works). Split by the two kinds' refaults: 84% swap, 16% file, both named."""
    smaps = parse_smaps((FIX / "smaps-alertmanager-vmflags-trailing-space.txt").read_text())
    ev = SwapEvidence(seconds=14, process_majflt=87_893, cgroup_path="/pfi", cgroup_pgmajfault=87_893,
                      cgroup_refault_anon=273_949, cgroup_refault_file=53_215)
    sources = estimate_sources(87_893, read_bytes=None, smaps=smaps, evidence=ev)
    swap = sum(s.faults for s in sources if s.kind is SourceKind.SWAP)
    file = sum(s.faults for s in sources if s.kind in (SourceKind.FILE, SourceKind.CODE))
    assert swap + file == 87_893 and round(swap / 87_893, 2) == 0.84, sources
    assert "split by the refaults" in sources[0].evidence[0]
    # v2 with pswpin: pswpin counts the readahead pages too; the refaults split it the same way
    v2 = SwapEvidence(process_majflt=87_893, cgroup_path="/k", cgroup_pgmajfault=87_893, cgroup_pswpin=270_000,
                      cgroup_refault_anon=273_949, cgroup_refault_file=53_215)
    assert round(sum(s.faults for s in estimate_sources(87_893, 0, smaps, v2)
                     if s.kind is SourceKind.SWAP) / 87_893, 2) == 0.84


def test_estimate_v2_pswpin_first_then_node_then_vmswap():
    smaps = parse_smaps((FIX / "smaps-alertmanager-vmflags-trailing-space.txt").read_text())
    v2 = SwapEvidence(process_majflt=100, cgroup_path="/k", cgroup_pgmajfault=100, cgroup_pswpin=25,
                      cgroup_refault_anon=100)
    assert sum(s.faults for s in estimate_sources(100, 0, smaps, v2) if s.kind is SourceKind.SWAP) == 25
    node = SwapEvidence(process_majflt=900, node_pgmajfault=1000, node_pswpin=500)
    srcs = estimate_sources(900, 0, smaps, node)
    assert sum(s.faults for s in srcs if s.kind is SourceKind.SWAP) == 450 and "this process caused 90%" in \
        srcs[0].evidence[0]
    # not dominant: node counters are not used; VmSwap fell by 100 pages -> at least 100 swap-ins
    other = SwapEvidence(process_majflt=400, node_pgmajfault=1000, node_pswpin=1000,
                         vmswap_start=500 * 4096, vmswap_end=400 * 4096)
    srcs = estimate_sources(400, 0, smaps, other)
    assert sum(s.faults for s in srcs if s.kind is SourceKind.SWAP) == 100
    assert any("VmSwap fell" in e for e in srcs[0].evidence)


HOST_LIMITED = CgroupMemory(path="/batch/job-7", version=1, current_bytes=63 << 20, max_bytes=64 << 20,
                            usage_ratio=63 / 64, limit_path="/batch/job-7")


def test_verdict_host_process_names_its_cgroup_not_a_container():
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], HOST_LIMITED), NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT
    assert "its memory cgroup /batch/job-7 runs at 98% of its 64 MiB limit" in v.summary
    assert "container" not in v.summary and "container" not in v.advice[0]
    assert "memory.limit_in_bytes of cgroup /batch/job-7" in v.advice[0]


def test_verdict_pod_level_limit_and_memory_high():
    pod_mem = LIMITED.model_copy(update={"path": "/kubepods/x/c", "limit_path": "/kubepods/x"})
    v = diagnose_process(_proc([Source(kind=SourceKind.FILE, path="/d", faults=10, share=1.0)], pod_mem, POD),
                         NodeStats())
    assert "the pod runs at 98% of its 64 MiB pod-level memory limit" in v.summary
    assert "raise the pod's memory limit" in v.advice[0]
    high = CgroupMemory(path="/kubepods/x", version=2, current_bytes=50 << 20, max_bytes=None, high_bytes=52 << 20,
                        high_path="/kubepods/x")
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], high, POD), NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT and "the container runs at its 52 MiB memory.high" in v.summary


def test_psi_alone_never_blames_the_node():
    """One cgroup thrashing at its limit raises memory PSI and node swap-out; the node has 96% available."""
    node = NodeStats(mem_total_bytes=24 << 30, mem_available_bytes=23 << 30, pswpout_per_second=8000,
                     pgscan_kswapd_per_second=0, pgscan_direct_per_second=0, allocstall_per_second=0,
                     psi_memory=Pressure(some_avg10=7.0))
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], None, POD), node,
                         limit_problem="no cgroup v1 memory hierarchy at /x/memory")
    assert v.cause is Cause.SWAP and "node" not in v.summary
    assert "could not be read (no cgroup v1 memory hierarchy at /x/memory)" in v.summary
    assert v.confidence == "low"
    assert any("PSI" in e and "context only" in e for e in v.evidence)


def test_node_reclaim_blames_the_node():
    node = NodeStats(mem_total_bytes=100, mem_available_bytes=30, pswpout_per_second=500,
                     pgscan_kswapd_per_second=20000, pgscan_direct_per_second=0)
    v = diagnose_process(_proc([Source(kind=SourceKind.CODE, path="/bin/x", faults=10, share=1.0)]), node)
    assert v.cause is Cause.NODE_MEMORY_PRESSURE and "20,000 pages/s scanned" in v.summary


def test_estimate_counts_zswap_loads_as_swap_ins():
    """A swap-in served from zswap counts zswpin, not pswpin (mm/zswap.c zswap_load); both are major
    faults. With zswap on, pswpin stays 0 while the process swaps."""
    smaps = parse_smaps((FIX / "smaps-alertmanager-vmflags-trailing-space.txt").read_text())
    cg = SwapEvidence(process_majflt=100, cgroup_path="/k", cgroup_pgmajfault=100, cgroup_pswpin=0,
                      cgroup_zswpin=80, cgroup_refault_anon=80)
    srcs = estimate_sources(100, 0, smaps, cg)
    assert sum(s.faults for s in srcs if s.kind is SourceKind.SWAP) == 80
    assert "zswpin +80" in srcs[0].evidence[0]
    # the node's counters, from a real /proc/vmstat of this kernel (it has zswpin) and a later one
    from app.parsers.procfs import parse_vmstat

    first = parse_vmstat((FIX / "vmstat-captured-here.txt").read_text())
    assert "zswpin" in first
    node = SwapEvidence(process_majflt=900, node_pgmajfault=1000, node_pswpin=0, node_zswpin=500)
    srcs = estimate_sources(900, 0, smaps, node)
    assert sum(s.faults for s in srcs if s.kind is SourceKind.SWAP) == 450


# Measured on this machine (kernel 6.18, v1 memory group with a 64 MiB limit, tests/workloads
# scenario_faults reread of a 128 MiB file, one page a fault): total_workingset_refault_file stays 0
# for the first pass (~32k faults, the group at its limit from 2 s on) and rises 1:1 with the major
# faults from the second pass on. The first pass is cold reads, the second the limit's doing.
FIRST_PASS_REFAULTS, SECOND_PASS_REFAULTS = 0, 9_278  # the latter: one second of the second pass


def test_cold_reads_in_a_full_container_are_not_blamed_on_the_limit():
    first = _proc([Source(kind=SourceKind.FILE, path="/data/index.bin", faults=10, share=1.0)], LIMITED, POD)
    first.cgroup_file_refaults = FIRST_PASS_REFAULTS
    v = diagnose_process(first, NodeStats())
    assert v.cause is Cause.COLD_FILE_READS
    assert v.summary.startswith("cold reads of /data/index.bin through mmap by pod shop/cart-cache-7d9f")
    assert "the container runs at 98% of its 64 MiB memory limit" in v.summary
    assert any("workingset_refault_file) rose by only 0" in e for e in v.evidence)
    assert any("raising the limit helps only if" in a for a in v.advice)
    # the same faults with the group's file refaults rising: the limit evicts what it reads again
    second = first.model_copy(update={"cgroup_file_refaults": SECOND_PASS_REFAULTS})
    v = diagnose_process(second, NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT and "re-reads /data/index.bin" in v.summary
    assert any("rose by 9,278 over the window" in e for e in v.evidence)
    # code: first reads of a program's text at a full limit are cold reads too
    code = _proc([Source(kind=SourceKind.CODE, path="/app/bin", faults=10, share=1.0)], LIMITED, POD)
    code.cgroup_file_refaults = 0
    assert diagnose_process(code, NodeStats()).summary.startswith("cold reads of its program code")


def test_limit_rule_without_the_refault_counter_says_so():
    old_kernel = LIMITED.model_copy(update={"workingset_refault_file": None})
    p = _proc([Source(kind=SourceKind.FILE, path="/d", faults=10, share=1.0)], old_kernel, POD)
    v = diagnose_process(p, NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT  # today's behaviour, and it says on what
    assert any("memory.stat has no workingset_refault_file" in e and "blamed because usage is at it" in e
               for e in v.evidence)
    counted = LIMITED.model_copy(update={"workingset_refault_file": 5})
    v = diagnose_process(_proc([Source(kind=SourceKind.FILE, path="/d", faults=10, share=1.0)], counted, POD),
                         NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT and any("not measured over the window" in e for e in v.evidence)

"""Address resolution, procfs-only estimation and the verdicts, on real captured maps files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.investigation.diagnose import diagnose_process, diagnose_report
from app.investigation.estimate import estimate_sources
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
    assert "98% of its 64 MiB limit" in v.summary
    assert any("raise the memory limit" in a for a in v.advice)


def test_verdict_swap_on_overcommitted_node():
    node = NodeStats(mem_total_bytes=100, mem_available_bytes=3, pswpout_per_second=900,
                     psi_memory=Pressure(some_avg10=22.0))
    v = diagnose_process(_proc([Source(kind=SourceKind.SWAP, faults=10, share=1.0)], None, POD, rate=8000), node)
    assert v.cause is Cause.NODE_MEMORY_PRESSURE
    assert "swapped in at 8,000 pages/s" in v.summary and "overcommitted" in v.summary
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
    busy = diagnose_report([], NodeStats(pgmajfault=600, pgmajfault_per_second=20), 30)
    assert busy.cause is Cause.UNKNOWN and "20 major faults/s" in busy.summary

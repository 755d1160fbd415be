"""zram or disk swap (issue 27): /proc/swaps and zram's mm_stat parsed from real captures, which swap a
node's swap-ins come from and how sure, the report's swap sources and verdict on real zram swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.investigation import swapdev
from app.investigation.engine import investigate
from app.models import Cause, NodeStats, ProcessReport, Source, SourceKind, Verdict
from app.parsers.swaps import parse_mm_stat, parse_swaps, swap_backing
from tests.service_support import require_tracers
from tests.workloads import WorkloadProcess, swap_workload, zram_unavailable_reason

FIX = Path(__file__).parent / "fixtures" / "swaps"


def _read(name: str) -> str:
    return (FIX / name).read_text()


def test_parse_real_swaps() -> None:
    (disk,) = parse_swaps(_read("disk-file.txt"))
    assert (disk.path, disk.type, disk.used_bytes, disk.priority, disk.zram) == (
        "/var/tmp/pfi-test-swap", "file", 131080 * 1024, -2, False)
    (z,) = parse_swaps(_read("zram-bottlerocket.txt"))
    assert (z.path, z.size_bytes, z.priority, z.zram) == ("/dev/zram1", 1048572 * 1024, 32767, True)
    assert parse_swaps(_read("zram-bottlerocket.txt").splitlines()[0]) == []  # no swap on: the header only
    # a path with a space, as the kernel escapes it
    (odd,) = parse_swaps("Filename Type Size Used Priority\n/var/my\\040swap file 100 4 -3\n")
    assert odd.path == "/var/my swap" and odd.used_bytes == 4096


def test_backing_all_zram_all_disk_none() -> None:
    z = swap_backing(parse_swaps(_read("zram-bottlerocket.txt")))
    assert z is not None and (z.kind, z.confidence) == ("zram", "high") and "all active swap is zram" in z.basis
    d = swap_backing(parse_swaps(_read("disk-file.txt")))
    assert d is not None and (d.kind, d.confidence) == ("disk", "high")
    assert swap_backing([]) is None


def test_backing_both_is_decided_by_priority_and_what_each_holds() -> None:
    devices = parse_swaps(_read("zram-and-disk.txt"))
    assert [d.path for d in devices] == ["/dev/zram1", "/var/tmp/pfi-test-swap"]  # highest priority first
    b = swap_backing(devices)
    # zram (priority 32767) is written first but holds 65,948 of 197,028 KiB used: a third of the swap-ins
    assert b is not None and b.kind == "zram+disk" and b.confidence == "medium"
    assert b.zram_share == pytest.approx(65948 / (65948 + 131080), abs=0.001)
    assert "priority order (/dev/zram1 is written first)" in b.basis and "zram holds 33%" in b.basis
    mostly = [devices[0].__class__("/dev/zram0", "partition", 1 << 30, 500 << 20, 100),
              devices[1].__class__("/swapfile", "file", 1 << 30, 10 << 20, -2)]
    m = swap_backing(mostly)
    assert m is not None and (m.kind, m.confidence) == ("zram", "medium")


def test_parse_real_mm_stat() -> None:
    st = parse_mm_stat(_read("zram-mm_stat.txt"))
    assert st is not None and (st.orig_bytes, st.compressed_bytes, st.ram_bytes) == (67010560, 441766, 819200)
    assert parse_mm_stat("") is None and parse_mm_stat("a b c") is None


def _swapping(kind: SourceKind = SourceKind.SWAP) -> ProcessReport:
    p = ProcessReport(pid=7, comm="w", major_faults=5000, major_faults_per_second=1000.0,
                      sources=[Source(kind=kind, faults=5000, share=1.0)])
    p.verdict = Verdict(summary="anonymous memory of w (pid 7) is swapped back in at 1,000 pages/s because x",
                        cause=Cause.CONTAINER_MEMORY_LIMIT, advice=["raise it"])
    return p


def test_apply_names_zram_in_sources_and_verdict() -> None:
    node = NodeStats(swap_backing="zram", swap_backing_basis="all active swap is zram: /dev/zram1",
                     zram_ram_bytes=800 << 20, zram_stored_bytes=3 << 30)
    p = _swapping()
    swapdev.apply([p], node)
    assert p.sources[0].swap_device == "zram"
    assert p.verdict is not None and "swapped back in from zram at 1,000" in p.verdict.summary
    assert any("800 MiB of node RAM hold 3,072 MiB" in e for e in p.verdict.evidence), p.verdict.evidence
    assert any("outside this container's memory limit" in a for a in p.verdict.advice)


def test_apply_on_disk_swap_names_disk_and_leaves_the_verdict() -> None:
    p = _swapping(SourceKind.SHMEM)
    before = p.verdict.model_copy(deep=True) if p.verdict else None
    swapdev.apply([p], NodeStats(swap_backing="disk", swap_backing_basis="no zram"))
    assert p.sources[0].swap_device == "disk" and p.verdict == before
    q = _swapping()
    swapdev.apply([q], NodeStats())  # no swap on: nothing to say
    assert q.sources[0].swap_device is None


@pytest.mark.root
@pytest.mark.workloads
def test_real_zram_swapins_are_reported_as_zram(root_required: None) -> None:
    """A 128 MiB swapper in a 64 MiB group, swapping on a zram device set up as BottleRocket does."""
    if (why := zram_unavailable_reason()) is not None:
        pytest.skip(why)
    require_tracers("perf-major")
    proc: WorkloadProcess
    with swap_workload(swap="zram") as proc:
        report = investigate(Settings(kubelet_url=None, apiserver_fallback=False), seconds=3.0, pids=[proc.pid])
        swaps = Path("/proc/swaps").read_text()
    top = report.processes[0]
    assert top.pid == proc.pid and top.sources[0].kind is SourceKind.SWAP, top.sources
    node = report.node_stats
    zram_dev = next(line.split()[0] for line in swaps.splitlines()[1:] if "zram" in line)
    assert zram_dev in node.swap_backing_basis
    if len(swaps.strip().splitlines()) == 2:  # only our zram device on: no doubt where swap-ins come from
        assert (node.swap_backing, node.swap_backing_confidence) == ("zram", "high")
    assert node.swap_backing in ("zram", "zram+disk") and top.sources[0].swap_device == node.swap_backing
    assert node.zram_ram_bytes and node.zram_stored_bytes and node.zram_stored_bytes > node.zram_ram_bytes
    assert top.verdict is not None and "from zram" in top.verdict.summary, top.verdict.summary
    assert any("outside this container's memory limit" in a for a in top.verdict.advice)


def test_parse_swaps_captured_in_the_vm_guest_and_with_none() -> None:
    """/proc/swaps captured in the VM tier's guest (Debian's 6.1 kernel, cgroup v2 only) with
    BottleRocket's swap: one 1 GiB zram device at the top priority, typed 'partition' like a disk and
    told as zram by its name; and this machine's with no swap on (the header only)."""
    devices = parse_swaps(_read("zram-bottlerocket-vm-guest.txt"))
    assert [(d.path, d.type, d.size_bytes, d.used_bytes, d.priority, d.zram) for d in devices] == [
        ("/dev/zram0", "partition", 1048572 * 1024, 66048 * 1024, 32767, True)]
    backing = swap_backing(devices)
    assert backing is not None and (backing.kind, backing.confidence) == ("zram", "high")
    assert parse_swaps(_read("none-captured-here.txt")) == [] and swap_backing([]) is None

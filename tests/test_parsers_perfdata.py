"""perf.data read natively, on a real capture (`perf record -e major-faults -c 1 -d` of the file
workload, perf 6.1 on kernel 6.18) and on the ways a file can be damaged."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.parsers.perf import FaultCounts
from app.parsers.perfdata import (
    MAX_BATCH,
    PerfDataError,
    iter_sample_batches,
    iter_samples,
    iter_timed_samples,
    read_header,
)

DATA = (Path(__file__).parent / "fixtures" / "tracers" / "perf-major-file-workload.data").read_bytes()
PID = 12340  # the workload when captured; its 8 MiB mapping:
START, END = 140127210831872, 140127219220480


def _samples(buf: bytes):
    info = read_header(buf)
    return info, list(iter_samples(buf, info))


def test_real_capture_every_sample_in_the_mapped_file():
    info, samples = _samples(DATA)
    assert len(samples) == 240  # what `perf script` prints for this file
    assert {pid for pid, _, _ in samples} == {PID}
    assert all(START <= addr < END for _, _, addr in samples)
    assert len({addr & ~0xFFF for _, _, addr in samples}) == 240  # MADV_RANDOM: one fault a page
    assert info.comms[PID] == "pfi-workload"
    assert info.lost == 0 and info.malformed == 0


def test_header_not_rewritten_reads_to_the_end():
    # perf killed before it rewrote the header leaves data size 0: read what is there.
    data = bytearray(DATA)
    struct.pack_into("<Q", data, 48, 0)
    _, samples = _samples(bytes(data))
    assert len(samples) == 240


def test_cut_mid_record_keeps_the_whole_records_before():
    info = read_header(DATA)
    cut = DATA[: info.data_offset + info.data_size // 2]
    _, samples = _samples(cut)
    assert 0 < len(samples) < 240


def test_zero_size_record_stops_instead_of_looping():
    info = read_header(DATA)
    data = bytearray(DATA)
    struct.pack_into("<IHH", data, info.data_offset, 9, 0, 0)
    info2, samples = _samples(bytes(data))
    assert samples == [] and info2.malformed == 1


@pytest.mark.parametrize("buf", [b"", b"PERFILE1" + bytes(200), b"\x00" * 300])
def test_not_perf_data(buf):
    with pytest.raises(PerfDataError):
        read_header(buf)


# --- columns (iter_sample_batches): what the live reader uses ------------------------------------------

TWO = (Path(__file__).parent / "fixtures" / "tracers" / "perf-major-two-workloads.data").read_bytes()
PID_A, PID_B = 25174, 25176  # the two file workloads of that capture (see SOURCES.md)


def _timed(buf: bytes):
    info = read_header(buf)
    return info, [(pid, when, addr) for pid, _tid, when, addr in iter_timed_samples(buf, info)]


def _columns(buf: bytes, max_batch: int = MAX_BATCH):
    info = read_header(buf)
    out = []
    for batch in iter_sample_batches(buf, info, max_batch=max_batch):
        assert len(batch.pids) == len(batch.addrs) <= max_batch
        times = batch.times if batch.times is not None else [None] * len(batch)
        out.extend(zip(batch.pids, times, batch.addrs, strict=True))
    return info, out


def test_two_workloads_capture_in_columns_as_perf_script_counts_them():
    info, samples = _columns(TWO)
    pids = [pid for pid, _, _ in samples]
    assert (pids.count(PID_A), pids.count(PID_B), len(pids)) == (834, 842, 1676)  # `perf script -F pid,comm`
    assert info.comms[PID_A] == "pfi-workload" and info.comms[PID_B] == "pfi b w"
    assert all(when is not None and when > 0 for _, when, _ in samples)
    assert info.lost == 0 and info.malformed == 0 and info.read_to == info.data_offset + info.data_size


@pytest.mark.parametrize("data", [DATA, TWO], ids=["one-workload", "two-workloads"])
@pytest.mark.parametrize("max_batch", [MAX_BATCH, 100, 7, 1])
def test_columns_are_the_samples_one_by_one(data, max_batch):
    """The same samples, in the same order, with the same comms, lost, malformed and read_to, whatever the
    batch size (runs of sample records split by MMAP2/COMM records and by the batch bound)."""
    want_info, want = _timed(data)
    got_info, got = _columns(data, max_batch)
    assert got == want
    assert (got_info.comms, got_info.lost, got_info.malformed, got_info.read_to) == (
        want_info.comms, want_info.lost, want_info.malformed, want_info.read_to)


def test_columns_of_a_file_cut_anywhere_stop_where_the_reader_does():
    """A file perf is still writing ends mid-record anywhere: both readers keep the same whole records
    and say the same place to go on from."""
    info = read_header(TWO)
    end = info.data_offset + info.data_size
    for cut in range(info.data_offset, end, 997):  # 997: not a multiple of any record size
        want_info, want = _timed(TWO[:cut])
        got_info, got = _columns(TWO[:cut], max_batch=500)
        assert got == want and got_info.read_to == want_info.read_to, cut


def test_columns_count_a_sample_too_short_for_its_type_as_malformed():
    # the first sample record of the run of 1,600 made too short to hold an address: the records after it
    # are still read, and the run is read in columns again after it
    info, want = _timed(TWO)
    off, seen = info.data_offset, 0
    while True:
        rtype, _misc, size = struct.unpack_from("<IHH", TWO, off)
        if rtype == 9:
            seen += 1
            if seen == 77:
                break
        off += size
    data = bytearray(TWO)
    struct.pack_into("<IHH", data, off, 9, 2, 16)  # 16 bytes: header + ip, no pid or address
    struct.pack_into("<IHH", data, off + 16, 68, 0, size - 16)  # the rest: a FINISHED_ROUND-typed filler
    got_info, got = _columns(bytes(data))
    assert got_info.malformed == 1
    assert got == want[:76] + want[77:]


def test_fault_counts_from_columns_equal_counts_from_samples():
    """FaultCounts.add_batch on the columns gives what add_sample on each sample gives: pages, totals,
    new pages per second, and the max_pages bound dropping the same samples; settled between batches
    and mixed with add_sample too."""
    _, samples = _timed(TWO)
    for max_pages in (262_144, 1_000, 10):
        want = FaultCounts(max_pages=max_pages)
        for pid, when, addr in samples:
            want.add_sample(pid, "", addr, when)
        for max_batch, settle_every in ((MAX_BATCH, 0), (50, 3), (1, 0)):
            got = FaultCounts(max_pages=max_pages)
            for i, batch in enumerate(iter_sample_batches(TWO, read_header(TWO), max_batch=max_batch)):
                got.add_batch(batch.pids, batch.addrs, batch.times)
                if settle_every and i % settle_every == 0:
                    got.settle()
            got.settle()
            for field in ("faults", "totals", "events", "dropped", "pages", "new_pages", "first_ns"):
                assert getattr(got, field) == getattr(want, field), (max_pages, max_batch, field)
            assert [list(p) for p in got.faults.values()] == [list(p) for p in want.faults.values()]  # order
        assert want.pages == min(max_pages, want.pages) and (max_pages > 1_000 or want.dropped > 0)
    mixed = FaultCounts(max_pages=10)
    half = len(samples) // 2
    mixed.add_batch([p for p, _, _ in samples[:half]], [a for _, _, a in samples[:half]], [t for _, t, _ in samples[:half]])
    for pid, when, addr in samples[half:]:
        mixed.add_sample(pid, "", addr, when)
    mixed.settle()
    assert (mixed.faults, mixed.dropped, mixed.new_pages) == (want.faults, want.dropped, want.new_pages)


def test_fault_counts_from_columns_date_each_page_by_its_first_fault():
    # a page faulted again later in the same batch is new in the second of its first fault only
    counts = FaultCounts()
    counts.add_batch([7, 7, 7, 7], [0x1000, 0x2000, 0x1FFF, 0x3000], [0, int(0.5e9), int(1.2e9), int(2.1e9)])
    counts.settle()
    assert counts.new_pages == {7: {0: 2, 2: 1}}
    assert counts.faults == {7: {0x1000: 2, 0x2000: 1, 0x3000: 1}} and counts.totals == {7: 4}

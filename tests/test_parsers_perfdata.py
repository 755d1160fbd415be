"""perf.data read natively, on a real capture (`perf record -e major-faults -c 1 -d` of the file
workload, perf 6.1 on kernel 6.18) and on the ways a file can be damaged."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.parsers.perfdata import PerfDataError, iter_samples, read_header

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

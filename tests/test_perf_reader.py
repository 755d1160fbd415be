"""perf-major's live reader (`_perf._Tail`) on a real capture written out in pieces, as perf writes it
while recording: the counts per process and page are those of the whole file read at once, and the
reader's thread runs below the workloads it watches (nice 10). No perf is run: the capture is
tests/fixtures/tracers/perf-major-two-workloads.data (see SOURCES.md)."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

from app.parsers.perf import FaultCounts
from app.parsers.perfdata import iter_timed_samples, read_header
from app.tracers import _perf

TWO = (Path(__file__).parent / "fixtures" / "tracers" / "perf-major-two-workloads.data").read_bytes()
PID_A, PID_B = 25174, 25176


def _whole(keep: set[int] | None = None) -> FaultCounts:
    counts = FaultCounts()
    info = read_header(TWO)
    for pid, _tid, when, addr in iter_timed_samples(TWO, info):
        if keep is None or pid in keep:
            counts.add_sample(pid, "", addr, when)
    return counts


def _recording(path: Path, upto: int) -> None:
    """What perf has on disk while it records: its header with data size 0 (rewritten at exit), and the
    records written so far, the last one perhaps cut short."""
    head = bytearray(TWO[: read_header(TWO).data_offset])
    struct.pack_into("<Q", head, 48, 0)
    path.write_bytes(bytes(head) + TWO[len(head) : upto])


def test_read_in_pieces_counts_what_the_whole_file_holds(tmp_path: Path) -> None:
    data = tmp_path / "perf.data"
    info = read_header(TWO)
    end = info.data_offset + info.data_size
    tail = _perf._Tail(str(data), FaultCounts(), None, lambda: True, threading.Event())
    for upto in (info.data_offset + 5_001, info.data_offset + 40_003, end - 13):  # each cut mid-record
        _recording(data, upto)
        tail.read()
        assert tail.off <= upto
    data.write_bytes(TWO)  # perf exited: the header says where the data ends
    tail.finish()
    result = _perf.TraceResult(backend="perf-major", exact=True)
    _perf._fill(result, tail.counts, time.monotonic())
    want = _whole()
    assert (result.totals[PID_A], result.totals[PID_B], result.events) == (834, 842, 1676)
    assert result.faults == want.faults and result.new_pages == want.new_pages and result.dropped == 0
    assert tail.rounds == 4


def test_bounded_reader_counts_only_the_samples_between_the_marks(tmp_path: Path) -> None:
    """The window's marks on the samples' clock (perf --clockid monotonic): a bounded reader reads
    nothing live before the start mark, and counts exactly the samples in [lo, hi), per process, with
    those outside counted apart (the faults perf saw between its enable and the start mark, and between
    the stop mark and its disable: majflt's marks do not cover them)."""
    data = tmp_path / "perf.data"
    info = read_header(TWO)
    samples = list(iter_timed_samples(TWO, info))
    times = sorted(when for _pid, _tid, when, _addr in samples)
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    tail = _perf._Tail(str(data), FaultCounts(), None, lambda: True, threading.Event())
    tail.bounded = True
    _recording(data, info.data_offset + 40_003)
    tail.read()
    assert tail.rounds == 0 and tail.counts.events == 0  # no start mark yet: nothing read live
    tail.lo_ns = lo
    tail.read()
    tail.hi_ns = hi
    data.write_bytes(TWO)
    tail.finish()
    want = FaultCounts()
    for pid, _tid, when, addr in samples:
        if lo <= when < hi:
            want.add_sample(pid, "", addr, when)
    result = _perf.TraceResult(backend="perf-major", exact=True)
    _perf._fill(result, tail.counts, time.monotonic())
    assert result.totals == want.totals and result.faults == want.faults
    assert sum(result.totals.values()) == sum(lo <= t < hi for t in times)
    assert tail.outside == len(samples) - sum(result.totals.values()) > 0


def test_read_keeps_only_the_processes_asked_for(tmp_path: Path) -> None:
    data = tmp_path / "perf.data"
    data.write_bytes(TWO)
    result = _perf.TraceResult(backend="perf-major", exact=True)
    req = _perf.TraceRequest(seconds=1.0)
    _perf._read_native(str(data), req, result, keep={PID_B})
    want = _whole({PID_B})
    assert result.totals == {PID_B: 842} and result.faults == want.faults
    assert result.comms == {PID_B: "pfi b w"}


def _nice(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19


def test_the_live_reader_runs_below_the_workload(tmp_path: Path) -> None:
    own = _nice(threading.get_native_id())
    data = tmp_path / "perf.data"
    data.write_bytes(TWO)
    pinged = threading.Event()

    def ping() -> bool:
        pinged.set()
        return True

    tail = _perf._Tail(str(data), FaultCounts(), None, ping, threading.Event())
    tail.start()
    try:
        assert pinged.wait(30), "the reader never pinged perf"
        assert tail._thread.native_id is not None
        assert _nice(tail._thread.native_id) >= _perf.TAIL_NICE == 10
    finally:
        tail.stop()
    assert _nice(threading.get_native_id()) == own  # the caller's thread (the final read) is left as it was
    tail.finish()  # what the window's end reads: the rest
    assert tail.counts.events == 1676

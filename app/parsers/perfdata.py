"""A reader for perf.data (the "PERFILE2" file `perf record` writes): sample pid, tid and address.

Why not `perf script`: perf 6.1 on newer kernels intermittently aborts the whole run on one sample
("failed to process type: 9 [Bad address]", exit 242), losing every event after it, sometimes
all of them. Reading the records ourselves skips the one bad record, counts it, and keeps the rest;
it also does no symbol resolution, which we never need.

Pure: works on a bytes-like buffer (the caller mmaps the file).

Layout (tools/perf/util/header.h, include/uapi/linux/perf_event.h), little-endian on x86-64/arm64:

    header   magic "PERFILE2" | size u64 | attr_size u64 | attrs {offset,size} | data {offset,size}
             | event_types {offset,size} | feature bitmap (256 bits)
    attrs    attr_size each: struct perf_event_attr (its own `size` field says how long) + ids {offset,size}
    data     records: {type u32, misc u16, size u16} + body
    SAMPLE   (type 9) fields in sample_type bit order: IDENTIFIER, IP, TID (pid u32, tid u32),
             TIME, ADDR, ... (only the leading ones are read here)
    COMM     (type 3) pid u32, tid u32, comm (NUL-terminated)
    LOST     (type 2) id u64, lost u64;   LOST_SAMPLES (type 13) lost u64
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mmap

    # What the reader takes: the file's bytes, or the tracer's read-only mmap of it (no copy).
    PerfBytes = bytes | memoryview | mmap.mmap

MAGIC = b"PERFILE2"
RECORD_LOST, RECORD_COMM, RECORD_SAMPLE, RECORD_LOST_SAMPLES = 2, 3, 9, 13

SAMPLE_IP = 1 << 0
SAMPLE_TID = 1 << 1
SAMPLE_TIME = 1 << 2
SAMPLE_ADDR = 1 << 3
SAMPLE_IDENTIFIER = 1 << 16

_HDR = struct.Struct("<8sQQQQQQQQ")
_REC = struct.Struct("<IHH")
_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")


class PerfDataError(ValueError):
    pass


@dataclass
class PerfData:
    sample_types: dict[int, int]  # event id -> sample_type (all events, when ids are not needed)
    default_sample_type: int
    data_offset: int
    data_size: int
    comms: dict[int, str] = field(default_factory=dict)
    lost: int = 0  # samples the kernel could not write (ring buffer full)
    malformed: int = 0  # sample records too short for their sample_type: skipped
    read_to: int = 0  # where iter_samples stopped: the first record it did not read (cut short), or the end


def read_header(buf: PerfBytes) -> PerfData:
    if len(buf) < _HDR.size:
        raise PerfDataError("perf.data shorter than its header")
    magic, _size, attr_size, attrs_off, attrs_size, data_off, data_size, _et_off, _et_size = _HDR.unpack_from(buf)
    if magic != MAGIC:
        raise PerfDataError(f"not a perf.data file (magic {bytes(magic)!r}; pipe mode is not supported)")
    if attr_size < 32 or attrs_size % attr_size:
        raise PerfDataError(f"odd attribute size {attr_size}")
    types: dict[int, int] = {}
    default = None
    for off in range(attrs_off, attrs_off + attrs_size, attr_size):
        (sample_type,) = _U64.unpack_from(buf, off + 24)  # after type u32, size u32, config u64, period u64
        if default is None:
            default = sample_type
        # the ids section follows the attr: which event ids carry this sample_type
        ids_off, ids_size = struct.unpack_from("<QQ", buf, off + attr_size - 16)
        for i in range(ids_off, min(ids_off + ids_size, len(buf)), 8):
            types[_U64.unpack_from(buf, i)[0]] = sample_type
    if default is None:
        raise PerfDataError("perf.data has no event attributes")
    if data_size == 0:  # perf was killed before it rewrote the header: read to the end
        data_size = len(buf) - data_off
    return PerfData(types, default, data_off, min(data_size, len(buf) - data_off))


def iter_samples(buf: PerfBytes, info: PerfData) -> Iterator[tuple[int, int, int]]:
    """(pid, tid, addr) of every sample record; COMM and LOST records update `info` on the way."""
    for pid, tid, _time, addr in iter_timed_samples(buf, info):
        yield pid, tid, addr


def _layout(sample_type: int) -> struct.Struct | None:
    """The fields a sample of this type starts with, after the identifier, read in one unpack: [ip,] pid,
    tid, [time,] addr (the order perf writes them); None without tid and addr."""
    if not (sample_type & SAMPLE_TID and sample_type & SAMPLE_ADDR):
        return None
    return struct.Struct("<" + ("8x" if sample_type & SAMPLE_IP else "") + "II"
                         + ("Q" if sample_type & SAMPLE_TIME else "") + "Q")


def iter_timed_samples(buf: PerfBytes, info: PerfData) -> Iterator[tuple[int, int, int | None, int]]:
    """(pid, tid, time in ns or None when not sampled, addr) of every sample record; COMM and LOST records
    update `info` on the way.

    Reads [data_offset, data_offset + data_size); a record cut short at the end (a file perf is still
    writing) is left for later: `info.read_to` is where to go on from."""
    sample_type = info.default_sample_type
    identifier = bool(sample_type & SAMPLE_IDENTIFIER)
    layouts: dict[int, struct.Struct | None] = {}
    off, end = info.data_offset, info.data_offset + info.data_size
    info.read_to = off
    while off + _REC.size <= end:
        rtype, _misc, size = _REC.unpack_from(buf, off)
        if size < _REC.size:  # a zero-size record would loop forever: the rest is unreadable
            info.malformed += 1
            info.read_to = end
            return
        body, nxt = off + _REC.size, off + size
        if nxt > end:
            return  # cut short (perf was killed mid-write, or is still writing)
        info.read_to = nxt  # before the yield: a caller that stops after this sample has read it
        if rtype == RECORD_SAMPLE:
            st = sample_type
            pos = body
            if identifier:
                st = info.sample_types.get(_U64.unpack_from(buf, pos)[0], sample_type)
                pos += 8
            layout = layouts.get(st)
            if layout is None:
                layout = layouts[st] = _layout(st)
            if layout is None or pos + layout.size > nxt:
                info.malformed += 1
            elif st & SAMPLE_TIME:
                pid, tid, when, addr = layout.unpack_from(buf, pos)
                yield pid, tid, when, addr
            else:
                pid, tid, addr = layout.unpack_from(buf, pos)
                yield pid, tid, None, addr
        elif rtype == RECORD_COMM and size >= _REC.size + 9:
            pid, _tid = _U32x2.unpack_from(buf, body)
            raw = bytes(buf[body + 8 : min(nxt, body + 8 + 16)])
            info.comms[pid] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif rtype == RECORD_LOST and size >= _REC.size + 16:
            info.lost += _U64.unpack_from(buf, body + 8)[0]
        elif rtype == RECORD_LOST_SAMPLES and size >= _REC.size + 8:
            info.lost += _U64.unpack_from(buf, body)[0]
        off = nxt


# --- columns: runs of sample records read at once ------------------------------------------------------

_READ = frozenset((RECORD_SAMPLE, RECORD_COMM, RECORD_LOST, RECORD_LOST_SAMPLES))  # the records read at all
MAX_BATCH = 65_536  # samples per batch: bounds the lists a batch holds (and how long a caller waits to stop)
_FIRST_LOOK = 256  # records checked for a run at first; doubled while the run goes on


@dataclass
class SampleBatch:
    """Samples in columns (file order): pid, address and time in ns (None: no sample of the batch has one;
    an entry None: that sample has none)."""

    pids: list[int]
    addrs: list[int]
    times: Sequence[int | None] | None

    def __len__(self) -> int:
        return len(self.pids)


def _run_length(view: memoryview, off: int, size: int, limit: int) -> int:
    """How many records from `off` on are sample records of `size` bytes (at most `limit`): the type
    byte and both size bytes of each record header, read with a stride of `size` and compared by
    lstrip in C (record types are < 256, so the type's upper bytes are 0 in every record)."""
    want_type, want_lo, want_hi = bytes([RECORD_SAMPLE]), bytes([size & 0xFF]), bytes([size >> 8])
    run, look = 0, _FIRST_LOOK
    while run < limit:
        n = min(look, limit - run)
        start = off + run * size
        stop = start + n * size
        k = max(len(bytes(view[start:stop:size]).lstrip(want_type)),
                len(bytes(view[start + 6:stop:size]).lstrip(want_lo)),
                len(bytes(view[start + 7:stop:size]).lstrip(want_hi)))
        run += n - k
        if k:
            return run
        look *= 2
    return run


def _offsets(sample_type: int) -> tuple[int, int | None, int] | None:
    """Byte offsets in a sample record (header included) of pid, time (None when not sampled) and addr;
    None without tid and addr."""
    if not (sample_type & SAMPLE_TID and sample_type & SAMPLE_ADDR):
        return None
    pos = _REC.size + 8 * bool(sample_type & SAMPLE_IDENTIFIER) + 8 * bool(sample_type & SAMPLE_IP)
    pid_at, pos = pos, pos + 8
    time_at = None
    if sample_type & SAMPLE_TIME:
        time_at, pos = pos, pos + 8
    return pid_at, time_at, pos


def iter_sample_batches(buf: PerfBytes, info: PerfData, max_batch: int = MAX_BATCH) -> Generator[SampleBatch, None, None]:
    """The samples of iter_timed_samples in columns, in the same order, about max_batch at a time (at
    most max_batch + one run): a run of sample records of one size (perf writes hundreds to thousands in
    a row between its COMM, MMAP and round records) is read by strided memoryview slices, with no Python
    object per sample but its numbers, and runs are gathered into one batch. COMM and LOST records
    update `info` as in iter_timed_samples; `info.read_to` is set before each batch is yielded: every
    record before it has been read, and its samples are in this batch or an earlier one."""
    sample_type = info.default_sample_type
    # One layout for every sample only when the samples carry no identifier, or every event has the
    # same sample_type; otherwise each record goes through iter_timed_samples' path.
    uniform = not sample_type & SAMPLE_IDENTIFIER or set(info.sample_types.values()) <= {sample_type}
    offsets = _offsets(sample_type)
    layouts: dict[int, struct.Struct | None] = {}
    pids: list[int] = []
    addrs: list[int] = []
    times: list[int | None] = []
    timed = False  # some sample of the batch has a time

    def batch() -> SampleBatch:
        nonlocal pids, addrs, times, timed
        out = SampleBatch(pids, addrs, times if timed else None)
        pids, addrs, times, timed = [], [], [], False
        return out

    with memoryview(buf) as whole, whole.cast("B") as view:
        off, end = info.data_offset, info.data_offset + info.data_size
        info.read_to = off
        while off + _REC.size <= end:
            if len(pids) >= max_batch:
                yield batch()
            rtype, _misc, size = _REC.unpack_from(view, off)
            if (rtype == RECORD_SAMPLE and uniform and offsets is not None and size % 8 == 0
                    and offsets[2] + 8 <= size and off + size <= end):
                n = _run_length(view, off, size, min(max(1, max_batch - len(pids)), (end - off) // size))
                pid_at, time_at, addr_at = offsets
                with view[off:off + n * size] as run, run.cast("I") as words, run.cast("Q") as quads:
                    step = size // 8
                    pids += words[pid_at // 4::step * 2].tolist()
                    addrs += quads[addr_at // 8::step].tolist()
                    if time_at is not None:
                        times += quads[time_at // 8::step].tolist()
                        timed = True
                    else:
                        times += [None] * n
                off = info.read_to = off + n * size
                continue
            if rtype not in _READ and _REC.size <= size and off + size <= end:
                off = info.read_to = off + size  # MMAP2, FORK, EXIT, rounds...: nothing to read (a busy node's
                continue                         # -d recording has an MMAP2 for every mmap on it)
            # Anything else, one record at a time, as iter_timed_samples reads it.
            nxt = _one_record(view, info, off, end, rtype, size, layouts)
            if nxt is None:
                break  # cut short (info.read_to stays at off), or unreadable from here (at end)
            if isinstance(nxt, tuple):
                nxt, pid, when, addr = nxt
                pids.append(pid)
                addrs.append(addr)
                times.append(when)
                timed = timed or when is not None
            off = info.read_to = nxt
        if pids:
            yield batch()


def _one_record(buf: memoryview, info: PerfData, off: int, end: int, rtype: int, size: int,
                layouts: dict[int, struct.Struct | None]) -> int | tuple[int, int, int | None, int] | None:
    """One record at `off` (header already read), as iter_timed_samples reads it: the next offset, with
    (pid, time, addr) when it is a readable sample; None when it is cut short (info.read_to unchanged)
    or a zero-size record makes the rest unreadable (info.read_to = end, counted malformed)."""
    if size < _REC.size:
        info.malformed += 1
        info.read_to = end
        return None
    body, nxt = off + _REC.size, off + size
    if nxt > end:
        return None
    if rtype == RECORD_SAMPLE:
        st = info.default_sample_type
        pos = body
        if st & SAMPLE_IDENTIFIER:
            st = info.sample_types.get(_U64.unpack_from(buf, pos)[0], st)
            pos += 8
        layout = layouts.get(st)
        if layout is None:
            layout = layouts[st] = _layout(st)
        if layout is None or pos + layout.size > nxt:
            info.malformed += 1
        elif st & SAMPLE_TIME:
            pid, _tid, when, addr = layout.unpack_from(buf, pos)
            return nxt, pid, when, addr
        else:
            pid, _tid, addr = layout.unpack_from(buf, pos)
            return nxt, pid, None, addr
    elif rtype == RECORD_COMM and size >= _REC.size + 9:
        pid, _tid = _U32x2.unpack_from(buf, body)
        raw = bytes(buf[body + 8 : min(nxt, body + 8 + 16)])
        info.comms[pid] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    elif rtype == RECORD_LOST and size >= _REC.size + 16:
        info.lost += _U64.unpack_from(buf, body + 8)[0]
    elif rtype == RECORD_LOST_SAMPLES and size >= _REC.size + 8:
        info.lost += _U64.unpack_from(buf, body)[0]
    return nxt

"""Row 3: raw output volume and the time to turn it into counts.

A real capture gives the format (and `perf script`'s speed, for comparison); perf-major's own perf.data
reader and the bpftrace parser are then timed on synthetic output of the size a 30 s window at 20,000
faults/s produces (600,000 events), built from the captured records with the addresses walking a 64 MiB
mapping, as a re-reading process makes them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from app.parsers import perfdata
from app.parsers.bpftrace import parse_json_lines
from app.parsers.perf import FaultCounts

from .common import log

EVENTS_30S = 600_000


def capture_perf_major(pid: int, seconds: float, workdir: Path) -> dict:
    """A real `perf record -e major-faults -c 1 -d -p PID` capture, scripted as our backend does."""
    d = Path(tempfile.mkdtemp(prefix="cap-", dir=workdir))
    data = d / "perf.data"
    try:
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "major-faults", "-c", "1", "-d", "-p", str(pid),
                                "-o", str(data), "--", "sleep", str(seconds)],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            rec.communicate(timeout=seconds + 30)
        finally:
            if rec.poll() is None:
                os.killpg(rec.pid, 9)
                rec.wait()
        t0 = time.perf_counter()
        out = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,comm,addr", "--show-lost-events"],
                             capture_output=True, check=False).stdout
        script_s = time.perf_counter() - t0
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        return {"data_bytes": data.stat().st_size, "text_bytes": len(out), "events": len(lines),
                "script_seconds": script_s, "lines": lines[:5000], "raw": data.read_bytes()}
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def synth_perf_data(real: bytes, n: int) -> bytes:
    """A perf.data with n sample records: the real capture's header and attributes, its first sample
    record repeated with the address walking a 64 MiB mapping (what perf-major reads natively)."""
    import struct

    info = perfdata.read_header(real)
    off, end = info.data_offset, info.data_offset + info.data_size
    prefix, template = bytearray(), None
    while off + 8 <= end:
        rtype, _misc, size = struct.unpack_from("<IHH", real, off)
        if size < 8:
            break
        if rtype == perfdata.RECORD_SAMPLE:
            template = bytearray(real[off:off + size])
            break
        prefix += real[off:off + size]  # COMM, MMAP...: keep what precedes the first sample
        off += size
    if template is None:
        return None
    st = info.default_sample_type
    addr_at = 8 + 8 * bool(st & perfdata.SAMPLE_IDENTIFIER) + 8 * bool(st & perfdata.SAMPLE_IP) + 8 + 8 * bool(st & perfdata.SAMPLE_TIME)
    base = struct.unpack_from("<Q", template, addr_at)[0] & ~0xFFFFFF
    body = bytearray(prefix)
    for i in range(n):
        struct.pack_into("<Q", template, addr_at, base + ((i % 16384) << 12))
        body += template
    head = bytearray(real[: info.data_offset])
    struct.pack_into("<Q", head, 48, len(body))  # the header's data size
    return bytes(head + body)


def time_perf_native(buf: bytes) -> tuple[float, int]:
    """Seconds for perf-major's own reading of a perf.data (app.tracers._perf._read_native's work)."""
    t0 = time.perf_counter()
    info = perfdata.read_header(buf)
    counts = FaultCounts()
    for batch in perfdata.iter_sample_batches(buf, info):  # in columns, as the live reader (_perf._Tail)
        counts.add_batch(batch.pids, batch.addrs, batch.times)
    counts.settle()
    return time.perf_counter() - t0, counts.events


def synth_bpftrace_lines(keys: int, events: int, pid: int = 7675) -> list[str]:
    """The bpftrace-major program's end-of-run dump (`bpftrace -f json`, format of
    app/tracers/programs/major_faults.bt) with `keys` distinct pages and `events` faults in all."""
    import json

    base = 0x7F0C2C000000
    per, extra = divmod(events, keys)
    faults = {f"{pid},{base + (i << 12)}": per + (1 if i < extra else 0) for i in range(keys)}
    return [
        json.dumps({"type": "attached_probes", "data": {"probes": 1}}),
        "",
        json.dumps({"type": "map", "data": {"@comm": {str(pid): "pfi-workload"}}}),
        "",
        json.dumps({"type": "map", "data": {"@faults": faults}}),
        "",
        json.dumps({"type": "map", "data": {"@total": {str(pid): events}}}),
    ]


def time_bpftrace_parser(lines: list[str]) -> float:
    t0 = time.perf_counter()
    got = parse_json_lines(lines)
    dt = time.perf_counter() - t0
    if got.events != sum(json_total(lines)):
        log(f"  bpftrace parser counted {got.events} events")
    return dt


def json_total(lines: list[str]) -> list[int]:
    import json

    for ln in lines:
        if '"@total"' in ln:
            return list(json.loads(ln)["data"]["@total"].values())
    return [0]

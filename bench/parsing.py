"""Row 3: raw output volume and the time to turn it into counts.

A real capture gives the format and `perf script`'s speed; the parser is then timed on synthetic
output of the size a 30 s window at 20,000 faults/s produces (600,000 events), built by repeating the
captured lines with the addresses walking a 64 MiB mapping, as a re-reading process makes them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from .common import log, try_import

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
                "script_seconds": script_s, "lines": lines[:5000]}
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


_ADDR = re.compile(r"([0-9a-fA-F]{6,})\s*$")


def synth_perf_lines(sample: list[str], n: int) -> list[str]:
    """n `perf script -F pid,comm,addr` lines in the captured format, addresses walking 64 MiB."""
    base_line = next((ln for ln in sample if _ADDR.search(ln) and "PERF_RECORD" not in ln), None)
    if base_line is None:
        base_line = "    pfi-workload  7675     7f0c2d6a9000"
    m = _ADDR.search(base_line)
    assert m
    head = base_line[: m.start(1)]
    base = int(m.group(1), 16) & ~0xFFFFFF
    pages = 16384
    return [f"{head}{base + ((i % pages) << 12):x}" for i in range(n)]


def time_perf_parser(lines: list[str]) -> float | None:
    parse_script = try_import("app.parsers.perf", "parse_script")
    if parse_script is None:
        return None
    t0 = time.perf_counter()
    counts = parse_script(lines)
    dt = time.perf_counter() - t0
    if counts.events != len(lines):
        log(f"  perf parser counted {counts.events} of {len(lines)} synthetic events")
    return dt


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


def time_bpftrace_parser(lines: list[str]) -> float | None:
    parse = try_import("app.parsers.bpftrace", "parse_json_lines")
    if parse is None:
        return None
    t0 = time.perf_counter()
    got = parse(lines)
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

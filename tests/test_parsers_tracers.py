"""The tracer output parsers on real captured output (tests/fixtures/tracers, see SOURCES.md), and
one case for each quirk they handle."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.parsers.bpftrace import is_ready, parse_json_lines
from app.parsers.perf import PerfLost, PerfSample, parse_line, parse_script

FX = Path(__file__).parent / "fixtures" / "tracers"


def lines(name: str) -> list[str]:
    return (FX / name).read_text().splitlines()


# --- perf script -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # comm right-aligned, addr without 0x (perf 6.1 -F pid,comm,addr)
        ("    pfi-workload 26220     7f091bcb7000", PerfSample(26220, "pfi-workload", 0x7F091BCB7000)),
        # comm with spaces, parentheses and a trailing number: the pid is the last integer before the payload
        ("       a b (c) 1 26213     7f681d19f000", PerfSample(26213, "a b (c) 1", 0x7F681D19F000)),
        # comm that is all digits
        ("             123  4567     7f681d19f000", PerfSample(4567, "123", 0x7F681D19F000)),
        # an address that happens to be all decimal digits
        ("        worker 3  7675         12345000", PerfSample(7675, "worker 3", 0x12345000)),
        # the ring buffer overran: PERF_RECORD_LOST with the number of samples lost
        ("    pfi-workload  8181 PERF_RECORD_LOST lost 8040", PerfLost(8181, 8040)),
        # a lost record system-wide has no task
        ("             :-1    -1 PERF_RECORD_LOST lost 5", PerfLost(-1, 5)),
        # the tracepoint's trace field (-F pid,comm,trace)
        (
            "       a b (c) 1 26213 address=0x7f681d202000 ip=0x558f36e4a2ff error_code=0x4",
            PerfSample(26213, "a b (c) 1", 0x7F681D202000),
        ),
        ("Warning:", None),
        ("", None),
    ],
)
def test_perf_line(line: str, expected: object) -> None:
    assert parse_line(line) == expected


def test_perf_major_two_processes_one_odd_comm() -> None:
    c = parse_script(lines("perf_major_script.txt"))
    assert c.events == 24 and c.dropped == 0 and c.unparsed == 0
    assert c.comms == {26213: "a b (c) 1", 26220: "pfi-workload"}
    assert sum(c.totals.values()) == 24
    # MADV_RANDOM: every sample is another page, and every address is page-aligned for a read of byte 0
    assert sum(len(p) for p in c.faults.values()) == 24
    assert all(page & 0xFFF == 0 for p in c.faults.values() for page in p)


def test_perf_lost_samples_count_as_dropped() -> None:
    c = parse_script(lines("perf_major_lost.txt"))
    assert c.lost == 8040
    samples = len(lines("perf_major_lost.txt")) - 1
    assert c.events == samples + 8040
    assert c.dropped == 8040
    assert c.totals == {8181: samples}


def test_perf_tracepoint_lines() -> None:
    c = parse_script(lines("perf_tracepoint_script.txt"))
    assert c.events == 16 and c.unparsed == 0
    assert c.comms == {26213: "a b (c) 1"}


def test_perf_swap_faults() -> None:
    c = parse_script(lines("perf_major_swap.txt"))
    assert c.events == 16 and c.unparsed == 0
    assert len(c.totals) == 1 and c.comms[next(iter(c.totals))] == "pfi-workload"


def test_perf_page_bound_drops_the_rest_and_counts_it() -> None:
    c = parse_script(lines("perf_major_script.txt"), max_pages=10)
    assert c.pages == 10
    assert c.dropped == 14
    assert sum(c.totals.values()) == 24  # totals stay exact


# --- bpftrace -f json ------------------------------------------------------------------------------


def test_bpftrace_two_processes() -> None:
    r = parse_json_lines(lines("bpftrace_major.ndjson"))
    assert r.attached_probes == 2 and r.ready
    assert r.comms == {26213: "a b (c) 1", 26220: "pfi-workload"}
    assert r.totals == {26213: 12079, 26220: 12209}
    assert r.dropped == 0 and r.events == r.kept == 12079 + 12209
    # 1 MiB file each: 256 pages each, all faulted many times over
    assert {pid: len(pages) for pid, pages in r.faults.items()} == {26213: 256, 26220: 256}


def test_bpftrace_full_map_is_not_silent() -> None:
    """BPFTRACE_MAP_KEYS_MAX=100 on 256 pages: @faults keeps 100 keys, @total still counts all."""
    r = parse_json_lines(lines("bpftrace_major_mapfull.ndjson"))
    assert len(r.faults[26213]) == 100
    assert r.totals == {26213: 11191}
    assert r.dropped == 11191 - r.kept > 0


def test_bpftrace_swap() -> None:
    r = parse_json_lines(lines("bpftrace_major_swap.ndjson"))
    assert r.totals == {28877: 3759} and r.dropped == 0


@pytest.mark.parametrize(
    ("line", "effect"),
    [
        ('{"type": "lost_events", "data": {"events": 12}}', {"lost_events": 12, "dropped": 12}),
        ('{"type": "helper_error", "data": {"msg": "x"}}', {"errors": 1}),
        ("not json at all", {"unparsed": 1}),
        ('{"type": "map", "data": {"@addr": {}}}', {"events": 0}),  # helper map of the kprobe program
        ('{"type": "printf", "data": "pfi-ready\\n"}', {"ready": True}),
    ],
)
def test_bpftrace_quirks(line: str, effect: dict[str, int]) -> None:
    r = parse_json_lines(["", line, ""])
    for key, value in effect.items():
        got = getattr(r, key)
        assert (len(got) if isinstance(got, list) else got) == value


def test_ready_line_is_begin_not_attach() -> None:
    assert is_ready('{"type": "printf", "data": "pfi-ready\\n"}')
    assert not is_ready('{"type": "attached_probes", "data": {"probes": 2}}')

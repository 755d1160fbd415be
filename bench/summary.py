"""The README's "Latest run" table, made from a run's rows (bench/out/readme-table.md), and `--publish`:
that table into README.md and the full results into docs/bench.md, each between its markers.

One line per target (and a few figures worth a glance); a line whose rows did not run says "not run",
a row that missed its target says MISS. The date, machine and commit are the run's own.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

from .common import Results, Row, fmt

README_MARKERS = ("<!-- bench:latest-run -->", "<!-- /bench:latest-run -->")
DOCS_MARKERS = ("<!-- bench:latest-results -->", "<!-- /bench:latest-results -->")


def _find(res: Results, section: str, pattern: str) -> list[Row]:
    rx = re.compile(pattern)
    return [r for r in res.rows if r.section == section and rx.search(r.name)]


def _verdict(rows: list[Row]) -> str:
    st = [r.status for r in rows]
    if not rows:
        return "not run"
    if all(x.startswith("info") for x in st):  # figures with a target that is not theirs to meet
        below = sum("MISS" in x for x in st)
        return f"info ({below} below)" if below else "info"
    if "MISS" in st:
        return "MISS"
    if all(s == "PASS" for s in st if s not in ("info", "")) and "PASS" in st:
        return "PASS"
    if any(s == "n/a" for s in st):
        return "n/a"
    return ""


def _num(r: Row, digits: int = 3) -> str:
    return fmt(r.value, digits) if not isinstance(r.value, str) else r.value


Line = tuple[str, Callable[[Results], tuple[str, list[Row]]], str]


def _per_workload(section: str, who: str, what: Callable[[Row], str]) -> Callable[[Results], tuple[str, list[Row]]]:
    def get(res: Results) -> tuple[str, list[Row]]:
        rows = []
        parts = []
        for wl in ("file", "swap", "mixed"):
            found = _find(res, section, rf"^{wl}: {re.escape(who)}")
            if found:
                rows += found
                parts.append(f"{wl} {what(found[0])}")
        return ", ".join(parts), rows
    return get


def _one(section: str, pattern: str, show: Callable[[Row], str] | None = None) -> Callable[[Results], tuple[str, list[Row]]]:
    def get(res: Results) -> tuple[str, list[Row]]:
        rows = _find(res, section, pattern)
        if not rows:
            return "", []
        return (show or (lambda r: f"{_num(r)} {r.unit}".strip()))(rows[0]), rows[:1]
    return get


def _joined(parts: list[Callable[[Results], tuple[str, list[Row]]]], sep: str = " / ") -> Callable[[Results], tuple[str, list[Row]]]:
    def get(res: Results) -> tuple[str, list[Row]]:
        texts, rows = [], []
        for p in parts:
            t, r = p(res)
            texts.append(t or "-")
            rows += r
        return sep.join(texts), rows
    return get


def _ratio(r: Row) -> str:
    return fmt(r.ratio) if r.ratio is not None else _num(r)


def _ns(r: Row) -> str:
    return f"{r.value:+,.0f} ns" if isinstance(r.value, float) else _num(r)


def _during(r: Row) -> str:
    """A cost row: the ratio, the rates it compares, and where the investigation's CPU went."""
    if r.ratio is None:
        return _num(r)
    parts = r.extra.get("cpu_seconds") or {}
    total = sum(parts.values()) or 1e-9
    where = ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
    out = f"{fmt(r.ratio)} ({r.extra.get('backend', '')}: {_num(r)} vs {fmt(r.baseline)} faults/s; CPU added {total:.2f} s: {where})"
    if before := r.extra.get("before_ratios"):  # the same rounds investigated the way before (bench/cost.py KINDS)
        added = sum((r.extra.get("before_cpu_seconds") or {}).values())
        out += (f"; before ({r.extra.get('before_backend', '')}, {r.extra.get('before')}, same run): "
                f"{fmt(round(statistics.median(before), 3))}, CPU added {added:.2f} s")
    return out


def _with_base(r: Row) -> str:
    return f"{_num(r)} {r.unit} (before: {fmt(r.baseline)} {r.unit})"


LINES: list[Line] = [
    ("workload rate while traced by the default backend, vs untraced in the same run",
     lambda res: _per_workload("1 overhead", _default(res) + " (default)", _ratio)(res), ">= 0.97"),
    ("the same for the other exact backend",
     lambda res: _per_workload("1 overhead", _other(res), _ratio)(res), ">= 0.97"),
    ("CPU of the traced task per context switch: perf-major (per-CPU events) / per-task perf (before) / bpftrace-major",
     _joined([_one("1 cost", r"^context switch.*: perf-major", _ns), _one("1 cost", r"^context switch.*per-task", _ns),
              _one("1 cost", r"^context switch.*: bpftrace-major", _ns)]), ""),
    ("CPU of the faulting task per fault event: perf-major / bpftrace-major",
     _joined([_one("1 cost", r"^fault event.*: perf-major", _ns), _one("1 cost", r"^fault event.*: bpftrace-major", _ns)]),
     ""),
    ("events per true major fault, perf-major / bpftrace-major",
     _joined([_one("2 exactness", r"^mixed: perf-major"), _one("2 exactness", r"^mixed: bpftrace-major")]),
     "1.00 ± 0.05, 0 dropped"),
    ("the article's perf method, events per major fault (mostly-cached file, like its drop_caches loop)",
     _one("2 exactness", r"^mixed: article perf", lambda r: _num(r)), ""),
    ("the article's bpftrace, one line per fault: workload rate",
     _per_workload("1 overhead", "article bpftrace", _ratio), ""),
    ("600k events (30 s at 20k/s) read from perf.data / via `perf script`",
     _joined([_one("3 volume", r"read 600k events from perf.data"), _one("3 volume", r"through `perf script`")]),
     "<= 2 s"),
    ("real investigation (30 s window), node-wide, mixed workload: report ready after the window",
     _one("3 volume", r"^investigate\(\)", _with_base), "<= 1 s"),
    ("one ranking sample at 5,000 extra processes: ours / best of ps and psutil",
     _one("4 scan", r"^5,000 extra processes", lambda r: f"{_num(r)} / {fmt(r.baseline)} ms"), "faster"),
    ("per-second sample at 5,000 processes (incremental scan): mean tick per 1,000 processes",
     _one("4 scan", r"mean tick per 1,000", _with_base), "<= 15 ms"),
    ("the sampler's CPU over a window at 5,000 processes (incremental scan)",
     _one("4 scan", r"the sampler's CPU", _with_base), "<= 3 %"),
    ("alert POST -> stored report, minus the window", _one("5 alert", r"^alert POST"), "< 1 s"),
    ("service idle RSS / idle CPU",
     _joined([_one("6 footprint", r"^service RSS idle"), _one("6 footprint", r"^service CPU idle")]),
     "< 80 MiB / < 0.5 %"),
    ("flight recorder, 330 groups every 10 s: CPU / memory with the ring full",
     _joined([_one("8 recorder", r"^CPU, 330"), _one("8 recorder", r"^memory with the ring full")]),
     "< 0.5 % / < 10 MiB"),
    ("diagnosis accuracy: the scenario matrix", _one("9 diagnosis", r"^diagnosis accuracy",
                                                      lambda r: f"{_num(r)}/{fmt(r.baseline)} rows"), "N/N"),
    *((f"the whole default investigation, {what}: workload rate during it / untraced in the same run",
       _one("10 investigation cost", pattern, _during), ">= 0.97")
      for what, pattern in (("(a) sequential swapper, disk swap, page-cluster 3", r"^a: "),
                            ("(b) scattered swapper, disk swap", r"^b: "), ("(c) file re-reader", r"^c: "),
                            ("(d) sequential swapper on zram", r"^d: sequential"),
                            ("(d) scattered swapper on zram", r"^d: scattered"),
                            ("(e) 2-thread faulter on both cores", r"^e: "))),
]


def _default(res: Results) -> str:
    return str(res.meta.get("default_backend") or "perf-major")


def _other(res: Results) -> str:
    return "bpftrace-major" if _default(res) != "bpftrace-major" else "perf-major"


def readme_table(res: Results) -> str:
    m = res.meta
    head = (f"Latest run ({m.get('date')}, commit {m.get('commit')}, kernel {m.get('kernel')}, {m.get('nproc')} CPUs, "
            f"load average {m.get('loadavg', '?')} at the start; full table in "
            "[docs/bench.md](docs/bench.md#latest-results)):")
    out = [head, "", "| measurement | value | target | |", "|---|---|---|---|"]
    for label, get, target in LINES:
        text, rows = get(res)
        if not rows:
            out.append(f"| {label} | not run | {target} | not run |")
            continue
        out.append(f"| {label} | {text} | {target} | {_verdict(rows)} |")
    return "\n".join(out) + "\n"


def splice(path: Path, markers: tuple[str, str], text: str) -> bool:
    """Replace what is between the two marker lines of `path` with text; False when a marker is missing."""
    doc = path.read_text()
    a, b = markers
    i, j = doc.find(a), doc.find(b)
    if i < 0 or j < i:
        return False
    path.write_text(doc[: i + len(a)] + "\n" + text.rstrip("\n") + "\n" + doc[j:])
    return True

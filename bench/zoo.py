"""`sudo .venv/bin/python -m bench.zoo`: the limit zoo's table (issue 22; docs/bench.md, "The limit zoo").

For each row of tests/workloads/zoo.py: the workload at its limit, the untuned rate (the group's major
faults/s there), the recommendation R with the exact tracer (perf-major) and with procfs only, then, all in
the same run on the same workload: L* (the smallest limit, in 8 MiB steps, at which the group's major faults
fall below 1% of the untuned rate after one warm-up pass, by bisection), the faults/s at each R and at the
exact R - 10%, and at KRR's simple strategy (max usage x 1.15; usage sits at the limit: the limit x 1.15).

    --only SUBSTRING   rows whose name contains it
    --markdown         the table as markdown (for docs/bench.md)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.workloads.zoo import (
    FALL,
    MIB,
    ROWS,
    Zoo,
    ZooRow,
    find_lstar,
    no_zoo_reason,
    rate_at,
    recommend_for,
    restart_killed,
    window_for,
    zoo_workload,
)

from .common import log

KRR_FACTOR = 1.15


@dataclass
class Line:
    row: ZooRow
    untuned: float = 0.0
    lstar: int | None = None  # MiB; None: no limit up to the search's top removed the faults
    top: int = 0
    rec: dict[str, tuple[int, bool]] = field(default_factory=dict)  # tracer -> (MiB, at_least)
    at_rec: dict[str, float] = field(default_factory=dict)
    at_minus10: float | None = None
    krr: int = 0
    at_krr: float | None = None
    note: str = ""


OOM = -1.0  # a probe's rate when the OOM killer took the workload there: that limit does not work


def _probe(zoo: Zoo, limit_bytes: int, untuned: float, raised: bool) -> float:
    """The rate at a limit, or OOM when the workload was OOM-killed there (then it is started again, past its
    warm-up pass, back at the row's limit, for the next probe)."""
    # killed by the last probe's limit after its look: any OOM kill in the row's own group is a limit's
    restart_killed(zoo, 0, f"before the probe at {limit_bytes // MIB} MiB")
    kills = zoo.oom_kills()
    rate = rate_at(zoo, limit_bytes, untuned, raised)
    if zoo.alive():
        return rate
    restart_killed(zoo, kills, f"at {limit_bytes // MIB} MiB")
    return OOM


def run_row(row: ZooRow, tmp: Path) -> Line:
    line = Line(row)
    with zoo_workload(row, tmp) as zoo:
        zoo.start_ramp()  # a growing scan's rate is its ramp's (at_least: its L* says nothing)
        line.untuned = zoo.rate(1.0)
        window = window_for(row, line.untuned)
        for tracer in ("procfs", "perf-major"):
            rec, _ = recommend_for(zoo, tracer, window)
            if rec is not None:
                line.rec[tracer] = (rec.recommended_limit_bytes // MIB, rec.at_least)
            with contextlib.suppress(OSError):
                zoo.set_limit(row.limit_mb * MIB)
        if not zoo.alive():
            raise RuntimeError("a workload process died")
        line.krr = int(row.limit_mb * KRR_FACTOR)
        line.at_krr = _probe(zoo, line.krr * MIB, line.untuned, raised=True)
        with contextlib.suppress(OSError):
            zoo.set_limit(row.limit_mb * MIB)
        for tracer, (mib, _) in line.rec.items():
            line.at_rec[tracer] = _probe(zoo, mib * MIB, line.untuned, raised=True)
            if tracer == "perf-major":
                line.at_minus10 = _probe(zoo, int(mib * 0.9) * MIB, line.untuned, raised=False)
            with contextlib.suppress(OSError):
                zoo.set_limit(row.limit_mb * MIB)
            time.sleep(0.5)
        line.top = 2 * (row.size_mb + row.anon_mb) + 64
        line.lstar = find_lstar(zoo, line.untuned, line.top)
    return line


def _rate(v: float | None) -> str:
    return "-" if v is None else "OOM-killed" if v == OOM else f"{v:,.0f}"


def render(lines: list[Line], markdown: bool) -> str:
    head = ["case", "untuned/s", "L* MiB", "R procfs / exact MiB", "R/L* procfs / exact", "faults/s at R procfs / exact",
            "exact at R-10%", "KRR (limit x 1.15)", "ok"]
    rows = []
    for ln in lines:
        def rec(t: str, ln: Line = ln) -> str:
            if t not in ln.rec:
                return "-"
            mib, at_least = ln.rec[t]
            return f"{mib}{' at_least' if at_least else ''}"

        def ratio(t: str, ln: Line = ln) -> str:
            return f"{ln.rec[t][0] / ln.lstar:.2f}" if t in ln.rec and ln.lstar else "-"

        ok = []
        for t in ("procfs", "perf-major"):
            if t not in ln.rec:
                ok.append(f"{t}: none")
                continue
            mib, at_least = ln.rec[t]
            if at_least:
                ok.append(f"{t}: at_least")
            elif ln.lstar is None:
                ok.append(f"{t}: no L*")
            else:
                ok.append(f"{t}: {'yes' if ln.lstar <= mib <= 1.2 * ln.lstar + 16 else 'NO'}")
        rows.append([ln.row.name, _rate(ln.untuned), str(ln.lstar) if ln.lstar else f"> {ln.top}",
                     f"{rec('procfs')} / {rec('perf-major')}", f"{ratio('procfs')} / {ratio('perf-major')}",
                     f"{_rate(ln.at_rec.get('procfs'))} / {_rate(ln.at_rec.get('perf-major'))}", _rate(ln.at_minus10),
                     f"{ln.krr}: {_rate(ln.at_krr)}/s", ", ".join(ok)])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.zoo", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    lines = []
    load0 = os.getloadavg()
    for row in ROWS:
        if args.only and args.only not in row.name:
            continue
        if reason := no_zoo_reason(row):
            log(f"skip {row.name}: {reason}")
            continue
        log(f"row: {row.name}")
        with tempfile.TemporaryDirectory(prefix="pfi-zoo-") as tmp:
            try:
                lines.append(run_row(row, Path(tmp)))
            except (OSError, RuntimeError) as e:  # one row's trouble (EBUSY, a dead workload) is said, not fatal
                log(f"row failed: {row.name}: {e}")
                continue
        log(render(lines[-1:], False))
    load1 = os.getloadavg()
    print(render(lines, args.markdown))
    print(f"\nload average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; L*: faults below {FALL:.0%} of "
          "the untuned rate after one warm-up pass, 8 MiB steps", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

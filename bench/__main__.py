"""`sudo .venv/bin/python -m bench`: every benchmark of issue 5 in one run, ratios against baselines
measured in the same run. Prints a markdown table; writes bench/out/results.md, results.json and
cost-growth.png (when matplotlib is importable). See docs/bench.md.

    --quick        shorter windows (2 s) and fewer repetitions, for a smoke test
    --only 1,4     run only some sections (1-3 share their runs; 7 reuses 1, 3 and 4); "cost" is 10, the
                   whole investigation's cost to the workload it watches (bench/cost.py)
    --publish      also write the latest-run table into README.md and the full table into docs/bench.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from app.config import Settings
from app.investigation.engine import Edges, investigate
from app.tracers import _perf as perf_backend
from app.tracers.base import Tracer, TraceRequest, TraceResult
from app.tracers.registry import make_tracer, select
from tests import workloads

from . import cost, parsing, recorder, scan, service, summary, tracer_cost, tracing
from .common import MISSING, OUT, ROOT, Results, Row, elapsed, fmt, log, status
from .diagnosis import section_diagnosis
from .tracing import EXACT, METHODS, Run

TARGET_OVERHEAD = 0.97
TARGET_EXACT = (0.95, 1.05)


# --- helpers ------------------------------------------------------------------------------------------


def machine() -> dict:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "missing"

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "perf": version(["perf", "--version"]),
        "bpftrace": version(["bpftrace", "--version"]),
        "python": platform.python_version(),
        "commit": commit,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def default_backend() -> str | None:
    try:
        tracer, _reason, _skipped = select(Settings())
        return tracer.name
    except Exception as e:  # noqa: BLE001
        log(f"  auto selection failed: {e}")
        return None


def series(pid: int, methods: list[str], seconds: float, workdir: Path) -> tuple[list[Run], list[Run]]:
    """untraced, then per method: traced, untraced. Baseline of method i = mean of the untraced runs
    just before and after it (so slow drift cancels)."""
    base = [tracing.untraced(pid, seconds)]
    log(f"    untraced: {base[-1].rate:,.0f} faults/s")
    traced = []
    for m in methods:
        r = tracing.trace(m, pid, seconds, workdir)
        if r.error:
            log(f"    {m}: {r.error}")
        else:
            log(f"    {m}: {r.rate:,.0f} faults/s, {r.events} events for {r.majflt} major faults")
        traced.append(r)
        base.append(tracing.untraced(pid, seconds))
        log(f"    untraced: {base[-1].rate:,.0f} faults/s")
    return traced, base


def combine(runs: list[Run]) -> Run:
    """Several runs of one method as one (sums), for the exactness and volume rows."""
    if len(runs) == 1:
        return runs[0]
    c = Run(runs[0].method)
    for r in runs:
        c.seconds += r.seconds
        c.majflt += r.majflt
        c.minflt += r.minflt
        for attr in ("events", "dropped", "raw_bytes", "post_seconds", "parse_seconds"):
            v = getattr(r, attr)
            if v is not None:
                setattr(c, attr, (getattr(c, attr) or 0) + v)
        c.notes += r.notes
    return c


WORKLOADS = {
    "file": "tests/workloads file_fault_workload: every page re-read from disk (MADV_RANDOM, fadvise DONTNEED)",
    "swap": "tests/workloads swap_workload: 128 MiB touched in a 64 MiB memory cgroup",
    "mixed": "bench/mixed_faults.c: a mapped file re-read with 1 page in 100 dropped from the cache "
             "(major), the rest still cached (minor), as the article's file workload",
}


def section_tracing(res: Results, seconds: float, workdir: Path, default: str | None, reps: int) -> dict:
    raw: dict = {}
    # both exact backends run `reps` times (auto's order follows their costs; the default's ratio has the
    # target), spread out over the series
    methods = list(METHODS) + [m for m in METHODS if m in EXACT] * (reps - 1)
    for wl in ("file", "swap", "mixed"):
        log(f"[1-3] {wl} workload: {WORKLOADS[wl]}")
        traced = base = None
        for attempt in (1, 2):  # once more if something outside this run killed the workload
            try:
                if wl == "file":
                    cm = workloads.file_fault_workload(workdir / "file-faults.bin", 64)
                elif wl == "swap":
                    cm = workloads.swap_workload(size_mb=128, limit_mb=64, name="pfi-bench-swap")
                else:
                    cm = tracing.mixed_workload(workdir / "mixed-faults.bin", 64, 100)
                with cm as proc:
                    time.sleep(1.5)  # past the first pass: steady state
                    traced, base = series(proc.pid, methods, seconds, workdir)
                    died = proc.poll() is not None
            except Exception as e:  # noqa: BLE001
                res.failed("1 overhead", f"{wl} workload", e)
                traced = None
                break
            if not died:
                break
            log(f"  the {wl} workload was killed from outside during the series (attempt {attempt})")
            if attempt == 2:
                res.add(Row("1 overhead", f"{wl} workload", "killed", status="n/a",
                            note="the workload was killed from outside twice; rows below are partial"))
        if traced is None or base is None:
            continue
        raw[wl] = {"traced": traced, "base": base}
        drift = base[-1].rate / base[0].rate if base[0].rate else None
        res.add(Row("1 overhead", f"{wl}: untraced, last vs first", base[-1].rate, "faults/s", base[0].rate, drift,
                    "drift", "info", f"all {len(base)} untraced runs: {', '.join(f'{b.rate:,.0f}' for b in base)}"))
        for m in METHODS:
            idx = [i for i, r in enumerate(traced) if r.method == m]
            runs = [traced[i] for i in idx]
            label = m + (" (default)" if m == default else "")
            errs = [r.error for r in runs if r.error]
            if len(errs) < len(runs):  # use the runs that worked
                keep = [k for k, r in enumerate(runs) if not r.error]
                idx, runs = [idx[k] for k in keep], [runs[k] for k in keep]
                errs = []
            if errs:
                if errs[0] == "missing":
                    res.missing("1 overhead", f"{wl}: {label}", why="tracer backend not written yet")
                    res.missing("2 exactness", f"{wl}: {label}")
                else:
                    res.add(Row("1 overhead", f"{wl}: {label}", "n/a", status="n/a", note=errs[0][:160]))
                continue
            bases = [statistics.mean([base[i].rate, base[i + 1].rate]) for i in idx]
            ratios = [r.rate / b for r, b in zip(runs, bases, strict=True) if b]
            ratio = statistics.median(ratios) if ratios else None
            is_default = m == default
            res.add(Row("1 overhead", f"{wl}: {label}", statistics.mean(r.rate for r in runs), "faults/s",
                        statistics.mean(bases), ratio,
                        f">= {TARGET_OVERHEAD}" if m in EXACT else "",
                        status(ratio is not None and ratio >= TARGET_OVERHEAD) if is_default
                        else "info" if m not in EXACT else f"info ({status(ratio is not None and ratio >= TARGET_OVERHEAD)})",
                        f"{len(runs)} x {seconds:.0f} s traced" + (f"; median of ratios {', '.join(f'{x:.3f}' for x in ratios)}"
                                                              if len(ratios) > 1 else "")))
            r = combine(runs)
            pf = r.per_fault
            exact = m in EXACT
            ok = pf is not None and TARGET_EXACT[0] <= pf <= TARGET_EXACT[1] and not r.dropped
            res.add(Row("2 exactness", f"{wl}: {label}", pf, "events/fault", r.majflt, None,
                        "1.00 +- 0.05, 0 dropped" if exact else "",
                        status(ok) if exact else "info",
                        f"{r.events:,} events; {r.majflt:,} major + {r.minflt:,} minor faults; dropped {r.dropped or 0:,}"
                        + (f"; {'; '.join(dict.fromkeys(r.notes))}" if r.notes else "")))
            if r.majflt > 0 and r.raw_bytes is not None:
                res.add(Row("3 volume", f"{wl}: {m} raw bytes per 1M faults", r.raw_bytes / r.majflt * 1e6 / 2**20,
                            "MiB", status="info", note=f"{r.raw_bytes:,} bytes for {r.majflt:,} faults"))
            if r.majflt > 0 and r.post_seconds is not None:
                res.add(Row("3 volume", f"{wl}: {m} window end -> counts, per 1M faults",
                            r.post_seconds / r.majflt * 1e6, "s", status="info",
                            note=f"{r.post_seconds / len(runs):.2f} s for {r.majflt // len(runs):,} faults"
                            + (f" (parse {r.parse_seconds / len(runs):.2f} s)" if r.parse_seconds else "")
                            + ("; mostly fixed cost (exit, map dump): see row 7" if m == "bpftrace-major" else "")))
    return raw


def section_tracer_cost(res: Results, workdir: Path, rounds: int, seconds: float) -> None:
    try:
        out = tracer_cost.measure(rounds, seconds, workdir)
    except Exception as e:  # noqa: BLE001
        res.failed("1 cost", "tracer cost per context switch and per fault event", e)
        return
    names = {"switch": ("context switch of the traced task (bench/pingpong.c)", "voluntary switch", "switches/s"),
             "fault": ("fault event in the faulting task (bench/minor_faults.c)", "fault", "faults/s")}
    for what, r in out.items():
        title, unit, rate_unit = names[what]
        for m in tracer_cost.METHODS:
            x = r.get(m, {})
            if "error" in x:
                res.add(Row("1 cost", f"{title}: {m}", "n/a", status="n/a", note=x["error"]))
                continue
            res.add(Row("1 cost", f"{title}: {m}", x["extra_ns"], f"ns CPU per {unit}", r["untraced_ns"],
                        (r["untraced_ns"] + x["extra_ns"]) / r["untraced_ns"], "", "info",
                        f"median of {len(x['extra_all'])}: {', '.join(f'{v:+,.0f}' for v in x['extra_all'])}; "
                        f"untraced {r['untraced_rate']:,.0f} {rate_unit}, traced x{x['ratio']:.2f}; the tracer process: "
                        f"{x['tracer_ns']:,.0f} ns CPU per event (start-up included), peak RSS {x['tracer_rss_mib']:.0f} MiB"))


def section_parsing(res: Results, workdir: Path, growth: list[dict]) -> None:
    log("[3] parsing at 30 s x 20,000 faults/s = 600,000 events")
    cap = None
    try:
        with workloads.file_fault_workload(workdir / "file-faults.bin", 64) as proc:
            time.sleep(0.5)
            cap = parsing.capture_perf_major(proc.pid, 3.0, workdir)
        log(f"  captured {cap['events']:,} perf-major events; perf script {cap['script_seconds']:.2f} s")
    except Exception as e:  # noqa: BLE001
        log(f"  capture failed: {e}")
    n = parsing.EVENTS_30S
    synth = parsing.synth_perf_data(cap["raw"], n) if cap else None
    timed = parsing.time_perf_native(synth) if synth else None
    if timed is None:
        res.missing("3 volume", "30 s @ 20k/s, perf-major", "<= 2 s", "no perf capture (see the log)")
    else:
        native_s, counted = timed
        res.add(Row("3 volume", "30 s @ 20k/s, perf-major: read 600k events from perf.data", native_s, "s", None, None,
                    "<= 2 s", status(native_s <= 2.0 and counted == n),
                    f"{counted:,} events counted from a {len(synth) / 2**20:.0f} MiB perf.data built from a real capture"))
        script_s = cap["script_seconds"] / cap["events"] * n if cap["events"] else None
        if script_s:
            res.add(Row("3 volume", "the same through `perf script` (not used; extrapolated)", script_s, "s",
                        status="info", note=f"from {cap['events']:,} real events; perf-major no longer runs perf script"))
        res.add(Row("3 volume", "perf-major perf.data bytes per 1M faults", cap["data_bytes"] / cap["events"] * 1e6 / 2**20,
                    "MiB", status="info"))
    for keys in (16_384, 262_144):
        blines = parsing.synth_bpftrace_lines(keys, n)
        bs = parsing.time_bpftrace_parser(blines)
        res.add(Row("3 volume", f"30 s @ 20k/s, bpftrace-major: parse 600k events in {keys:,} pages", bs, "s", None, None,
                    "<= 2 s", status(bs <= 2.0), f"{sum(len(x) + 1 for x in blines) / 2**20:.1f} MiB of map output"))
    # growth with the event count
    for ev in (60_000, 200_000, 600_000):
        synth = parsing.synth_perf_data(cap["raw"], ev) if cap else None
        timed = parsing.time_perf_native(synth) if synth else None
        if timed is not None:
            growth.append({"what": "perf.data reader", "x": ev, "x_unit": "events", "y": timed[0], "y_unit": "s"})
        bs = parsing.time_bpftrace_parser(parsing.synth_bpftrace_lines(16_384, ev))
        growth.append({"what": "bpftrace parser (16k pages)", "x": ev, "x_unit": "events", "y": bs, "y_unit": "s"})
        if cap and cap["events"]:
            growth.append({"what": "perf script (extrapolated)", "x": ev, "x_unit": "events",
                           "y": cap["script_seconds"] / cap["events"] * ev, "y_unit": "s"})


TARGET_REPORT_AFTER_WINDOW = 1.0


class StopClock:
    """A tracer that notes when its window really ended (its on_stop marker: perf acked `disable`,
    bpftrace is about to get SIGINT), to time the report from there."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer, self.name, self.exact = tracer, tracer.name, tracer.exact
        self.stopped: float | None = None

    def available(self) -> tuple[bool, str]:
        return self.tracer.available()

    def run(self, request: TraceRequest) -> TraceResult:
        inner = request.on_stop

        def on_stop() -> None:
            self.stopped = time.monotonic()
            if inner:
                inner()

        request.on_stop = on_stop
        return self.tracer.run(request)


def section_engine(res: Results, workdir: Path, seconds: float, default: str | None) -> None:
    """investigate() node-wide (as the service runs it) on the mixed workload, from the tracer's end of
    the window to the returned report; perf-major with perf.data read while recording (now), and
    after the window only (before), in turns."""
    backend = default or "perf-major"
    log(f"[3] investigate() on a real {seconds:.0f} s window, node-wide, mixed workload; {backend}")
    try:
        with tracing.mixed_workload(workdir / "engine-mixed.bin", 64, 100) as proc:
            time.sleep(1.5)
            out = {}
            for how in ("read while recording", "read after the window"):
                clock = StopClock(make_tracer(backend, Settings()))
                marks: dict[str, float] = {}

                def progress(frac: float, msg: str, marks: dict[str, float] = marks) -> None:
                    if msg == "resolving":
                        marks["resolving"] = time.monotonic()

                saved = perf_backend.TAIL_EVERY
                if how == "read after the window":
                    perf_backend.TAIL_EVERY = 3600.0  # no rounds while recording: all of it is read at the end
                try:
                    m0 = workloads.majflt(proc.pid)
                    report = investigate(Settings(), seconds=seconds, edges=Edges(tracers=[clock]), progress=progress)
                    t_end = time.monotonic()
                    m1 = workloads.majflt(proc.pid)
                finally:
                    perf_backend.TAIL_EVERY = saved
                if clock.stopped is None:
                    raise RuntimeError(f"the tracer never ended its window: {report.tracer.errors[:2]}")
                out[how] = (t_end - clock.stopped, marks.get("resolving", t_end) - clock.stopped, report, m1 - m0)
                log(f"  {how}: report {out[how][0]:.3f} s after the window ({report.tracer.events:,} events)")
        (post, handover, report, faults), (base, base_handover, _, _) = out["read while recording"], out["read after the window"]
        tr = report.tracer
        top = report.processes[0] if report.processes else None
        traced_ok = tr.backend == backend and not tr.errors and top is not None and top.pid == proc.pid
        res.add(Row("3 volume", f"investigate() {seconds:.0f} s window, node-wide, mixed workload: report after the window",
                    post, "s", base, post / base if base else None, f"<= {TARGET_REPORT_AFTER_WINDOW:.0f} s",
                    status(post <= TARGET_REPORT_AFTER_WINDOW and traced_ok),
                    ("" if traced_ok else f"top process {top.pid if top else None} / errors {'; '.join(tr.errors)[:150]}; ")
                    + f"{tr.backend}, {tr.events:,} events on the node ({faults / seconds:,.0f} major faults/s of the "
                    f"mixed workload), {tr.output_bytes / 2**20:.1f} MiB perf.data; from the tracer's end of the window "
                    f"(its stop marker) to the returned report; tracer handover {handover:.2f} s, the rest "
                    f"(ranking, maps, cgroups, diagnosis) {post - handover:.2f} s; baseline: the same with perf.data read "
                    f"only after the window (handover {base_handover:.2f} s)"))
    except Exception as e:  # noqa: BLE001
        res.failed("3 volume", "investigate() post-window, real run", e, f"<= {TARGET_REPORT_AFTER_WINDOW:.0f} s")


def section_scan(res: Results, growth: list[dict], runs: int) -> None:
    log("[4] process scan")
    counts = [100, 1000, 5000]
    try:
        rows = scan.measure(counts, runs)
    except Exception as e:  # noqa: BLE001
        res.failed("4 scan", "process scan", e)
        return
    for r in rows:
        n = r["extra"]
        rivals = {k: r[k] for k in ("ps", "psutil") if k in r}
        best = min(rivals.values())
        if "ours" not in r:
            res.missing("4 scan", f"{n:,} extra processes: ProcFS().sample_all()", "faster than ps and psutil at 5,000"
                        if n == 5000 else "", "app.collectors.procfs")
        else:
            ok = r["ours"] < best
            res.add(Row("4 scan", f"{n:,} extra processes ({r['processes']:,} in all): ProcFS().sample_all()",
                        r["ours"] * 1000, "ms", best * 1000, r["ours"] / best,
                        "< ps and psutil" if n == 5000 else "", status(ok) if n == 5000 else "info",
                        f"ps {rivals.get('ps', 0) * 1000:.1f} ms, psutil {rivals.get('psutil', 0) * 1000:.1f} ms; "
                        f"median of {runs}"))
        for k in ("ours", "ps", "psutil"):
            if k in r:
                growth.append({"what": f"scan: {'ProcFS().sample_all()' if k == 'ours' else k}", "x": r["processes"],
                               "x_unit": "processes", "y": r[k] * 1000, "y_unit": "ms"})


TARGET_SCAN_MS_PER_1000 = 15.0
TARGET_SCAN_CORE_PCT = 3.0


def section_sampler(res: Results, workdir: Path, seconds: int) -> None:
    log(f"[4] the per-second sample over a {seconds} s window, 5,000 sleeping processes: incremental vs full scan")
    try:
        w = scan.sampler_window(5000, seconds, workdir)
    except Exception as e:  # noqa: BLE001
        res.failed("4 scan", "per-second sample, incremental vs full scan", e)
        return
    n, f, i = w["processes"], w["full"], w["incremental"]
    per = n / 1000
    same = [p for p, _ in i["ranked"]] == [p for p, _ in f["ranked"]]
    note = (f"{i['ticks']} ticks, {i['full_ticks']} of them full scans (every {Settings().investigation.scan_full_every_seconds} s, the window's end, and when the node's "
            f"pgmajfault rose more than the processes read explain); stat files read {i['stat_reads']:,} vs "
            f"{f['stat_reads']:,}; top 5 (of >= 100 faults) {'the same' if same else 'DIFFER: ' + str(i['ranked']) + ' vs ' + str(f['ranked'])}")
    ok = i["tick_mean_ms"] / per <= TARGET_SCAN_MS_PER_1000 and same
    res.add(Row("4 scan", f"per-second sample, {n:,} processes: incremental, mean tick per 1,000 processes",
                i["tick_mean_ms"] / per, "ms", f["tick_mean_ms"] / per, i["tick_mean_ms"] / f["tick_mean_ms"],
                f"<= {TARGET_SCAN_MS_PER_1000:.0f} ms", status(ok),
                note + "; baseline: the full scan every second (reads and parses every process)"))
    ok = i["window_cpu_pct"] <= TARGET_SCAN_CORE_PCT and same
    res.add(Row("4 scan", f"{seconds} s window at {n:,} processes: the sampler's CPU (first read, 2 tracer marks, ticks)",
                i["window_cpu_pct"], "% of a core", f["window_cpu_pct"], i["window_cpu_pct"] / f["window_cpu_pct"],
                f"<= {TARGET_SCAN_CORE_PCT:.0f} %", status(ok),
                f"incremental: first {i['first_ms']:.0f} ms, marks {i['mark_ms']:.0f} ms, ticks median "
                f"{i['incremental_tick_ms'] or 0:.1f} ms (full ones {i['full_tick_ms'] or 0:.0f} ms); full scan: "
                f"first {f['first_ms']:.0f} ms, marks {f['mark_ms']:.0f} ms, ticks median {f['tick_ms']:.0f} ms"))
    if i["full_tick_ms"]:
        res.add(Row("4 scan", "a full read within the incremental sampler, per 1,000 processes", i["full_tick_ms"] / per,
                    "ms", f["tick_ms"] / per, i["full_tick_ms"] / f["tick_ms"], "", "info",
                    "parses only the lines whose counters changed; baseline: the full scan's tick (parses every line)"))


def section_service(res: Results, workdir: Path, idle_seconds: float) -> None:
    log("[5-6] service on loopback")
    ok, why = service.available()
    if not ok:
        for name, tgt in (("alert POST -> stored report, minus the window", "< 1 s"),):
            res.missing("5 alert", name, tgt, why)
        for name, tgt in (("service RSS idle", "< 80 MiB"), ("service RSS during investigation", ""),
                          ("service CPU idle", "< 0.5 % of a core")):
            res.missing("6 footprint", name, tgt, why)
        return
    try:
        with contextlib.ExitStack() as stack:
            # something to find: the investigation is not empty
            stack.enter_context(workloads.file_fault_workload(workdir / "svc-faults.bin", 64))
            out = service.measure(workdir, alerts=3, idle_seconds=idle_seconds, window=1.0)
    except Exception as e:  # noqa: BLE001
        res.failed("5 alert", "alert POST -> stored report", e, "< 1 s")
        return
    lat = out["alert_to_report"]
    if lat:
        med = statistics.median(lat)
        res.add(Row("5 alert", "alert POST -> stored report, minus the window", med, "s", None, None, "< 1 s",
                    status(med < 1.0), f"median of {len(lat)}: {', '.join(f'{x:.2f}' for x in lat)}; "
                    f"window 1 s (PFI_INVESTIGATION_SECONDS=1), the reports' window_seconds {statistics.mean(out['windows']):.2f} s; "
                    + "; ".join(f"{r['backend']} {r['events']} events, top process {r['top_major_faults']} majflt"
                                + (f" ({r['errors'][0][:80]})" if r["errors"] else "") for r in out["reports"][:1])))
    else:
        res.add(Row("5 alert", "alert POST -> stored report, minus the window", "no report", target="< 1 s",
                    status="MISS", note="; ".join(out["errors"])[:200]))
    res.add(Row("6 footprint", "service RSS idle", out["rss_idle_mib"], "MiB", None, None, "< 80 MiB",
                status(out["rss_idle_mib"] < 80), f"{out['rss_idle_after_mib']:.1f} MiB after the idle period"))
    res.add(Row("6 footprint", "service RSS during investigations (peak)", out["rss_busy_mib"], "MiB",
                out["rss_idle_mib"], out["rss_busy_mib"] / out["rss_idle_mib"] if out["rss_idle_mib"] else None,
                "", "info", "the service's own process; the tracer child is not counted"))
    res.add(Row("6 footprint", f"service CPU idle ({idle_seconds:.0f} s)", out["cpu_idle_pct"], "% of a core", None, None,
                "< 0.5 %", status(out["cpu_idle_pct"] < 0.5)))


def section_growth_rate(res: Results, growth: list[dict], raw: dict, seconds: float, workdir: Path,
                        default: str | None) -> None:
    log("[7] overhead and volume against the fault rate (file workload, throttled)")
    methods = [m for m in (default or "perf-major", "bpftrace-major") if m]
    points: list[tuple[float, list[Run], list[Run]]] = []
    if "file" in raw:
        points.append((1.0, [r for r in raw["file"]["traced"] if r.method in methods], []))
        base = raw["file"]["base"]
        idx = [i for i, r in enumerate(raw["file"]["traced"]) if r.method in methods]
        points[-1] = (1.0, [raw["file"]["traced"][i] for i in idx],
                      [Run("untraced", seconds=1, majflt=int(statistics.mean([base[i].rate, base[i + 1].rate])))
                       for i in idx])
    try:
        with workloads.file_fault_workload(workdir / "file-faults.bin", 64) as proc:
            time.sleep(1.0)
            for duty in (0.1, 0.4):
                with workloads.throttled(proc.pid, duty):
                    time.sleep(0.3)
                    traced, base = series(proc.pid, methods, seconds, workdir)
                bases = [Run("untraced", seconds=1, majflt=int(statistics.mean([base[i].rate, base[i + 1].rate])))
                         for i in range(len(traced))]
                points.append((duty, traced, bases))
    except Exception as e:  # noqa: BLE001
        log(f"  throttled runs failed: {e}")
    for duty, traced, bases in points:
        for r, b in zip(traced, bases, strict=False):
            if r.error or not b.majflt:
                continue
            x = b.majflt  # the untraced rate
            growth.append({"what": f"overhead ratio: {r.method}", "x": x, "x_unit": "faults/s", "y": r.rate / x,
                           "y_unit": "ratio", "duty": duty})
            if r.majflt and r.post_seconds is not None:
                growth.append({"what": f"end of window -> counts: {r.method}", "x": r.majflt, "x_unit": "faults",
                               "y": r.post_seconds, "y_unit": "s", "duty": duty})
            if r.majflt and r.raw_bytes is not None:
                growth.append({"what": f"raw bytes: {r.method}", "x": r.majflt, "x_unit": "faults",
                               "y": r.raw_bytes / 2**20, "y_unit": "MiB", "duty": duty})


# --- output ---------------------------------------------------------------------------------------


def render(res: Results) -> str:
    m = res.meta
    head = (f"pagefault-inspector bench, {m.get('date')}: kernel {m.get('kernel')} {m.get('arch')}, "
            f"{m.get('nproc')} CPUs, {m.get('memory_gib')} GiB, {m.get('perf')}, {m.get('bpftrace')}, "
            f"commit {m.get('commit')}; load average {m.get('loadavg')} at the start, {m.get('loadavg_end')} at the end; "
            f"took {m.get('seconds', 0):.0f} s\n\n")
    out = [head, "| # | measurement | value | baseline | ratio | target | result | notes |",
           "|---|---|---|---|---|---|---|---|"]
    for r in res.rows:
        val = fmt(r.value) + (f" {r.unit}" if r.unit and r.value not in (None, MISSING) and not isinstance(r.value, str) else "")
        base = fmt(r.baseline)
        out.append(f"| {r.section} | {r.name} | {val} | {base} | {fmt(r.ratio)} | {r.target} | {r.status} | "
                   f"{r.note.replace('|', '/')} |")
    out.append("")
    if res.growth:
        out += ["", "Cost growth (row 7)", "", "| series | x | value |", "|---|---|---|"]
        for g in sorted(res.growth, key=lambda g: (g["what"], g["x"])):
            out.append(f"| {g['what']} | {fmt(g['x'])} {g['x_unit']} | {fmt(g['y'])} {g['y_unit']} |")
        out.append("")
    return "\n".join(out)


def plot(res: Results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if os.environ.get("PFI_BENCH_NO_INSTALL"):
            log("  matplotlib not installed: cost growth is in the markdown table only")
            return False
        log("  matplotlib missing: installing it into this venv for the PNG (PFI_BENCH_NO_INSTALL=1 skips)")
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True, timeout=180,
                           capture_output=True)
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as e:  # noqa: BLE001 - no network, no pip: the table is enough
            log(f"  could not install matplotlib ({type(e).__name__}): cost growth is in the markdown table only")
            return False
    titles = {"overhead": "row 1: traced / untraced rate vs fault rate", "raw": "row 3: raw bytes vs faults",
              "time": "row 3: seconds to counts vs events", "scan": "row 4: one ranking sample vs processes"}
    groups: dict[str, list[dict]] = {k: [] for k in titles}
    for g in res.growth:
        key = ("overhead" if g["what"].startswith("overhead") else "scan" if g["what"].startswith("scan")
               else "raw" if g["what"].startswith("raw") else "time")
        groups[key].append(g)
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return False
    cols = 2 if len(groups) > 1 else 1
    rows = (len(groups) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(groups):]:
        ax.set_visible(False)
    for ax, (key, pts) in zip(flat, groups.items(), strict=False):
        for what in sorted({p["what"] for p in pts}):
            ps = sorted((p for p in pts if p["what"] == what), key=lambda p: p["x"])
            ax.plot([p["x"] for p in ps], [p["y"] for p in ps], marker="o", label=what)
        if key == "time":
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(pts[0]["x_unit"])
        ax.set_ylabel(pts[0]["y_unit"])
        ax.set_title(titles[key], fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter windows, for a smoke test")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10",
                    help="sections to run, e.g. 1,4 (8: the flight recorder, 9: diagnosis accuracy, 10 or cost: the whole investigation's cost)")
    ap.add_argument("--cost-before", choices=("exact", "records", "none"), default="exact",
                    help="section 10: what each round also investigates with, in turns (before/after in one run): "
                    "'exact' every fault recorded (the default before sampling, default), 'records' every fault with "
                    "the record-by-record reader, 'none' only the default")
    ap.add_argument("--publish", action="store_true",
                    help="also write the results into README.md (the latest-run table) and docs/bench.md (the full table)")
    args = ap.parse_args()
    only = {10 if x.strip() == "cost" else int(x) for x in args.only.split(",") if x.strip()}
    if os.geteuid() != 0:
        print("bench: run as root (sudo .venv/bin/python -m bench): tracers, swap and cgroups need it")
        return 2
    for tool in ("perf", "bpftrace", "gcc", "ps"):
        if shutil.which(tool) is None:
            log(f"warning: {tool} not found; its rows will say so")
    seconds = 2.0 if args.quick else 4.0
    OUT.mkdir(parents=True, exist_ok=True)
    res = Results()
    res.meta = machine()
    default = default_backend()
    res.meta["default_backend"] = default
    log(f"machine: {res.meta}; default backend (auto): {default}")
    raw: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="pfi-bench-", dir="/var/tmp"))
    try:
        if only & {1, 2, 3, 7}:
            raw = section_tracing(res, seconds, workdir, default, 2 if args.quick else 4)
        if 1 in only:
            section_tracer_cost(res, workdir, 2 if args.quick else 4, 2.0)
        if only & {3, 7}:
            section_parsing(res, workdir, res.growth)
        if 3 in only:
            section_engine(res, workdir, 10.0 if args.quick else 30.0, default)
        if only & {4, 7}:
            section_scan(res, res.growth, 3 if args.quick else 5)
        if 4 in only:
            section_sampler(res, workdir, 10 if args.quick else 30)
        if only & {5, 6}:
            section_service(res, workdir, 5.0 if args.quick else 20.0)
        if 8 in only:
            recorder.section_recorder(res, workdir)
        if 7 in only:
            section_growth_rate(res, res.growth, raw, 2.0 if args.quick else 3.0, workdir, default)
        if 9 in only:
            section_diagnosis(res, workdir)
        if 10 in only:
            # 5 paired rounds: the rounds of one case spread +-3-6% on a quiet machine, as much as the cost sought
            cost.section_cost(res, 4.0 if args.quick else 10.0, 2 if args.quick else 5,
                              None if args.cost_before == "none" else args.cost_before)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res.meta["seconds"] = elapsed()
    res.meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if 7 in only and plot(res, OUT / "cost-growth.png"):
        res.meta["png"] = str(OUT / "cost-growth.png")
    text = render(res)
    (OUT / "results.md").write_text(text)
    table = summary.readme_table(res)
    (OUT / "readme-table.md").write_text(table)
    if args.publish:
        for path, markers, body in ((ROOT / "README.md", summary.README_MARKERS, table),
                                    (ROOT / "docs" / "bench.md", summary.DOCS_MARKERS, f"```\n{text}```\n")):
            if summary.splice(path, markers, body):
                log(f"wrote the results into {path.relative_to(ROOT)}")
            else:
                log(f"{path.relative_to(ROOT)} has no {markers[0]} ... {markers[1]}: not written")
    (OUT / "results.json").write_text(json.dumps(
        {"meta": res.meta, "rows": [r.as_dict() for r in res.rows], "growth": res.growth}, indent=2, default=str))
    print(text)
    log(f"done in {elapsed():.0f} s; wrote {OUT / 'results.md'}, results.json and readme-table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

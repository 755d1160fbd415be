"""Shared pieces of the benchmark: result rows, progress, timing, child-process hygiene."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
MISSING = "n/a (component missing)"

if str(ROOT) not in sys.path:  # tests.workloads and app are imported from the repo root
    sys.path.insert(0, str(ROOT))

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.monotonic() - _T0


@dataclass
class Row:
    section: str  # "1 overhead", "2 exactness", ...
    name: str
    value: float | str | None
    unit: str = ""
    baseline: float | str | None = None
    ratio: float | None = None
    target: str = ""
    status: str = ""  # PASS, MISS, info, n/a
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.growth: list[dict] = []  # row 7: {"what", "x", "x_unit", "y", "y_unit", "series"}
        self.meta: dict = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        v = fmt(row.value)
        log(f"  {row.section} | {row.name}: {v} {row.unit} {row.status} {row.note}".rstrip())
        return row

    def missing(self, section: str, name: str, target: str = "", why: str = "") -> Row:
        return self.add(Row(section, name, MISSING, target=target, status="n/a", note=why))

    def failed(self, section: str, name: str, err: BaseException, target: str = "") -> Row:
        return self.add(Row(section, name, f"error: {type(err).__name__}", target=target, status="n/a",
                            note=str(err)[:160].replace("|", "/").replace("\n", " ")))


def fmt(v: object, digits: int = 3) -> str:
    """Numbers with about `digits` significant digits and thousands separators."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 10 ** (digits - 1):
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.{digits}f}"
        return f"{v:.{digits}g}" if a < 0.001 else f"{v:.{digits}f}"
    return str(v)


def status(ok: bool | None) -> str:
    if ok is None:
        return "info"
    return "PASS" if ok else "MISS"


def median_time(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build(name: str) -> Path:
    """Compile bench/<name>.c into bench/out/bin once per source version."""
    src = HERE / f"{name}.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = OUT / "bin" / f"{name}-{digest}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True, capture_output=True)
        os.replace(tmp, out)
    return out


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 10) -> None:  # type: ignore[type-arg]
    """Kill a child started with start_new_session=True and everything in its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait)


@contextlib.contextmanager
def group(argv: list[str], **kw) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """A child in its own process group, killed (group and all) on the way out."""
    proc = subprocess.Popen(argv, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        kill_group(proc)
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def proc_cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

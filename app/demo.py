"""`pagefault-inspector demo`: a real finding on a machine where nothing faults, made and undone here.

As root it writes a 128 MiB file, starts a workload of its own that re-reads the file through mmap inside
a memory cgroup of its own limited to 64 MiB (v1, v2 or hybrid: wherever the memory controller is), lets
it fault past its first pass (the first pass is cold reads; from the second on it re-reads what the limit
evicted, so the cgroup's file refaults rise: what the limit verdict rests on), investigates it with the
normal engine and prints the whole report. Then it removes the process, the cgroup and the file, also on
Ctrl-C, SIGTERM or SIGHUP, and touches nothing it did not make.

Killed with SIGKILL, the demo leaves its cgroup and file behind (its workload dies with it:
PR_SET_PDEATHSIG); the next demo removes them, found by their names (pfi-demo-<pid>-<starttime>) once
that process is gone. The workload is this module run as `python -m app.demo PATH PARENT_PID`.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings
    from app.models import Report

FILE_MB = 128
LIMIT_MB = 64
WINDOW_SECONDS = 5.0  # long enough for steady rates, short enough for the whole demo to take ~15 s
WARMUP_TIMEOUT = 20.0  # the first pass takes ~3 s on a local disk (~11,000 faults/s)
# A slow machine (a TCG guest: ~1,200 faults/s, the first pass ~30 s) gets longer while the rate it
# shows after WARMUP_TIMEOUT finishes the pass within WARMUP_MAX; past that the demo says why it stops.
WARMUP_MAX = 120.0
# The window sees the whole file once at the warm-up's rate (with PASS_SPARE to spare), at least
# WINDOW_SECONDS, at most WINDOW_MAX: a 5 s window on a TCG guest's ~1,200 faults/s saw 56 of the file's
# 128 MiB and recommended 80 MiB, a limit under which the workload still faulted.
PASS_SPARE = 1.25
WINDOW_MAX = 60.0
READY_TIMEOUT = 15.0
DEFAULT_DIR = Path("/var/tmp")  # on disk (unlike /tmp on many hosts): the faults must be file reads
PREFIX = "pfi-demo-"
_LEFTOVER = re.compile(r"^pfi-demo-(\d+)-(\d+)(?:\.bin)?$")
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15
_TMPFS = {"tmpfs", "ramfs"}


class DemoError(Exception):
    """Why the demo cannot go on (one line for the user)."""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: stop where it is and undo."""


@dataclass
class Made:
    """What this demo made; undo() removes it, last made first."""

    file: Path | None = None
    cgroup: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    left: list[str] = field(default_factory=list)  # what could not be removed, and why


def _say(msg: str) -> None:
    sys.stderr.write(f"demo: {msg}\n")
    sys.stderr.flush()


def main(settings: Settings, seconds: float | None = None) -> int:
    """Run the demo; the exit code (0, 1 when it cannot run, 128+signal when interrupted)."""
    if os.geteuid() != 0:
        sys.stderr.write("pagefault-inspector demo: needs root: it makes a memory cgroup with a 64 MiB limit "
                         "and traces its workload's page faults (run it as root, e.g. sudo ./run.sh demo)\n")
        return 1
    if seconds is not None and not 0 < seconds <= 60:
        sys.stderr.write("pagefault-inspector demo: --seconds must be in (0, 60]\n")
        return 2
    got: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        got.append(signum)
        stop.set()  # every wait below checks it; cleanup runs with the handler still in place

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    t0 = time.monotonic()
    made = Made()
    report: Report | None = None
    code = 0
    try:
        report = _run(settings, seconds, stop, made)
    except Stopped:
        pass
    except (DemoError, OSError) as e:  # OSError: a read-only /sys/fs/cgroup, no /var/tmp, a full disk...
        sys.stderr.write(f"pagefault-inspector demo: {e}\n")
        code = 1
    finally:
        undo(made)
        for s, h in old.items():
            signal.signal(s, h)
    if report is not None and not got:
        from rich.console import Console

        from app.render_text import render

        render(report, Console())
    gone = [f"process {made.proc.pid}"] if made.proc else []
    gone += [f"cgroup {made.cgroup}"] if made.cgroup else []
    gone += [f"file {made.file}"] if made.file else []
    if gone:
        _say(f"removed {', '.join(gone)}" + (f"; could not remove: {'; '.join(made.left)}" if made.left else "")
             + f" ({time.monotonic() - t0:.1f} s in all)")
    if got:
        _say(f"stopped by {signal.Signals(got[0]).name}")
        return 128 + got[0]
    return 1 if made.left else code


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise Stopped


def _fstype(path: Path) -> str | None:
    """The filesystem type of the mount holding path (the longest mount point that prefixes it)."""
    best, kind = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def _run(settings: Settings, seconds: float | None, stop: threading.Event, made: Made) -> Report:
    """`seconds`: the window (None: pass_window() of the warm-up's rate)."""
    from app.collectors.cgroupmem import memory_hierarchy

    found = memory_hierarchy(settings.node.cgroup_root)
    if found is None:
        raise DemoError(f"no memory cgroup controller under {settings.node.cgroup_root} (v1 memory/ or a v2 tree "
                        "whose cgroup.controllers lists memory)")
    version, base = found
    directory = DEFAULT_DIR
    if _fstype(directory) in _TMPFS:
        raise DemoError(f"{directory} is in memory ({_fstype(directory)}): the demo needs a file on disk")
    for note in reap_leftovers(base, directory):
        _say(note)
    me = os.getpid()
    tag = f"{PREFIX}{me}-{_starttime(me)}"

    path = directory / f"{tag}.bin"
    _say(f"writing {path} ({FILE_MB} MiB)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    made.file = path
    try:
        block = os.urandom(1 << 20)
        for _ in range(FILE_MB):
            _check(stop)
            os.write(fd, block)
        os.fsync(fd)  # written back, so the page cache it filled (charged to this process) can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    _check(stop)

    group = base / tag
    group.mkdir()
    made.cgroup = group
    limit = "memory.limit_in_bytes" if version == 1 else "memory.max"
    if not (group / limit).exists():
        raise DemoError(f"the memory controller is not enabled for the children of {base} "
                        "(cgroup.subtree_control lacks memory); the demo does not change that")
    (group / limit).write_text(str(LIMIT_MB << 20))

    proc = subprocess.Popen([sys.executable, "-m", "app.demo", str(path), str(me)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)  # terminal Ctrl-C reaches only us
    made.proc = proc
    (group / "cgroup.procs").write_text(str(proc.pid))  # before it reads anything: its page cache is charged here
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    _ready(proc, stop)
    pages = (FILE_MB << 20) // mmap.PAGESIZE
    _say(f"process {proc.pid} (pfi-demo) re-reads it through mmap in memory cgroup {group} (v{version}), "
         f"limited to {LIMIT_MB} MiB")
    # Past the first pass (cold reads: nothing evicted is read again yet) into the second, where every
    # fault is a page the limit evicted: the cgroup's workingset_refault_file rises.
    needed = pages + pages // 8
    t0 = time.monotonic()
    said: list[str] = []

    def warm() -> bool:
        made = _majflt(proc.pid)
        if made >= needed:
            return True
        elapsed = time.monotonic() - t0
        why = warmup_gives_up(made, needed, elapsed, directory)
        if why is not None:
            raise DemoError(why)
        if elapsed >= WARMUP_TIMEOUT and not said:
            said.append(f"slow: {made / elapsed:,.0f} major faults/s; the first pass needs about "
                        f"{(needed - made) * elapsed / max(made, 1):.0f} s more")
            _say(said[0])
        return False

    _wait(warm, proc, stop, WARMUP_MAX + 1, lambda: f"the first pass did not end within {WARMUP_MAX:.0f} s")
    faults, took = _majflt(proc.pid), time.monotonic() - t0
    why = ""
    if seconds is None:
        seconds = pass_window(faults / max(took, 1e-3), pages)
        if seconds > WINDOW_SECONDS:
            why = f" (one pass over the file at the warm-up's {faults / max(took, 1e-3):,.0f} faults/s)"
    _say(f"first pass done ({faults:,} major faults); investigating for {seconds:g} s{why}")

    from app.investigation.engine import investigate
    from app.investigation.report import CLI_LEAD_UP, build_report

    report = investigate(settings, seconds=seconds, pids=[proc.pid], cancel=stop)
    _check(stop)
    return build_report(report, report_id=report.id, triggers=[], lead_up=CLI_LEAD_UP)


def pass_window(rate: float, pages: int) -> float:
    """The demo's window at `rate` major faults/s over a file of `pages` pages: long enough to see every page
    fault once (PASS_SPARE), so its recommendation covers the whole file, between WINDOW_SECONDS and
    WINDOW_MAX, in whole seconds."""
    if rate <= 0:
        return WINDOW_MAX
    return float(min(WINDOW_MAX, max(WINDOW_SECONDS, math.ceil(PASS_SPARE * pages / rate))))


def warmup_gives_up(made: int, needed: int, elapsed: float, directory: Path) -> str | None:
    """Why the demo stops waiting for its workload's first pass (`made` of `needed` major faults after
    `elapsed` s), or None to wait on: always up to WARMUP_TIMEOUT, then while the rate so far ends the
    pass within WARMUP_MAX."""
    if elapsed < WARMUP_TIMEOUT or made >= needed:
        return None
    rate = made / elapsed
    more = (needed - made) / rate if rate > 0 else float("inf")
    if elapsed + more <= WARMUP_MAX:
        return None
    return (f"the workload made only {made:,} major faults in {elapsed:.0f} s ({rate:,.0f}/s; its first pass "
            f"needs {needed:,}, about {more:,.0f} s more, past the demo's {WARMUP_MAX:.0f} s): is {directory} "
            "on a slow disk, or the machine this slow?")


def _starttime(pid: int) -> int:
    from app.tracers.leftovers import starttime

    return starttime(pid) or 0


def _majflt(pid: int) -> int:
    from app.parsers.procfs import parse_stat

    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text()).majflt
    except (OSError, ValueError):
        return 0


def _wait(done: Callable[[], bool], proc: subprocess.Popen[bytes], stop: threading.Event, timeout: float,
          why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        _check(stop)
        if proc.poll() is not None:
            raise DemoError(f"the workload exited early (status {proc.returncode})")
        if time.monotonic() > deadline:
            raise DemoError(why())
        stop.wait(0.1)


def _ready(proc: subprocess.Popen[bytes], stop: threading.Event) -> None:
    """Wait for the workload's 'ready' line (it has mapped the file and dropped its cached pages)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"\n" not in buf:
        _check(stop)
        if time.monotonic() > deadline:
            raise DemoError(f"the workload did not start within {READY_TIMEOUT:.0f} s")
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 256)
            if not chunk:
                raise DemoError(f"the workload exited early (status {proc.wait()})")
            buf += chunk
    if not buf.startswith(b"ready"):
        raise DemoError(f"the workload said {buf[:200]!r}")


def undo(made: Made) -> None:
    """Remove what the demo made: its process (its own session: nothing else is in it), then its cgroup
    (only removed when empty: the kernel refuses otherwise), then its file."""
    proc = made.proc
    if proc is not None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            made.left.append(f"process {proc.pid} did not exit after SIGKILL")
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    if made.cgroup is not None:
        from app.collectors.cgroupmem import rmdir_when_free

        try:
            rmdir_when_free(made.cgroup, tries=100)
            if made.cgroup.exists():
                made.left.append(f"cgroup {made.cgroup}: still busy after 5 s")
        except OSError as e:
            made.left.append(f"cgroup {made.cgroup}: {e.strerror or e}")
    if made.file is not None:
        try:
            made.file.unlink(missing_ok=True)
        except OSError as e:
            made.left.append(f"file {made.file}: {e.strerror or e}")


def reap_leftovers(base: Path, directory: Path) -> list[str]:
    """Remove what an earlier demo killed with SIGKILL left: pfi-demo-<pid>-<starttime> cgroups (only
    when empty) under base and regular files of that name in directory, once that process is gone."""
    from app.collectors.cgroupmem import rmdir_when_free
    from app.tracers.leftovers import alive

    notes = []
    for where in (base, directory):
        try:
            names = sorted(n for n in os.listdir(where) if n.startswith(PREFIX))[:100]
        except OSError:
            continue
        for name in names:
            m = _LEFTOVER.match(name)
            if m is None or alive(int(m[1]), int(m[2])):
                continue
            p = where / name
            with contextlib.suppress(OSError):
                if where == base and p.is_dir():
                    rmdir_when_free(p, tries=20)  # its workload may still be leaving it (killed with the demo)
                    if not p.exists():
                        notes.append(f"removed cgroup {p} left by an earlier demo")
                elif where == directory and os.path.isfile(p) and not os.path.islink(p):
                    p.unlink()
                    notes.append(f"removed file {p} left by an earlier demo")
    return notes


def workload(argv: list[str]) -> int:
    """The demo's workload: waits for 'go' on stdin (moved into its cgroup by then), maps the file with
    read-ahead off (one page read is one major fault), drops its cached pages, says 'ready', and reads
    one byte of every page, pass after pass, until killed. Dies with the demo (PR_SET_PDEATHSIG)."""
    path, parent = argv[0], int(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(b"pfi-demo"), 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the demo died before the death signal was armed
        return 1
    if not sys.stdin.readline():
        return 1
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    m.madvise(mmap.MADV_RANDOM)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    sys.stdout.write(f"ready pid={os.getpid()} pages={size // mmap.PAGESIZE}\n")
    sys.stdout.flush()
    page = mmap.PAGESIZE
    total = 0
    while True:
        for off in range(0, size, page):
            total += m[off]


if __name__ == "__main__":
    sys.exit(workload(sys.argv[1:]))

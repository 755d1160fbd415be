"""Tracer work folders that say who owns them, and removing what a killed investigation left behind.

Every tracer run works in a folder `$TMPDIR/pfi-<kind>-XXXXXX` (perf.data, fifos, the bpftrace
program) that holds an owner file, `pfi-owner.json`: the pid and start time (field 22 of
/proc/PID/stat, so a reused pid is not mistaken for the owner) of the process that made it, and of
every tracer started in it. Tracers run with the folder as their working directory.

A folder whose owner is gone belonged to a killed predecessor (`kill -9` of `investigate` or
`serve`). `reap()` stops the tracers of such folders and removes them: a tracer is stopped only if
the owner file names it (same pid and start time) or its working directory is that folder; never by
process name. Liveness and start times are always read in the real /proc of this pid namespace (where
the signals go), never in a captured tree (PFI_PROC_ROOT). Folders without an owner file are never touched, nor folders or owner files that are
not ours: $TMPDIR is shared, so a folder owned by another user, writable by group or other, a symlink,
or holding such an owner file may have been planted to name a process for us to kill.

    python -m app.tracers.leftovers [--dry-run] [--tmpdir DIR] [--json]

(what scripts/cleanup.sh calls; `serve` and `investigate` do the same at start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.parsers.procfs import ProcStat, parse_stat

log = logging.getLogger(__name__)

OWNER_FILE = "pfi-owner.json"
PREFIXES = ("pfi-perf-", "pfi-bt-")  # the folders the tracers make (probes included)
MAX_FOLDERS = 10_000  # bound on what one reap looks at
MAX_TRACERS_PER_FOLDER = 64
MAX_OWNER_BYTES = 1024 * 1024  # an owner file is a few hundred bytes
_write_lock = threading.Lock()
# The /proc of the pid namespace our signals go to. Not settings.node.proc_root: with a captured tree there,
# live owners would look dead and a pid number there may be another process here.
PROC = Path("/proc")


def _stat(pid: int, proc_root: Path = PROC) -> ProcStat | None:
    try:
        return parse_stat((proc_root / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def starttime(pid: int, proc_root: Path = PROC) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None when the process is gone."""
    st = _stat(pid, proc_root)
    return None if st is None else st.starttime


def alive(pid: int, start: int | None, proc_root: Path = PROC) -> bool:
    st = _stat(pid, proc_root)
    # A zombie is as good as gone: it holds nothing and cannot be stopped.
    if st is None or st.state in ("Z", "X"):
        return False
    return start is None or st.starttime == start


def make_workdir(prefix: str) -> str:
    """A fresh folder under $TMPDIR with the owner file written into it."""
    tmp = tempfile.mkdtemp(prefix=prefix)  # mode 0700, owned by this euid: what reap() insists on
    me = os.getpid()
    _write(Path(tmp), {"owner": {"pid": me, "starttime": starttime(me)}, "tracers": []})
    return tmp


def record_tracer(workdir: str, pid: int) -> None:
    """Add a tracer started in workdir to its owner file."""
    path = Path(workdir)
    with _write_lock:
        doc = read_owner(path)
        if doc is None:
            return
        tracers = doc.setdefault("tracers", [])
        if len(tracers) < MAX_TRACERS_PER_FOLDER:
            tracers.append({"pid": pid, "starttime": starttime(pid)})
        _write(path, doc)


def _write(folder: Path, doc: dict) -> None:  # type: ignore[type-arg]
    tmp = folder / f".{OWNER_FILE}.{os.getpid()}.{threading.get_ident()}"
    # 0600 whatever the umask: reap() ignores owner files that group or other could write.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(doc))
    os.replace(tmp, folder / OWNER_FILE)


def _parse_owner(text: str | bytes) -> dict | None:  # type: ignore[type-arg]
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("owner"), dict):
        return None
    return doc


def read_owner(folder: Path) -> dict | None:  # type: ignore[type-arg]
    try:
        return _parse_owner((folder / OWNER_FILE).read_text())
    except OSError:
        return None


def _private(st: os.stat_result, kind: int) -> bool:
    """Of that file type, owned by this euid, not writable by group or other."""
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def read_own_owner(folder: Path) -> dict | None:  # type: ignore[type-arg]
    """The owner file of folder, only if folder and file are both ours as make_workdir makes them
    (owned by this euid, not writable by group or other, no symlink on the way): only such a file
    may name processes for reap() to stop. None for anything else."""
    try:
        lst = os.lstat(folder)
        if not _private(lst, stat.S_IFDIR):
            return None
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        dst = os.fstat(dfd)
        if (dst.st_dev, dst.st_ino) != (lst.st_dev, lst.st_ino) or not _private(dst, stat.S_IFDIR):
            return None  # swapped after the lstat
        fd = os.open(OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            if not _private(os.fstat(f.fileno()), stat.S_IFREG):
                return None
            data = f.read(MAX_OWNER_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(dfd)
    return _parse_owner(data) if len(data) <= MAX_OWNER_BYTES else None


@dataclass
class Reaped:
    folders: list[str] = field(default_factory=list)  # removed
    tracers: list[int] = field(default_factory=list)  # stopped (pids)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"removed {len(self.folders)} leftover tracer folder(s), stopped {len(self.tracers)} tracer(s)"
                + (f"; {len(self.errors)} error(s): {'; '.join(self.errors[:3])}" if self.errors else ""))


def _users_of(folder: Path) -> list[tuple[int, int | None]]:
    """Processes whose working directory is folder (how a tracer started there is found even when
    the owner file could not name it)."""
    found = []
    target = str(folder)
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(PROC / name / "cwd")
        except OSError:
            continue
        if cwd == target or cwd == target + " (deleted)":
            pid = int(name)
            found.append((pid, starttime(pid)))
    return found


def _stop(pid: int, start: int | None, grace: float = 2.0) -> bool:
    """SIGTERM, then SIGKILL, to one process whose start time still matches. True if it was alive."""
    if not alive(pid, start):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not alive(pid, start):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid, start):
            time.sleep(0.05)
    return True


def reap(tmpdir: str | Path | None = None, dry_run: bool = False) -> Reaped:
    """Stop the tracers of, and remove, every work folder whose owner is gone (in the real /proc)."""
    base = Path(tmpdir or tempfile.gettempdir())
    out = Reaped()
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith(PREFIXES))[:MAX_FOLDERS]
    except OSError as e:
        out.errors.append(f"{base}: {e.strerror or e}")
        return out
    me = os.getpid()
    for name in names:
        folder = base / name
        doc = read_own_owner(folder)
        if doc is None:
            continue  # not made by this tool (or not by this user), or its owner file is not written yet
        owner = doc["owner"]
        try:
            owner_pid = int(owner.get("pid"))
        except (TypeError, ValueError):
            continue
        owner_start = owner.get("starttime")
        if alive(owner_pid, owner_start):  # by start time too: a restarted container reuses pids
            continue
        victims: dict[int, int | None] = {}
        for t in doc.get("tracers", [])[:MAX_TRACERS_PER_FOLDER]:
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                pid = int(t.get("pid"))
                if pid != me:
                    victims[pid] = t.get("starttime")
        for pid, start in _users_of(folder):
            if pid != me:
                victims.setdefault(pid, start)
        for pid, start in victims.items():
            if start is None or not alive(pid, start):
                continue  # a tracer never recorded with its start time may be a reused pid: leave it
            if dry_run or _stop(pid, start):
                out.tracers.append(pid)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                out.errors.append(f"could not remove {folder}")
                continue
        out.folders.append(str(folder))
    if out.folders or out.tracers:
        log.warning("leftovers of a killed investigation: %s", out.summary())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.tracers.leftovers", description=__doc__.splitlines()[0])
    ap.add_argument("--tmpdir", help="where the work folders are (default: $TMPDIR or /tmp)")
    ap.add_argument("--dry-run", action="store_true", help="only list what would be stopped and removed")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    res = reap(args.tmpdir, dry_run=args.dry_run)
    if args.json:
        sys.stdout.write(json.dumps({"folders": res.folders, "tracers": res.tracers, "errors": res.errors,
                                     "dry_run": args.dry_run}) + "\n")
    else:
        verb = "would remove" if args.dry_run else "removed"
        for f in res.folders:
            sys.stdout.write(f"{verb} {f}\n")
        for p in res.tracers:
            sys.stdout.write(f"{'would stop' if args.dry_run else 'stopped'} tracer pid {p}\n")
        for e in res.errors:
            sys.stderr.write(f"error: {e}\n")
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())

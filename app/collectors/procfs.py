"""Reads procfs (I/O at the edge); the parsing is in `app.parsers.procfs` and `app.parsers.cgroup`.

The root is a setting (`PFI_PROC_ROOT`, e.g. /host/proc) so tests point it at a captured tree. Every
per-process read returns None when the process is gone or not readable: processes exit at any time.
Why matters, as in psutil (NoSuchProcess vs AccessDenied): "gone" is normal, "not allowed" is a
privilege problem the operator must hear about, so denied reads are kept (`denied()`) for the report.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from app.models import Pressure
from app.parsers.cgroup import CgroupRef, parse_cgroup
from app.parsers.procfs import (
    MapEntry,
    ProcStat,
    ProcStatus,
    SmapsEntry,
    parse_cmdline,
    parse_io,
    parse_maps,
    parse_meminfo,
    parse_ns_link,
    parse_pressure,
    parse_smaps,
    parse_stat_bytes,
    parse_status,
    parse_vmstat,
)

__all__ = ["ProcFS"]

_T = TypeVar("_T")

# Errors that mean "this process is gone", not a bug. ESRCH (ProcessLookupError) comes from reads of
# a /proc/PID file whose process exited after open().
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)
_DENIED_ERRNOS = (errno.EACCES, errno.EPERM)
_STAT_READ = 4096  # a stat line is < 1 KiB even with 64-bit counters everywhere
DENIED_PIDS_KEPT = 16  # per file: which processes' reads were refused (the count is kept in full)


class ProcFS:
    """One procfs tree (/proc, or /host/proc from a pod)."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = Path(root)
        self._root_s = os.fspath(self.root)
        self._denied: dict[str, tuple[int, list[int]]] = {}  # file -> (count, first pids)
        self._denied_lock = threading.Lock()

    # --- why a read failed ---------------------------------------------------------------------

    def _refused(self, rel: str) -> None:
        """A read of `rel` ("PID/io", "PID/ns/mnt") failed with EACCES/EPERM: keep it unless the
        process is gone (then the refusal was its exit, as psutil checks before AccessDenied)."""
        pid_s, _, name = rel.partition("/")
        if not pid_s.isdigit() or not name:
            return
        if not os.path.exists(f"{self._root_s}/{pid_s}"):
            return  # gone, not denied
        with self._denied_lock:
            count, pids = self._denied.get(name, (0, []))
            if len(pids) < DENIED_PIDS_KEPT and int(pid_s) not in pids:
                pids = [*pids, int(pid_s)]
            self._denied[name] = (count + 1, pids)

    def denied(self) -> dict[str, tuple[int, list[int]]]:
        """Per-process files whose reads were refused (EACCES/EPERM) so far: file name (e.g. "io",
        "maps", "ns/mnt") -> (refused reads, the first DENIED_PIDS_KEPT pids)."""
        with self._denied_lock:
            return {k: (n, list(p)) for k, (n, p) in self._denied.items()}

    # --- per process -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        with os.scandir(self._root_s) as it:
            return sorted(int(e.name) for e in it if e.name.isdigit())

    def _read_bytes(self, rel: str) -> bytes | None:
        try:
            with open(f"{self._root_s}/{rel}", "rb") as f:
                return f.read()
        except _GONE:
            return None
        except OSError as exc:
            # EACCES/EPERM: not allowed (ptrace access mode checks on io, maps, smaps of others'
            # processes without CAP_SYS_PTRACE); kept for the report. Others (EIO reading a zombie's
            # file, EOPNOTSUPP for disabled PSI): nothing to say.
            if exc.errno in _DENIED_ERRNOS:
                self._refused(rel)
            return None

    def read_text(self, relpath: str) -> str | None:
        """A file under the root as text (None when it does not exist or cannot be read)."""
        data = self._read_bytes(relpath)
        return None if data is None else data.decode("utf-8", "replace")

    def stat(self, pid: int) -> ProcStat | None:
        data = self._read_bytes(f"{pid}/stat")
        if not data:
            return None
        try:
            return parse_stat_bytes(data)
        except ValueError:
            return None

    def listing(self) -> list[int]:
        """The pid of every process, unsorted (os.listdir: no DirEntry objects, the cheapest listing)."""
        try:
            names = os.listdir(self._root_s)
        except OSError:
            return []
        return [int(n) for n in names if n.isdigit()]

    def names(self) -> set[str]:
        """Every name in the root, pids and the rest ("self", "meminfo", ...): two listings are compared as
        sets of names (in C) to find the processes that appeared and vanished in between."""
        try:
            return set(os.listdir(self._root_s))
        except OSError:
            return set()

    def stat_bytes(self, pids: Iterable[int]) -> dict[int, bytes]:
        """Raw /proc/PID/stat of each pid that still exists, the sampler's hot path: opened relative to
        one descriptor of the root (no walk of the root's path per file), read once, not decoded."""
        out: dict[int, bytes] = {}
        o_rdonly = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        read, close, open_ = os.read, os.close, os.open
        try:
            root_fd = open_(self._root_s, o_rdonly | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return out
        try:
            for pid in pids:
                try:
                    fd = open_(f"{pid}/stat", o_rdonly, dir_fd=root_fd)
                except OSError:
                    continue  # gone (exited since it was listed)
                try:
                    data = read(fd, _STAT_READ)
                except OSError:
                    continue  # ESRCH: exited between open and read
                finally:
                    close(fd)
                if data:
                    out[pid] = data
        finally:
            close(root_fd)
        return out

    def sample_all(self) -> dict[int, ProcStat]:
        """/proc/PID/stat of every process (kernel threads included), parsed; the sampler's full scan
        reads `stat_bytes(listing())` and parses only what changed."""
        out: dict[int, ProcStat] = {}
        parse = parse_stat_bytes
        for data in self.stat_bytes(self.listing()).values():
            try:
                st = parse(data)
            except ValueError:
                continue
            out[st.pid] = st
        return out

    def _parsed(self, relpath: str, parse: Callable[[str], _T], *, empty_parses: bool) -> _T | None:
        """A file under the root through its parser; None when it cannot be read or does not parse
        (ValueError), and when it is empty unless `empty_parses` (a kernel thread's maps: no mappings)."""
        text = self.read_text(relpath)
        if text is None or (not text and not empty_parses):
            return None
        try:
            return parse(text)
        except ValueError:
            return None

    def maps(self, pid: int) -> list[MapEntry] | None:
        return self._parsed(f"{pid}/maps", parse_maps, empty_parses=True)

    def smaps(self, pid: int) -> list[SmapsEntry] | None:
        return self._parsed(f"{pid}/smaps", parse_smaps, empty_parses=True)

    def pagemap(self, pid: int, starts: list[int], pages: int) -> dict[int, bytes] | None:
        """`pages` entries of /proc/PID/pagemap from each virtual page number in `starts` (parsed by
        app.parsers.pagemap), one open for all; None when the process is gone or the read is refused."""
        rel = f"{pid}/pagemap"
        try:
            fd = os.open(f"{self._root_s}/{rel}", os.O_RDONLY)
        except _GONE:
            return None
        except OSError as exc:
            if exc.errno in _DENIED_ERRNOS:
                self._refused(rel)
            return None
        try:
            return {first: os.pread(fd, pages * 8, first * 8) for first in starts}
        except OSError:
            return None
        finally:
            os.close(fd)

    def cgroup(self, pid: int) -> CgroupRef | None:
        return self._parsed(f"{pid}/cgroup", parse_cgroup, empty_parses=False)

    def status(self, pid: int) -> ProcStatus | None:
        return self._parsed(f"{pid}/status", parse_status, empty_parses=False)

    def mnt_ns(self, pid: int | str) -> str | None:
        """The mount namespace a process is in, as its ns/mnt link names it ('mnt:[4026531832]');
        pid may be "self". None when gone or not allowed (reading another user's link needs ptrace
        access)."""
        rel = f"{pid}/ns/mnt"
        try:
            target = os.readlink(f"{self._root_s}/{rel}")
        except _GONE:
            return None
        except OSError as exc:
            if exc.errno in _DENIED_ERRNOS:
                self._refused(rel)
            return None
        try:
            parse_ns_link(target)
        except ValueError:
            return None
        return target

    def cmdline(self, pid: int) -> list[str] | None:
        data = self._read_bytes(f"{pid}/cmdline")
        return None if data is None else parse_cmdline(data)

    def io(self, pid: int) -> dict[str, int] | None:
        # Quirk: /proc/PID/io needs ptrace-read access (PTRACE_MODE_READ): EACCES for others'
        # processes without CAP_SYS_PTRACE, even as root inside a restricted container.
        text = self.read_text(f"{pid}/io")
        return None if text is None else parse_io(text)

    # --- the node ---------------------------------------------------------------------------

    def vmstat(self) -> dict[str, int]:
        text = self.read_text("vmstat")
        return parse_vmstat(text) if text else {}

    def meminfo(self) -> dict[str, int]:
        text = self.read_text("meminfo")
        return parse_meminfo(text) if text else {}

    def pressure(self, kind: str) -> Pressure | None:
        """PSI for 'memory', 'io' or 'cpu'; None when the kernel has no PSI (or psi=0 at boot)."""
        if kind not in ("memory", "io", "cpu", "irq"):
            raise ValueError(f"unknown PSI resource {kind!r}")
        # Quirk: with CONFIG_PSI_DEFAULT_DISABLED the files exist but reading fails with EOPNOTSUPP.
        text = self.read_text(f"pressure/{kind}")
        if not text:
            return None
        try:
            return parse_pressure(text)
        except ValueError:
            return None

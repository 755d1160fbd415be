"""Pure parsers for procfs text: /proc/PID/{stat,status,maps,smaps,smaps_rollup,cmdline,io,ns/*}, vmstat, meminfo, PSI.

No I/O here: every function takes the file's text (or bytes) and returns values. The collectors in
`app.collectors.procfs` read the files.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from app.models import Pressure

__all__ = [
    "MapEntry",
    "ProcStat",
    "ProcStatus",
    "SmapsEntry",
    "find_mapping",
    "parse_cmdline",
    "parse_io",
    "parse_maps",
    "parse_meminfo",
    "parse_ns_link",
    "parse_pressure",
    "parse_smaps",
    "parse_smaps_rollup",
    "parse_stat",
    "parse_stat_bytes",
    "parse_stat_counters",
    "parse_status",
    "parse_vmstat",
]


# --------------------------------------------------------------------------------------------------
# /proc/PID/stat
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    minflt: int
    majflt: int
    utime: int  # clock ticks
    stime: int  # clock ticks
    num_threads: int
    starttime: int  # clock ticks after boot
    rss_pages: int


# proc(5), fields numbered from 1:
#   (1) pid (2) comm (3) state (4) ppid (5) pgrp (6) session (7) tty_nr (8) tpgid (9) flags
#   (10) minflt (11) cminflt (12) majflt (13) cmajflt (14) utime (15) stime (16) cutime (17) cstime
#   (18) priority (19) nice (20) num_threads (21) itrealvalue (22) starttime (23) vsize (24) rss ...
# Indexes below are into the fields AFTER the closing ")" of comm: field N is rest[N - 3].
_STATE, _PPID, _MINFLT, _MAJFLT, _UTIME, _STIME, _NUM_THREADS, _STARTTIME, _RSS = 0, 1, 7, 9, 11, 12, 17, 19, 21
_MIN_FIELDS = _RSS + 1


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line."""
    # Quirk: comm is whatever the process named itself (up to 15 bytes) and may hold spaces and
    # parentheses, e.g. "((a b ) ( c d) )" or "(test(cmd).sh)": split at the first "(" and the
    # LAST ")" (as psutil does), never on whitespace.
    open_at = text.find("(")
    close_at = text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/PID/stat line (no '(comm)'): {text[:80]!r}")
    # Quirk: the kernel writes one line; anything after the first newline that follows comm (a
    # captured file with a 2nd line) is not part of it. A newline inside comm stays in comm.
    rest = text[close_at + 1 :].split("\n", 1)[0].split()
    if len(rest) < _MIN_FIELDS:
        raise ValueError(f"/proc/PID/stat line too short: {len(rest) + 2} fields, need {_MIN_FIELDS + 2}")
    try:
        # Quirk: some fields are signed (kernel threads show -1 tty/tpgid, and prio/nice fields of
        # -9223372036854775808); int() takes them. None of the fields we keep are unsigned > 2^63.
        return ProcStat(
            pid=int(text[:open_at]),
            comm=text[open_at + 1 : close_at],
            state=rest[_STATE],
            ppid=int(rest[_PPID]),
            minflt=int(rest[_MINFLT]),
            majflt=int(rest[_MAJFLT]),
            utime=int(rest[_UTIME]),
            stime=int(rest[_STIME]),
            num_threads=int(rest[_NUM_THREADS]),
            starttime=int(rest[_STARTTIME]),
            rss_pages=int(rest[_RSS]),
        )
    except ValueError as exc:
        raise ValueError(f"malformed /proc/PID/stat line: {exc}: {text[:80]!r}") from None


def parse_stat_bytes(data: bytes) -> ProcStat:
    """`parse_stat` over raw bytes, the hot path of sampling: comm is decoded with replacement."""
    open_at = data.find(b"(")
    close_at = data.rfind(b")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/PID/stat line (no '(comm)'): {data[:80]!r}")
    # Only the fields kept are split off (the other ~30 stay one piece): a third of the parse time.
    rest = data[close_at + 1 :].split(b"\n", 1)[0].split(None, _MIN_FIELDS)
    if len(rest) < _MIN_FIELDS:
        raise ValueError(f"/proc/PID/stat line too short: {len(rest) + 2} fields, need {_MIN_FIELDS + 2}")
    try:
        return ProcStat(
            int(data[:open_at]),
            # Quirk: comm is raw bytes from prctl(PR_SET_NAME)/exec; it need not be UTF-8.
            data[open_at + 1 : close_at].decode("utf-8", "replace"),
            rest[_STATE].decode("ascii", "replace"),
            int(rest[_PPID]),
            int(rest[_MINFLT]),
            int(rest[_MAJFLT]),
            int(rest[_UTIME]),
            int(rest[_STIME]),
            int(rest[_NUM_THREADS]),
            int(rest[_STARTTIME]),
            int(rest[_RSS]),
        )
    except ValueError as exc:
        raise ValueError(f"malformed /proc/PID/stat line: {exc}: {data[:80]!r}") from None


def parse_stat_counters(data: bytes) -> tuple[int, int, int]:
    """(starttime, minflt, majflt) of a raw /proc/PID/stat line: all a full scan needs to tell whether a
    process it already knows has changed (the whole line is parsed only then)."""
    close_at = data.rfind(b")")
    if close_at < 0:
        raise ValueError(f"not a /proc/PID/stat line (no '(comm)'): {data[:80]!r}")
    rest = data[close_at + 1 :].split(b"\n", 1)[0].split(None, _STARTTIME + 1)
    if len(rest) <= _STARTTIME:
        raise ValueError(f"/proc/PID/stat line too short: {len(rest) + 2} fields, need {_STARTTIME + 3}")
    try:
        return int(rest[_STARTTIME]), int(rest[_MINFLT]), int(rest[_MAJFLT])
    except ValueError as exc:
        raise ValueError(f"malformed /proc/PID/stat line: {exc}: {data[:80]!r}") from None


# --------------------------------------------------------------------------------------------------
# /proc/PID/maps
# --------------------------------------------------------------------------------------------------

_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class MapEntry:
    start: int
    end: int
    perms: str  # "r-xp": read, write, exec, p(rivate) or s(hared)
    offset: int
    dev: str  # "major:minor" in hex, as the kernel prints it
    inode: int
    path: str  # "" for anonymous memory; "[heap]", "[stack]", "[vdso]" ... for special mappings
    deleted: bool = False

    @property
    def is_exec(self) -> bool:
        return "x" in self.perms

    @property
    def is_shared(self) -> bool:
        return "s" in self.perms

    @property
    def is_anonymous(self) -> bool:
        p = self.path
        return p == "" or p in ("[heap]", "[stack]") or p.startswith("[anon")


# maps line:  start-end perms offset dev inode [padding] pathname
#   7fea6ec00000-7fea6ec11000 r-xp 00000000 00:10d 1558259      /tmp/libnetty.so (deleted)
# The padding before pathname is spaces up to a column that depends on the word size (none when
# the line is already wider, e.g. 32-bit addresses on old kernels); pathname may hold spaces.
def _parse_map_line(line: str) -> MapEntry:
    parts = line.split(None, 5)
    if len(parts) < 5:
        raise ValueError(f"malformed maps line: {line[:120]!r}")
    try:
        start_s, end_s = parts[0].split("-", 1)
        start, end = int(start_s, 16), int(end_s, 16)
        offset = int(parts[2], 16)
        inode = int(parts[4])
    except ValueError:
        raise ValueError(f"malformed maps line: {line[:120]!r}") from None
    perms = parts[1]
    if len(perms) != 4:
        raise ValueError(f"malformed maps permissions {perms!r}: {line[:120]!r}")
    # Quirk: str.split(None, 5) strips the padding before the path but keeps trailing spaces;
    # a leading space that is part of a file name is lost (rare, accepted).
    path = parts[5] if len(parts) == 6 else ""
    deleted = False
    # Quirk: an unlinked file (and every memfd) shows as "<path> (deleted)".
    if path.endswith(_DELETED):
        path = path[: -len(_DELETED)]
        deleted = True
    return MapEntry(start, end, perms, offset, parts[3], inode, path, deleted)


def parse_maps(text: str) -> list[MapEntry]:
    """All mappings of /proc/PID/maps, sorted by start address."""
    entries = [_parse_map_line(line) for line in text.splitlines() if line.strip()]
    entries.sort(key=lambda e: e.start)
    return entries


def find_mapping(entries: list[MapEntry], address: int) -> MapEntry | None:
    """The mapping holding `address` (entries sorted by start, as `parse_maps` returns them)."""
    i = bisect.bisect_right(entries, address, key=lambda e: e.start) - 1
    if i >= 0 and entries[i].start <= address < entries[i].end:
        return entries[i]
    return None


# --------------------------------------------------------------------------------------------------
# /proc/PID/smaps and smaps_rollup
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmapsEntry:
    mapping: MapEntry
    rss_bytes: int
    swap_bytes: int
    anonymous_bytes: int
    shared_clean_bytes: int
    private_clean_bytes: int
    size_bytes: int = 0
    pss_bytes: int = 0
    shared_dirty_bytes: int = 0
    private_dirty_bytes: int = 0
    swap_pss_bytes: int = 0
    locked_bytes: int = 0
    vm_flags: tuple[str, ...] = ()


_SMAPS_FIELDS = {
    "Rss": "rss_bytes",
    "Swap": "swap_bytes",
    "Anonymous": "anonymous_bytes",
    "Shared_Clean": "shared_clean_bytes",
    "Private_Clean": "private_clean_bytes",
    "Size": "size_bytes",
    "Pss": "pss_bytes",
    "Shared_Dirty": "shared_dirty_bytes",
    "Private_Dirty": "private_dirty_bytes",
    "SwapPss": "swap_pss_bytes",
    "Locked": "locked_bytes",
}
_MAP_HEADER = re.compile(r"^[0-9a-fA-F]+-[0-9a-fA-F]+\s")


def _kv_bytes(line: str) -> tuple[str, int] | None:
    """'Rss:   2952 kB' -> ('Rss', 3022848); 'THPeligible:  0' -> ('THPeligible', 0); else None."""
    key, sep, value = line.partition(":")
    if not sep:
        return None
    parts = value.split()
    if not parts:
        return None
    try:
        n = int(parts[0])
    except ValueError:
        return None  # e.g. "VmFlags: rd ex mr", "Name: bash"
    if len(parts) > 1 and parts[1] == "kB":
        n *= 1024
    return key.strip(), n


# smaps: a maps header line, then "Key:   N kB" lines, ending with "VmFlags: rd ex mr ... " (with a
# trailing space). Newer kernels add unit-less lines (THPeligible, ProtectionKey); ignore unknowns.
def parse_smaps(text: str) -> list[SmapsEntry]:
    """Every mapping of /proc/PID/smaps with its memory counters (bytes)."""
    out: list[SmapsEntry] = []
    current: MapEntry | None = None
    values: dict[str, int] = {}
    flags: tuple[str, ...] = ()

    def flush() -> None:
        if current is not None:
            out.append(SmapsEntry(mapping=current, vm_flags=flags, **{
                field: values.get(key, 0) for key, field in _SMAPS_FIELDS.items()
            }))

    for line in text.splitlines():
        if not line.strip():
            continue
        if _MAP_HEADER.match(line):
            flush()
            current, values, flags = _parse_map_line(line), {}, ()
            continue
        if current is None:
            raise ValueError(f"smaps: counter line before any mapping: {line[:80]!r}")
        if line.startswith("VmFlags:"):
            # Quirk: the kernel prints each flag followed by a space, so the line ends with " ".
            flags = tuple(line[len("VmFlags:") :].split())
            continue
        kv = _kv_bytes(line)
        if kv is not None:
            values[kv[0]] = kv[1]
    flush()
    out.sort(key=lambda e: e.mapping.start)
    return out


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """/proc/PID/smaps_rollup: the sums over all mappings, in bytes (the '[rollup]' header skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if _MAP_HEADER.match(line):
            continue  # "00400000-ffffffffff601000 ---p 00000000 00:00 0   [rollup]"
        kv = _kv_bytes(line)
        if kv is not None:
            out[kv[0]] = kv[1]
    return out


# --------------------------------------------------------------------------------------------------
# /proc/vmstat, /proc/meminfo, /proc/pressure/*, /proc/PID/io
# --------------------------------------------------------------------------------------------------


def parse_vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat: 'name value' lines (counters since boot; which names exist depends on the kernel)."""
    return parse_key_values(text)


def parse_key_values(text: str) -> dict[str, int]:
    """'name value' lines (/proc/vmstat, cgroup memory.stat); lines of another shape are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes ('kB' values times 1024; unit-less counts such as HugePages_Total as is)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        kv = _kv_bytes(line)
        if kv is not None:
            out[kv[0]] = kv[1]
    return out


def parse_pressure(text: str) -> Pressure:
    """A PSI file: 'some avg10=.. avg60=.. avg300=.. total=..' and, except cpu on old kernels, 'full ...'."""
    lines: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        lines[parts[0]] = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    some = lines.get("some")
    if some is None:
        raise ValueError(f"not a PSI file (no 'some' line): {text[:80]!r}")
    try:
        p = Pressure(
            some_avg10=float(some["avg10"]),
            some_avg60=float(some["avg60"]),
            some_avg300=float(some["avg300"]),
            some_total_us=int(some["total"]),
        )
        full = lines.get("full")
        if full is not None:
            p.full_avg10 = float(full["avg10"])
            p.full_avg60 = float(full["avg60"])
            p.full_avg300 = float(full["avg300"])
            p.full_total_us = int(full["total"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"malformed PSI file ({exc}): {text[:80]!r}") from None
    return p


def parse_io(text: str) -> dict[str, int]:
    """/proc/PID/io: rchar, wchar, syscr, syscw, read_bytes (from storage), write_bytes, cancelled_write_bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            try:
                out[key.strip()] = int(value)
            except ValueError:
                continue
    return out


# --------------------------------------------------------------------------------------------------
# /proc/PID/status and /proc/PID/ns/*
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStatus:
    name: str
    state: str  # one letter: R, S, D, Z, T, t, X, I
    tgid: int | None
    ppid: int | None
    uid: int | None  # the effective user ID
    threads: int | None
    kernel_thread: bool | None  # None: the kernel does not say (no "Kthread:" line before 6.x)
    # Memory, in bytes; None when the line is missing (kernel threads and zombies have no mm).
    vm_rss_bytes: int | None
    vm_swap_bytes: int | None
    rss_anon_bytes: int | None
    rss_file_bytes: int | None
    rss_shmem_bytes: int | None


_STATUS_BYTES = {
    "VmRSS": "vm_rss_bytes", "VmSwap": "vm_swap_bytes", "RssAnon": "rss_anon_bytes",
    "RssFile": "rss_file_bytes", "RssShmem": "rss_shmem_bytes",
}


def _status_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):
        return None


# status: "Key:\tvalue" lines, e.g.  Name:\tcat | State:\tR (running) | Uid:\t0\t0\t0\t0 (real,
# effective, saved, fs) | VmRSS:\t    1740 kB | Kthread:\t1 (kernel 6.x).
def parse_status(text: str) -> ProcStatus:
    """One /proc/PID/status file."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    if "Name" not in fields or "State" not in fields:
        raise ValueError(f"not a /proc/PID/status file (no Name/State): {text[:80]!r}")
    sizes: dict[str, int | None] = {}
    for key, attr in _STATUS_BYTES.items():
        # Quirk: kernel threads and zombies have no mm, so no Vm*/Rss* lines at all (not "0 kB").
        n = _status_int(fields.get(key))
        sizes[attr] = n * 1024 if n is not None else None
    uids = fields.get("Uid", "").split()
    kthread = fields.get("Kthread")
    return ProcStatus(
        # Quirk: the kernel escapes the name here ("\n" for a newline, "\\" for a backslash), unlike
        # in stat, where comm is raw bytes.
        name=fields["Name"],
        state=fields["State"][:1],
        tgid=_status_int(fields.get("Tgid")),
        ppid=_status_int(fields.get("PPid")),
        uid=int(uids[1]) if len(uids) > 1 and uids[1].isdigit() else None,
        threads=_status_int(fields.get("Threads")),
        kernel_thread=None if kthread is None else kthread == "1",
        **sizes,
    )


def parse_ns_link(target: str) -> tuple[str, int]:
    """A /proc/PID/ns/* link's target, e.g. 'mnt:[4026531832]' -> ('mnt', 4026531832)."""
    kind, sep, rest = target.partition(":[")
    if not sep or not rest.endswith("]") or not rest[:-1].isdigit() or not kind:
        raise ValueError(f"not a namespace link: {target[:80]!r}")
    return kind, int(rest[:-1])


# --------------------------------------------------------------------------------------------------
# /proc/PID/cmdline (its redaction for reports: app.parsers.redact)
# --------------------------------------------------------------------------------------------------


def parse_cmdline(data: bytes) -> list[str]:
    """argv from /proc/PID/cmdline: NUL-separated with a trailing NUL; bytes that are not UTF-8 replaced."""
    if not data:
        return []  # kernel threads and zombies have an empty cmdline
    if data.endswith(b"\0"):
        data = data[:-1]
    # Quirk: a process that rewrote its argv (setproctitle: nginx, postgres, sshd) may leave one
    # space-separated string with no NUL at all, or NUL padding at the end; drop empty tails.
    args = data.split(b"\0")
    while len(args) > 1 and args[-1] == b"":
        args.pop()
    return [a.decode("utf-8", "replace") for a in args]

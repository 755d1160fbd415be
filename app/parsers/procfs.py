"""Pure parsers for procfs text: /proc/PID/{stat,status,maps,smaps,smaps_rollup,cmdline,io,ns/*}, vmstat, meminfo, PSI.

No I/O here: every function takes the file's text (or bytes) and returns values. The collectors in
`app.collectors.procfs` read the files.
"""

from __future__ import annotations

import bisect
import os
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
    "parse_swaps",
    "parse_vmstat",
    "redact_argv",
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


_ZRAM = re.compile(r"^/dev/zram[0-9]+$")


def is_zram(swap_area: str) -> bool:
    """A swap area on a zram device (compressed memory, BottleRocket's swap): /proc/swaps types it
    'partition' like a disk, so it is told by its name."""
    return bool(_ZRAM.match(swap_area))


def parse_swaps(text: str) -> list[str]:
    """/proc/swaps: the active swap areas (file or device path), highest priority first: the kernel swaps
    out to the highest-priority area with room, so swap-ins come mostly from the first. A header line,
    or a line of another shape, is skipped. Quirk: the kernel escapes spaces in paths as \\040."""
    rows: list[tuple[int, int, str]] = []
    for n, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) != 5 or parts[0] == "Filename":
            continue
        try:
            prio = int(parts[4])
        except ValueError:
            continue
        rows.append((-prio, n, parts[0].replace("\\040", " ")))
    return [path for _, _, path in sorted(rows)]


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
# /proc/PID/cmdline and redaction
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


REDACTED = "***"

# Words that make a flag, variable, property or header name secret. Compared to the name lowercased
# with '-', '_' and '.' removed (substrings) ...
_SECRET_SUBSTRINGS = (
    "passw", "passphrase", "secret", "token", "credential", "apikey", "accesskey", "privatekey",
    "authkey", "sessionkey", "signingkey", "encryptionkey", "masterkey", "licensekey", "cookie",
    "authorization", "bearer", "connectionstring", "dsn", "userpass",
)
# ... and whole words of the name (split at -, _, . and camelCase).
_SECRET_WORDS = {"key", "pass", "pwd", "pw", "auth", "sig", "signature", "jwt", "psk", "otp", "creds"}
# A name whose last word says it holds a location, not the secret itself, is not redacted.
_NOT_SECRET_LAST = {"file", "path", "dir", "directory", "mode", "type", "enabled", "url", "uri", "id", "name", "ref"}
_NOT_SECRET_NAMES = {"PWD", "OLDPWD"}  # shell variables holding directories
_WORD_SPLIT = re.compile(r"[-_.]+|(?<=[a-z0-9])(?=[A-Z])")


def _is_secret_name(name: str) -> bool:
    name = name.lstrip("-")
    if not name or name in _NOT_SECRET_NAMES:
        return False
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    if not words or words[-1] in _NOT_SECRET_LAST:
        return False
    flat = "".join(words)
    return any(s in flat for s in _SECRET_SUBSTRINGS) or any(w in _SECRET_WORDS for w in words)


# scheme://user:password@host  ->  scheme://user:***@host   (also in the middle of a string)
# The password runs to the last @ of the authority: in user:p@ss@host it is p@ss.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/?#\s]*)@")
# scheme://longtoken@host: a token used as the user name (GitHub, GitLab and similar)
_URL_USERTOKEN = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]{16,})@")
# ?token=...&password=...  in URLs
_QUERY_PARAM = re.compile(r"(?P<pre>[?&;])(?P<name>[^=&\s#?]+)=(?P<val>[^&\s#]*)")
# Authorization: Bearer x / Authorization: x / X-Api-Key: x / Cookie: x
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization|\bx-[a-z0-9-]*(?:key|token|secret|auth)[a-z0-9-]*|\bcookie|\bapi-key)"
    r"(?P<sep>\s*:\s*)(?P<scheme>(?:bearer|basic|digest|token|negotiate|apikey)\s+)?"
    r"(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s'\"]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer(?=\s)|basic(?=\s+[A-Za-z0-9+/=]{8,}))(?P<sp>\s+)(?P<val>[^\s'\"]+)")
# NAME=value, --name=value, -Dname=value, name: value (YAML/JSON-ish) inside a longer string
_ASSIGN = re.compile(
    r"(?P<name>(?<![\w.\-])(?:--?|-D)?[A-Za-z_][\w.\-]*)(?P<sep>=|:=)(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s&]*)"
)
# name: value / name:value (YAML, headers such as PRIVATE-TOKEN: x, apikey:x) inside a string
_COLON = re.compile(
    r"(?P<name>(?<![\w.\-/:])[A-Za-z_][\w.\-]*)(?P<sep>\s*:(?!//)\s*)(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s'\",}]+)"
)
_SCHEMES = {"bearer", "basic", "digest", "token", "negotiate", "apikey"}
# Tokens that are secrets wherever they stand (GitHub, GitLab, Slack, AWS access key ids, Slack webhooks).
_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_\-]{16,}"
    r"|xox[abposre]-[A-Za-z0-9\-]{8,}|AKIA[0-9A-Z]{16}"
    # Slack incoming webhooks: the URL path is the secret (hooks.slack.com/services/T../B../xxx)
    r"|(?<=hooks\.slack\.com/services/)[A-Za-z0-9_/\-]{8,})"
)
# Shell words that end one command and start another; wrappers that run the next word.
_SHELL_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}", "then", "do", "else", "!"}
_SHELL_SPLIT = re.compile(r"(;|&&|\|\||\|)")  # "a;b" is two commands even without a space
_SHELL_WRAPPERS = {"exec", "sudo", "env", "nohup", "time", "command", "nice", "timeout", "xargs"}
_JSON_KEY = re.compile(r"(?P<pre>\"(?P<name>[^\"]{1,64})\"\s*:\s*)(?P<val>\"(?:[^\"\\]|\\.)*\"?)")
_LONG_FLAG = re.compile(r"^--?[A-Za-z][\w.\-]+$")
_ASSIGN_NAME = re.compile(r"(?:-D)?[A-Za-z_][\w.\-]*")
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "api-key"}

_MYSQL_LIKE = {"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck", "mysqlpump",
               "mariadb", "mariadb-dump", "mariadb-admin", "mysqlsh"}
# Programs whose short option takes a password: program -> options (value attached or separate).
_SHORT_SECRET_OPTS = {"sshpass": ("-p",), "redis-cli": ("-a",), "keydb-cli": ("-a",), "valkey-cli": ("-a",)}
_CURL_LIKE = {"curl", "wget", "http", "https"}


def _redact_url_and_headers(s: str) -> str:
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", s)
    s = _URL_USERTOKEN.sub(lambda m: f"{m['scheme']}{REDACTED}@", s)
    s = _QUERY_PARAM.sub(
        lambda m: f"{m['pre']}{m['name']}={REDACTED}" if _is_secret_name(m["name"]) and m["val"] else m[0], s
    )
    s = _HEADER.sub(lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{REDACTED}", s)
    s = _BEARER.sub(lambda m: f"{m['scheme']}{m['sp']}{REDACTED}", s)
    return s


def _redact_assign(s: str, depth: int = 0) -> str:
    """NAME=value with a secret name; a value that is itself NAME=value is looked into
    (kubectl's --from-literal=password=x)."""

    def one(m: re.Match[str]) -> str:
        if m["val"] and _is_secret_name(m["name"]):
            return f"{m['name']}{m['sep']}{REDACTED}"
        if depth < 3 and "=" in m["val"]:
            return f"{m['name']}{m['sep']}{_redact_assign(m['val'], depth + 1)}"
        return m[0]

    return _ASSIGN.sub(one, s)


def _redact_colon(m: re.Match[str]) -> str:
    val = m["val"].strip("'\"")
    if not val or not _is_secret_name(m["name"]) or val.lower() in _SCHEMES or val.startswith(REDACTED):
        return m[0]
    return f"{m['name']}{m['sep']}{_mask(m['val'])}"


def _shell_commands(words: list[str]) -> list[tuple[str, list[str]]]:
    """A shell string's words cut into commands at ; && || | & (also `x;`): (program, words)."""
    out: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for w in words:
        if w in _SHELL_SEPARATORS:
            if current:
                out.append(("", current))
            out.append(("", [w]))
            current = []
            continue
        current.append(w)
        if w.endswith((";", "&", "|")) and not w.endswith("\\;"):
            out.append(("", current))
            current = []
    if current:
        out.append(("", current))
    result = []
    for _, cmd in out:
        prog = ""
        for w in cmd:
            bare = w.lstrip("({'\"$")
            if not bare or _ASSIGN_NAME.fullmatch(bare.partition("=")[0]) and "=" in bare:
                continue  # FOO=bar program ...
            if os.path.basename(bare) in _SHELL_WRAPPERS or bare.startswith("-"):
                continue
            prog = bare.rstrip(";&|)'\"")
            break
        result.append((prog, cmd))
    return result


def _redact_string(s: str) -> str:
    """Redact secrets inside one free-form string (a shell command, a JSON blob, a URL)."""
    s = _JSON_KEY.sub(lambda m: f"{m['pre']}\"{REDACTED}\"" if _is_secret_name(m["name"]) else m[0], s)
    s = _redact_assign(s)
    s = _redact_url_and_headers(s)
    s = _COLON.sub(_redact_colon, s)
    if " " in s or "\t" in s:
        # A shell string: "--password hunter2" with a space; mysql's "-phunter2"; each command of
        # "a; redis-cli -a pw" with its own program's rules.
        tokens = [p for t in re.split(r"(\s+)", s) for p in (_SHELL_SPLIT.split(t) if not t.isspace() else [t])]
        words = [t for t in tokens if t and not t.isspace()]
        redacted: list[str] = []
        for prog, cmd in _shell_commands(words):
            redacted.extend(_redact_tokens(cmd, prog or cmd[0], nested=True))
        it = iter(redacted)
        s = "".join(t if (not t or t.isspace()) else next(it) for t in tokens)
    return s


def _mask(arg: str) -> str:
    """'***' keeping the quotes around the value and a shell separator after it (`pw;`)."""
    body = arg.rstrip(";&|)")
    tail = arg[len(body) :]
    core = body.strip("'\"")
    if not core:
        return arg
    start = body.index(core[0])
    return body[:start] + REDACTED + body[start + len(core) :] + tail


def redact_comm(comm: str) -> str:
    """A process name (/proc/PID/comm, 15 characters) that looks like a secret: `TOKEN=abc12345`,
    `apikey:x`, a bare ghp_/glpat-/xox token. Other names are returned unchanged."""
    if not comm:
        return comm
    out = _KNOWN_TOKEN.sub(REDACTED, comm)
    if "=" in out or ":" in out:
        out = _COLON.sub(_redact_colon, _redact_assign(out))
    return out


def _redact_tokens(argv: list[str], prog_arg: str, *, nested: bool = False) -> list[str]:
    """Token rules: a secret option's value in the next argument, program-specific short options."""
    prog = os.path.basename(prog_arg)
    mysql = any(os.path.basename(a) in _MYSQL_LIKE for a in argv[:3])
    curl = prog in _CURL_LIKE
    short_opts = _SHORT_SECRET_OPTS.get(prog, ())
    out: list[str] = []
    secret_next = False  # the next argument is a secret value
    user_next = False  # the next argument is curl's user:password
    prev = ""
    for arg in argv:
        # the argument after sh's -c (-lc, -ec ...) is a command line
        shell_next = prev.startswith("-") and not prev.startswith("--") and prev.endswith("c") and len(prev) <= 4
        prev = arg
        if user_next:
            user_next = False
            if ":" in arg:
                out.append(arg.split(":", 1)[0] + f":{REDACTED}")
                continue
        if secret_next:
            secret_next = False
            low = arg.lower()
            if arg.strip("'\"").startswith(REDACTED):
                out.append(arg)  # already redacted by a pattern
                continue
            if low in ("bearer", "basic", "token"):
                out.append(arg)  # "Authorization:" "Bearer" "x": keep the scheme, redact what follows
                secret_next = True
                continue
            # "--token VALUE": the next argument is the value unless it is another option: one
            # that starts with "--", or a short "-v". "--password -dashpw" is a value.
            if not arg.startswith("-") or short_opts or (not arg.startswith("--") and len(arg) > 2):
                out.append(_mask(arg))
                continue
        # Program-specific short options first: the generic rule below would take "-pMyPassw0rd"
        # (a "pass" name) for a flag and mask the next argument instead.
        if mysql and arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            out.append(f"-p{REDACTED}")  # mysql -phunter2 (a separate "-p db" is the prompt + a database)
            continue
        if short_opts and arg in short_opts:
            out.append(arg)
            secret_next = True
            continue
        if short_opts and any(arg.startswith(o) and len(arg) > len(o) for o in short_opts):
            out.append(f"{arg[:2]}{REDACTED}")  # sshpass -phunter2, redis-cli -apw
            continue
        if not nested and shell_next and any(c.isspace() for c in arg):
            out.append(_redact_string(arg))  # sh -c "PGPASSWORD=x psql ...": a command line, not NAME=value
            continue
        name, eq, value = arg.partition("=")
        if eq and value and _LONG_FLAG.match(name) and _is_secret_name(name):
            out.append(f"{name}={REDACTED}")  # --password=hunter2 (the whole rest, spaces included)
            continue
        if eq and value and _LONG_FLAG.match(name) and not nested:
            out.append(f"{name}={_redact_string(value)}")  # --from-literal=password=x, --header=...
            continue
        if eq and value and _ASSIGN_NAME.fullmatch(name) and _is_secret_name(name.removeprefix("-D")):
            out.append(f"{name}={REDACTED}")  # DB_PASSWORD=hunter2, -Djavax.net.ssl.keyStorePassword=x
            continue
        if _LONG_FLAG.match(arg) and _is_secret_name(arg):
            out.append(arg)
            secret_next = True
            continue
        low = arg.lower()
        colon_name = arg[:-1].lstrip("'\"")
        if low.endswith(":") and (
            low[:-1] in _SECRET_HEADERS
            or (_ASSIGN_NAME.fullmatch(colon_name) is not None and _is_secret_name(colon_name))
        ):
            out.append(arg)  # "Authorization:" "x", "password:" "x" (YAML split over arguments)
            secret_next = True
            continue
        if low in ("bearer", "basic") and not nested:  # in strings the _BEARER pattern did it
            out.append(arg)
            secret_next = True
            continue
        if curl and arg in ("-u", "--user", "-U", "--proxy-user"):
            out.append(arg)
            user_next = True
            continue
        curl_user = arg.startswith(("--user=", "--proxy-user=")) or (arg[:2] in ("-u", "-U") and len(arg) > 2)
        if curl and curl_user and ":" in arg:
            out.append(arg.split(":", 1)[0] + f":{REDACTED}")  # curl -uuser:hunter2
            continue
        out.append(arg if nested else _redact_string(arg))
    return out


def redact_argv(argv: list[str], max_len: int = 1024) -> str:
    """argv as one line with secret values replaced by '***', cut to max_len characters with '…'."""
    if not argv:
        return ""
    line = " ".join(_redact_tokens(list(argv), argv[0]))
    line = _KNOWN_TOKEN.sub(REDACTED, line)  # ghp_..., glpat-..., xoxb-...: secrets wherever they stand
    # Control characters (a newline inside an argument) would break a one-line report.
    line = "".join(c if c.isprintable() else " " for c in line)
    if len(line) > max_len:
        line = line[: max(0, max_len - 1)] + "…"
    return line

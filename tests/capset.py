"""Run a command the way a container runtime starts a container's process: uid 0, but with only the
capabilities the pod spec grants.

    python -m tests.capset --caps PERFMON,BPF,SYS_ADMIN --memlock 8M -- pagefault-inspector investigate
    run_under_caps(argv, caps={"PERFMON", "BPF"}, memlock_bytes=8 << 20)  # -> CompletedProcess

What it does before exec, in the child only (the caller keeps its own privileges):
- drops every capability not named from the bounding set (`prctl(PR_CAPBSET_DROP)`): a uid-0 exec
  then gets exactly the bounding set as permitted and effective, which is what a runtime gives a
  container with `capabilities: {drop: [ALL], add: [...]}`;
- clears the inheritable and ambient sets (runtimes leave them empty);
- sets `PR_SET_NO_NEW_PRIVS` (`allowPrivilegeEscalation: false`);
- lowers `RLIMIT_MEMLOCK` (systemd gives services 8 MiB; containerd's containers inherit it).

`setpriv` on this machine is too old to know cap_perfmon/cap_bpf by name, hence ctypes.
`caps=None` means "privileged": all capabilities, but the memlock limit still applies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

# <linux/capability.h>, in number order.
CAP_NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
MEMLOCK_CONTAINER_DEFAULT = 8 << 20


def cap_number(name: str) -> int:
    n = name.strip().upper().removeprefix("CAP_")
    try:
        return CAP_NAMES.index(n)
    except ValueError:
        raise ValueError(f"unknown capability {name!r}") from None


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def _prctl(option: int, arg2: int = 0) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg2}): {os.strerror(err)}")


def _clear_inheritable() -> None:
    # capset(2) with the current permitted/effective and an empty inheritable set.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    hdr = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        return
    for d in data:
        d.inheritable = 0
    libc.capset(ctypes.byref(hdr), data)


def restrict_self(
    caps: Iterable[str] | None,
    memlock_bytes: int | None = MEMLOCK_CONTAINER_DEFAULT,
    no_new_privs: bool = True,
) -> None:
    """Apply the container's limits to this process (call in a child just before exec)."""
    if memlock_bytes is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock_bytes, memlock_bytes))
    if caps is not None:
        keep = {cap_number(c) for c in caps}
        for n in range(last_cap() + 1):
            if n not in keep:
                _prctl(PR_CAPBSET_DROP, n)
        _clear_inheritable()
        with contextlib.suppress(OSError):
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if no_new_privs:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)


def effective_caps(pid: int | str = "self") -> set[str]:
    """The capability names in a process's CapEff (to check what a child really got)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return {name for i, name in enumerate(CAP_NAMES) if mask >> i & 1}
    return set()


def popen_under_caps(
    argv: Sequence[str],
    caps: Iterable[str] | None,
    *,
    memlock_bytes: int | None = MEMLOCK_CONTAINER_DEFAULT,
    no_new_privs: bool = True,
    **kwargs: object,
) -> subprocess.Popen:  # type: ignore[type-arg]
    caps_list = None if caps is None else list(caps)
    return subprocess.Popen(  # noqa: S603
        list(argv),
        preexec_fn=lambda: restrict_self(caps_list, memlock_bytes, no_new_privs),
        **kwargs,  # type: ignore[arg-type]
    )


def run_under_caps(
    argv: Sequence[str],
    caps: Iterable[str] | None,
    *,
    memlock_bytes: int | None = MEMLOCK_CONTAINER_DEFAULT,
    no_new_privs: bool = True,
    timeout: float | None = None,
    **kwargs: object,
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    caps_list = None if caps is None else list(caps)
    return subprocess.run(  # noqa: S603
        list(argv),
        preexec_fn=lambda: restrict_self(caps_list, memlock_bytes, no_new_privs),
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.capset", description=__doc__.splitlines()[0])
    ap.add_argument("--caps", help="comma-separated capability names to keep (default: all, i.e. privileged)")
    ap.add_argument("--memlock", default="8M", help="RLIMIT_MEMLOCK, e.g. 8M (default); 'keep' leaves it")
    ap.add_argument("--allow-new-privs", action="store_true", help="do not set PR_SET_NO_NEW_PRIVS")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")
    caps = None if args.caps is None else [c for c in args.caps.split(",") if c.strip()]
    memlock = None if args.memlock == "keep" else _size(args.memlock)
    restrict_self(caps, memlock, not args.allow_new_privs)
    os.execvp(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main())

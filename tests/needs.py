"""What the running test is marked as needing (root, workloads, servers, browser), and the checks that a
test which starts a real workload, tracer, server or browser carries its marker. No pytest import: the
workload helpers are also used by bench/, where nothing is active and nothing is checked.

Two checks:
- `require_marker(kind, what)`: called by the helpers that start one (tests/workloads, the servers, the
  browser).
- An audit hook (`install_guard`, PEP 578) that sees what a test DOES, whoever does it (the app's own
  code, a raw Popen, os.mkdir): exec'ing the system's perf or bpftrace or a test workload
  (`pfi-workload*`) needs `workloads`; making or writing a cgroup under /sys/fs/cgroup, swap
  (mkswap/swapon/swapoff/zramctl) or drop_caches needs `root` and `workloads`. The markers travel to Python
  subprocesses in PFI_TEST_MARKERS (tests/netguard_site loads the guard there too), so a workload started
  by a subprocess (the CLI's demo, a service) is checked the same way. `./test.sh --fast` leaves out
  `workloads`, so it selects by what a test does, not by who started it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

NEEDS = ("root", "workloads", "servers", "browser")
ENV = "PFI_TEST_MARKERS"  # the running test's markers, for its Python subprocesses
_active: set[str] | None = None  # the running test's markers; None outside a pytest test


def set_active(markers: Iterable[str] | None) -> None:
    global _active
    _active = None if markers is None else set(markers)
    if _active is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = ",".join(sorted(_active & set(NEEDS))) or "-"


def require_marker(kind: str, what: str) -> None:
    """Called where a real workload, tracer, server or browser starts: the running test must carry
    the marker `kind`, so that `./test.sh --fast` (-m "not (workloads or servers or browser)")
    never starts one."""
    if kind not in NEEDS:
        raise ValueError(kind)
    if _active is not None and kind not in _active:
        raise AssertionError(
            f"this test starts {what} but is not marked {kind!r}: add @pytest.mark.{kind} (or the module's "
            f"pytestmark), so that ./test.sh --fast leaves it out")


# --- the audit hook -----------------------------------------------------------------------------------

TRACERS = ("perf", "bpftrace")  # the real ones: installed under a system prefix (a test's fake is in tmp)
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/opt/")
SWAP_TOOLS = ("mkswap", "swapon", "swapoff", "zramctl")
CGROUP_FS = "/sys/fs/cgroup/"
DROP_CACHES = "/proc/sys/vm/drop_caches"
LOG_ENV = "PFI_TEST_GUARD_LOG"  # a file the subprocesses append what they caught to, for the test process
_violations: list[str] = []  # what the hook caught in this process since the last take_violations()
_WATCHED = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.mkdir", "open"})
_busy = threading.local()
_installed = False


def _program(executable: Any, args: Any) -> tuple[str, str]:
    """(argv[0]'s name, the path that runs) of a Popen/exec."""
    argv0 = args if isinstance(args, (str, bytes, os.PathLike)) else (args[0] if args else "")
    argv0 = os.fsdecode(os.fspath(argv0)) if argv0 else ""
    if isinstance(args, str) and " " in argv0:  # a shell=False string is the program; a command line is split
        argv0 = argv0.split()[0]
    path = os.fsdecode(os.fspath(executable)) if executable else argv0
    if path and os.sep not in path:
        import shutil

        path = shutil.which(path) or path
    return os.path.basename(argv0), os.path.realpath(path) if os.sep in path else path


def what_it_starts(executable: Any, args: Any) -> tuple[tuple[str, ...], str] | None:
    """The markers an exec needs and what it is, or None when it needs none."""
    name, path = _program(executable, args)
    base = os.path.basename(path)
    for tool in TRACERS:
        if (base == tool or base.startswith(tool + "_")) and path.startswith(SYSTEM_PREFIXES):
            return ("workloads",), f"the real tracer {path}"
    if name.startswith("pfi-workload") or base.startswith("pfi-workload"):
        return ("workloads",), f"the workload process {name or base}"
    if base in SWAP_TOOLS and path.startswith(SYSTEM_PREFIXES):
        return ("root", "workloads"), f"{base} (swap on this machine)"
    return None


def what_it_changes(event: str, args: tuple[Any, ...]) -> tuple[tuple[str, ...], str] | None:
    """The markers an os.mkdir/open needs and what it is, or None."""
    target = args[0] if args else None
    if isinstance(target, int) or target is None:
        return None
    try:
        path = os.path.abspath(os.fsdecode(os.fspath(target)))
    except TypeError:
        return None
    if event == "open":
        mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR)))
        if not writes:
            return None
        if path == DROP_CACHES:
            return ("root", "workloads"), "a write to drop_caches"
    if path.startswith(CGROUP_FS):
        return ("root", "workloads"), f"a cgroup ({'mkdir' if event == 'os.mkdir' else 'write'} {path})"
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in _WATCHED or _active is None or getattr(_busy, "on", False):
        return
    _busy.on = True
    try:
        if event in ("subprocess.Popen", "os.exec", "os.posix_spawn"):
            need = what_it_starts(args[0], args[1] if len(args) > 1 else None)
        else:
            need = what_it_changes(event, args)
        if need is not None:
            kinds, what = need
            for kind in kinds:
                try:
                    require_marker(kind, what)
                except AssertionError as exc:
                    # Kept as well as raised: the app may catch what its Popen raises (a tracer that fails
                    # to start falls back to the next), and the test must fail all the same.
                    _record(str(exc))
                    raise
    finally:
        _busy.on = False


def _record(message: str) -> None:
    _violations.append(message)
    log = os.environ.get(LOG_ENV)
    if log and os.getpid() != _owner_pid:
        try:
            with open(log, "a") as f:  # not a watched path: the hook lets it through
                f.write(message.replace("\n", " ") + "\n")
        except OSError:
            pass


def take_violations() -> list[str]:
    """What the hook caught since the last call, in this process and in its Python subprocesses."""
    found = list(dict.fromkeys(_violations))
    _violations.clear()
    log = os.environ.get(LOG_ENV)
    if log and os.getpid() == _owner_pid and os.path.exists(log):
        with open(log, "r+") as f:
            found += [line.strip() for line in f if line.strip()]
            f.seek(0)
            f.truncate()
    return found


_owner_pid = -1  # the test process that reads LOG_ENV


def install_guard(log: str | None = None) -> None:
    """Install the audit hook once in this process (it cannot be removed: outside a test it does nothing).
    `log`: in the test process, the file its subprocesses report to."""
    global _installed, _owner_pid
    if log is not None:
        _owner_pid = os.getpid()
        os.environ[LOG_ENV] = log
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def install_from_env() -> None:
    """In a Python subprocess of a test: take the test's markers from PFI_TEST_MARKERS and guard."""
    global _active
    value = os.environ.get(ENV)
    if value is None:
        return
    _active = {m for m in value.split(",") if m and m != "-"}
    install_guard()

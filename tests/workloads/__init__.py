"""Real fault workloads for the tests and the benchmarks: small C programs and context managers that
start them, and undo everything they changed on the machine (swap, cgroups, processes), also when
the test fails and, as a last resort, at interpreter exit.

    with file_fault_workload(tmp_path / "data.bin") as proc:   # ~17,000 file-backed major faults/s
        proc.pid, proc.start, proc.end                          # the mapping the faults land in
    with swap_workload(size_mb=128, limit_mb=64) as proc:      # ~8,000 swap-in major faults/s
        proc.cgroup                                             # /sys/fs/cgroup/memory/pfi-test-swap-<pid>-<n>

Every workload process has comm "pfi-workload" and an argv[0] starting with "pfi-workload-", dies
with its parent (PR_SET_PDEATHSIG) and runs in its own process group. scripts/cleanup.sh finds
leftovers by those names.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN_DIR = HERE / "bin"
CGROUP_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
SWAP_FILE = Path("/var/tmp/pfi-test-swap")
SWAP_MB = 512
_SWAP_LOCK = Path("/run/pfi-test-swap.lock")
_SWAP_USERS = Path("/run/pfi-test-swap.users")  # one file per live user: "<pid>-<n>"
READY_TIMEOUT = 60.0

_READY = re.compile(rb"start=(0x[0-9a-f]+|\(nil\)) end=(0x[0-9a-f]+)")


class WorkloadProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen that also knows the address range its faults land in."""

    start: int = 0  # first byte of the faulting mapping
    end: int = 0  # one past its last byte
    kind: str = ""  # "file", "anon" or "shmem"
    path: Path | None = None  # the mapped file (file workload)
    cgroup: Path | None = None  # the memory cgroup it runs in (swap workload)


# --- building ------------------------------------------------------------------------------------

_build_lock = threading.Lock()


def binary(name: str) -> Path:
    """Compile tests/workloads/<name>.c once per source version; return the binary's path.

    The binary's name carries a hash of the source, so an edited source is rebuilt; it is written
    under a temporary name and renamed, so concurrent test runs never see half a binary.
    """
    src = HERE / f"{name}.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = BIN_DIR / f"{name}-{digest}"
    with _build_lock:
        if out.exists():
            return out
        BIN_DIR.mkdir(exist_ok=True)
        tmp = BIN_DIR / f".{name}-{digest}.{os.getpid()}.tmp"
        res = subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"gcc failed for {src}: {res.stderr.strip()}")
        os.replace(tmp, out)
    return out


# --- last-resort cleanup ---------------------------------------------------------------------------

_pending: dict[int, Callable[[], None]] = {}
_pending_lock = threading.Lock()
_counter = iter(range(1, 1 << 62))


def _register(fn: Callable[[], None]) -> int:
    key = next(_counter)
    with _pending_lock:
        _pending[key] = fn
    return key


def _unregister(key: int) -> None:
    with _pending_lock:
        _pending.pop(key, None)


@atexit.register
def _cleanup_all() -> None:
    with _pending_lock:
        fns = list(_pending.values())[::-1]
        _pending.clear()
    for fn in fns:
        with contextlib.suppress(Exception):
            fn()


# --- processes -----------------------------------------------------------------------------------


def _start(
    argv0: str, exe: Path, args: list[str], wait_for_go: bool = False, env: dict[str, str] | None = None
) -> WorkloadProcess:
    return WorkloadProcess(
        [argv0, *args],
        env=env,
        executable=str(exe),
        stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own process group: killpg reaches everything it starts
    )


def _kill(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _await_ready(proc: WorkloadProcess, timeout: float = READY_TIMEOUT) -> None:
    """Read the workload's one 'ready ... start=0x.. end=0x..' line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"workload {proc.args} not ready after {timeout:.0f}s")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"workload {proc.args} exited early with {proc.wait()}")
            buf += chunk
    m = _READY.search(buf)
    if not m:
        raise RuntimeError(f"workload said {buf!r}")
    proc.start, proc.end = int(m.group(1), 16), int(m.group(2), 16)


def majflt(pid: int) -> int:
    """majflt of a process (field 12 of /proc/PID/stat, counted after the last ')')."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[9])


# --- file-backed faults ----------------------------------------------------------------------------


@contextlib.contextmanager
def file_fault_workload(
    path: Path, size_mb: int = 64, passes: int = 0, comm: str | None = None
) -> Iterator[WorkloadProcess]:
    """Steady file-backed major faults on `path` (created with size_mb of data if it is missing
    or of another size; removed again only if created here). passes=0 runs until the end.
    comm: the process's comm instead of "pfi-workload" (at most 15 bytes; spaces allowed)."""
    path = Path(path)
    size = size_mb << 20
    created = False
    if not path.exists() or path.stat().st_size != size:
        created = not path.exists()
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)  # real data on disk: no sparse holes
            for _ in range(size_mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())  # written back, so POSIX_FADV_DONTNEED can really drop it
    env = {**os.environ, "PFI_WORKLOAD_COMM": comm} if comm else None
    proc = _start("pfi-workload-file", binary("file_faults"), [str(path), str(passes)], env=env)
    proc.kind, proc.path = "file", path

    def undo() -> None:
        _kill(proc)
        if created:
            path.unlink(missing_ok=True)

    key = _register(undo)
    try:
        _await_ready(proc)
        yield proc
    finally:
        _unregister(key)
        undo()


# --- swap ------------------------------------------------------------------------------------------


def _active_swaps() -> list[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _swap_lock() -> Iterator[None]:
    with open(_SWAP_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _swap_users() -> list[Path]:
    """Live users of the test swap file; files of dead processes are removed."""
    live = []
    for p in _SWAP_USERS.glob("*") if _SWAP_USERS.exists() else []:
        try:
            pid = int(p.name.split("-")[0])
        except ValueError:
            continue
        if _pid_alive(pid):
            live.append(p)
        else:
            p.unlink(missing_ok=True)
    return live


@contextlib.contextmanager
def swap_enabled() -> Iterator[str | None]:
    """Swap for the duration: the machine's own if it has any (left alone), else SWAP_FILE,
    turned on by the first user and off by the last one (users counted across processes, since
    several test runs may share the machine). Yields the swap file turned on here, or None."""
    token = _SWAP_USERS / f"{os.getpid()}-{next(_counter)}"
    ours: str | None = None
    with _swap_lock():
        active = _active_swaps()
        if str(SWAP_FILE) in active:
            ours = str(SWAP_FILE)
        elif not active:
            SWAP_FILE.unlink(missing_ok=True)
            with open(SWAP_FILE, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                zeros = bytes(1 << 20)
                for _ in range(SWAP_MB):
                    f.write(zeros)
                os.fsync(f.fileno())
            subprocess.run(["mkswap", str(SWAP_FILE)], check=True, capture_output=True)
            subprocess.run(["swapon", str(SWAP_FILE)], check=True, capture_output=True)
            ours = str(SWAP_FILE)
        if ours:
            _SWAP_USERS.mkdir(exist_ok=True)
            token.touch()

    def undo() -> None:
        if not ours:
            return
        with _swap_lock():
            token.unlink(missing_ok=True)
            if not _swap_users() and str(SWAP_FILE) in _active_swaps():
                subprocess.run(["swapoff", str(SWAP_FILE)], check=False, capture_output=True)
            if str(SWAP_FILE) not in _active_swaps():
                SWAP_FILE.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _SWAP_USERS.rmdir()  # only when empty

    key = _register(undo)
    try:
        yield ours
    finally:
        _unregister(key)
        undo()


@contextlib.contextmanager
def memory_cgroup(name: str, limit_mb: int | None) -> Iterator[Path]:
    """A cgroup v1 memory group at CGROUP_MEMORY_ROOT/name (parents created as needed, e.g.
    "kubepods/burstable/pod<uid>/<containerid>"); removed deepest first afterwards, with only the
    directories created here."""
    if not (CGROUP_MEMORY_ROOT / "memory.limit_in_bytes").exists():
        raise RuntimeError(f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}")
    group = CGROUP_MEMORY_ROOT / name.strip("/")
    created: list[Path] = []
    cur = CGROUP_MEMORY_ROOT
    for part in Path(name.strip("/")).parts:
        cur = cur / part
        if not cur.exists():
            cur.mkdir()
            created.append(cur)

    def undo() -> None:
        for d in reversed(created):  # deepest first
            for pid in (d / "cgroup.procs").read_text().split() if d.exists() else []:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.05)

    key = _register(undo)
    try:
        if limit_mb is not None:
            (group / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
        yield group
    finally:
        _unregister(key)
        undo()


@contextlib.contextmanager
def swap_workload(
    size_mb: int = 128, limit_mb: int = 64, name: str | None = None, kind: str = "anon"
) -> Iterator[WorkloadProcess]:
    """A process touching size_mb of memory (kind "anon" or "shmem") inside the memory cgroup
    `name` (default "pfi-test-swap-<pid>-<n>", unique so concurrent test runs never share a group)
    limited to limit_mb, so it swaps steadily. Swap is turned on if the machine has none."""
    if kind not in ("anon", "shmem"):
        raise ValueError(kind)
    if name is None:
        name = f"pfi-test-swap-{os.getpid()}-{next(_counter)}"
    exe = binary("swap_faults")
    with swap_enabled(), memory_cgroup(name, limit_mb) as group:
        proc = _start(f"pfi-workload-{kind}", exe, [str(size_mb), kind], wait_for_go=True)
        proc.kind, proc.cgroup = kind, group
        key = _register(lambda: _kill(proc))
        try:
            # Into the group before it allocates anything, then let it go.
            (group / "cgroup.procs").write_text(str(proc.pid))
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            _await_ready(proc)
            yield proc
        finally:
            _unregister(key)
            _kill(proc)

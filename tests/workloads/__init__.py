"""Real fault workloads for the tests and the benchmarks: small C programs and context managers that
start them, and undo everything they changed on the machine (swap, cgroups, processes), also when
the test fails and, as a last resort, at interpreter exit.

    with file_fault_workload(tmp_path / "data.bin") as proc:   # ~17,000 file-backed major faults/s
        proc.pid, proc.start, proc.end                          # the mapping the faults land in
    with swap_workload(size_mb=128, limit_mb=64) as proc:      # ~8,000 swap-in major faults/s
        proc.cgroup                                             # /sys/fs/cgroup/memory/pfi-test-swap-<pid>-<n>
    with swap_workload(name="kubepods/burstable/pod<uid>/<id>") as proc:   # a kubepods-shaped group,
        proc.cgroup                     # /sys/fs/cgroup/memory/pfi-test-<pid>-<n>/kubepods/burstable/...

Every workload process has comm "pfi-workload" and an argv[0] starting with "pfi-workload-", dies
with its parent (PR_SET_PDEATHSIG) and runs in its own process group.

What a test run makes on the machine is recorded in its run-state folder, RUN_STATE_ROOT/<pid>-<starttime>/
(/run/pfi-test/ as root), one file per thing: proc-<n> ("pid starttime argv0"), cgroup-<n> (the
directory created at the top), swap-<n> (the swap file it uses). Undo removes the record with the
thing. After a crash, `python -m tests.workloads cleanup` (scripts/cleanup.sh) undoes the records of
runs whose process is gone, and nothing else: never by name, never a cgroup it did not make.
Kubepods-shaped cgroups are made under a unique pfi-test-<pid>-<n>/ parent, never at the root of a
hierarchy where a real kubelet's kubepods could be.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.collectors import cgroupmem
from app.collectors.cgroupmem import rmdir_when_free
from app.tracers import leftovers
from tests.machine_lock import swap_hold
from tests.needs import require_marker

HERE = Path(__file__).resolve().parent
BIN_DIR = HERE / "bin"
CGROUP_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
SWAP_FILE = Path("/var/tmp/pfi-test-swap")
SWAP_MB = 512
_SWAP_LOCK = Path("/run/pfi-test-swap.lock")
# Test runs of the code before run-state folders kept one file per swap user here ("<pid>-<n>");
# still counted as users so that a run of either version never turns swap off under the other.
_LEGACY_SWAP_USERS = Path("/run/pfi-test-swap.users")
RUN_STATE_ROOT = Path(os.environ.get("PFI_TEST_RUN_STATE", "/run/pfi-test"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
READY_TIMEOUT = 60.0
# An exact backend's count of a process's major faults against the kernel's majflt over the same
# window: the bench measures 1.000 on the file and swap workloads (test_tracers: 1.0000-1.0027);
# 2% leaves room for the faults between a tracer's enable and the majflt read at its start and stop.
EXACT_TOLERANCE = 0.02
# Every exact backend counts over the interval the engine reads majflt at both ends of: perf stops its
# counters through its control fifo at the mark, bpftrace counts only inside a kernel-timed interval
# whose ends the marks are read at (issue 27; before, bpftrace counted until it acted on SIGINT, up to
# 8% over here and 13x at a load average of 30). So every backend gets the same +-2%, both ways.


def exact_enough(traced: int, majflt: int, backend: str = "perf-major", tolerance: float = EXACT_TOLERANCE) -> bool:
    """An exact tracer's count is within `tolerance` of majflt over the same interval (and majflt is not
    zero). `backend` is kept for the callers' messages: no backend gets more."""
    return majflt > 0 and abs(traced - majflt) <= tolerance * majflt

_READY = re.compile(rb"start=(0x[0-9a-f]+|\(nil\)) end=(0x[0-9a-f]+)")


class WorkloadProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen that also knows the address range its faults land in."""

    start: int = 0  # first byte of the faulting mapping
    end: int = 0  # one past its last byte
    kind: str = ""  # "file", "anon" or "shmem"
    path: Path | None = None  # the mapped file (file workload)
    cgroup: Path | None = None  # the memory cgroup it runs in (swap workload)


# --- what this run made: the run-state folder -------------------------------------------------------


def starttime(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, it names one process."""
    return leftovers.starttime(pid, proc)


def _alive(pid: int, start: int | None) -> bool:
    return start is not None and starttime(pid) == start


_counter = iter(range(1, 1 << 62))
_state_lock = threading.Lock()
_state_dir: Path | None = None


def _state_dir_locked() -> Path:
    global _state_dir
    if _state_dir is None or _state_dir.name.split("-")[0] != str(os.getpid()):
        name = f"{os.getpid()}-{starttime(os.getpid())}"
        try:
            RUN_STATE_ROOT.mkdir(mode=0o755, exist_ok=True)
            _state_dir = RUN_STATE_ROOT / name
            _state_dir.mkdir(exist_ok=True)
        except PermissionError:
            _state_dir = Path(tempfile.gettempdir()) / f"pfi-test-run-state-{os.getuid()}" / name
    _state_dir.mkdir(parents=True, exist_ok=True)  # again: `forget` removes it when it empties
    return _state_dir


def run_state_dir() -> Path:
    """This process's run-state folder: RUN_STATE_ROOT/<pid>-<starttime> (a per-user folder under
    the temp dir when RUN_STATE_ROOT is not writable, e.g. not root). Made on use, removed by
    `forget` once nothing of the run is left."""
    with _state_lock:
        return _state_dir_locked()


def record(kind: str, value: str) -> Path:
    """Note one thing this run made ("proc", "cgroup", "swap", "zram", "shm": a /dev/shm/pfi-test-* file);
    returns the record to `forget`."""
    if kind not in ("proc", "cgroup", "swap", "zram", "shm"):
        raise ValueError(kind)
    with _state_lock:
        path = _state_dir_locked() / f"{kind}-{next(_counter)}"
        tmp = path.with_name("." + path.name)
        tmp.write_text(value + "\n")
        os.replace(tmp, path)  # cleanup never reads half a record
    return path


def forget(rec: Path | None) -> None:
    if rec is None:
        return
    with _state_lock:
        rec.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            rec.parent.rmdir()  # only when empty: nothing of this run is left


_process_records: dict[int, Path] = {}


def record_process(proc: subprocess.Popen) -> Path:  # type: ignore[type-arg]
    """Record a process this run started (for `cleanup_dead_runs` if the run dies before it);
    `forget_process` once it is reaped."""
    args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
    words = os.fsdecode(args[0]).split() if args else []
    rec = record("proc", f"{proc.pid} {starttime(proc.pid)} {words[0] if words else '?'}")
    with _state_lock:
        _process_records[proc.pid] = rec
    return rec


def forget_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    with _state_lock:
        rec = _process_records.pop(proc.pid, None)
    forget(rec)


def _records(run: Path, kind: str) -> list[tuple[Path, str]]:
    out = []
    for rec in sorted(run.glob(f"{kind}-*")):
        with contextlib.suppress(OSError):
            out.append((rec, rec.read_text().strip()))
    return out


def _run_alive(run: Path) -> bool:
    pid_s, _, start_s = run.name.partition("-")
    try:
        return _alive(int(pid_s), int(start_s))
    except ValueError:
        return False  # "None" starttime: the owner was already unreadable


def _is_test_cgroup(path: Path) -> bool:
    """Only a folder under a cgroup hierarchy whose top segment a test made (pfi-test-*)."""
    try:
        rel = path.resolve().relative_to(CGROUP_ROOT)
    except ValueError:
        return False
    # <root>/pfi-test-* on a pure v2 host; <root>/<hierarchy>/pfi-test-* (memory/, unified/) on v1 and hybrid
    tops = rel.parts[:1] if rel.parts[:1] and rel.parts[0].startswith("pfi-test-") else rel.parts[1:2]
    return bool(tops) and tops[0].startswith("pfi-test-")


def _rmdir_tree(top: Path) -> bool:
    """Remove a cgroup folder and its children, deepest first; True when it is gone."""
    dirs = sorted((d for d in [top, *top.rglob("*")] if d.is_dir()), key=lambda d: -len(d.parts))
    for d in dirs:
        with contextlib.suppress(OSError):  # left as it is; the result says it is still there
            rmdir_when_free(d, tries=40)
    return not top.exists()


def make_group(path: Path) -> None:
    """mkdir in a cgroup hierarchy: the kernel fills the folder with the group's files."""
    path.mkdir()


def remove_groups(created: list[Path]) -> None:
    """Kill what is left in each cgroup folder made here and remove the folders, deepest (last made)
    first."""
    for d in reversed(created):
        for pid in (d / "cgroup.procs").read_text().split() if d.exists() else []:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        rmdir_when_free(d, tries=100)


def cleanup_dead_runs(root: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Undo what test runs recorded and did not undo because they died (SIGKILL, a crash): the
    processes they started (only when pid and starttime still match), then the cgroups they made
    (pfi-test-* folders only, deepest first), then the test swap file when no live run uses it.
    Runs still alive are left alone; nothing is looked up by name."""
    root = RUN_STATE_ROOT if root is None else root
    runs = sorted(p for p in root.glob("*-*") if p.is_dir()) if root.is_dir() else []
    dead = [r for r in runs if not _run_alive(r)]
    for run in dead:
        for rec, text in _records(run, "proc"):
            parts = text.split()
            try:
                pid, start = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                start = None
            if start is not None and _alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    # Its own process group when the run started it in a new session (workloads,
                    # e2e servers): whatever it started goes too. Otherwise the process alone.
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                    log(f"cleanup: killed pid {pid} ({' '.join(parts[2:])}) left by run {run.name}")
                for _ in range(100):
                    if not _alive(pid, start):
                        break
                    time.sleep(0.02)
            rec.unlink(missing_ok=True)
        for rec, text in _records(run, "cgroup"):
            group = Path(text)
            if not _is_test_cgroup(group):
                log(f"cleanup: refusing {text!r} from run {run.name}: not a pfi-test-* cgroup")
                rec.unlink(missing_ok=True)
                continue
            existed = group.exists()
            if not existed or _rmdir_tree(group):
                if existed:
                    log(f"cleanup: removed cgroup {group}")
                rec.unlink(missing_ok=True)
            else:
                log(f"cleanup: cgroup {group} still holds processes this run did not record; left")
    # /dev/shm files before the swap devices: their swapped pages keep a swapoff from finishing (a killed run's
    # 128 MiB /dev/shm file, 49 MB of it in a zram device, left that device swapped on through a day of runs,
    # at the highest priority: the "disk swap" rows after it swapped to zram)
    for run in dead:
        for rec, text in _records(run, "shm"):
            shm = Path(text)
            if shm.parent == Path("/dev/shm") and shm.name.startswith("pfi-test-"):
                if shm.exists():
                    shm.unlink(missing_ok=True)
                    log(f"cleanup: removed {shm}")
            else:
                log(f"cleanup: refusing shm record {text!r}: not a /dev/shm/pfi-test-* file")
            rec.unlink(missing_ok=True)
    for run in dead:
        for rec, text in _records(run, "zram"):
            _zram_undo(text, log)
            rec.unlink(missing_ok=True)
    swaps = {text for run in dead for _, text in _records(run, "swap")}
    for run in dead:
        for rec, _ in _records(run, "swap"):
            rec.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run.rmdir()
    for f in sorted(swaps - {str(SWAP_FILE)}):
        log(f"cleanup: refusing swap file {f!r}: not the test swap file")
    if str(SWAP_FILE) in swaps:
        f = str(SWAP_FILE)
        with _swap_lock():
            if not _swap_users(root):
                if f in _active_swaps():
                    subprocess.run(["swapoff", f], check=False, capture_output=True)
                    log(f"cleanup: swap file {f} turned off")
                if f not in _active_swaps():
                    SWAP_FILE.unlink(missing_ok=True)


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
    require_marker("workloads", f"the real workload {argv0}")
    proc = WorkloadProcess(
        [argv0, *args],
        env=env,
        executable=str(exe),
        stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own process group: killpg reaches everything it starts
    )
    record_process(proc)
    return proc


def _kill(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is not None:
        forget_process(proc)
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


def _release(proc: WorkloadProcess, groups: list[Path]) -> None:
    """Move a workload started with wait_for_go into its cgroups before it allocates anything, then
    let it go and wait until it says it is faulting."""
    for g in groups:
        (g / "cgroup.procs").write_text(str(proc.pid))
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    _await_ready(proc)


def majflt(pid: int) -> int:
    """majflt of a process (field 12 of /proc/PID/stat, counted after the last ')')."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[9])


@contextlib.contextmanager
def throttled(pid: int, duty: float, period: float = 0.02) -> Iterator[None]:
    """Let the process run only `duty` of the time (SIGSTOP/SIGCONT every `period` s): a lower,
    steady fault rate. It is left running (SIGCONT) afterwards."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            time.sleep(period * duty)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(period * (1 - duty))
            os.kill(pid, signal.SIGCONT)

    t = threading.Thread(target=loop, daemon=True)
    if duty < 1:
        t.start()
    try:
        yield
    finally:
        stop.set()
        if duty < 1:
            t.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


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


def _swap_users(root: Path | None = None) -> list[str]:
    """Live users of the test swap file: swap records of runs still alive (plus live tokens of the
    older users folder; its tokens of dead processes are removed)."""
    roots = {RUN_STATE_ROOT, RUN_STATE_ROOT if root is None else root}  # the machine's, always
    live = [
        f"{run}/{rec.name}"
        for r in sorted(roots)
        for run in (sorted(r.glob("*-*")) if r.is_dir() else [])
        if run.is_dir() and _run_alive(run)
        for rec, text in _records(run, "swap")
        if text == str(SWAP_FILE)
    ]
    for p in _LEGACY_SWAP_USERS.glob("*") if _LEGACY_SWAP_USERS.is_dir() else []:
        try:
            pid = int(p.name.split("-")[0])
        except ValueError:
            continue
        if _pid_alive(pid):
            live.append(str(p))
        else:
            p.unlink(missing_ok=True)
    return live


@contextlib.contextmanager
def swap_enabled() -> Iterator[str | None]:
    """Swap for the duration: the machine's own if it has any (left alone), else SWAP_FILE,
    turned on by the first user and off by the last one (users counted across processes, since
    several test runs may share the machine: each use is a swap record in its run-state folder).
    Yields the swap file turned on here, or None. In the suite's second pass, held with the swap
    lock shared (tests/machine_lock.py): no zram device or vm sysctl changes while it is in use."""
    require_marker("root", "swap")
    with swap_hold("shared"), _swap_enabled() as ours:
        yield ours


@contextlib.contextmanager
def _swap_enabled() -> Iterator[str | None]:
    ours: str | None = None
    rec: Path | None = None
    legacy = _LEGACY_SWAP_USERS / f"{os.getpid()}-{next(_counter)}"
    with _swap_lock():
        active = _active_swaps()
        if str(SWAP_FILE) in active:
            ours = str(SWAP_FILE)
        elif not active:
            rec = record("swap", str(SWAP_FILE))  # before the file exists: a crash from here is undone
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
        if ours and rec is None:
            rec = record("swap", ours)
        if ours:
            # Also a token where runs of the code before run-state folders look for swap users, so
            # such a run sharing the machine does not turn swap off under this one.
            _LEGACY_SWAP_USERS.mkdir(exist_ok=True)
            legacy.touch()

    def undo() -> None:
        if not ours:
            return
        with _swap_lock():
            forget(rec)
            legacy.unlink(missing_ok=True)
            if not _swap_users() and str(SWAP_FILE) in _active_swaps():
                subprocess.run(["swapoff", str(SWAP_FILE)], check=False, capture_output=True)
            if str(SWAP_FILE) not in _active_swaps():
                SWAP_FILE.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                _LEGACY_SWAP_USERS.rmdir()  # only when empty

    key = _register(undo)
    try:
        yield ours
    finally:
        _unregister(key)
        undo()


# --- zram swap (BottleRocket's) -------------------------------------------------------------------

ZRAM_CONTROL = Path("/sys/class/zram-control")
_ZRAM_LOCK = Path("/run/pfi-test-zram.lock")
_SYSCTL = {"swappiness": Path("/proc/sys/vm/swappiness"), "page_cluster": Path("/proc/sys/vm/page-cluster")}


class ZramSwap:
    """A zram swap device made for a test: `device` (/dev/zramN), `algorithm`, `disksize`, and the
    machine's swappiness and page-cluster as they were (`saved`), restored afterwards."""

    def __init__(self, device: str, algorithm: str, disksize: int, saved: dict[str, int]) -> None:
        self.device, self.algorithm, self.disksize, self.saved = device, algorithm, disksize, saved

    def __repr__(self) -> str:
        return f"ZramSwap({self.device}, {self.algorithm}, {self.disksize >> 20} MiB)"


def zram_unavailable_reason() -> str | None:
    """Why no zram swap can be made here, or None."""
    if os.geteuid() != 0:
        return "zram swap needs root"
    if not (ZRAM_CONTROL / "hot_add").exists():
        return f"no zram in this kernel ({ZRAM_CONTROL}/hot_add missing: CONFIG_ZRAM off or the module not loaded)"
    return None


def _zram_undo(text: str, log: Callable[[str], None] = lambda _m: None) -> None:
    """Undo one zram record "zramN swappiness page_cluster": swap off, reset and remove the device,
    restore the two sysctls. Only a device named in our own record is touched."""
    parts = text.split()
    if not parts or not re.fullmatch(r"zram[0-9]+", parts[0]):
        log(f"cleanup: refusing zram record {text!r}")
        return
    name = parts[0]
    dev = f"/dev/{name}"
    if dev in _active_swaps():
        off = subprocess.run(["swapoff", dev], check=False, capture_output=True, text=True)
        if off.returncode != 0:
            log(f"cleanup: swapoff {dev} failed: {off.stderr.strip()[:200]}; the device stays")
    block = Path("/sys/block") / name
    if block.exists():
        with contextlib.suppress(OSError):
            (block / "reset").write_text("1")
        with contextlib.suppress(OSError):
            (ZRAM_CONTROL / "hot_remove").write_text(name.removeprefix("zram"))
    for key, value in zip(("swappiness", "page_cluster"), parts[1:3], strict=False):
        with contextlib.suppress(OSError):
            _SYSCTL[key].write_text(value)
    log(f"cleanup: zram swap {dev} removed, swappiness/page-cluster restored to {' '.join(parts[1:3])}")


@contextlib.contextmanager
def swap_config_held() -> Iterator[None]:
    """The machine's swap set-up (a zram device, vm.swappiness, vm.page-cluster) to this test alone: the
    suite's second-pass swap lock exclusive first (no swap user of the other process meanwhile,
    tests/machine_lock.py), then the lock across test runs (_ZRAM_LOCK). Always taken in that order."""
    with swap_hold("exclusive"), open(_ZRAM_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def zram_swap(
    disksize_mb: int = 1024, algorithm: str = "lz4", swappiness: int = 200, page_cluster: int = 0
) -> Iterator[ZramSwap]:
    """Swap on a zram device made for the duration, as BottleRocket sets it up by default (1 GiB,
    swappiness 200, page-cluster 0; lz4 where the kernel has it, else its default): a new device
    from /sys/class/zram-control/hot_add (never an existing zramN), swapped on at the highest
    priority so swap-ins come from it, and the machine's vm.swappiness and vm.page-cluster set for
    the duration and restored. One user at a time (a lock across test runs: the sysctls are the
    machine's). Recorded in the run-state folder, so a SIGKILLed run is undone by cleanup."""
    require_marker("root", "zram swap")
    reason = zram_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    with swap_config_held():
        saved = {k: int(f.read_text().split()[0]) for k, f in _SYSCTL.items()}
        idx = (ZRAM_CONTROL / "hot_add").read_text().strip()
        name = f"zram{int(idx)}"
        text = f"{name} {saved['swappiness']} {saved['page_cluster']}"  # what _zram_undo reads back
        rec = record("zram", text)
        block = Path("/sys/block") / name
        try:
            # "lzo [lzo-rle] lz4 ...": the bracketed one is the kernel's default
            words = (block / "comp_algorithm").read_text().split()
            default = next((w.strip("[]") for w in words if w.startswith("[")), words[0])
            chosen = algorithm if algorithm in [w.strip("[]") for w in words] else default
            (block / "comp_algorithm").write_text(chosen)
            (block / "disksize").write_text(str(disksize_mb << 20))
            dev = f"/dev/{name}"
            for _ in range(100):  # udev may create the node a moment after hot_add
                if Path(dev).exists():
                    break
                time.sleep(0.02)
            subprocess.run(["mkswap", dev], check=True, capture_output=True)
            subprocess.run(["swapon", "-p", "32767", dev], check=True, capture_output=True)
            _SYSCTL["swappiness"].write_text(str(swappiness))
            _SYSCTL["page_cluster"].write_text(str(page_cluster))
            zram = ZramSwap(dev, chosen, disksize_mb << 20, saved)
            key = _register(lambda: _zram_undo(text))
            try:
                yield zram
            finally:
                _unregister(key)
        finally:
            _zram_undo(text)
            forget(rec)


def _nested(name: str) -> str:
    """`name` under a unique pfi-test-<pid>-<n>/ parent unless its top segment already is one:
    a kubepods-shaped test group must never sit where a real kubelet's kubepods could be."""
    rel = name.strip("/")
    if not rel or ".." in Path(rel).parts:
        raise ValueError(f"bad cgroup name {name!r}")
    if rel.split("/", 1)[0].startswith("pfi-test-"):
        return rel
    return f"pfi-test-{os.getpid()}-{next(_counter)}/{rel}"


class MemoryHierarchy:
    """Where this machine's memory controller is: the v1 memory hierarchy (v1 and hybrid hosts:
    /sys/fs/cgroup/memory), or the unified tree when the controller is there (v2 only: EKS AL2023 and
    BottleRocket nodes, Debian 12). Names the files that differ between the two."""

    def __init__(self, root: Path, version: int) -> None:
        self.root, self.version = root, version
        self.limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
        self.usage_file = "memory.usage_in_bytes" if version == 1 else "memory.current"
        self.stat_majflt = "total_pgmajfault" if version == 1 else "pgmajfault"

    def __repr__(self) -> str:
        return f"MemoryHierarchy({str(self.root)!r}, v{self.version})"


def memory_hierarchy(cgroup_root: Path = CGROUP_ROOT) -> MemoryHierarchy | None:
    """The memory controller's hierarchy under cgroup_root, v1 first (on a hybrid host the unified
    tree has no controllers), or None when neither has it: where the demo makes its group too
    (app.collectors.cgroupmem.memory_hierarchy), with the file names of that version."""
    found = cgroupmem.memory_hierarchy(cgroup_root)
    return None if found is None else MemoryHierarchy(found[1], found[0])


def no_memory_controller_reason(cgroup_root: Path = CGROUP_ROOT) -> str:
    return (f"no memory controller under {cgroup_root} (neither {cgroup_root}/memory/memory.limit_in_bytes "
            f"nor memory in {cgroup_root}/cgroup.controllers)")


def _enable_memory(parent: Path, root: Path) -> None:
    """cgroup v2: children of `parent` get the memory controller only when its cgroup.subtree_control
    has it. A folder made here starts without: it is enabled there. The root's is the machine's
    (systemd enables memory there): never changed, a root without it is an error."""
    control = parent / "cgroup.subtree_control"
    if "memory" in control.read_text().split():
        return
    if parent == root:
        raise RuntimeError(f"the memory controller is not enabled for the children of {root} "
                           f"({control}); the machine's init enables it, tests do not")
    control.write_text("+memory")


@contextlib.contextmanager
def memory_cgroup(name: str, limit_mb: int | None, cgroup_root: Path = CGROUP_ROOT) -> Iterator[Path]:
    """A memory cgroup at <memory hierarchy>/pfi-test-<pid>-<n>/name (parents created as needed, e.g.
    name "kubepods/burstable/pod<uid>/<containerid>"; a name whose top segment is already
    "pfi-test-..." is used as it is): in the v1 memory hierarchy where there is one
    (CGROUP_MEMORY_ROOT), else in the unified tree when the memory controller is on it (v2), with
    memory enabled for the children of every folder on the way. The limit is memory.limit_in_bytes
    (v1) or memory.max (v2). Recorded in the run-state folder, and removed deepest first afterwards,
    with only the directories created here."""
    if cgroup_root == CGROUP_ROOT:
        require_marker("root", f"a memory cgroup ({name})")
    hierarchy = memory_hierarchy(cgroup_root)
    if hierarchy is None:
        raise RuntimeError(no_memory_controller_reason(cgroup_root))
    rel = _nested(name)
    group = hierarchy.root / rel
    created: list[Path] = []
    rec: Path | None = None
    cur = hierarchy.root
    for part in Path(rel).parts:
        if hierarchy.version == 2:
            _enable_memory(cur, hierarchy.root)  # before the child exists: it then has memory.max
        cur = cur / part
        if not cur.exists():
            if rec is None:
                rec = record("cgroup", str(cur))  # the topmost folder made here: the rest is under it
            make_group(cur)
            created.append(cur)

    def undo() -> None:
        remove_groups(created)
        if not created or not created[0].exists():
            forget(rec)

    key = _register(undo)
    try:
        if limit_mb is not None:
            (group / hierarchy.limit_file).write_text(str(limit_mb << 20))
        yield group
    finally:
        _unregister(key)
        undo()


@contextlib.contextmanager
def swap_workload(
    size_mb: int = 128, limit_mb: int = 64, name: str | None = None, kind: str = "anon", swap: str = "disk"
) -> Iterator[WorkloadProcess]:
    """A process touching size_mb of memory (kind "anon" or "shmem") inside the memory cgroup
    `name` (default "pfi-test-swap-<pid>-<n>", unique so concurrent test runs never share a group;
    other names go under a unique pfi-test-<pid>-<n>/ parent, see memory_cgroup) limited to
    limit_mb, so it swaps steadily. Swap is turned on if the machine has none (swap="disk", the
    test swap file), or a zram device is made for it as BottleRocket has (swap="zram": zram_swap())."""
    if kind not in ("anon", "shmem"):
        raise ValueError(kind)
    if swap not in ("disk", "zram"):
        raise ValueError(swap)
    if name is None:
        name = f"pfi-test-swap-{os.getpid()}-{next(_counter)}"
    exe = binary("swap_faults")
    swapper = zram_swap() if swap == "zram" else swap_enabled()
    with swapper, memory_cgroup(name, limit_mb) as group:
        proc = _start(f"pfi-workload-{kind}", exe, [str(size_mb), kind], wait_for_go=True)
        proc.kind, proc.cgroup = kind, group
        key = _register(lambda: _kill(proc))
        try:
            _release(proc, [group])
            yield proc
        finally:
            _unregister(key)
            _kill(proc)

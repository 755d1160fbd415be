"""Running a tracer process so that it can never outlive its caller.

`SupervisedProcess` starts a command in its own process group at a lower CPU priority, drains its
stdout on a thread into a bounded buffer (or a line callback), keeps the head of its stderr, and on
exit from the `with` block, whatever the reason (deadline, cancel, an exception, KeyboardInterrupt), stops it:
SIGINT, then SIGTERM, then SIGKILL to the whole group, and reaps it. An atexit hook kills whatever is
still running when the interpreter exits.

When this process is killed (SIGKILL: no atexit, no `finally`), the kernel stops the tracers: every
child gets PR_SET_PDEATHSIG=SIGKILL. That signal fires when the parent *thread* exits, not the
process, so children are forked by one long-lived spawner thread (the investigation's worker threads
come and go). A child that finds its parent already gone right after fork exits at once. What still
escapes (a tracer exec'd with file capabilities drops the setting) is found by the owner file in its
working directory (app.tracers.leftovers).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.tracers import leftovers

if TYPE_CHECKING:
    from app.tracers.base import TraceRequest

_live: set[SupervisedProcess] = set()
_live_lock = threading.Lock()

STDERR_KEEP = 64 * 1024
PR_SET_PDEATHSIG = 1
# The signal tracer children get when the thread that forked them (the spawner) dies. 0: none, which
# only the tests use to play a predecessor whose tracers escaped.
PDEATHSIG: int = signal.SIGKILL

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc to call: pdeathsig is skipped, the owner files remain
    _libc = None


def _child_setup(parent: int, deathsig: int, memlock: int | None) -> None:
    """Runs in the forked child before exec: die with the spawner thread; raise RLIMIT_MEMLOCK."""
    if deathsig and _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, deathsig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody to signal us
            os._exit(1)
    if memlock is not None:
        with contextlib.suppress(OSError, ValueError):
            _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            hard = hard if hard == resource.RLIM_INFINITY else max(hard, memlock)
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, hard))


class _Spawner:
    """One long-lived thread that forks every tracer, so PR_SET_PDEATHSIG means "this process died"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def spawn(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._queue = queue.SimpleQueue()  # after a fork the old thread does not exist here
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, args=(self._queue,),
                                                name="pfi-tracer-spawner", daemon=True)
                self._thread.start()
            q, thread = self._queue, self._thread
        if threading.current_thread() is thread:
            return make()
        fut: Future[subprocess.Popen[bytes]] = Future()
        q.put((make, fut))
        return fut.result()

    @staticmethod
    def _loop(q: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]]) -> None:
        while True:
            make, fut = q.get()
            try:
                fut.set_result(make())
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                fut.set_exception(e)


_spawner = _Spawner()


class SupervisedProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        max_output_bytes: int = 256 * 1024 * 1024,
        on_line: Callable[[bytes], None] | None = None,
        env: dict[str, str] | None = None,
        nice: int = 10,
        cwd: str | None = None,
        workdir: str | None = None,
        memlock_bytes: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.max_output_bytes = max_output_bytes
        self.on_line = on_line
        self.env = env
        self.nice = nice
        self.cwd = cwd or workdir
        self.workdir = workdir  # a leftovers.make_workdir folder: the tracer is recorded in its owner file
        self.memlock_bytes = memlock_bytes  # raise RLIMIT_MEMLOCK to this in the child (needs CAP_SYS_RESOURCE)
        self.proc: subprocess.Popen[bytes] | None = None
        self.output_bytes = 0  # all stdout bytes the process wrote, kept or not
        self.truncated = False  # stdout went past max_output_bytes; the rest was discarded
        self.lines: list[bytes] = []  # kept stdout lines (when there is no on_line callback)
        self.stderr = b""
        self.callback_error: BaseException | None = None
        self.killed_with: str | None = None  # the strongest signal stop() needed, if any
        self.started_by: threading.Thread | None = None  # the thread that called start()
        self._leader_start: int | None = None  # start time of the group leader (its pid is the pgid)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stdout_done = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SupervisedProcess:
        """Start the process; raises OSError (e.g. FileNotFoundError) when it cannot be run."""
        parent, deathsig, memlock = os.getpid(), PDEATHSIG, self.memlock_bytes

        def make() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: signals reach everything it forks
                env=self.env,
                cwd=self.cwd,
                preexec_fn=lambda: _child_setup(parent, deathsig, memlock),
            )

        self.proc = _spawner.spawn(make)
        self.started_by = threading.current_thread()
        self._leader_start = leftovers.starttime(self.proc.pid)
        with _live_lock:
            _live.add(self)
        if self.workdir is not None:
            with contextlib.suppress(OSError):
                leftovers.record_tracer(self.workdir, self.proc.pid)
        if self.nice:
            # Bounded CPU: tracing must not starve the node it investigates.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.nice)
        self._threads = [
            threading.Thread(target=self._read_stdout, name=f"stdout-{self.proc.pid}", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"stderr-{self.proc.pid}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> SupervisedProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        """Signal the whole process group, also after the leader exited: what it forked lives on in it."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            # Reaped: the group id stays reserved while a member lives; a process now holding that pid
            # (another start time) means the group is empty and the number was reused: leave it alone.
            now = leftovers.starttime(self.proc.pid)
            if now is not None and now != self._leader_start:
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float | None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGINT (lets the tracer flush), SIGTERM, SIGKILL; always reaps. Safe to call twice."""
        if self.proc is None:
            return None
        try:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
                if self.proc.poll() is not None:
                    break
                self.killed_with = signal.Signals(sig).name
                self.signal(sig)
                self.wait(wait)
        finally:
            if self.proc.poll() is None:  # interrupted above: do not leave it behind
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
            self.signal(signal.SIGKILL)  # the rest of its group (what it forked), if any
            for t in self._threads:
                t.join(timeout=5)
            for s in (self.proc.stdout, self.proc.stderr):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            with _live_lock:
                _live.discard(self)
        return self.proc.returncode

    # --- output ------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        kept = 0
        try:
            for line in self.proc.stdout:  # keeps draining past the bound so the tracer never blocks
                self.output_bytes += len(line)
                if kept + len(line) > self.max_output_bytes:
                    self.truncated = True
                    continue
                kept += len(line)
                if self.on_line is not None and self.callback_error is None:
                    try:
                        self.on_line(line)
                    except Exception as e:  # a parser bug must not hang the tracer
                        self.callback_error = e
                else:
                    with self._cond:
                        self.lines.append(line)
                        self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            self._stdout_done.set()
            with self._cond:
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            while chunk := os.read(self.proc.stderr.fileno(), 65536):  # one read: what is there now
                if len(self.stderr) < STDERR_KEEP:
                    self.stderr += chunk[: STDERR_KEEP - len(self.stderr)]
        except (OSError, ValueError):
            pass

    def wait_for_line(
        self, predicate: Callable[[bytes], bool], timeout: float, cancel: threading.Event | None = None
    ) -> bytes | None:
        """The first kept stdout line matching predicate, waiting up to timeout; None if the
        process ended, the time ran out or cancel was set."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._stdout_done.is_set() or (cancel is not None and cancel.is_set()):
                    return None
                self._cond.wait(min(left, 0.1))

    def wait_stdout_closed(self, timeout: float) -> bool:
        return self._stdout_done.wait(timeout)

    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")

    def stderr_head(self) -> str:
        """The stderr line that says what went wrong, for error messages."""
        return first_error_line(self.stderr_text())


_NOISE = (
    "RLIMIT_MEMLOCK",  # bpftrace 0.17 on every start, harmless
    "available_filter_functions",  # bpftrace listing traceable functions
    "[ perf record:",  # perf's progress lines
    "Events disabled",  # perf -D -1: its state until our "enable" (a perf that never acks printed only this)
    "Events enabled",
    "Attaching ",
    "not valid for",  # perf script: "'trace' not valid for software events. Ignoring."
)


def _is_noise(line: str) -> bool:
    return any(n in line for n in _NOISE)


def first_error_line(text: str) -> str:
    """The line of a tool's stderr that says what went wrong: the first one mentioning an error,
    else the first one that is not known noise."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _is_noise(ln)]
    for i, line in enumerate(lines):
        if "error" in line.lower():
            if line.rstrip(":").lower() in ("error", "warning") and i + 1 < len(lines):
                return f"{line} {lines[i + 1]}"  # perf: "Error:" on a line of its own, the reason below
            return line
    return lines[0] if lines else ""


def run_quick(
    argv: Sequence[str],
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
    *,
    workdir: str | None = None,
    memlock_bytes: int | None = None,
) -> tuple[int, str, str]:
    """Run a short command (a probe, a dry run); (returncode, stdout, stderr); -1 when it could not
    be started or timed out. Never leaves the process behind."""
    m = SupervisedProcess(argv, env=env, nice=0, max_output_bytes=1024 * 1024, workdir=workdir,
                          memlock_bytes=memlock_bytes)
    try:
        m.start()
    except OSError as e:
        return -1, "", f"{argv[0]}: {e.strerror or e}"
    try:
        rc = m.wait(timeout)
        m.wait_stdout_closed(2)
        if rc is None:
            return -1, b"".join(m.lines).decode(errors="replace"), f"{argv[0]} timed out after {timeout:.0f}s"
    finally:
        m.stop(grace=1)
    return rc, b"".join(m.lines).decode(errors="replace"), m.stderr_text()


def live_count() -> int:
    with _live_lock:
        return len(_live)


@atexit.register
def _kill_all() -> None:
    with _live_lock:
        procs = list(_live)
    for m in procs:
        with contextlib.suppress(Exception):
            m.signal(signal.SIGKILL)
            m.wait(2)


def kill_started_by(thread: threading.Thread) -> int:
    """SIGKILL the process group of every running process that `thread` started (a tracer thread
    that did not stop in time); how many."""
    with _live_lock:
        procs = [m for m in _live if m.started_by is thread]
    for m in procs:
        m.signal(signal.SIGKILL)
    return len(procs)


@dataclass
class WindowMarks:
    """Where a tracer's window is: started/stopped (a tracer's finally calls on_stop when it started only),
    and the monotonic times of its ends."""

    started: bool = False
    stopped: bool = False
    t_start: float = 0.0
    t_stop: float = 0.0


def hold_window(rec: SupervisedProcess, request: TraceRequest) -> float:
    """The tracing window, once the tracer is live: call on_start, then wait request.seconds, until
    request.cancel, or until the tracer exits by itself (the caller reads rec.poll() to tell).
    Returns when the window started."""
    t_start = time.monotonic()
    if request.on_start:
        request.on_start()
    deadline = t_start + request.seconds
    while (left := deadline - time.monotonic()) > 0:
        if request.cancel.wait(min(left, 0.2)) or rec.poll() is not None:
            break
    return t_start

"""The VM tier's own checks: they run inside the guest that scripts/vm/run.sh boots (`./test.sh --vm`):
Debian's 6.1 kernel with cgroup v2 only (the memory controller on the unified tree), kprobes, BTF and
zram, as on EKS AL2023 and BottleRocket nodes. Elsewhere they skip, saying so (tests/strict.py expects
that reason). Each check prints what it measured and appends it to $PFI_VM_CHECKS, which the host
prints after the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("PFI_VM_GUEST") == "1"

pytestmark = [
    pytest.mark.vm, pytest.mark.root, pytest.mark.workloads,
    pytest.mark.skipif(not IN_GUEST, reason="runs in the VM tier's guest only (./test.sh --vm boots it)"),
]

CGROUP = Path("/sys/fs/cgroup")
# How much slower than the host the guest runs, as scripts/vm/guest.sh measured it: the checks' waits scale by it.
SLOWDOWN = max(1.0, float(os.environ.get("PFI_VM_SLOWDOWN", "1") or 1))


def scaled(seconds: float) -> float:
    """A wait for the host's speed, for this guest's (at most 600 s: the guest run has its own deadline)."""
    return min(600.0, seconds * SLOWDOWN)


def measured(check: str, text: str) -> None:
    """What a check measured: printed, and kept for the host's summary."""
    line = f"{check}: {text}"
    print(line)
    if out := os.environ.get("PFI_VM_CHECKS"):
        with open(out, "a") as f:
            f.write(line + "\n")


def keep(name: str, text: str) -> None:
    """A file captured in the guest, brought back to the host with the results (a fixture's source)."""
    if out := os.environ.get("PFI_VM_CHECKS"):
        (Path(out).parent / name).write_text(text)


def test_guest_is_a_v2_only_node_with_kprobes() -> None:
    """The guest is the kernel the tool is for: cgroup2 at /sys/fs/cgroup with the memory controller,
    no v1 memory hierarchy, kprobe_events in tracefs, BTF, zram."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    fstype = next(line.split()[2] for line in mounts if line.split()[1:2] == [str(CGROUP)])
    controllers = (CGROUP / "cgroup.controllers").read_text().split()
    assert fstype == "cgroup2" and "memory" in controllers, (fstype, controllers)
    assert not (CGROUP / "memory").exists()
    assert Path("/sys/kernel/tracing/kprobe_events").exists()
    assert Path("/sys/kernel/btf/vmlinux").exists()
    assert Path("/sys/class/zram-control/hot_add").exists()
    measured("kernel", f"{os.uname().release}; {fstype} at {CGROUP} ({' '.join(controllers)}); kprobes, BTF, zram")


def test_probe_lists_every_tracer_as_available() -> None:
    """`pagefault-inspector probe` as a user runs it: every backend works on this kernel, the kprobe one
    included (on the v1 host it cannot)."""
    out = subprocess.run([sys.executable, "-m", "app.cli", "probe", "--format", "json"], capture_output=True,
                         text=True, timeout=300, check=True)
    rows = json.loads(out.stdout)
    from app.tracers.registry import ORDER

    assert [r["backend"] for r in rows] == list(ORDER)
    broken = [f"{r['backend']}: {r['reason']}" for r in rows if not r["available"]]
    assert not broken, broken
    measured("probe", ", ".join(r["backend"] for r in rows) + ": all available")


# --- limits on v2, the recommendation applied by its own command ------------------------------------------


def _rate(pid: int, seconds: float) -> float:
    from tests.workloads import majflt

    f0 = majflt(pid)
    time.sleep(seconds)
    return (majflt(pid) - f0) / seconds


def _pass_window(pid: int, mb: int) -> float:
    """A window that sees the whole memory fault once at the rate measured now (over 3 s), with 30% to
    spare: the matrix's whole_pass_window stops at 24 s, a third of a pass at a TCG guest's 800 faults/s
    under memory.high, and a window that saw part of the file recommends too little ("at least 96 MiB").
    The kprobe backend slows the workload (a kretprobe a fault), so its window may still end just short
    of a pass: the recommendation is then "at least" the whole file, and applying it is what is checked."""
    rate = max(1.0, _rate(pid, 3.0))
    return min(scaled(60), max(5.0, 1.3 * (mb << 20) / 4096 / rate))


def _rate_after(pid: int, before: float, pages: int, warmup_max: float = 90.0) -> float:
    """The process's major faults/s once the raised limit took: after one warm-up pass (it reads its
    memory back once, `pages` faults) or as soon as it faults under 1% of `before`, over 3 s."""
    from tests.workloads import majflt

    t0 = time.monotonic()
    start = last = majflt(pid)
    while time.monotonic() - t0 < scaled(warmup_max):
        time.sleep(0.5)
        now = majflt(pid)
        if now - start >= pages or now - last <= 0.005 * before:
            break
        last = now
    return _rate(pid, 3.0)


def _apply(command: str | None) -> None:
    """The recommendation's own command, run as the user would paste it."""
    assert command and command.startswith("echo ") and " > /sys/fs/cgroup/" in command, command
    subprocess.run(["sh", "-c", command], check=True, timeout=30)


def _table(row: str, tracer: str, cause: str, recommendation: str, before: float, after: float) -> None:
    measured("row", f"{row} | {tracer} | {cause} | {recommendation} | {before:,.0f} -> {after:,.0f} faults/s")


@pytest.mark.parametrize(("knob", "tracer"), [("memory.max", "perf-major"), ("memory.high", "bpftrace-kprobe")])
def test_limit_recommendation_applied_by_its_own_command(knob: str, tracer: str, tmp_path: Path) -> None:
    """A 128 MiB file re-read through mmap in a group that binds at 64 MiB: through memory.max, or
    through memory.high below a 256 MiB memory.max (Kubernetes MemoryQoS writes memory.high = requests
    + factor x (limit - requests)). The verdict is the limit, the recommendation names that knob, and
    its own command (`echo N > /sys/fs/cgroup/.../memory.{max,high}`), run as printed, makes the faults
    fall by 90% or more."""
    from app.config import Settings
    from app.investigation.diagnose import dominant
    from app.investigation.engine import investigate
    from app.investigation.recommend import headline
    from tests.service_support import require_tracers
    from tests.workloads import majflt
    from tests.workloads.scenarios import (
        FILE_MB,
        LIMIT_MB,
        _past_first_pass,
        scenario_workload,
        unique_parent,
    )

    require_tracers(tracer)
    high = knob == "memory.high"
    with scenario_workload("reread", cgroup=f"{unique_parent()}/job", limit_mb=4 * LIMIT_MB if high else LIMIT_MB,
                           data=tmp_path / "d.bin") as proc:
        assert proc.cgroup is not None
        if high:
            (proc.cgroup / "memory.high").write_text(str(LIMIT_MB << 20))
        _past_first_pass(proc, timeout=scaled(120))
        window = _pass_window(proc.pid, FILE_MB)
        report = investigate(Settings(tracer=tracer, kubelet_url=None, apiserver_fallback=False), seconds=window,
                             pids=[proc.pid])
        assert report.processes, (f"no process reported over {window:.0f} s (workload alive: "
                                  f"{proc.poll() is None}, majflt {majflt(proc.pid)}): {report.warnings} {report.tracer}")
        top = report.processes[0]
        assert top.pid == proc.pid and report.tracer.backend == tracer, report.tracer
        kind, _, _ = dominant(top)
        assert top.verdict is not None and top.verdict.cause.value == "container_memory_limit", top.verdict
        assert kind is not None and kind.value == "file"
        assert top.cgroup_memory is not None and top.cgroup_memory.version == 2
        rec = top.verdict.recommendation
        assert rec is not None and rec.knob == knob, rec
        assert rec.command is not None and rec.command.endswith(f"/{knob}'") or (rec.command or "").endswith(knob)
        assert LIMIT_MB << 20 < rec.recommended_limit_bytes <= (2 * FILE_MB + 32) << 20, rec
        before = top.major_faults_per_second
        _apply(rec.command)
        assert int((proc.cgroup / knob).read_text()) == rec.recommended_limit_bytes
        after = _rate_after(proc.pid, before, (FILE_MB << 20) // 4096)
    _table(f"file re-read, {knob} 64 MiB" + (" (memory.max 256 MiB)" if high else ""), tracer,
           top.verdict.cause.value, headline(rec), before, after)
    assert after <= 0.1 * before, f"at the recommended {rec.recommended_limit_bytes >> 20} MiB: {after:,.0f}/s " \
        f"(before: {before:,.0f}/s)"


def test_zram_swap_as_bottlerocket(tmp_path: Path) -> None:
    """An anonymous swapper at memory.max = 64 MiB with BottleRocket's swap (1 GiB zram, swappiness 200,
    page-cluster 0): swap-ins are its major faults, the verdict is the limit, and the recommendation,
    applied by its own command, stops them."""
    from app.config import Settings
    from app.investigation.diagnose import dominant
    from app.investigation.engine import investigate
    from app.investigation.recommend import headline
    from tests.workloads import majflt, swap_workload

    size_mb = 128
    with swap_workload(size_mb=size_mb, limit_mb=64, kind="anon", swap="zram") as proc:
        assert proc.cgroup is not None
        swaps = Path("/proc/swaps").read_text()
        keep("swaps-zram-guest.txt", swaps)
        assert "/dev/zram" in swaps, swaps
        deadline = time.monotonic() + scaled(120)
        while majflt(proc.pid) < (size_mb << 20) // 4096 // 4:  # swapping steadily
            assert time.monotonic() < deadline, "the swapper never swapped in"
            time.sleep(0.2)
        window = _pass_window(proc.pid, size_mb)
        report = investigate(Settings(tracer="auto", kubelet_url=None, apiserver_fallback=False), seconds=window,
                             pids=[proc.pid])
        assert report.processes, f"no process reported over {window:.0f} s: {report.warnings} {report.tracer}"
        top = report.processes[0]
        kind, _, _ = dominant(top)
        assert top.pid == proc.pid and report.tracer.exact, report.tracer
        assert top.verdict is not None and top.verdict.cause.value == "container_memory_limit", top.verdict
        assert kind is not None and kind.value == "swap"
        assert " from zram" in top.verdict.summary, top.verdict.summary
        assert report.node_stats.swap_backing == "zram", report.node_stats.swap_backing_basis
        rec = top.verdict.recommendation
        assert rec is not None and rec.knob == "memory.max", rec
        before = top.major_faults_per_second
        _apply(rec.command)
        after = _rate_after(proc.pid, before, (size_mb << 20) // 4096)
    n = report.tracer.sample_period  # auto above PFI_EXACT_MAX_RATE: one fault in n
    _table("anon swapper, memory.max 64 MiB, zram swap", report.tracer.backend + (f" 1/{n}" if n > 1 else ""),
           top.verdict.cause.value,
           headline(rec), before, after)
    assert after <= 0.1 * before, f"{after:,.0f}/s after (before: {before:,.0f}/s)"


# --- the article's kprobe method, and retried faults --------------------------------------------------------

RETRY_PROGRAM = """
BEGIN { printf("ready\\n"); }
kprobe:handle_mm_fault /pid == PID/ { @in[tid] = 1; }
kretprobe:handle_mm_fault /@in[tid]/ { @ret[retval & 0x404] = count(); delete(@in[tid]); }
END { clear(@in); }
"""
VM_FAULT_MAJOR, VM_FAULT_RETRY = 0x4, 0x400


def _stopped(pid: int) -> None:
    """Wait (bounded) until the process is in state T: its SIGSTOP took."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def test_kprobe_major_faults_match_majflt_and_retries_count_once(tmp_path: Path) -> None:
    """kprobe + kretprobe on handle_mm_fault() (the article's BottleRocket method) over a file re-read:
    a read that must wait for I/O returns VM_FAULT_MAJOR | VM_FAULT_RETRY (the mmap lock dropped), and
    the retry finds the page cached and returns neither; the kernel counts the fault once, as major, on
    the retry (FAULT_FLAG_TRIED). So returns with VM_FAULT_MAJOR set match majflt over the same
    interval, and the retried ones are most of them."""
    import re

    from tests.service_support import require_tracers
    from tests.workloads import majflt
    from tests.workloads.scenarios import _past_first_pass, scenario_workload, unique_parent

    require_tracers("bpftrace-kprobe")
    seconds = 5
    with scenario_workload("reread", cgroup=f"{unique_parent()}/job", data=tmp_path / "d.bin") as proc:
        _past_first_pass(proc, timeout=scaled(120))
        prog = RETRY_PROGRAM.replace("PID", str(proc.pid))
        # The same interval on both sides: the workload is stopped while bpftrace attaches and while it
        # detaches, and majflt is read while it is stopped (a fault in flight ends before the stop).
        os.kill(proc.pid, signal.SIGSTOP)
        bt = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert bt.stdout is not None
            for _ in range(10):  # "Attaching 3 probes..." comes first
                line = bt.stdout.readline()
                if line.strip() == "ready" or not line:
                    break
            f0 = majflt(proc.pid)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(seconds)
            os.kill(proc.pid, signal.SIGSTOP)
            _stopped(proc.pid)
            f1 = majflt(proc.pid)
            bt.send_signal(signal.SIGINT)  # END: the maps are printed, then the probes detach
            out, err = bt.communicate(timeout=scaled(120))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            if bt.poll() is None:
                bt.kill()
                bt.wait()
    assert line.strip() == "ready", (line, err)
    ret = {int(k): int(v) for k, v in re.findall(r"@ret\[(\d+)\]: (\d+)", out)}
    major = ret.get(VM_FAULT_MAJOR, 0) + ret.get(VM_FAULT_MAJOR | VM_FAULT_RETRY, 0)
    retried = ret.get(VM_FAULT_MAJOR | VM_FAULT_RETRY, 0) + ret.get(VM_FAULT_RETRY, 0)
    delta = f1 - f0
    measured("kprobe retries", f"majflt {delta:,}; kretprobe VM_FAULT_MAJOR {major:,} ({major / max(delta, 1):.3f}); "
             f"MAJOR|RETRY {ret.get(0x404, 0):,}, MAJOR only {ret.get(0x4, 0):,}, RETRY only {ret.get(0x400, 0):,}, "
             f"neither {ret.get(0, 0):,} (the retries' second calls and minor faults)")
    assert delta > 1000, f"the workload made only {delta} major faults in {seconds} s (bpftrace: {line!r} {err[-500:]!r})"
    assert abs(major - delta) <= 0.02 * delta, (major, delta, ret)  # as the engine's exact check
    assert retried >= 0.5 * major, ret

"""bpftrace's start deadline (PFI_BPFTRACE_START_TIMEOUT_SECONDS) also bounds the probe's test load: in the
VM tier's TCG guest loading major_faults.bt took longer than the 30 s that was written into the test load,
so `probe` and auto said bpftrace-major did not work although a longer deadline had been set. No root: a
fake bpftrace that takes 2 s to "load" (tests/needs.py: a fake in tmp is no real tracer)."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.tracers import _bpftrace


def _slow_bpftrace(tmp_path: Path) -> str:
    path = tmp_path / "bpftrace"
    path.write_text("#!/bin/sh\nsleep 2\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_the_test_load_waits_as_long_as_the_start_deadline(tmp_path: Path) -> None:
    bt = _slow_bpftrace(tmp_path)
    ok, why = _bpftrace.test_load(Settings(bpftrace_start_timeout_seconds=1.0), bt, "major_faults.bt")
    assert not ok and "timed out after 1s" in why, why
    ok, why = _bpftrace.test_load(Settings(bpftrace_start_timeout_seconds=20.0), bt, "major_faults.bt")
    assert ok, why

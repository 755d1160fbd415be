"""A pytest plugin for the VM tier's guest run (scripts/vm/guest.sh loads it with -p): a failure is
printed in full when it happens, not at the end, so a run that the host's deadline stops still shows
why the tests before it failed; and every outcome gets a line in $PFI_VM_CHECKS, with what a passed
test outside tests/test_vm_guest.py printed (those write their own lines), at most 10 lines of it."""

from __future__ import annotations

import os
import sys

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.failed or report.skipped):
        return
    if report.failed:
        sys.stdout.write(f"\n----- {report.nodeid} FAILED ({report.when}) -----\n{report.longreprtext}\n-----\n")
        sys.stdout.flush()
    if out := os.environ.get("PFI_VM_CHECKS"):
        with open(out, "a") as f:
            if report.passed and "test_vm_guest.py" not in report.nodeid:
                for line in [ln for ln in report.capstdout.splitlines() if ln.strip()][:10]:
                    f.write(f"  {line[:400]}\n")
            f.write(f"{report.outcome.upper()} {report.nodeid} ({report.duration:.0f} s)\n")

"""pytest plugin: print the diagnosis scenario matrix's accuracy table at the end of the run.

tests/test_scenarios.py appends one Outcome per row to OUTCOMES; the table is printed in the terminal
summary, so `./test.sh` shows it with or without -s. Registered in tests/conftest.py (pytest_plugins).
"""

from __future__ import annotations

from typing import Any

OUTCOMES: list[Any] = []  # tests.workloads.scenarios.Outcome, in run order


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    from tests.workloads.scenarios import table

    terminalreporter.write_sep("=", "diagnosis scenario matrix (tests/test_scenarios.py)")
    terminalreporter.write_line(table(OUTCOMES))

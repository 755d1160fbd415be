"""`python -m tests.workloads cleanup [RUN_STATE_ROOT]`: undo what dead test runs recorded (see
tests/workloads/__init__.py); scripts/cleanup.sh runs it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.workloads import cleanup_dead_runs


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "cleanup" or len(argv) > 2:
        print("usage: python -m tests.workloads cleanup [RUN_STATE_ROOT]", file=sys.stderr)
        return 2
    cleanup_dead_runs(Path(argv[1]) if len(argv) == 2 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# Undoes what a killed or crashed test run left on this machine, and only that: each run records
# the processes, cgroups and swap files it makes in its run-state folder (/run/pfi-test/<pid>-<starttime>/,
# see tests/workloads/__init__.py); runs whose process is gone get their records undone (processes
# by pid + start time, pfi-test-* cgroups deepest first, the test swap file when no live run uses it).
# Tracers a killed investigation left are found by their owner files (app.tracers.leftovers).
# Nothing is stopped by name, and nothing under a real kubepods hierarchy is touched: safe on a
# Kubernetes node and while other test runs are going.
set -u
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -m tests.workloads cleanup ${PFI_TEST_RUN_STATE:+"$PFI_TEST_RUN_STATE"} || echo "cleanup: test run-state cleanup failed" >&2
"$py" -m app.tracers.leftovers || true
exit 0

#!/usr/bin/env bash
# The whole test suite: installs what it needs, runs pytest, and cleans up the machine afterwards
# (swap off, test cgroups removed, background processes ended) even when a test fails.
# Run as root for the real-tracer tests; as another user those skip with the reason.
# ./test.sh --fast: only the tests that need no real workload, tracer, server or browser (markers in
# pyproject.toml; under a minute), for while you work. The whole suite (no --fast) is what CI runs.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = --fast ]; then
  shift
  set -- -m "not (workloads or servers or browser)" "$@"
fi
bash scripts/bootstrap.sh
trap 'bash scripts/cleanup.sh' EXIT INT TERM
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": a suite that ran nothing must not pass.
exit $rc

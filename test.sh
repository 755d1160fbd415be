#!/usr/bin/env bash
# The whole test suite: installs what it needs, runs pytest, and cleans up the machine afterwards
# (swap off, test cgroups removed, background processes ended) even when a test fails.
# Run as root for the real-tracer tests; as another user those skip with the reason.
#
#   ./test.sh            the whole suite (what CI runs, .ci/run), in two passes: the tests that start no
#                        real workload, tracer, server or browser on 4 workers, then the rest one at a time
#                        (their fault rates and deadlines must not share the machine with each other)
#   ./test.sh --fast     only the first kind (markers in pyproject.toml), for while you work: under a minute
#   ./test.sh ARGS...    pytest ARGS, in one process (a file, -k, -m ...)
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
trap 'bash scripts/cleanup.sh' EXIT INT TERM
pytest=(.venv/bin/python -m pytest)
parallel=(-n 4)
set +e
if [ "${1:-}" = --fast ]; then
  shift
  "${pytest[@]}" -m "not (workloads or servers or browser)" "${parallel[@]}" "$@"
  rc=$?
elif [ $# -gt 0 ]; then
  "${pytest[@]}" "$@"
  rc=$?
else
  "${pytest[@]}" -m "not (workloads or servers or browser or matrix)" "${parallel[@]}"
  rc=$?
  "${pytest[@]}" -m "workloads or servers or browser or matrix"
  rc2=$?
  [ $rc -ne 0 ] || rc=$rc2
fi
set -e
# pytest's 5 means "no tests collected": a suite that ran nothing must not pass.
exit $rc

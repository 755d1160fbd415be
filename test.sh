#!/usr/bin/env bash
# The whole test suite: installs what it needs, runs pytest, and cleans up the machine afterwards
# (swap off, test cgroups removed, background processes ended) even when a test fails.
# Run as root for the real-tracer tests; as another user those skip with the reason.
#
#   ./test.sh            the whole suite (what CI runs, .ci/run), in two passes run at once: on 6 workers
#                        the tests that start no real workload or tracer (the service ones included: fake
#                        engines on loopback ports of their own; Chromium on the report pages), and the real
#                        workloads and tracers, the fleet page in Chromium, the scenario matrix and the storm
#                        in two processes, where a test marked `machine` runs alone (tests/machine_lock.py)
#   ./test.sh --fast     only the first kind (markers in pyproject.toml; tests/needs.py fails a test that does
#                        more than its markers say), for while you work: about 50-57 s of CPU (README: Development)
#   ./test.sh --screenshots   makes the README's pictures (docs/img/) again from a real run (tests/test_screenshots.py)
#   ./test.sh --zoo      the whole limit zoo (tests/test_zoo.py), its procfs rows included (about 6-8 minutes)
#   ./test.sh --vm [ARGS] the VM tier (scripts/vm/run.sh): a cgroup-v2-only guest with kprobes and zram under
#                        QEMU runs the guest checks (ARGS: pytest args for the guest instead of its default set);
#                        PFI_VM_TIER=1 ./test.sh: the whole suite, then the VM tier
#   ./test.sh ARGS...    pytest ARGS, in one process (a file, -k, -m ...)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = --vm ]; then shift; bash scripts/bootstrap.sh; exec bash scripts/vm/run.sh "$@"; fi
bash scripts/bootstrap.sh
bg=() logs= lock_dir=
# On the way out, also when a test fails or the run is interrupted: the passes running in the background
# are stopped (their own pytest: each ends its workloads in its teardowns), then what the tests recorded
# is undone.
finish() {
  local p
  for p in "${bg[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; fi
  done
  rm -rf "$logs" "$lock_dir"
  bash scripts/cleanup.sh
}
trap finish EXIT
trap 'exit 130' INT TERM
# Python caches bytecode (__pycache__/, ignored by git, .dockerignore and the packaging tests) even where
# the caller's environment says not to: without it every worker, and every Python subprocess a test
# starts (the CLI, the tiny suites of tests/test_strict.py), compiles app/ and rewrites tests/ again:
# about 40% of the fast tier's CPU (measured: 101-109 s of CPU with PYTHONDONTWRITEBYTECODE=1, 65 s without).
unset PYTHONDONTWRITEBYTECODE
pytest=(.venv/bin/python -m pytest)
# worksteal: an idle worker takes queued tests from a busy one, so a worker left with a module of slow tests
# (replays, subprocesses) does not hold the run's end (fast tier, load 4-8, interleaved: 68 and 83 s wall
# with it, 106 and 133 s with the default --dist load)
parallel=(-n 6 --dist worksteal)
set +e
if [ "${1:-}" = --fast ]; then
  shift
  # 3 workers: measured fastest for these CPU-bound tests on 2 cores (48 s; 6 workers: 59 s, 2: 57 s; at
  # load 10-16, interleaved: 3 workers 201 and 207 s wall, 6 workers 276 and 297 s and a third more CPU)
  "${pytest[@]}" -m "not (workloads or servers or browser)" -n 3 --dist worksteal "$@"
  rc=$?
elif [ "${1:-}" = --screenshots ]; then
  shift
  PFI_SCREENSHOTS=1 "${pytest[@]}" tests/test_screenshots.py -k real_run "$@"
  rc=$?
elif [ "${1:-}" = --zoo ]; then
  shift
  "${pytest[@]}" tests/test_zoo.py "$@"
  rc=$?
elif [ $# -gt 0 ]; then
  "${pytest[@]}" "$@"
  rc=$?
else
  # Both passes at once (issue 25): the first pass's tests start no workload or tracer, and the second
  # pass's are CPU- and disk-bound real workloads that leave most of the first pass's CPU idle time to it.
  # The first pass: the tests that start no real workload or tracer, on 6 workers. Chromium on the report
  # pages needs no machine of its own (layout and content, 60 s timeouts): those six run there; the fleet
  # page's twelve instances (browser and servers: peers fetched within 10 s) in the second.
  # The second pass in two processes side by side (it was 958 s in one), split by module into halves of
  # about equal time (measured 2026-12-07 in full runs: the scenario matrix, tracers and engine; the limit
  # zoo's suite rows, the fallbacks, exact intervals, the kubelet client, the chart's capabilities, the demo,
  # the services, browsers, end-to-end runs and the small real-workload modules). Each process runs its
  # `machine` tests first (tests/machine_lock.py machine_first).
  # Every test of the second pass holds a lock (tests/machine_lock.py): a test marked `machine` holds it
  # alone (it investigates the whole node, or is timed against it); a swap row that sets zram or the vm
  # sysctls holds the swap lock alone; every other test shares the machine as on a busy node (its own
  # workload in its own cgroup, its pids investigated). The first pass takes no lock: its tests start no
  # workload or tracer (tests/needs.py fails one that does), so to a machine test they are CPU load, which
  # every test must stand; held back by each machine test (and by the wait for the other half's test to end
  # before it), the first pass took 297-330 s of the run's 776-864 s instead of running in their idle CPU. The second pass's first half prints as it runs (the scenario
  # matrix's table ends it); the first pass's log and the second half's follow when all have ended.
  # --durations: the second pass is most of the suite's time; CI's log says where it goes.
  second="(workloads or matrix or storm or (browser and servers)) and not zoo_full"
  first_half=(tests/test_scenarios.py tests/test_tracers.py tests/test_engine.py)
  lock_dir=$(mktemp -d /run/pfi-pass-lock.XXXXXX)
  export PFI_PASS_LOCK=$lock_dir
  logs=$(mktemp -d /tmp/pfi-passes.XXXXXX)
  env -u PFI_PASS_LOCK "${pytest[@]}" -m "not (workloads or matrix or storm) and not (browser and servers)" \
    "${parallel[@]}" > "$logs/1" 2>&1 &
  bg+=($!)
  "${pytest[@]}" -m "$second" --durations=15 "${first_half[@]/#/--ignore=}" > "$logs/3" 2>&1 &
  bg+=($!)
  echo "=========================== the second pass, first half (the others' logs follow it) ==========================="
  "${pytest[@]}" -m "$second" --durations=15 "${first_half[@]}"
  rc2=$?
  wait "${bg[0]}"; rc=$?
  wait "${bg[1]}"; rc3=$?
  bg=()
  echo "=========================== the first pass ==========================="
  cat "$logs/1"
  echo "=========================== the second pass, second half ==========================="
  cat "$logs/3"
  unset PFI_PASS_LOCK
  [ $rc -ne 0 ] || rc=$rc2
  [ $rc -ne 0 ] || rc=$rc3
  # PFI_VM_TIER=1: the VM tier too, after the suite (about 6 minutes with the guest image cached, 9-15 with its
  # first build; both CPUs). Not by default: the suite's budget is 10 minutes, and the image's first build
  # fetches Debian packages.
  if [ "${PFI_VM_TIER:-0}" = 1 ]; then
    echo "=========================== the VM tier (PFI_VM_TIER=1) ==========================="
    bash scripts/vm/run.sh; rc_vm=$?
    [ $rc -ne 0 ] || rc=$rc_vm
  fi
fi
set -e
# pytest's 5 means "no tests collected": a suite that ran nothing must not pass.
exit $rc

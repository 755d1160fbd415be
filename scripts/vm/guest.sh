#!/bin/bash
# Runs inside the VM tier's guest (started by the image's /sbin/pfi-guest-init from the 9p share):
# unpacks the checkout, enables the memory controller for the root's children as a node's systemd
# does, and runs the guest checks with pytest under CI=true (an unexpected skip fails). Results go
# back through the share: results/pytest.log, results/checks.txt (what each check measured), rc.
set -u
res=/share/results
awk '{printf "%d\n", $1}' /proc/uptime > "$res/booted-after"
echo "pfi-guest: $(uname -r), up $(cat "$res/booted-after") s; cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
mkdir -p /srv/pfi && tar -xf /share/src.tar -C /srv/pfi || { echo 1 > "$res/rc"; exit 1; }
cd /srv/pfi
echo "+memory +pids +io +cpu" > /sys/fs/cgroup/cgroup.subtree_control
modprobe zram num_devices=0   # a module in Debian (built in on BottleRocket); the tests hot-add their device
printf '#!/bin/sh\nPYTHONPATH=/srv/pfi exec /opt/pfi-venv/bin/python -m app.cli "$@"\n' > /usr/local/bin/pagefault-inspector
chmod 0755 /usr/local/bin/pagefault-inspector
# .pyc files are written (the root is a throwaway overlay): each Python the checks start imports the
# project compiled once, not from source again.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPATH=/srv/pfi:/srv/pfi/scripts/vm CI=true PFI_VM_GUEST=1 PFI_VM_CHECKS="$res/checks.txt"
# How slow this guest is, measured now: the same Python work as the host just did (scripts/vm/speed.py),
# and bpftrace's time from start to BEGIN (what the tracers' start deadlines wait for).
host=$(cat /share/host-speed 2>/dev/null || echo 0.05)
guest=$(python3 scripts/vm/speed.py)
t0=$(date +%s.%N); bpftrace -e 'BEGIN { exit(); }' >/dev/null 2>&1; t1=$(date +%s.%N)
read -r slowdown attach start_timeout <<<"$(python3 -c "
h, g, a = float('$host'), float('$guest'), $t1 - $t0
print(f'{max(1.0, g / h):.1f}', f'{a:.1f}', int(min(600, max(30, 10 * a))))")"
export PFI_VM_SLOWDOWN=$slowdown
# The tracers' start deadlines (settings: perf's ack, bpftrace's attach and test load; 15 and 30 s by
# default) become 10x what bpftrace took to start here, at least 30 s.
export PFI_PERF_START_TIMEOUT_SECONDS=$start_timeout PFI_BPFTRACE_START_TIMEOUT_SECONDS=$start_timeout
echo "guest speed: Python ${guest} s here vs ${host} s on the host (${slowdown}x slower); bpftrace started in ${attach} s;" \
  "tracer start deadlines ${start_timeout} s (PFI_PERF_START_TIMEOUT_SECONDS, PFI_BPFTRACE_START_TIMEOUT_SECONDS); test budgets x${slowdown}" \
  | tee -a "$res/checks.txt"
eval "set -- $(cat /share/pytest-args)"
if [ $# -eq 0 ]; then echo "pfi-guest: no pytest arguments (scripts/vm/run.sh gives them)"; echo 2 > "$res/rc"; exit 2; fi
# The guest's own deadline, inside the host's: a hung test still leaves a result behind.
# schemathesis' plugin (the host's API fuzz) is not loaded: ~25 s of imports under TCG, for nothing here.
timeout -k 10 "${PFI_VM_GUEST_DEADLINE:-1700}" python -m pytest -p no:cacheprovider -p no:schemathesis -p pytest_guest \
  -rfEs -v "$@" 2>&1 \
  | tee "$res/pytest.log"
rc=${PIPESTATUS[0]}
# The matrix's own table (row, tracer, cause, source, subject, recommendation with faults/s before -> after).
awk '/diagnosis scenario matrix/{on=1} on{print} /diagnosis accuracy/{on=0}' "$res/pytest.log" > "$res/table.txt"
echo "$rc" > "$res/rc"
echo "pfi-guest: pytest exit $rc after $(awk '{printf "%d", $1}' /proc/uptime) s of uptime"
sync

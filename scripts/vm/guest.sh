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
export PYTHONPATH=/srv/pfi:/srv/pfi/scripts/vm CI=true PFI_VM_GUEST=1 PFI_VM_CHECKS="$res/checks.txt" PYTHONDONTWRITEBYTECODE=1
eval "set -- $(cat /share/pytest-args)"
if [ $# -eq 0 ]; then
  # The guest's default set: its own checks, the matrix's v2 limit rows (host-shaped groups and
  # kubepods.slice pods on the unified tree, the recommendation applied and the faults measured after),
  # the quiet row, the kprobe backend's real-tracing tests, and the demo as shipped.
  m=tests/test_scenarios.py::test_scenario
  set -- --timeout 900 tests/test_vm_guest.py \
    "$m[pod v2: file at pod limit [auto]]" "$m[pod v2: anon at container limit [procfs]]" \
    "$m[quiet: trickle of cold code reads, 10/s [auto]]" \
    tests/test_demo.py::test_demo_prints_a_limit_verdict_naming_its_file_and_leaves_nothing
fi
# The guest's own deadline, inside the host's: a hung test still leaves a result behind.
timeout -k 10 "${PFI_VM_GUEST_DEADLINE:-1700}" python -m pytest -p no:cacheprovider -p pytest_guest -rfEs -v "$@" 2>&1 \
  | tee "$res/pytest.log"
rc=${PIPESTATUS[0]}
echo "$rc" > "$res/rc"
echo "pfi-guest: pytest exit $rc after $(awk '{printf "%d", $1}' /proc/uptime) s of uptime"
sync

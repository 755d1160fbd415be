#!/usr/bin/env bash
# Undoes whatever a test run may have left on this machine, even after a crash: swap files the
# tests enabled, test cgroups, and tracers or servers they started. Safe to run any time.
set -u
for f in $(swapon --show=NAME --noheadings 2>/dev/null); do
  case "$f" in *pfi-test*|*pagefault-inspector*) swapoff "$f" 2>/dev/null; rm -f "$f";; esac
done
for d in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/*/pfi-test* /sys/fs/cgroup/unified/kubepods* /sys/fs/cgroup/unified/pfi-test*; do
  [ -d "$d" ] || continue
  # Deepest first: a cgroup can only be removed once it has no children and no tasks.
  find "$d" -depth -type d | while read -r g; do
    if [ -f "$g/cgroup.procs" ]; then
      for p in $(cat "$g/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    fi
    sleep 0.05; rmdir "$g" 2>/dev/null
  done
done
# Tracers a SIGKILLed run left behind (they work in /tmp/pfi-perf-* and /tmp/pfi-bt-*).
pkill -f 'perf record .*--control=fifo:/tmp/pfi-perf-' 2>/dev/null
pkill -f 'bpftrace .*/tmp/pfi-bt-' 2>/dev/null
pkill -f 'pfi-workload' 2>/dev/null
pkill -f 'pfi-test' 2>/dev/null
rm -rf /tmp/pfi-perf-* /tmp/pfi-bt-* 2>/dev/null
swapoff /var/tmp/pfi-test-swap 2>/dev/null; rm -f /var/tmp/pfi-test-swap /run/pfi-test-swap.lock /run/pfi-test-swap.users
exit 0

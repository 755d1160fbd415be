#!/usr/bin/env bash
# The VM tier: boots Debian's 6.1 kernel (cgroup v2 only, kprobes, BTF, zram) under QEMU with the
# current checkout and runs the guest checks (scripts/vm/guest.sh: pytest -m vm and the matrix's
# rows inside the guest), then prints their results. `./test.sh --vm` runs this.
#
#   scripts/vm/run.sh [PYTEST ARGS...]   (as root; extra args go to the guest's pytest)
#
# The guest image is built once and cached outside the checkout (scripts/vm/build-image.sh,
# PFI_VM_CACHE, default /var/cache/pagefault-inspector-vm). Each boot gets a deadline
# (PFI_VM_DEADLINE seconds, default 1800); QEMU runs in its own process group and is killed by that
# id when the deadline passes or this script is interrupted; the root disk is opened with
# snapshot=on (the image never changes); the checkout goes in through a 9p share of a temporary
# folder that also takes the results back (PFI_VM_RESULTS: a folder to keep them in). Nothing is
# mounted on the host.
#
# TCG, single-threaded: KVM fails on this host ("failed to set MSR 0x10a"), and multi-threaded TCG
# crashed the guest kernel when kprobes were attached and detached while a process faulted.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "vm: needs root (builds the image, runs the tracers in the guest)" >&2; exit 1; }
t_start=$(date +%s)
image=${PFI_VM_IMAGE:-$(bash scripts/vm/build-image.sh)}  # PFI_VM_IMAGE: a built image directory, as is
t_built=$(date +%s)
deadline=${PFI_VM_DEADLINE:-1800}
mem=${PFI_VM_MEMORY:-3072}
accel=${PFI_VM_ACCEL:-tcg,thread=single}
run=$(mktemp -d /tmp/pfi-vm.XXXXXX)
qpid=
finish() {
  local rc=$?
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    echo "vm: stopping QEMU (pid $qpid, its process group)" >&2
    kill -TERM -- "-$qpid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$qpid" 2>/dev/null || true
  fi
  if [ -n "${PFI_VM_RESULTS:-}" ] && [ -d "$run/share/results" ]; then
    mkdir -p "$PFI_VM_RESULTS" && cp -a "$run/share/results/." "$PFI_VM_RESULTS/"
  fi
  if [ "$rc" != 0 ] && [ -s "$run/share/results/pytest.log" ]; then
    echo "vm: the guest's pytest.log ends:" >&2; tail -n 60 "$run/share/results/pytest.log" >&2
  fi
  rm -rf "$run"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
mkdir -p "$run/share/results"
# The checkout as it is now (uncommitted changes too), without the host's venv, git and caches.
tar -cf "$run/share/src.tar" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
    --exclude=./.pytest_cache --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./tests/workloads/bin \
    --exclude='./*.egg-info' .
install -m 0755 scripts/vm/guest.sh "$run/share/guest.sh"
# The host's time for the guest's speed probe, now (the host is busy too): the guest scales its tests'
# budgets and the tracers' start deadlines by how much slower it runs the same thing.
python3 scripts/vm/speed.py > "$run/share/host-speed"
: > "$run/share/pytest-args"
[ $# -eq 0 ] || printf '%q ' "$@" > "$run/share/pytest-args"  # none: the guest's default set
echo "vm: booting $(cat "$image/kernel-version") (image $image, $accel, ${mem} MiB, deadline ${deadline} s)" >&2
# setsid: QEMU leads its own process group, so the trap stops it and only it.
setsid qemu-system-x86_64 \
  -machine q35 -accel "$accel" -cpu max -smp 1 -m "$mem" -bios /usr/share/qemu/qboot.rom \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" \
  -append "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=4 tsc=reliable" \
  -drive "file=$image/root.img,format=raw,if=virtio,snapshot=on" \
  -virtfs "local,path=$run/share,mount_tag=share,security_model=none,id=share" \
  -nic none -display none -no-reboot -serial "file:$run/console.log" -monitor none \
  </dev/null >"$run/qemu.log" 2>&1 &
qpid=$!
touch "$run/console.log"
tail -n +1 -f --pid="$qpid" "$run/console.log" &
t_boot=$(date +%s)
while kill -0 "$qpid" 2>/dev/null; do
  if [ $(($(date +%s) - t_boot)) -ge "$deadline" ]; then
    echo "vm: FAILED: the guest ran past its ${deadline} s deadline" >&2
    exit 1
  fi
  sleep 1
done
wait "$qpid" || true
qpid=
sleep 0.3
t_end=$(date +%s)
[ -s "$run/qemu.log" ] && sed 's/^/qemu: /' "$run/qemu.log" >&2
res=$run/share/results
for f in checks.txt table.txt; do [ -s "$res/$f" ] && cat "$res/$f"; done
booted=$(cat "$res/booted-after" 2>/dev/null || echo '?')
echo "vm: image $((t_built - t_start)) s (cached: $([ $((t_built - t_start)) -lt 5 ] && echo yes || echo no)), boot to checks ${booted} s, guest run $((t_end - t_boot)) s, total $((t_end - t_start)) s; image on disk $(du -sh "$image" | cut -f1)"
if [ ! -f "$res/rc" ]; then
  echo "vm: FAILED: the guest wrote no result (see the console above)" >&2
  exit 1
fi
rc=$(cat "$res/rc")
[ "$rc" = 0 ] && echo "vm: guest checks passed" || echo "vm: FAILED: guest pytest exit $rc" >&2
exit "$rc"

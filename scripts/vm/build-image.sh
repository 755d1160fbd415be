#!/usr/bin/env bash
# Builds the VM tier's guest once and caches it outside the checkout: Debian's linux-image-amd64
# kernel (6.1: cgroup v2, kprobes, BTF, zram), a debootstrapped bookworm root (python3, bpftrace,
# linux-perf, gcc, util-linux) with the project's Python dependencies copied from .venv, as an ext4
# image made with mkfs.ext4 -d (no loop device, nothing mounted on the host), and a busybox
# initramfs that loads virtio/ext4/9p and hands over to the guest's init. The project itself is not
# in the image: scripts/vm/run.sh shares the current checkout with each boot.
#
#   scripts/vm/build-image.sh      prints the cache directory (builds it first when missing)
#
# Keyed by a hash of this script, the guest init and the project's dependencies (pyproject.toml's
# [project] dependencies and extras, not the rest of the file); a directory
# is used only when its "done" file exists, so a killed build is rebuilt, never half used.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${PFI_VM_CACHE:-/var/cache/pagefault-inspector-vm}
suite=bookworm
mirror=${PFI_VM_MIRROR:-http://deb.debian.org/debian}
deps=$(.venv/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(p["dependencies"], p.get("optional-dependencies"))' 2>/dev/null || echo "no .venv")
key=$( (cat scripts/vm/build-image.sh scripts/vm/guest-init; echo "$deps") | sha256sum | cut -c1-16)
out=$cache/$key
if [ -f "$out/done" ]; then echo "$out"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "vm: building the guest image needs root (debootstrap)" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "vm: no .venv: run scripts/bootstrap.sh first" >&2; exit 1; }
need=()
for t in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 mkfs.ext4:e2fsprogs cpio:cpio; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "vm: installing host packages: ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
cleanup() {
  # debootstrap mounts proc/sys in the target while it installs; a killed build may leave them:
  # unmount everything under the build directory (deepest first) before removing it, and never
  # remove a directory that still has a mount under it.
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do umount -l "$m" || true; done
  if findmnt -rn -o TARGET | grep -qF "$work/"; then
    echo "vm: mounts remain under $work; not removing it" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t0=$(date +%s)
root=$work/root
include=python3,bpftrace,linux-perf,gcc,libc6-dev,procps,util-linux,kmod,openssl,busybox-static
# The debootstrapped root is kept (keyed by suite, mirror and packages) so that a change to the steps
# below, or a failure in them, rebuilds in about a minute instead of a few.
boot=$cache/debootstrap-$(echo "$suite $mirror $include" | sha256sum | cut -c1-16)
if [ ! -d "$boot" ]; then
  echo "vm: debootstrap $suite (a few minutes)" >&2
  debootstrap --variant=minbase --include="$include" "$suite" "$work/boot" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  mv "$work/boot" "$boot"
fi
cp -a "$boot" "$root"
# The kernel: extracted from Debian's package (its postinst would build an initramfs we do not use).
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { echo "vm: cannot find the package behind linux-image-amd64 (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) || { echo "vm: apt-get download $kpkg failed" >&2; exit 1; }
# Not extracted onto the root: its lib/ would replace the merged-/usr symlink lib -> usr/lib.
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
mkdir -p "$root/usr/lib/modules" "$root/boot"
cp -a "$work/kernel/lib/modules/." "$root/usr/lib/modules/"
cp -a "$work/kernel/boot/." "$root/boot/"
kver=${kpkg#linux-image-}
chroot "$root" depmod "$kver"   # the guest's kmod: the host may have none
# The project's Python dependencies: the host's .venv (same Debian, same python3.11) without what
# only the host tiers use (Helm engine, browser driver, schema bundle, linters' caches), with pip's
# compiled .pyc files (CPython 3.11's, and tar keeps the sources' mtimes they are checked against): the
# guest does not compile pydantic, fastapi and the kubernetes client again in every Python it starts.
chroot "$root" python3 -m venv --without-pip /opt/pfi-venv
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tar -C "$site" --exclude='./helm_python*' --exclude='./playwright*' --exclude='./kubernetes_validate*' \
    --exclude='./__editable__*' --exclude='./pagefault_inspector*' -cf - . \
  | tar -C "$root/opt/pfi-venv/lib/python3.11/site-packages" -xf -
rm -rf "$root/opt/pfi-venv/bin/python"*
ln -s /usr/bin/python3 "$root/opt/pfi-venv/bin/python3"; ln -s python3 "$root/opt/pfi-venv/bin/python"
install -m 0755 scripts/vm/guest-init "$root/sbin/pfi-guest-init"
mkdir -p "$root/share"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root/boot"/initrd* 2>/dev/null || true
# The initramfs: busybox, and the modules (with their dependencies, in order) for the root disk and
# the 9p share.
ird=$work/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$root/bin/busybox" "$ird/bin/busybox"   # the guest's busybox-static
: > "$ird/modules.order"
chroot "$root" modprobe -a -S "$kver" --show-depends virtio_pci virtio_blk ext4 \
  | awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' | while read -r ko; do
    cp "$root$ko" "$ird/lib/modules/"; echo "/lib/modules/$(basename "$ko")" >> "$ird/modules.order"
  done
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "$m" 2>/dev/null; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 /dev/vda /newroot || { echo "pfi-initrd: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/pfi-guest-init
INIT
chmod 0755 "$ird/init"
stage=$work/out; mkdir -p "$stage"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$stage/initrd.gz"
cp "$root/boot/vmlinuz-$kver" "$stage/vmlinuz"
echo "$kver" > "$stage/kernel-version"
used=$(du -sm "$root" | cut -f1)
# Room for the tests' own files (the writes go to a -snapshot overlay; the image stays as built).
mkfs.ext4 -q -F -L pfiroot -d "$root" "$stage/root.img" "$((used + 1536))M" >&2
echo "$((($(date +%s) - t0))) s" > "$stage/build-time"
rm -rf "$out"; mv "$stage" "$out"; touch "$out/done"
# Images of other keys (an older recipe or dependency set) are not used again: removed.
for old in "$cache"/*; do
  case "${old##*/}" in [0-9a-f][0-9a-f][0-9a-f][0-9a-f]*) [ "$old" = "$out" ] || [ ${#old} -ne $((${#cache} + 17)) ] || rm -rf "$old";; esac
done
echo "vm: built $out in $(cat "$out/build-time") ($(du -sh "$out" | cut -f1) on disk)" >&2
echo "$out"

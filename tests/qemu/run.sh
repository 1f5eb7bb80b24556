#!/usr/bin/env bash
# poise on a real kernel: boots Debian's own kernel under QEMU (TCG: no KVM is
# needed) with two emulated NVDIMMs, and runs poise inside the guest on real
# device-dax namespaces, where memory failures come from the kernel itself
# (madvise(MADV_HWPOISON), debugfs hwpoison/corrupt-pfn) as real SIGBUS signals.
#
# Usage: tests/qemu/run.sh [BUILD_DIR]      (default build/release, built first)
# Needs qemu-system-x86, busybox-static, ndctl and cpio (scripts/setup installs
# them) and Debian's package archive, from which the kernel package is fetched
# once with `apt-get download` into BUILD_DIR/qemu/.
#
# Two boots share the NVDIMMs' backing files: the first formats and runs every
# check (tests/qemu/guest.sh), the second is a reboot that checks that what the
# first left on the device is found again (the backing files are mapped shared,
# so this is not a test of unflushed stores). Prints one line per check ("ok - ..." or
# "not ok - ..."); exits non-zero if any check failed or a guest did not finish.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
work=$build/qemu
mkdir -p "$work"
work=$(cd "$work" && pwd)

for tool in qemu-system-x86_64 busybox ndctl cpio apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "qemu: $tool is missing (run scripts/setup)" >&2; exit 2; }
done
[ -x "$build/src/cli/poise" ] && [ -x "$build/tests/dax_guest_test" ] || {
  echo "qemu: $build has no poise or dax_guest_test: build it first (scripts/build release)" >&2
  exit 2
}

# --- the kernel: Debian's linux-image-amd64, as the archive has it ----------
download() {  # download PACKAGE into $work; the package lists are refreshed once if it is not found
  (cd "$work" && apt-get download "$1" 2>"$work/apt.err") && return 0
  echo "qemu: apt-get download $1 failed ($(grep -v '^W:' "$work/apt.err" | head -n 1)); refreshing the package lists"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  (cd "$work" && apt-get download "$1" 2>"$work/apt.err") && return 0
  echo "qemu: cannot fetch $1 from Debian's archive: $(grep -v '^W:' "$work/apt.err" | head -n 3)" >&2
  exit 2
}
kernel_deb=$(ls "$work"/linux-image-[0-9]*-amd64_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$kernel_deb" ]; then
  echo "qemu: fetching Debian's kernel package"
  download linux-image-amd64
  meta=$(ls "$work"/linux-image-amd64_*.deb | head -n1)
  package=$(dpkg-deb -f "$meta" Depends | grep -o 'linux-image-[0-9][^ ,]*' | head -n1)
  [ -n "$package" ] || { echo "qemu: linux-image-amd64 names no kernel package" >&2; exit 2; }
  download "$package"
  kernel_deb=$(ls "$work"/linux-image-[0-9]*-amd64_*.deb | head -n1)
fi
kroot=$work/kernel
if [ ! -d "$kroot/boot" ]; then
  rm -rf "$kroot" && mkdir -p "$kroot"
  dpkg-deb -x "$kernel_deb" "$kroot"
fi
kver=$(ls "$kroot/lib/modules" | head -n1)
vmlinuz=$kroot/boot/vmlinuz-$kver

# --- the initramfs: busybox, ndctl, poise and the libraries they load --------
ir=$work/initramfs
rm -rf "$ir" && mkdir -p "$ir"/{bin,dev,proc,sys,tmp,modules}
cp /usr/bin/busybox "$ir/bin/"
copy_with_libraries() {
  local binary lib
  for binary in "$@"; do
    cp -L "$binary" "$ir/bin/"
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      mkdir -p "$ir$(dirname "$lib")"
      cp -L "$lib" "$ir$lib"
    done
  done
}
copy_with_libraries "$(command -v ndctl)" "$build/src/cli/poise" "$build/tests/dax_guest_test"
# The modules in the order they load (each after what it needs); a kernel that
# ships them compressed has them unpacked here (busybox's insmod takes plain ones).
for module in libnvdimm nfit nd_btt nd_pmem device_dax dax_pmem hwpoison-inject; do
  file=$(find "$kroot/lib/modules/$kver" -name "$module.ko" -o -name "$module.ko.xz" -o -name "$module.ko.zst" | head -n1)
  case "$file" in
    *.ko) cp "$file" "$ir/modules/" ;;
    *.ko.xz) xz -dc "$file" >"$ir/modules/$module.ko" ;;
    *.ko.zst) zstd -qdc "$file" >"$ir/modules/$module.ko" ;;
    *) echo "qemu: kernel $kver has no module $module" >&2; exit 2 ;;
  esac
done
cp tests/qemu/guest.sh "$ir/guest.sh"
cat > "$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs none /sys/kernel/debug
mount -t tmpfs tmp /tmp
phase=$(sed -n 's/.*poise\.phase=\([a-z]*\).*/\1/p' /proc/cmdline)
sh /guest.sh "$phase"
echo "guest: exit $?"
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.gz"

# --- two boots on the same NVDIMMs -------------------------------------------
rm -f "$work/nvdimm0.img" "$work/nvdimm1.img"
truncate -s 256M "$work/nvdimm0.img"
truncate -s 128M "$work/nvdimm1.img"
boot() {  # boot PHASE: runs guest.sh PHASE, its console in $work/PHASE.log
  local phase=$1
  timeout 900 qemu-system-x86_64 -machine pc,nvdimm=on -cpu max -smp 1 -m 1G,slots=4,maxmem=4G \
    -object memory-backend-file,id=mem0,share=on,mem-path="$work/nvdimm0.img",size=256M \
    -device nvdimm,id=nvdimm0,memdev=mem0 \
    -object memory-backend-file,id=mem1,share=on,mem-path="$work/nvdimm1.img",size=128M \
    -device nvdimm,id=nvdimm1,memdev=mem1 \
    -kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet poise.phase=$phase" \
    -display none -serial stdio -monitor none -no-reboot > "$work/$phase.log" 2>&1 || true
  tr -d '\r' < "$work/$phase.log" | grep -E '^(ok|not ok|#) ' || true
  if ! tr -d '\r' < "$work/$phase.log" | grep -q '^guest: exit 0$'; then
    echo "not ok - the $phase boot did not finish cleanly; its console: $work/$phase.log" >&2
    tr -d '\r' < "$work/$phase.log" | tail -n 40 >&2
    return 1
  fi
}
start=$(date +%s)
status=0
boot first || status=1
boot again || status=1
echo "qemu: kernel $kver, $(( $(date +%s) - start )) s for two boots"
if [ $status -ne 0 ] || grep -hq '^not ok' <(tr -d '\r' < "$work/first.log") <(tr -d '\r' < "$work/again.log"); then
  echo "qemu: FAILED" >&2
  exit 1
fi
echo "qemu: all checks passed"

#!/bin/sh
# Prepares the nested Linux-guest harness (see shared TESTING.md), once:
#   OUT/kernel/          the Debian cloud kernel package, unpacked
#   OUT/vmlinuz          its bzImage (both L1 and L2 boot it)
#   OUT/l2.cpio.gz       the L2 initramfs: busybox and an /init that
#                        reports and then obeys "poweroff"/"reboot" typed
#                        on its serial console
# Needs: apt-get (to download the kernel package), dpkg-deb, busybox-static, cpio.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: prepare.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

package="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
[ -n "$package" ] || { echo "prepare.sh: cannot find the Debian cloud kernel package (apt-get update?)" >&2; exit 1; }
if [ ! -f "$out/kernel/.unpacked-$package" ]; then
    rm -rf "$out/kernel" "$out/download"
    mkdir -p "$out/download"
    (cd "$out/download" && apt-get download "$package" >/dev/null)
    dpkg-deb -x "$out"/download/*.deb "$out/kernel"
    rm -rf "$out/download"
    touch "$out/kernel/.unpacked-$package"
fi
cp "$out"/kernel/boot/vmlinuz-* "$out/vmlinuz"

root="$out/l2-root"
rm -rf "$root"
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/modules"
cp /bin/busybox "$root/bin/busybox"
# The ACPI power button, evdev and virtio (found through the DSDT's
# LNRO0005 entries by virtio_mmio) are modules in this kernel.
for module in drivers/input/evdev drivers/acpi/button drivers/virtio/virtio_ring \
        drivers/virtio/virtio drivers/virtio/virtio_mmio drivers/char/hw_random/virtio-rng \
        drivers/block/virtio_blk fs/fat/fat fs/fat/vfat fs/nls/nls_cp437 fs/nls/nls_ascii; do
    cp "$out"/kernel/lib/modules/*/kernel/$module.ko "$root/modules/"
done
cp "$here/l2-init" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/l2.cpio.gz"
echo "$out"

#!/bin/sh
# Prepares the nested Linux-guest harness (see shared TESTING.md), once:
#   OUT/kernel/          the Debian cloud kernel package, unpacked
#   OUT/vmlinuz          its bzImage (both L1 and L2 boot it)
#   OUT/l2.cpio.gz       the L2 initramfs: busybox and an /init that
#                        reports and then obeys "poweroff"/"reboot" typed
#                        on its serial console
#   OUT/images/          disk images made by QEMU's qemu-img for L2: a qcow2
#                        layer over a raw base, and a compressed qcow2
#                        container disk (with its sha256)
# Needs: apt-get (to download the kernel package), dpkg-deb, busybox-static,
# cpio, qemu-utils, passt (copied into L1), gcc (iobench.c and stamp.c, static).
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
        drivers/block/virtio_blk fs/fat/fat fs/fat/vfat fs/nls/nls_cp437 fs/nls/nls_ascii \
        net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/virtio/virtio_input; do
    cp "$out"/kernel/lib/modules/*/kernel/$module.ko "$root/modules/"
done
# Images: base.raw says "base image" at 0 and "base tail" at 4 MiB; the
# qcow2 layer over it holds 512 bytes of 'a' at 1 MiB; the container disk
# says "container image" at 0 and "container tail" at 4 MiB.
images="$out/images"
rm -rf "$images"
mkdir -p "$images"
marked_image() { # FILE FIRST-TEXT TAIL-TEXT: an 8 MiB raw image
    head -c 8388608 /dev/zero > "$1"
    printf '%s' "$2" | dd of="$1" conv=notrunc 2>/dev/null
    printf '%s' "$3" | dd of="$1" bs=1048576 seek=4 conv=notrunc 2>/dev/null
}
marked_image "$images/base.raw" "base image" "base tail"
qemu-img create -q -f qcow2 -b base.raw -F raw "$images/layer.qcow2"
qemu-io -c "write -P 0x61 1M 512" "$images/layer.qcow2" >/dev/null
marked_image "$images/container.raw" "container image" "container tail"
qemu-img convert -q -c -O qcow2 "$images/container.raw" "$images/container.qcow2"
rm "$images/container.raw"
sha256sum "$images/container.qcow2" | cut -d' ' -f1 > "$images/container.sha256"

cp "$here/l2-init" "$root/init"
# The disk benchmark's I/O loop (the guest's busybox has no fio).
gcc -O2 -static -o "$root/bin/iobench" "$here/iobench.c"
# L1's timer for the boot benchmark's VMMs.
gcc -O2 -static -o "$out/stamp" "$here/stamp.c"
# udhcpc's script: configures what passt's DHCP server offered.
cat > "$root/bin/dhcp-event" <<'SCRIPT'
#!/bin/sh
[ "$1" = bound ] || exit 0
ifconfig "$interface" "$ip" netmask "$subnet" mtu "${mtu:-1500}"
route add default gw "${router%% *}"
echo "L2: dhcp ip=$ip subnet=$subnet router=${router%% *} mtu=$mtu" > /dev/console
echo "${router%% *}" > /router
SCRIPT
chmod +x "$root/bin/dhcp-event"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/l2.cpio.gz"
echo "$out"

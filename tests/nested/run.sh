#!/bin/sh
# Runs nested Linux-guest scenarios: builds the L1 initramfs around the
# given vmpod binary and boots it under QEMU TCG (-cpu max gives L1 a fast,
# nested /dev/kvm). Prints L1's console; callers read its RESULT lines.
# usage: run.sh PREPARED_DIR VMPOD_BINARY 'NAME VMM VCPUS COMMAND...' ...
# (VMM "cloud": boot the Debian cloud image from its own disk; see l1-init)
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
usage="usage: run.sh PREPARED_DIR VMPOD_BINARY SCENARIO..."
prepared="$(cd "${1:?$usage}" && pwd)"
vmpod="${2:?$usage}"
shift 2

root="$prepared/l1-root"
rm -rf "$root"
mkdir -p "$root/bin" "$root/modules" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp /bin/busybox "$prepared/stamp" "$root/bin/"
cp "$here/l1-init" "$root/init"
chmod +x "$root/init"
for scenario in "$@"; do echo "$scenario"; done > "$root/scenarios"
# L2_KERNEL_ARGS overrides the L2 command line, L1_KERNEL_ARGS adds to
# L1's (for debugging).
[ -z "${L2_KERNEL_ARGS:-}" ] || echo "$L2_KERNEL_ARGS" > "$root/kernel_args"
# KVM, and virtio-net over PCI for L1's own network (QEMU user networking),
# which passt needs: an interface with a default route.
for module in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd \
        drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
        drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/core/failover \
        drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk; do
    cp "$prepared"/kernel/lib/modules/*/kernel/$module.ko "$root/modules/"
done

# copy_with_libraries BINARY TARGET: a program and its shared libraries,
# the libraries at the same paths as on this host.
copy_with_libraries() {
    cp "$1" "$root/$2"
    strip "$root/$2" 2>/dev/null || true
    for library in $(ldd "$1" | awk '/=>/ {print $3} /^\t\// {print $1}'); do
        mkdir -p "$root$(dirname "$library")"
        [ -e "$root$library" ] || cp -L "$library" "$root$library"
    done
}
copy_with_libraries "$vmpod" vmpod
mkdir -p "$root/usr/bin"
copy_with_libraries "$(command -v passt)" usr/bin/passt
if grep -qE " (boot-)?qemu(io|cloud)? " "$root/scenarios"; then
    mkdir -p "$root/usr/bin" "$root/qemu"
    copy_with_libraries /usr/bin/qemu-system-x86_64 usr/bin/qemu-system-x86_64
    cp /usr/share/qemu/bios-microvm.bin /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin \
        /usr/share/seabios/bios-256k.bin "$root/qemu/"
fi
# Peers for the boot benchmark, when given (VMPOD_FIRECRACKER and
# VMPOD_CLOUD_HYPERVISOR: paths to binaries built elsewhere).
[ -z "${VMPOD_FIRECRACKER:-}" ] || copy_with_libraries "$VMPOD_FIRECRACKER" usr/bin/firecracker
[ -z "${VMPOD_CLOUD_HYPERVISOR:-}" ] || copy_with_libraries "$VMPOD_CLOUD_HYPERVISOR" usr/bin/cloud-hypervisor
# An older vmpod to compare with (VMPOD_BASELINE), as /vmpod-baseline.
[ -z "${VMPOD_BASELINE:-}" ] || copy_with_libraries "$VMPOD_BASELINE" vmpod-baseline
# The qcow2 images; the container disk where a containerDisk is by default.
mkdir -p "$root/images" "$root/disk"
cp "$prepared/images/base.raw" "$prepared/images/layer.qcow2" "$prepared/images/container.sha256" "$root/images/"
cp "$prepared/images/container.qcow2" "$root/disk/"
cp "$prepared/vmlinuz" "$root/l2-vmlinuz"
[ -z "${VMPOD_L2_VMLINUX:-}" ] || cp "$VMPOD_L2_VMLINUX" "$root/l2-vmlinux"
cp "$prepared/l2.cpio.gz" "$root/l2.cpio.gz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$prepared/l1.cpio.gz"

# The Debian cloud image (an ext4 holding the qcow2, see prepare.sh), for
# the cloud scenarios: L1's /dev/vda, read-only.
cloud_disk=""
if grep -qE " (qemu)?cloud " "$root/scenarios"; then
    cloud_disk="-drive file=$prepared/cloud-disk.ext4,format=raw,if=virtio,readonly=on"
fi
exec qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 3072 -nographic -no-reboot \
    -nodefaults -no-user-config -serial stdio \
    -nic "user,model=virtio-net-pci${VMPOD_VNC_PORT:+,hostfwd=tcp:127.0.0.1:$VMPOD_VNC_PORT-:5900}" $cloud_disk \
    -kernel "$prepared/vmlinuz" -initrd "$prepared/l1.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet ${L1_KERNEL_ARGS:-}"

#!/bin/sh
# Builds a Debian 12 cloud-style disk image from Debian packages only, the
# shape of Debian's own "genericcloud" images: GPT, an ext4 root holding
# /boot, a BIOS boot partition with GRUB installed (so firmware can boot it
# too), the grub.cfg that grub-mkconfig writes, cloud-init reading NoCloud
# or a config drive, ifupdown + DHCP, openssh-server.
#   OUT/debian-12-cloud.qcow2   the image (qcow2, as a containerDisk ships it)
#   OUT/debian-12-cloud.sha256  its checksum, to show a VM leaves it unchanged
# Rebuilt only when this script changes. Needs root (losetup, mount,
# chroot), debootstrap, sfdisk, e2fsprogs and qemu-img.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -eu
out="${1:?usage: build-debian-cloud.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
image="$out/debian-12-cloud.qcow2"
stamp="$out/.debian-12-cloud-$(sha256sum "$0" | cut -c1-16)"
if [ -f "$image" ] && [ -f "$stamp" ]; then
    echo "$image"
    exit 0
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d /var/tmp/vmpod-cloud-image.XXXXXX)"
root="$work/root"
loop=""
cleanup() {
    for mounted in "$root/dev" "$root/proc" "$root/sys" "$root"; do
        mountpoint -q "$mounted" 2>/dev/null && umount -l "$mounted"
    done
    [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The disk: partition 1 is the root file system, 14 the BIOS boot
# partition GRUB's core image lives in (Debian's layout).
truncate -s 2G "$work/disk.raw"
sfdisk --quiet "$work/disk.raw" <<TABLE
label: gpt
$work/disk.raw1 : start=10240, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
$work/disk.raw14 : start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649, name="bios"
TABLE
loop="$(losetup -P --show -f "$work/disk.raw")"
[ -e "${loop}p1" ] || partx -a "$loop" 2>/dev/null || true
for _ in 1 2 3 4 5; do [ -e "${loop}p1" ] && break; sleep 1; done
mkfs.ext4 -q -L root "${loop}p1"
mkdir -p "$root"
mount "${loop}p1" "$root"

debootstrap --variant=minbase \
    --include=linux-image-cloud-amd64,systemd-sysv,udev,cloud-init,python3-cffi-backend,ifupdown,isc-dhcp-client,openssh-server,grub-pc,e2fsprogs,iproute2,netcat-openbsd \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

uuid="$(blkid -s UUID -o value "${loop}p1")"
echo "UUID=$uuid / ext4 rw,discard,errors=remount-ro 0 1" > "$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
# Where cloud-init looks, so it does not probe clouds that are not there.
echo "datasource_list: [ NoCloud, ConfigDrive, None ]" > "$root/etc/cloud/cloud.cfg.d/90-vmpod-datasources.cfg"
# The kernel command line and menu of Debian's cloud images.
cat > "$root/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB
mount --bind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
chroot "$root" grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 \
    || { cat "$work/grub.log" >&2; exit 1; }
# grub-mkconfig writes root=UUID= only when udev's by-uuid link exists;
# no udev runs here, so make the link for it.
mkdir -p /dev/disk/by-uuid
ln -sf "${loop}p1" "/dev/disk/by-uuid/$uuid"
chroot "$root" update-grub >>"$work/grub.log" 2>&1 || { cat "$work/grub.log" >&2; exit 1; }
rm -f "/dev/disk/by-uuid/$uuid"
# What makes each VM its own: a machine id and host keys made at first boot.
: > "$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
umount "$root/dev" "$root/proc" "$root/sys" "$root"
losetup -d "$loop"
loop=""

qemu-img convert -O qcow2 "$work/disk.raw" "$image.tmp"
mv "$image.tmp" "$image"
sha256sum "$image" | cut -d' ' -f1 > "$out/debian-12-cloud.sha256"
rm -f "$out"/.debian-12-cloud-*
touch "$stamp"
echo "$image"

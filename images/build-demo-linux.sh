#!/bin/sh
# Builds the Linux demo guest: the Debian cloud kernel (fetched and unpacked
# by tests/nested/prepare.sh) and a busybox initramfs whose /init opens a
# shell on the serial console.
#   OUT/vmlinuz  OUT/initramfs.cpio.gz
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build-demo-linux.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
"$here/../tests/nested/prepare.sh" "$out/kernel-cache" >/dev/null
cp "$out/kernel-cache/vmlinuz" "$out/vmlinuz"
root="$out/initramfs-root"
rm -rf "$root"
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo
echo "vmpod demo: Linux $(uname -r) with $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
echo "vmpod demo: a busybox shell; 'poweroff -f' ends the VM"
exec setsid cttyhack sh
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"

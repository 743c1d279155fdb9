#!/bin/sh
# Prepares the cloud-image scenarios of the nested harness, once:
#   OUT/cloud/              the Debian 12 cloud-style image (images/build-debian-cloud.sh)
#   OUT/cloud-disk.ext4     an ext4 file system holding that qcow2, which
#                           run.sh attaches to L1 as /dev/vda (L1 runs from
#                           an initramfs in RAM, too small for the image)
# Needs root (the image builder's losetup, mount and chroot) and mkfs.ext4.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: prepare-cloud.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
"$here/../../images/build-debian-cloud.sh" "$out/cloud" >/dev/null
sum="$(cat "$out/cloud/debian-12-cloud.sha256")"
if [ ! -f "$out/cloud-disk.ext4" ] || [ "$(cat "$out/cloud-disk.sha256" 2>/dev/null)" != "$sum" ]; then
    rm -rf "$out/cloud-disk.ext4" "$out/cloud-disk.dir"
    mkdir -p "$out/cloud-disk.dir"
    ln "$out/cloud/debian-12-cloud.qcow2" "$out/cloud-disk.dir/" 2>/dev/null \
        || cp "$out/cloud/debian-12-cloud.qcow2" "$out/cloud-disk.dir/"
    size_mib=$(( $(stat -c %s "$out/cloud/debian-12-cloud.qcow2") / 1048576 + 128 ))
    mkfs.ext4 -q -F -d "$out/cloud-disk.dir" "$out/cloud-disk.ext4" "${size_mib}M"
    rm -rf "$out/cloud-disk.dir"
    echo "$sum" > "$out/cloud-disk.sha256"
fi
echo "$out"

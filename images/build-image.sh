#!/usr/bin/env bash
# Builds the vmpod container image FROM scratch with podman, from this
# checkout's release binaries and the host's Debian passt, without any
# registry, and the demo image on top of it (the tiny guests under
# /vm/guests, for manifests/pod.yaml):
#   images/build-image.sh [TAG [DEMO_TAG]]
# (default localhost/vmpod:latest and localhost/vmpod-demo:latest).
# Prints each tag and the image's size.
source "$(dirname "$0")/../scripts/common.sh"

tag="${1:-localhost/vmpod:latest}"
demo_tag="${2:-localhost/vmpod-demo:latest}"
ensure_podman
ensure_packages passt ca-certificates binutils busybox-static
cargo build --release --locked --quiet --manifest-path "$REPO_ROOT/Cargo.toml"

stage="$CARGO_TARGET_DIR/image"
rm -rf "$stage"
mkdir -p "$stage/root/usr/bin" "$stage/root/etc/ssl/certs" "$stage/root/vm" \
    "$stage/root/tmp" "$stage/writable/run" "$stage/writable/scratch"
chmod 1777 "$stage/root/tmp"

binaries=("$CARGO_TARGET_DIR/release/vmpod" "$CARGO_TARGET_DIR/release/vmpod-cluster" /usr/bin/passt)
[ -x /usr/bin/passt.avx2 ] && binaries+=(/usr/bin/passt.avx2)  # passt runs it where the CPU has AVX2
for binary in "${binaries[@]}"; do
    cp "$binary" "$stage/root/usr/bin/"
    # The shared libraries the binary links, at the paths its loader looks in.
    for library in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        mkdir -p "$stage/root$(dirname "$library")"
        cp -L "$library" "$stage/root$library"
    done
done
# A shell and the usual tools (busybox, static): for launch.d hooks, which
# are mostly scripts, and for kubectl exec -it POD -- sh. The example hooks
# are there to copy, not run: /etc/vmpod/launch.d is the pod's to fill.
mkdir -p "$stage/root/bin" "$stage/root/usr/share/vmpod"
cp /bin/busybox "$stage/root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$stage/root/bin/$applet" ] || ln -s busybox "$stage/root/bin/$applet"
done
cp -r "$REPO_ROOT/launch.d" "$stage/root/usr/share/vmpod/launch.d"
# kubectl exec POD -- /vm/serial (and the others) are vmpod under another name.
for helper in serial qmp monitor vnc ready; do
    ln -s /usr/bin/vmpod "$stage/root/vm/$helper"
done
mkdir -p "$stage/root/vm/images" "$stage/root/vm/volumes" "$stage/root/etc/vmpod"
# For --url definitions and the API server's certificate when no CA is given.
cp /etc/ssl/certs/ca-certificates.crt "$stage/root/etc/ssl/certs/"
# passt drops root to nobody; 107 is KubeVirt's qemu user.
printf 'root:x:0:0:root:/root:/usr/bin/vmpod\nqemu:x:107:107:vmpod:/vm:/usr/bin/vmpod\nnobody:x:65534:65534:nobody:/nonexistent:/usr/bin/vmpod\n' \
    > "$stage/root/etc/passwd"
printf 'root:x:0:\nqemu:x:107:\nnogroup:x:65534:\n' > "$stage/root/etc/group"
cp "$REPO_ROOT/images/Containerfile" "$stage/Containerfile"


# The demo image: the tiny guests (a few KiB each), not their build tree.
sh "$REPO_ROOT/guests/build.sh" "$CARGO_TARGET_DIR/image-guests"
mkdir -p "$stage/demo/guests"
cp "$CARGO_TARGET_DIR"/image-guests/*.elf "$CARGO_TARGET_DIR"/image-guests/*.bin "$stage/demo/guests/"
cp "$REPO_ROOT/images/Containerfile.demo" "$stage/demo/Containerfile"

build() { # TAG CONTEXT [podman build options]
    local image="$1" context="$2"
    shift 2
    say "building $image"
    podman build --quiet --tag "$image" "$@" --file "$context/Containerfile" "$context" >/dev/null
    local size
    size="$(podman image inspect --format '{{.Size}}' "$image")"
    echo "$image: $((size / 1024 / 1024)) MiB ($size bytes)"
}
build "$tag" "$stage"
build "$demo_tag" "$stage/demo" --build-arg "BASE=$tag"

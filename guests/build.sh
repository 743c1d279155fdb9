#!/bin/sh
# Builds the tiny test guests: guests/NAME.S -> OUTDIR/NAME.elf
# (ELF64 holding 32-bit code with a PVH entry note) and guests/bzimage.S ->
# OUTDIR/bzimage.bin (a flat bzImage-shaped kernel). Needs binutils.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: guests/build.sh OUTDIR}"
mkdir -p "$out"
for source in "$here"/*.S; do
    name="$(basename "$source" .S)"
    case "$name" in
        lib|lib64) continue ;;
        bzimage)
            as --64 -I "$here" -o "$out/$name.o" "$source"
            ld -m elf_x86_64 --no-warn-rwx-segments -T "$here/bzimage.ld" -o "$out/$name.elf" "$out/$name.o"
            objcopy -O binary "$out/$name.elf" "$out/$name.bin"
            rm -f "$out/$name.elf"
            ;;
        *)
            as --64 -I "$here" -o "$out/$name.o" "$source"
            ld -m elf_x86_64 -n --no-warn-rwx-segments -T "$here/guest.ld" -o "$out/$name.elf" "$out/$name.o"
            ;;
    esac
    rm -f "$out/$name.o"
done

# virtio-driver: a no_std Rust guest on the virtio-drivers crate -> a flat
# bzImage-shaped OUTDIR/virtio-driver.bin. Needs the x86_64-unknown-none
# target (scripts/common.sh adds it); without it the guest is left out and
# the test that boots it says so.
if rustc --print target-list >/dev/null 2>&1 \
        && [ -d "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-none" ]; then
    driver="$here/virtio-driver"
    env -u RUSTFLAGS CARGO_ENCODED_RUSTFLAGS="$(printf -- '-Clink-arg=-T%s\037-Crelocation-model=static' "$driver/link.ld")" \
        cargo build --quiet --release --locked --target x86_64-unknown-none \
        --manifest-path "$driver/Cargo.toml" --target-dir "$out/virtio-driver-target"
    objcopy -O binary "$out/virtio-driver-target/x86_64-unknown-none/release/virtio-driver-guest" \
        "$out/virtio-driver.bin"
else
    echo "guests/build.sh: the x86_64-unknown-none Rust target is missing (rustup target add x86_64-unknown-none): virtio-driver.bin is not built" >&2
fi

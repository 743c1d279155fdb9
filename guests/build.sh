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

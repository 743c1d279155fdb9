#!/usr/bin/env python3
"""A Debian 12 cloud image booting from its own disk under vmpod, beside
QEMU booting the same image through its own firmware (SeaBIOS) and GRUB,
same L1, one run: the nested harness (tests/nested/) alternates the two,
each with the image as its disk (vmpod: a containerDisk under its qcow2
overlay; QEMU: the image with snapshot=on), the same NoCloud seed (the one
vmpod built), 2 vCPUs, 1 GiB and a NIC on passt. Per VMM, the median of
the rounds:

  first kernel message   VMM start -> "Linux version" on the console
  cloud-init final       VMM start -> cloud-init's "finished" line
  exit                   VMM start -> the VMM exits after power_state poweroff

vmpod reads grub.cfg itself and loads the kernel directly; QEMU runs
SeaBIOS, GRUB's boot sector and core image, and GRUB's menu (timeout 1 s,
as the image sets it). L1 is emulated (QEMU TCG), so absolute figures are
slow; the difference is what the run shows. Builds the image first if it
is not cached (needs root and debootstrap). Takes several minutes.
usage: benches/nested_cloud_boot.py [--rounds N]   (after cargo build --release)
"""

import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "nested"))
import harness  # noqa: E402

FIGURES = (("first_message", "first kernel message"), ("cloud_init_final", "cloud-init final"), ("exited", "exit"))


def main():
    # vmpod first in each round: QEMU boots with the seed disk vmpod built.
    rounds, runs = harness.bench_runs(__doc__, lambda number: [f"vmpod-{number} cloud 2", f"qemu-{number} qemucloud 2"], timeout=1200 * 2 * 4)
    results = {"vmpod": {}, "qemu": {}}
    for name, run in runs.items():
        vmm = name.split("-")[0]
        if vmm not in results:
            continue
        if harness.value(run, "exit") != "0":
            print(f"{name}: did not power off cleanly: {run['result']}\n{run['stderr'][-2000:]}", file=sys.stderr)
        for key, _ in FIGURES:
            found = harness.value(run, key)
            if found not in (None, "-"):
                results[vmm].setdefault(key, []).append(float(found))
    print(f"{'seconds from VMM start':<24} {'vmpod':>8} {'QEMU+SeaBIOS+GRUB':>18}   (median of {rounds} rounds)")
    for key, label in FIGURES:
        cells = []
        for vmm in ("vmpod", "qemu"):
            values = results[vmm].get(key, [])
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        print(f"{label:<24} {cells[0]:>8} {cells[1]:>18}")


if __name__ == "__main__":
    main()

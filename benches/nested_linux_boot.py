#!/usr/bin/env python3
"""Linux boot time on vmpod beside QEMU microvm, same kernel, same L1, one
run: the nested harness (tests/nested/) boots the Debian cloud kernel with a
busybox initramfs under each VMM, alternating, and prints for each boot

  guest time to /init   (the guest's own uptime when /init starts)
  L1 time to prompt     (from the VMM's exec to the guest's first prompt,
                         measured in L1 at 50 ms resolution)

Figures only; nothing is asserted. Takes several minutes (L1 is emulated).
usage: benches/nested_linux_boot.py [--rounds N]   (after cargo build --release)
"""

import pathlib
import re
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "nested"))
import harness  # noqa: E402


def main():
    rounds, runs = harness.bench_runs(__doc__, lambda number: [f"vmpod-{number} vmpod 1 poweroff", f"qemu-{number} qemu 1 poweroff"], timeout=3600)
    figures = {"vmpod": {"init": [], "prompt": []}, "qemu": {"init": [], "prompt": []}}
    print("boot of the Debian cloud kernel to /init, 1 vCPU, 256 MiB, inside one L1")
    for name in [f"{vmm}-{number}" for number in range(rounds) for vmm in ("vmpod", "qemu")]:
        run = runs.get(name, {"result": [], "stdout": ""})
        vmm = name.split("-")[0]
        init = re.search(r"reached /init after ([0-9.]+) s", run["stdout"])
        prompt = harness.value(run, "first-prompt-after")
        if init:
            figures[vmm]["init"].append(float(init.group(1)))
        if prompt:
            figures[vmm]["prompt"].append(float(prompt))
        print(f"  {name:10} guest time to /init {init.group(1) if init else '?':>6} s   L1 time to prompt {prompt or '?':>6} s   exit {harness.value(run, 'exit')}")
    medians = {vmm: {key: statistics.median(values) if values else None for key, values in kinds.items()} for vmm, kinds in figures.items()}
    for key, label in (("init", "guest time to /init"), ("prompt", "L1 time to prompt")):
        vmpod_median, qemu_median = medians["vmpod"][key], medians["qemu"][key]
        if vmpod_median and qemu_median:
            print(f"median {label}: vmpod {vmpod_median:.2f} s, QEMU {qemu_median:.2f} s, QEMU/vmpod {qemu_median / vmpod_median:.2f}x")


if __name__ == "__main__":
    main()

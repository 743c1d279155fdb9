#!/usr/bin/env python3
"""Linux boot time on vmpod beside its peers, same kernel, same L1, one run:
the nested harness (tests/nested/) boots the Debian cloud kernel with a
busybox initramfs under each VMM in turn (2 vCPUs, 256 MiB, a serial
console and nothing else; L2's /init powers off at once), the order turned
by one every round, after one warm-up boot that is not counted, and prints
for each VMM the medians of

  first instruction   VMM start -> its first KVM entry (L1's kvm_entry trace)
  guest /init         the guest's own uptime when /init starts
  wall /init          VMM start -> /init's first line on the VMM's stdout
  poweroff -> exit    the kernel's "reboot: Power down" -> the VMM's exit
  start -> exit       the whole run

then KVM's exits during each boot (counted in L1 by histogram triggers:
all of them, nested page faults, port I/O, user-space exits), and the
kernel's slowest initcalls under vmpod (one more boot with initcall_debug).

The peers are QEMU microvm (always) and, when given, Firecracker, Cloud
Hypervisor and an older vmpod, as binaries built elsewhere:

usage: benches/nested_linux_boot.py [--rounds N] [--vcpus N]
           [--firecracker PATH] [--cloud-hypervisor PATH] [--baseline OLD_VMPOD]
           [--vmlinux PATH] [--dmesg]
       (after cargo build --release)

--vmlinux boots that uncompressed kernel (the same one, decompressed) in
every VMM instead of the bzImage; --dmesg prints each VMM's whole kernel
log of an extra boot (with printk.time), to compare the boot phase by
phase. Firecracker's guest ends with a reboot by triple fault (reboot=t):
Firecracker has no ACPI sleep registers, and the kernel's i8042 reset did
not end it in L1. Figures only; nothing is asserted. L1 is emulated, so
figures vary by half between runs and the same VMM's boots differ too:
compare medians of several rounds, and the exit counts, which hardly vary.
"""

import argparse
import os
import pathlib
import re
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "nested"))
import harness  # noqa: E402

FIGURES = (
    ("first_entry", "first instruction"),
    ("init_uptime", "guest /init"),
    ("init_wall", "wall /init"),
    ("shutdown", "poweroff -> exit"),
    ("exit_after", "start -> exit"),
)
# Exit reasons as L1's KVM numbers them (SVM exit codes, VMX basic reasons).
PAGE_FAULT_EXIT = {"svm": 0x400, "vmx": 48}
PORT_IO_EXIT = {"svm": 0x7b, "vmx": 30}


def arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--firecracker", type=pathlib.Path, help="a Firecracker binary to run beside vmpod")
    parser.add_argument("--cloud-hypervisor", type=pathlib.Path, help="a Cloud Hypervisor binary to run beside vmpod")
    parser.add_argument("--baseline", type=pathlib.Path, help="an older vmpod binary to run beside this one")
    parser.add_argument("--vmlinux", type=pathlib.Path, help="an uncompressed kernel (ELF) for every VMM")
    parser.add_argument("--dmesg", action="store_true", help="also print each VMM's kernel log of one boot")
    return parser.parse_args()


def figures_of(run):
    """{figure: seconds} of one boot scenario's RESULT line."""
    found = {}
    for key in ("first_entry", "init_uptime", "init_wall", "power_down", "exit_after"):
        text = harness.value(run, key)
        if text and text != "-":
            found[key] = float(text)
    if "power_down" in found and "exit_after" in found:
        found["shutdown"] = found["exit_after"] - found["power_down"]
    return found


def exit_counts(run):
    """(all exits, nested page faults, port I/O, user-space exits) of one boot."""
    counts = {}
    isa = "svm"
    for entry in run["result"]:
        match = re.match(r"counts (\w+)\.(svm|vmx) (.*)", entry)
        if match:
            isa = match.group(2)
            counts[match.group(1)] = {int(key, 0): int(value) for key, value in
                                      (pair.split("=") for pair in match.group(3).split())}
    exits = counts.get("kvm_exit", {})
    return (sum(exits.values()), exits.get(PAGE_FAULT_EXIT[isa], 0), exits.get(PORT_IO_EXIT[isa], 0),
            sum(counts.get("kvm_userspace_exit", {}).values()))


def peers(options):
    """The VMMs of this run, and the environment that puts their binaries into L1."""
    vmms = ["vmpod", "qemu"]
    for path, vmm, variable in ((options.firecracker, "firecracker", "VMPOD_FIRECRACKER"),
                                (options.cloud_hypervisor, "cloudhv", "VMPOD_CLOUD_HYPERVISOR"),
                                (options.baseline, "baseline", "VMPOD_BASELINE"),
                                (options.vmlinux, None, "VMPOD_L2_VMLINUX")):
        if path:
            if not path.is_file():
                sys.exit(f"{path} does not exist")
            os.environ[variable] = str(path.resolve())
            if vmm:
                vmms.append(vmm)
    return vmms


def print_medians(vmms, runs, rounds):
    table = {vmm: {key: [] for key, _ in FIGURES} for vmm in vmms}
    for number in range(rounds):
        for vmm in vmms:
            run = runs[f"{vmm}-{number}"]
            found = figures_of(run)
            for key, _ in FIGURES:
                if key in found:
                    table[vmm][key].append(found[key])
            shown = "  ".join(f"{label} {found[key]:.3f}" if key in found else f"{label} ?" for key, label in FIGURES)
            print(f"  {vmm + '-' + str(number):14} {shown}  exit {harness.value(run, 'exit')}")
    print("\nmedians, seconds " + "".join(f"{label:>19}" for _, label in FIGURES))
    for vmm in vmms:
        medians = [statistics.median(table[vmm][key]) if table[vmm][key] else None for key, _ in FIGURES]
        print(f"  {vmm:15}" + "".join(f"{value:>19.3f}" if value is not None else f"{'?':>19}" for value in medians))


def print_exits(vmms, runs, rounds):
    print("\nKVM exits per boot (medians): all, nested page faults, port I/O, to user space")
    for vmm in vmms:
        counts = [exit_counts(runs[f"{vmm}-{number}"]) for number in range(rounds)]
        medians = [statistics.median(column) for column in zip(*counts)] if counts else []
        if medians and medians[0]:
            print(f"  {vmm:15}" + "".join(f"{int(value):>12}" for value in medians))
        else:
            print(f"  {vmm:15} (not counted: L1's kernel has no histogram triggers)")


def main():
    options = arguments()
    vmpod = harness.TARGET / "release" / "vmpod"
    if not vmpod.exists():
        sys.exit(f"{vmpod} is missing: cargo build --release first")
    vmms = peers(options)
    flags = "vmlinux" if options.vmlinux else ""
    scenarios = [f"warm-up boot-vmpod {options.vcpus} {flags}"]
    for number in range(options.rounds):
        turned = vmms[number % len(vmms):] + vmms[:number % len(vmms)]
        scenarios += [f"{vmm}-{number} boot-{vmm} {options.vcpus} {flags}" for vmm in turned]
    scenarios.append(f"initcalls boot-vmpod {options.vcpus} {','.join(filter(None, ['initcalls', flags]))}")
    if options.dmesg:
        scenarios += [f"dmesg-{vmm} boot-{vmm} {options.vcpus} {','.join(filter(None, ['dmesg', flags]))}"
                      for vmm in vmms]
    try:
        runs = harness.run(vmpod, *scenarios, timeout=600 + 300 * len(scenarios))
    except harness.Unavailable as why:
        sys.exit(f"cannot run: {why}")

    kernel = f"{options.vmlinux} (uncompressed)" if options.vmlinux else "Debian's cloud kernel (bzImage)"
    print(f"{kernel} to /init and back, {options.vcpus} vCPUs, 256 MiB, serial console only, one L1, "
          f"{options.rounds} rounds")
    print_medians(vmms, runs, options.rounds)
    print_exits(vmms, runs, options.rounds)
    print("\nslowest initcalls under vmpod (initcall_debug), microseconds:")
    for match in list(re.finditer(r"L2: initcall usecs (\d+) (\S+)", runs["initcalls"]["stdout"]))[-12:]:
        print(f"  {int(match.group(1)):>9}  {match.group(2)}")
    if options.dmesg:
        for vmm in vmms:
            print(f"\nkernel log under {vmm}:")
            for line in re.findall(r"L2: dmesg (.*)", runs[f"dmesg-{vmm}"]["stdout"]):
                print(f"  {line}")


if __name__ == "__main__":
    main()

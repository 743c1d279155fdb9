#!/usr/bin/env python3
"""Start-up and memory of vmpod beside QEMU microvm, in one run, on the same
tiny guest. Prints figures; it asserts nothing (timings are noisy here:
compare the ratios, not the absolute times).

  exec -> first serial byte of the hello guest   (vmpod, QEMU microvm)
  RSS of a 1-vCPU, 128 MiB echo guest, without guest RAM pages

usage: benches/startup_and_memory.py [--runs N] [--baseline OLD_VMPOD]
       (after cargo build --release; --baseline measures an older vmpod
       binary in the same interleaved runs, for before/after figures)
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
VMPOD = TARGET / "release" / "vmpod"
GUEST_RAM_MIB = 128


def definition(directory, kernel, memory_mib):
    path = directory / f"{kernel.stem}.yaml"
    path.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: bench}\n"
        f"spec:\n  domain:\n    memory: {{guest: {memory_mib}Mi}}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {kernel}}}}}}}\n"
        "    devices: {autoattachPodInterface: false, autoattachGraphicsDevice: false}\n"
    )
    return path


def qemu_command(kernel, memory_mib):
    return [
        "qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
        "-m", str(memory_mib), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
        "-serial", "stdio", "-kernel", str(kernel),
    ]


def time_to_first_byte(command):
    """Seconds from exec to the first byte the guest writes on its serial port."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = process.stdout.read(1)
    elapsed = time.perf_counter() - started
    process.kill()
    process.wait()
    if not first:
        raise RuntimeError(f"{command[0]} wrote nothing")
    return elapsed


def rss_kib(pid, guest_mib):
    """(total RSS, RSS outside the guest RAM mapping) in KiB, from smaps."""
    total = outside = 0
    size = None
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1 and "-" in fields[0] and ":" not in fields[0]:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            size = (end - start) // 1024
        elif fields and fields[0] == "Rss:":
            kib = int(fields[1])
            total += kib
            if size != guest_mib * 1024:
                outside += kib
    return total, outside


def resident_while_running(command, ready_text, guest_mib):
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = b""
    while ready_text not in seen:
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{command[0]} ended before {ready_text!r}")
        seen += chunk
    time.sleep(0.3)
    figures = rss_kib(process.pid, guest_mib)
    process.kill()
    process.wait()
    return figures


def summary(samples):
    samples = sorted(samples)
    return f"median {statistics.median(samples) * 1000:7.2f} ms   p10 {samples[len(samples) // 10] * 1000:7.2f}   p90 {samples[len(samples) * 9 // 10] * 1000:7.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--baseline", type=pathlib.Path, help="an older vmpod binary to measure beside this one")
    args = parser.parse_args()
    if not VMPOD.exists():
        sys.exit(f"{VMPOD} is missing: cargo build --release first")
    vmpods = [("vmpod", VMPOD)] + ([("baseline", args.baseline)] if args.baseline else [])
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        subprocess.run(["sh", REPO / "guests/build.sh", scratch / "guests"], check=True)
        hello = definition(scratch, scratch / "guests/hello.elf", GUEST_RAM_MIB)
        echo = definition(scratch, scratch / "guests/echo.elf", GUEST_RAM_MIB)
        starts = {name: [] for name, _ in vmpods}
        qemu_start = []
        for _ in range(args.runs):  # interleaved, so all see the same noise
            for name, binary in vmpods:
                starts[name].append(time_to_first_byte([binary, "launch", "--file", hello, "--run-dir", scratch / name]))
            if have_qemu:
                qemu_start.append(time_to_first_byte(qemu_command(scratch / "guests/hello.elf", GUEST_RAM_MIB)))
        print(f"exec -> first serial byte, hello guest, {args.runs} runs each")
        for name, _ in vmpods:
            print(f"  {name:<14} {summary(starts[name])}")
        if have_qemu:
            print(f"  QEMU microvm   {summary(qemu_start)}")
            print(f"  ratio QEMU/vmpod (medians): {statistics.median(qemu_start) / statistics.median(starts['vmpod']):.1f}x")
        print(f"\nresident memory, 1 vCPU, {GUEST_RAM_MIB} MiB echo guest, idle")
        for name, binary in vmpods:
            total, outside = resident_while_running(
                [binary, "launch", "--file", echo, "--run-dir", scratch / name], b"type and it echoes", GUEST_RAM_MIB
            )
            print(f"  {name:<14} RSS {total / 1024:6.1f} MiB, without guest RAM {outside / 1024:6.1f} MiB")
        if have_qemu:
            total, outside = resident_while_running(
                qemu_command(scratch / "guests/echo.elf", GUEST_RAM_MIB), b"type and it echoes", GUEST_RAM_MIB
            )
            print(f"  QEMU microvm   RSS {total / 1024:6.1f} MiB, without guest RAM {outside / 1024:6.1f} MiB")
        else:
            print("  (QEMU is not installed: apt-get install qemu-system-x86 for the comparison)")


if __name__ == "__main__":
    main()

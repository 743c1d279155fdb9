#!/usr/bin/env python3
"""The control plane's speed, printed (nothing asserted):

  QMP round trip: query-status, p50/p99 over 10,000 calls, vmpod beside
                  QEMU microvm's QMP in the same run;
  serial throughput: 4 MiB of guest output (the flood guest) to 1 and to
                  10 attached /vm/serial clients.

usage: benches/control_plane.py [--calls N]   (after cargo build --release)
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
VMPOD = TARGET / "release" / "vmpod"
FLOOD_BYTES = 4 * 1024 * 1024


def definition(directory, kernel):
    path = directory / f"{kernel.stem}.yaml"
    path.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: bench}\n"
        "spec:\n  domain:\n    memory: {guest: 32Mi}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {kernel}}}}}}}\n"
        "    devices: {autoattachPodInterface: false, autoattachGraphicsDevice: false}\n"
    )
    return path


def wait_for_path(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.01)


def qmp_round_trips(socket_path, calls):
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(socket_path))
    reader = client.makefile("rb")
    reader.readline()  # greeting
    client.sendall(b'{"execute":"qmp_capabilities"}')
    reader.readline()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        client.sendall(b'{"execute":"query-status"}')
        reply = json.loads(reader.readline())
        samples.append(time.perf_counter() - started)
        assert "return" in reply, reply
    client.close()
    return samples


def percentiles(samples):
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6


def vmpod_qmp(scratch, echo, calls):
    run_dir = scratch / "run-qmp"
    vm = subprocess.Popen([VMPOD, "launch", "--file", echo, "--run-dir", run_dir],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(run_dir / "qmp.sock")
        return qmp_round_trips(run_dir / "qmp.sock", calls)
    finally:
        vm.kill()
        vm.wait()


def qemu_qmp(scratch, kernel, calls):
    qmp = scratch / "qemu-qmp.sock"
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "32",
         "-nodefaults", "-no-user-config", "-nographic", "-serial", "null", "-kernel", str(kernel),
         "-qmp", f"unix:{qmp},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(qmp)
        time.sleep(0.2)
        return qmp_round_trips(qmp, calls)
    finally:
        vm.kill()
        vm.wait()


def serial_throughput(scratch, flood, clients):
    run_dir = scratch / f"run-flood-{clients}"
    vm = subprocess.Popen([VMPOD, "launch", "--file", flood, "--run-dir", run_dir],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(run_dir / "serial.sock")
        sockets = []
        for _ in range(clients):
            connection = socket.socket(socket.AF_UNIX)
            connection.connect(str(run_dir / "serial.sock"))
            sockets.append(connection)
        finished = []

        def drain(connection):
            seen = b""
            while b"flood done" not in seen[-64:]:
                chunk = connection.recv(1 << 20)
                if not chunk:
                    break
                seen = seen[-64:] + chunk
            finished.append(time.perf_counter())

        readers = [threading.Thread(target=drain, args=(c,)) for c in sockets]
        for reader in readers:
            reader.start()
        time.sleep(0.3)  # the guest prints its "ready" line first
        started = time.perf_counter()
        sockets[0].sendall(b"g")
        for reader in readers:
            reader.join(timeout=600)
        return FLOOD_BYTES / (max(finished) - started) / (1 << 20)
    finally:
        vm.kill()
        vm.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10000)
    args = parser.parse_args()
    if not VMPOD.exists():
        sys.exit(f"{VMPOD} is missing: cargo build --release first")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        subprocess.run(["sh", REPO / "guests/build.sh", scratch / "guests"], check=True)
        echo = definition(scratch, scratch / "guests/echo.elf")
        flood = definition(scratch, scratch / "guests/flood.elf")
        print(f"QMP query-status round trip, {args.calls} calls")
        p50, p99 = percentiles(vmpod_qmp(scratch, echo, args.calls))
        print(f"  vmpod          p50 {p50:7.1f} us   p99 {p99:7.1f} us")
        if shutil.which("qemu-system-x86_64"):
            q50, q99 = percentiles(qemu_qmp(scratch, scratch / "guests/echo.elf", args.calls))
            print(f"  QEMU microvm   p50 {q50:7.1f} us   p99 {q99:7.1f} us   (QEMU/vmpod p50 {q50 / p50:.1f}x)")
        print(f"\nserial throughput, {FLOOD_BYTES >> 20} MiB of guest output (rep outsb)")
        if pathlib.Path("/sys/module/kvm_pvm").exists():
            print("  (PVM host: the guest's rep outsb runs through KVM's instruction emulator, one exit per byte,")
            print("   so this measures the emulator first; the 1 vs 10 clients difference is vmpod's hub)")
        for clients in (1, 10):
            rate = serial_throughput(scratch, flood, clients)
            print(f"  vmpod, {clients:2} client{'s' if clients > 1 else ' '}  {rate:7.2f} MiB/s to every client")


if __name__ == "__main__":
    main()

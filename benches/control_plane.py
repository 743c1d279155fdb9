#!/usr/bin/env python3
"""The control plane's speed, printed (nothing asserted):

  QMP round trip: query-status, p50/p99 over 10,000 calls from one client,
                  and from ten clients at once, vmpod beside QEMU
                  microvm's QMP in the same run;
  serial throughput: 4 MiB of guest output (the flood guest) to stdout, and
                  to 1 and to 10 attached /vm/serial clients.

usage: benches/control_plane.py [--calls N] [--baseline OLD_VMPOD]
       (after cargo build --release; --baseline measures an older vmpod
       binary in the same run, for before/after figures)
"""

import argparse
import json
import multiprocessing
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


def ask_and_report(socket_path, calls, results):
    results.put(qmp_round_trips(socket_path, calls))


def qmp_round_trips_from(socket_path, calls, clients):
    """Samples from `clients` clients asking at once, `calls` in all; each
    client is a process of its own, so Python's lock does not serialise them."""
    if clients == 1:
        return qmp_round_trips(socket_path, calls)
    results = multiprocessing.Queue()
    askers = [multiprocessing.Process(target=ask_and_report, args=(socket_path, calls // clients, results))
              for _ in range(clients)]
    for asker in askers:
        asker.start()
    samples = [sample for _ in askers for sample in results.get()]
    for asker in askers:
        asker.join()
    return samples


def connect(socket_path):
    """A connection; the socket's file appears a moment before it listens."""
    deadline = time.monotonic() + 10
    while True:
        client = socket.socket(socket.AF_UNIX)
        try:
            client.connect(str(socket_path))
            return client
        except ConnectionRefusedError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def qmp_round_trips(socket_path, calls):
    client = connect(socket_path)
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


def vmpod_qmp(binary, scratch, echo, calls, clients):
    run_dir = scratch / f"run-qmp-{clients}"
    vm = subprocess.Popen([binary, "launch", "--file", echo, "--run-dir", run_dir],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(run_dir / "qmp.sock")
        return qmp_round_trips_from(run_dir / "qmp.sock", calls, clients)
    finally:
        vm.kill()
        vm.wait()


def qemu_qmp(scratch, kernel, calls, clients):
    qmp = scratch / "qemu-qmp.sock"
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "32",
         "-nodefaults", "-no-user-config", "-nographic", "-serial", "null", "-kernel", str(kernel),
         "-qmp", f"unix:{qmp},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(qmp)
        time.sleep(0.2)
        return qmp_round_trips_from(qmp, calls, clients)
    finally:
        vm.kill()
        vm.wait()


def stdout_throughput(binary, scratch, flood):
    """MiB/s of guest output through vmpod's stdout (what kubectl logs reads)."""
    run_dir = scratch / "run-flood-stdout"
    vm = subprocess.Popen([binary, "launch", "--file", flood, "--run-dir", run_dir],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        seen = b""
        while b"flood guest ready" not in seen:
            seen += os.read(vm.stdout.fileno(), 1 << 16)
        started = time.perf_counter()
        vm.stdin.write(b"g")
        vm.stdin.flush()
        tail = b""
        while b"flood done" not in tail:
            chunk = os.read(vm.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            tail = tail[-64:] + chunk
        return FLOOD_BYTES / (time.perf_counter() - started) / (1 << 20)
    finally:
        vm.kill()
        vm.wait()


def serial_throughput(binary, scratch, flood, clients):
    run_dir = scratch / f"run-flood-{clients}"
    vm = subprocess.Popen([binary, "launch", "--file", flood, "--run-dir", run_dir],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(run_dir / "serial.sock")
        sockets = []
        for _ in range(clients):
            sockets.append(connect(run_dir / "serial.sock"))
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
    parser.add_argument("--baseline", type=pathlib.Path, help="an older vmpod binary to measure beside this one")
    args = parser.parse_args()
    if not VMPOD.exists():
        sys.exit(f"{VMPOD} is missing: cargo build --release first")
    vmpods = [("vmpod", VMPOD)] + ([("baseline", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        subprocess.run(["sh", REPO / "guests/build.sh", scratch / "guests"], check=True)
        echo = definition(scratch, scratch / "guests/echo.elf")
        flood = definition(scratch, scratch / "guests/flood.elf")
        for clients in (1, 10):
            print(f"QMP query-status round trip, {args.calls} calls from {clients} client{'s' if clients > 1 else ''} at once")
            medians = {}
            for name, binary in vmpods:
                p50, p99 = percentiles(vmpod_qmp(binary, scratch, echo, args.calls, clients))
                medians[name] = p50
                print(f"  {name:<14} p50 {p50:7.1f} us   p99 {p99:7.1f} us")
            if shutil.which("qemu-system-x86_64"):
                q50, q99 = percentiles(qemu_qmp(scratch, scratch / "guests/echo.elf", args.calls, clients))
                print(f"  QEMU microvm   p50 {q50:7.1f} us   p99 {q99:7.1f} us   (QEMU/vmpod p50 {q50 / medians['vmpod']:.1f}x)")
        print(f"\nserial throughput, {FLOOD_BYTES >> 20} MiB of guest output (rep outsb)")
        if pathlib.Path("/sys/module/kvm_pvm").exists():
            print("  (PVM host: the guest's rep outsb runs through KVM's instruction emulator, one exit per byte,")
            print("   so this measures the emulator first; the differences between sinks are vmpod's)")
        for name, binary in vmpods:
            print(f"  {name:<14} to stdout     {stdout_throughput(binary, scratch, flood):7.2f} MiB/s")
            for clients in (1, 10):
                rate = serial_throughput(binary, scratch, flood, clients)
                print(f"  {name:<14} {clients:2} client{'s' if clients > 1 else ' '}  {rate:7.2f} MiB/s to every client")


if __name__ == "__main__":
    main()

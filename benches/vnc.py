#!/usr/bin/env python3
"""VNC beside QEMU's VNC server, in one run, on the same guest screen: the
display guest (guests/display.S) draws its pattern on vmpod's framebuffer,
and on QEMU's standard VGA (QEMU runs it with TCG, -vga std). A client
written here from RFC 6143 measures, per server and encoding:

  full-screen updates per second   (non-incremental requests, back to back)
  bytes per full-screen update
  bytes sent during an idle minute (incremental requests kept pending, as a
                                    viewer does; target: near zero)

Prints figures; it asserts nothing.
usage: benches/vnc.py [--seconds N] [--idle-seconds N]   (after cargo build --release)
"""

import argparse
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
VMPOD = TARGET / "release" / "vmpod"
ENCODINGS = {"Raw": [0], "ZRLE": [16, 0]}


class Viewer:
    """An RFB 3.8 viewer on a Unix socket that counts what it receives."""

    def __init__(self, path, encodings):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.received = 0
        assert self.read(12).startswith(b"RFB 003.")
        self.sock.sendall(b"RFB 003.008\n")
        count = self.read(1)[0]
        assert 1 in self.read(count), "security type None"
        self.sock.sendall(b"\x01")
        assert self.read(4) == b"\0\0\0\0"
        self.sock.sendall(b"\x01")
        init = self.read(24)
        self.width, self.height = struct.unpack(">HH", init[:4])
        self.read(struct.unpack(">I", init[20:24])[0])
        # 32-bit true colour, as most viewers ask for.
        self.sock.sendall(bytes([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]))
        self.sock.sendall(struct.pack(">BBH", 2, 0, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings))
        self.received = 0

    def read(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(min(count - len(data), 1 << 20))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        self.received += count
        return data

    def request(self, incremental):
        self.sock.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    def update(self):
        """Reads one FramebufferUpdate (Raw, CopyRect, ZRLE rectangles)."""
        header = self.read(4)
        if header[0] != 0:
            raise RuntimeError(f"server message {header[0]}")
        for _ in range(struct.unpack(">H", header[2:])[0]):
            x, y, w, h, kind = struct.unpack(">HHHHi", self.read(12))
            if kind == 0:
                self.read(w * h * 4)
            elif kind == 1:
                self.read(4)
            elif kind == 16:
                self.read(struct.unpack(">I", self.read(4))[0])
            elif kind in (-223, -224, -239):
                pass  # pseudo-encodings without data here
            else:
                raise RuntimeError(f"encoding {kind}")


def full_updates(path, encodings, seconds):
    viewer = Viewer(path, encodings)
    count, started = 0, time.perf_counter()
    total = 0
    while time.perf_counter() - started < seconds:
        before = viewer.received
        viewer.request(False)
        viewer.update()
        total += viewer.received - before
        count += 1
    elapsed = time.perf_counter() - started
    return count / elapsed, total / count


def idle_bytes(path, seconds):
    """Bytes after the first full update while a viewer keeps an
    incremental request pending on a screen that does not change."""
    viewer = Viewer(path, ENCODINGS["ZRLE"])
    viewer.request(False)
    viewer.update()
    viewer.received = 0
    viewer.request(True)
    viewer.sock.settimeout(0.5)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            viewer.update()
            viewer.request(True)
        except (socket.timeout, TimeoutError):
            pass
    return viewer.received


def wait_for_file(path, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (path.suffix != ".txt" or "drew the pattern" in path.read_text()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not appear")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60)
    options = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vmpod-vnc-bench-"))
    subprocess.run(["sh", REPO / "guests/build.sh", work / "guests"], check=True, capture_output=True)
    kernel = work / "guests" / "display.elf"
    definition = work / "screen.yaml"
    definition.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: bench}\n"
        f"spec:\n  domain:\n    memory: {{guest: 16Mi}}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {kernel}}}}}}}\n"
        "    devices: {autoattachPodInterface: false}\n")
    servers = {}
    processes = []
    vmpod_serial = work / "vmpod-serial.txt"
    with open(vmpod_serial, "wb") as serial:
        processes.append(subprocess.Popen([VMPOD, "launch", "--file", definition, "--run-dir", work / "run"],
                                          stdin=subprocess.DEVNULL, stdout=serial, stderr=subprocess.DEVNULL))
    wait_for_file(vmpod_serial, "vmpod's display guest")
    servers["vmpod"] = work / "run" / "vnc.sock"
    if shutil.which("qemu-system-x86_64"):
        qemu_serial = work / "qemu-serial.txt"
        processes.append(subprocess.Popen(
            ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-kernel", str(kernel), "-vga", "std",
             "-display", "none", "-vnc", f"unix:{work / 'qemu-vnc.sock'}", "-serial", f"file:{qemu_serial}",
             "-monitor", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            wait_for_file(qemu_serial, "QEMU's display guest")
            servers["QEMU"] = work / "qemu-vnc.sock"
        except RuntimeError as why:
            print(f"QEMU left out: {why}")
    try:
        print(f"the display guest's 1024x768 pattern, {options.seconds:g} s per figure")
        for name, path in servers.items():
            for encoding, codes in ENCODINGS.items():
                rate, size = full_updates(path, codes, options.seconds)
                print(f"  {name:6} {encoding:5} {rate:8.1f} full-screen updates/s  {size:10.0f} bytes each")
        print(f"idle screen, one viewer with an incremental request pending, {options.idle_seconds:g} s:")
        for name, path in servers.items():
            print(f"  {name:6} {idle_bytes(path, options.idle_seconds)} bytes")
    finally:
        for process in processes:
            process.kill()  # the display guest ignores the power button
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

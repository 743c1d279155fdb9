"""The VM's screen as users reach it: the display guest draws a known
pattern on vmpod's framebuffer, and vncdotool (a real VNC client) connects
through socat and `vmpod vnc` exactly as the README says to with kubectl:
the screenshot must be the pattern pixel by pixel, and keys typed through
VNC must reach the guest's keyboard."""

import pathlib
import shutil
import socket
import subprocess
import time

import pytest

from conftest import harness, not_here
from test_serial_console import wait_for

REPO = harness.REPO
VNCDO = harness.TARGET / "venv" / "bin" / "vncdo"


def expected_pixel(x, y):
    """guests/display.S's pattern."""
    if y < 192:
        return (255, 0, 0)
    if y < 384:
        return (0, 255, 0)
    if y < 576:
        return (0, 0, 255)
    return (255, 255, 255) if (x // 64 + y // 64) % 2 else (0, 0, 0)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def display_vm(tmp_path_factory, vmpod_binary):
    """The display guest under vmpod, and a socat relaying a TCP port to
    its /vm/vnc; yields (run dir, port, the guest's serial output file).
    One for the module: each test leaves the screen as it found it."""
    tmp_path = tmp_path_factory.mktemp("display")
    if not pathlib.Path("/dev/kvm").exists():
        not_here("/dev/kvm is missing")
    for tool in ("socat",):
        if shutil.which(tool) is None:
            not_here(f"{tool} is not installed (scripts/test installs it)")
    subprocess.run(["sh", REPO / "guests/build.sh", tmp_path / "guests"], check=True)
    definition = tmp_path / "screen.yaml"
    definition.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: screen}\n"
        "spec:\n  domain:\n    memory: {guest: 16Mi}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {tmp_path}/guests/display.elf}}}}}}\n"
        "    devices: {autoattachPodInterface: false}\n"
    )
    run_dir = tmp_path / "run"
    output = tmp_path / "serial.txt"
    with open(output, "wb") as serial, open(tmp_path / "vmpod.log", "wb") as log:
        vm = subprocess.Popen([vmpod_binary, "launch", "--file", definition, "--run-dir", run_dir],
                              stdin=subprocess.DEVNULL, stdout=serial, stderr=log)
    port = free_port()
    relay = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                              f"EXEC:{vmpod_binary} vnc --run-dir {run_dir}"])
    try:
        wait_for(lambda: "drew the pattern" in output.read_text(), "the guest's drawing")
        yield run_dir, port, output
    finally:
        # Esc, released, powers the guest off.
        subprocess.run([VNCDO, "-s", f"127.0.0.1::{port}", "key", "esc"], capture_output=True, timeout=60)
        relay.terminate()
        relay.wait(timeout=10)
        try:
            status = vm.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vm.kill()
            status = "killed"
        log_text = (tmp_path / "vmpod.log").read_text()
        assert status == 0 and "panicked" not in log_text, log_text


def vncdo(port, *commands):
    if not VNCDO.exists():
        not_here("vncdotool is not installed (scripts/test installs tests/requirements.txt)")
    result = subprocess.run([VNCDO, "-s", f"127.0.0.1::{port}", *commands], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_vncdotool_through_socat_sees_the_guests_pattern_pixel_by_pixel(display_vm, tmp_path):
    _, port, _ = display_vm
    shot = tmp_path / "shot.png"
    vncdo(port, "capture", str(shot))
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1024, 768)
    pixels = image.load()
    wrong = [(x, y) for y in range(768) for x in range(1024) if pixels[x, y] != expected_pixel(x, y)]
    assert not wrong, f"{len(wrong)} pixels differ, first at {wrong[0]}: {pixels[wrong[0]]}"


def test_keys_typed_through_vnc_reach_the_guests_keyboard(display_vm):
    _, port, output = display_vm
    vncdo(port, "key", "a", "key", "shift-b", "key", "ctrl-alt-del")
    expected = ["1e", "9e", "2a", "30", "b0", "aa", "1d", "38", "e0", "53", "e0", "d3", "b8", "9d"]
    wait_for(lambda: len(scancodes(output)) >= len(expected), "the scancodes on the guest's console")
    assert scancodes(output) == expected


def scancodes(output):
    return [line.split()[-1][-2:] for line in output.read_text().splitlines() if line.startswith("scancode ")]

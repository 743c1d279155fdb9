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


def expected_pixel(x, y, height=768):
    """The pattern guests/display.S (1024x768) and the virtio-driver guest
    (any size) draw: four bands, the last of 64x64 squares."""
    band = height // 4
    if y < band:
        return (255, 0, 0)
    if y < 2 * band:
        return (0, 255, 0)
    if y < 3 * band:
        return (0, 0, 255)
    return (255, 255, 255) if (x // 64 + y // 64) % 2 else (0, 0, 0)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def screen_vm(tmp_path, vmpod_binary, guest, devices, annotations=""):
    """Runs `guest` under vmpod with a display and socat relaying a TCP
    port to its /vm/vnc; yields (run dir, port, the guest's serial output
    file) and powers the guest off with Esc at the end."""
    if not pathlib.Path("/dev/kvm").exists():
        not_here("/dev/kvm is missing")
    if shutil.which("socat") is None:
        not_here("socat is not installed (scripts/test installs it)")
    subprocess.run(["sh", REPO / "guests/build.sh", tmp_path / "guests"], check=True)
    kernel = tmp_path / "guests" / guest
    if not kernel.exists():
        not_here(f"the {guest} guest was not built (rustup target add x86_64-unknown-none)")
    definition = tmp_path / "screen.yaml"
    definition.write_text(
        f"apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: screen{annotations}}}\n"
        "spec:\n  domain:\n    memory: {guest: 32Mi}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {kernel}}}}}}}\n"
        f"    devices: {{autoattachPodInterface: false{devices}}}\n"
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


@pytest.fixture(scope="module")
def display_vm(tmp_path_factory, vmpod_binary):
    """guests/display.S on the default 1024x768 display; keys reach it
    through the i8042 (it has no virtio-input)."""
    yield from screen_vm(tmp_path_factory.mktemp("display"), vmpod_binary, "display.elf", "")


@pytest.fixture(scope="module")
def input_vm(tmp_path_factory, vmpod_binary):
    """The virtio-driver guest on an 800x600 display (the annotation), which
    it finds through boot_params, with a virtio tablet and keyboard."""
    yield from screen_vm(
        tmp_path_factory.mktemp("inputs"), vmpod_binary, "virtio-driver.bin",
        ", inputs: [{name: tablet, type: tablet, bus: virtio}, {name: keys, type: keyboard, bus: virtio}]",
        ", annotations: {vmpod.io/display-size: 800x600}",
    )


def vncdo(port, *commands):
    if not VNCDO.exists():
        not_here("vncdotool is not installed (scripts/test installs tests/requirements.txt)")
    result = subprocess.run([VNCDO, "-s", f"127.0.0.1::{port}", *commands], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def check_screenshot(port, path, size):
    vncdo(port, "capture", str(path))
    from PIL import Image

    image = Image.open(path).convert("RGB")
    assert image.size == size
    pixels = image.load()
    width, height = size
    wrong = [(x, y) for y in range(height) for x in range(width) if pixels[x, y] != expected_pixel(x, y, height)]
    assert not wrong, f"{len(wrong)} pixels differ, first at {wrong[0]}: {pixels[wrong[0]]}"


def test_vncdotool_through_socat_sees_the_guests_pattern_pixel_by_pixel(display_vm, tmp_path):
    _, port, _ = display_vm
    check_screenshot(port, tmp_path / "shot.png", (1024, 768))


def test_a_linux_boot_protocol_guest_finds_the_display_and_gets_virtio_input(input_vm, tmp_path):
    _, port, output = input_vm
    assert "display: 800x600, 32 bits, stride 3200 at 0xc0000000" in output.read_text()
    check_screenshot(port, tmp_path / "shot.png", (800, 600))
    vncdo(port, "key", "a", "move", "400", "300", "click", "1")
    expected = [
        "keyboard: type 1 code 30 value 1", "keyboard: type 1 code 30 value 0",
        # (400, 300) on 800x600, scaled to the tablet's 0..32767
        "tablet: type 3 code 0 value 16404", "tablet: type 3 code 1 value 16410",
        "tablet: type 1 code 272 value 1", "tablet: type 1 code 272 value 0",
    ]
    wait_for(lambda: "code 272 value 0" in output.read_text(), "the click on the guest's console")
    events = [line.split("virtio ", 1)[1] for line in output.read_text().splitlines() if line.startswith("input: vmpod virtio ")]
    for event in expected:
        assert event in events, (event, events)
    assert events.index("keyboard: type 1 code 30 value 1") < events.index("tablet: type 1 code 272 value 1")


def test_keys_typed_through_vnc_reach_the_guests_keyboard(display_vm):
    _, port, output = display_vm
    vncdo(port, "key", "a", "key", "shift-b", "key", "ctrl-alt-del")
    expected = ["1e", "9e", "2a", "30", "b0", "aa", "1d", "38", "e0", "53", "e0", "d3", "b8", "9d"]
    wait_for(lambda: len(scancodes(output)) >= len(expected), "the scancodes on the guest's console")
    assert scancodes(output) == expected


def scancodes(output):
    return [line.split()[-1][-2:] for line in output.read_text().splitlines() if line.startswith("scancode ")]


def test_qmp_screendump_and_input_send_event_use_the_same_screen_and_devices(input_vm, tmp_path):
    """QEMU's own client library: screendump as PNG is the pattern; abs and
    btn events from input-send-event reach the guest's tablet."""
    import asyncio

    from PIL import Image
    from qemu.qmp import QMPClient

    run_dir, _, output = input_vm
    shot = tmp_path / "dump.png"

    async def scenario():
        client = QMPClient("display-test")
        await client.connect(str(run_dir / "qmp.sock"))
        await client.execute("screendump", {"filename": str(shot), "format": "png"})
        await client.execute("input-send-event", {"events": [
            {"type": "abs", "data": {"axis": "x", "value": 1000}},
            {"type": "abs", "data": {"axis": "y", "value": 2000}},
            {"type": "btn", "data": {"down": True, "button": "right"}},
            {"type": "btn", "data": {"down": False, "button": "right"}},
        ]})
        await client.disconnect()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    image = Image.open(shot).convert("RGB")
    assert image.size == (800, 600)
    pixels = image.load()
    assert all(pixels[x, y] == expected_pixel(x, y, 600) for y in range(0, 600, 7) for x in range(0, 800, 5))
    wait_for(lambda: "code 273 value 0" in output.read_text(), "the right click on the guest's console")
    text = output.read_text()
    for event in ["tablet: type 3 code 0 value 1000", "tablet: type 3 code 1 value 2000", "tablet: type 1 code 273 value 1"]:
        assert event in text, text

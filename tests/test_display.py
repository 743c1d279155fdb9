"""The VM's screen as users reach it: the display guest draws a known
pattern on vmpod's framebuffer, and vncdotool (a real VNC client) connects
through socat and `vmpod vnc` exactly as the README says to with kubectl:
the screenshot must be the pattern pixel by pixel, and keys typed through
VNC must reach the guest's keyboard."""

import pathlib
import sys
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


class WebSocket:
    """A minimal RFC 6455 client: masked frames out, binary frames in."""

    def __init__(self, port, path="/", protocols=("plain.kubevirt.io",), headers=""):
        import base64
        import os

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        offered = f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n" if protocols else ""
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offered}{headers}\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.head = head.decode()
        self.data = b""

    def send(self, payload, opcode=2):
        import os

        mask = os.urandom(4)
        length = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else bytes([0xfe]) + length.to_bytes(2, "big"))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _frame(self):
        while True:
            if len(self.buffer) >= 2:
                length, at = self.buffer[1] & 0x7f, 2
                if length == 126:
                    length, at = int.from_bytes(self.buffer[2:4], "big"), 4
                elif length == 127:
                    length, at = int.from_bytes(self.buffer[2:10], "big"), 10
                if len(self.buffer) >= at + length:
                    assert self.buffer[1] & 0x80 == 0, "server frames are not masked"
                    opcode, payload = self.buffer[0] & 0x0f, self.buffer[at:at + length]
                    self.buffer = self.buffer[at + length:]
                    return opcode, payload
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the WebSocket"
            self.buffer += chunk

    def read(self, count):
        while len(self.data) < count:
            opcode, payload = self._frame()
            assert opcode == 2, f"a binary frame, not opcode {opcode}"
            self.data += payload
        taken, self.data = self.data[:count], self.data[count:]
        return taken


@pytest.fixture
def websocket_server(display_vm, vmpod_binary):
    run_dir, _, _ = display_vm
    port = free_port()
    server = subprocess.Popen([vmpod_binary, "vnc", "--run-dir", run_dir, "--websocket", f"127.0.0.1:{port}"],
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: port_open(port), "the WebSocket listener")
    yield port
    server.terminate()
    server.wait(timeout=10)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_rfb_over_websocket_at_kubevirts_subresource_path(websocket_server):
    ws = WebSocket(websocket_server, "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/screen/vnc")
    assert ws.head.startswith("HTTP/1.1 101"), ws.head
    assert "Sec-WebSocket-Protocol: plain.kubevirt.io" in ws.head
    assert ws.read(12) == b"RFB 003.008\n"
    ws.send(b"RFB 003.008\n")
    assert ws.read(2) == b"\x01\x01"
    ws.send(b"\x01")
    assert ws.read(4) == b"\x00\x00\x00\x00"
    ws.send(b"\x01")
    init = ws.read(24)
    assert init[:4] == bytes([4, 0, 3, 0])
    ws.read(int.from_bytes(init[20:24], "big"))
    ws.send(bytes([3, 0, 0, 0, 0, 0, 4, 0, 3, 0]))  # a full update, Raw
    header = ws.read(4)
    assert header[0] == 0 and int.from_bytes(header[2:4], "big") == 1
    rect = ws.read(12)
    assert rect == bytes([0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0])
    pixels = ws.read(1024 * 768 * 4)
    for x, y in [(0, 0), (500, 200), (1000, 400), (10, 600), (70, 600), (1023, 767)]:
        b, g, r = pixels[(y * 1024 + x) * 4:(y * 1024 + x) * 4 + 3]
        assert (r, g, b) == expected_pixel(x, y), (x, y)


def test_websocket_refusals_say_why(websocket_server, vmpod_binary, tmp_path):
    wrong_path = WebSocket(websocket_server, "/api/v1/secrets")
    assert wrong_path.head.startswith("HTTP/1.1 404"), wrong_path.head
    unknown_protocol = WebSocket(websocket_server, "/", protocols=("base64",))
    assert unknown_protocol.head.startswith("HTTP/1.1 400"), unknown_protocol.head
    exposed = subprocess.run([vmpod_binary, "vnc", "--run-dir", tmp_path, "--websocket", "0.0.0.0:0"],
                             capture_output=True, text=True, timeout=30)
    assert exposed.returncode == 2
    assert "not a loopback address, so the VNC WebSocket needs a token" in exposed.stderr


NOVNC = pathlib.Path("/usr/share/novnc")


class Browser:
    """Headless Chromium, driven through the DevTools protocol."""

    def __init__(self, url, tmp_path):
        chromium = shutil.which("chromium")
        if chromium is None or not (NOVNC / "vnc_lite.html").exists():
            not_here("chromium and Debian's novnc are not installed (scripts/test installs them)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={tmp_path / 'chromium'}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._page() is not None, "Chromium's DevTools endpoint")
        debugger = self._page()["webSocketDebuggerUrl"]
        self.socket = WebSocket(self.port, "/" + debugger.split("/", 3)[3], protocols=())
        self.calls = 0

    def _page(self):
        import json
        import urllib.request

        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2))
        except OSError:
            return None
        return next((page for page in pages if page.get("type") == "page" and "vnc_lite" in page.get("url", "")), None)

    def call(self, method, **params):
        import json

        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}).encode(), opcode=1)
        while True:
            _, payload = self.socket._frame()
            message = json.loads(payload)
            if message.get("id") == self.calls:
                return message["result"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def test_novnc_in_headless_chromium_shows_the_guests_screen(websocket_server, tmp_path):
    import base64
    import io

    from PIL import Image

    pages = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(http_port := free_port())],
                             cwd=NOVNC, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(http_port), "the page server")
        browser = Browser(f"http://127.0.0.1:{http_port}/vnc_lite.html?host=127.0.0.1&port={websocket_server}&path=", tmp_path)
        try:
            drawn = ("(() => { const c = document.querySelector('canvas');"
                     " return !!c && c.getContext('2d').getImageData(1000, 760, 1, 1).data[3] === 255; })()")
            wait_for(lambda: browser.evaluate(drawn), "noVNC to draw the whole screen", timeout=60)
            status = browser.evaluate("document.getElementById('status').textContent")
            assert status == "Connected to screen", status
            browser.call("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)
            left, top = browser.evaluate("(() => { const r = document.querySelector('canvas').getBoundingClientRect();"
                                         " return [Math.round(r.x), Math.round(r.y)]; })()")
            clip = {"x": left, "y": top, "width": 1024, "height": 768, "scale": 1}
            shot = browser.call("Page.captureScreenshot", format="png", clip=clip)
            image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
            assert image.size == (1024, 768)
            pixels = image.load()
            wrong = [(x, y) for y in range(768) for x in range(1024) if pixels[x, y] != expected_pixel(x, y)]
            assert not wrong, f"{len(wrong)} pixels differ, first at {wrong[0]}: {pixels[wrong[0]]}"
        finally:
            browser.close()
    finally:
        pages.terminate()
        pages.wait(timeout=10)

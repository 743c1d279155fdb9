"""The interactive serial console, as a person uses it: `vmpod serial` in a
real terminal (tmux), attached to the echo guest running under vmpod."""

import pathlib
import shutil
import socket
import subprocess
import time

import pytest

from conftest import harness, not_here

REPO = harness.REPO


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def echo_vm(tmp_path, vmpod_binary):
    if not pathlib.Path("/dev/kvm").exists():
        not_here("/dev/kvm is missing")
    subprocess.run(["sh", REPO / "guests/build.sh", tmp_path / "guests"], check=True)
    definition = tmp_path / "echo.yaml"
    definition.write_text(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: echo}\n"
        "spec:\n  domain:\n    memory: {guest: 16Mi}\n"
        f"    firmware: {{kernelBoot: {{container: {{kernelPath: {tmp_path}/guests/echo.elf}}}}}}\n"
        "    devices: {autoattachPodInterface: false, autoattachGraphicsDevice: false}\n"
    )
    run_dir = tmp_path / "run"
    vm = subprocess.Popen(
        [vmpod_binary, "launch", "--file", definition, "--run-dir", run_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: (run_dir / "serial.sock").exists(), "the serial socket")
    yield run_dir
    if vm.poll() is None:  # the test left it running: Ctrl-D powers it off
        try:
            with socket.socket(socket.AF_UNIX) as console:
                console.connect(str(run_dir / "serial.sock"))
                console.sendall(b"\x04")
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # it is already on its way out (a test ended it)
    assert vm.wait(timeout=30) == 0, vm.stderr.read()


class Tmux:
    def __init__(self, name, command):
        if shutil.which("tmux") is None:
            not_here("tmux is not installed")
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "30", command], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_attach_type_and_detach_with_the_terminal_restored(echo_vm, tmp_path, vmpod_binary):
    script = (
        f"stty -g > {tmp_path}/before; {vmpod_binary} serial --run-dir {echo_vm}; "
        f"echo helper exited $?; stty -g > {tmp_path}/after; sleep 60"
    )
    tmux = Tmux(f"vmpod-serial-{int(time.time())}", f"sh -c '{script}'")
    try:
        wait_for(lambda: "Ctrl-] detaches" in tmux.screen(), "the attach message")
        wait_for(lambda: "vmpod echo guest: type and it echoes" in tmux.screen(), "the scrollback")
        tmux.keys("hello from tmux")
        wait_for(lambda: "hello from tmux" in tmux.screen(), "the guest's echo")
        assert tmux.screen().count("hello from tmux") == 1, "raw mode: the terminal itself does not echo"
        tmux.keys("C-]")
        wait_for(lambda: "helper exited 0" in tmux.screen(), "the helper to exit")
        assert "detached from the serial console" in tmux.screen()
        wait_for(lambda: (tmp_path / "after").exists(), "the terminal settings after")
        assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text(), "terminal restored"
    finally:
        tmux.close()


def test_detaching_leaves_the_vm_running_for_the_next_client(echo_vm):
    with socket.socket(socket.AF_UNIX) as first:
        first.connect(str(echo_vm / "serial.sock"))
    with socket.socket(socket.AF_UNIX) as second:
        second.connect(str(echo_vm / "serial.sock"))
        second.settimeout(10)
        seen = b""
        while b"type and it echoes" not in seen:
            seen += second.recv(4096)
        second.sendall(b"still here\n")
        while b"still here\n" not in seen:
            seen += second.recv(4096)

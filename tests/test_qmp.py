"""QMP as QEMU's own client library sees it: qemu.qmp connects to vmpod's
qmp.sock, negotiates, runs every command vmpod implements and receives the
lifecycle events; raw sockets get proper error objects for bad input and
the server keeps serving others."""

import asyncio
import pathlib
import json
import socket

import pytest
from qemu.qmp import ExecuteError, QMPClient

from test_serial_console import echo_vm  # noqa: F401  (the echo guest under vmpod)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def connected(run_dir, name="test"):
    client = QMPClient(name)
    await client.connect(str(run_dir / "qmp.sock"))
    return client


async def next_event(client, name):
    async for event in client.events:
        if event["event"] == name:
            return event
    raise AssertionError(f"no {name} event")


def test_qemu_qmp_negotiates_and_queries(echo_vm):  # noqa: F811
    async def scenario():
        client = await connected(echo_vm)
        assert client.greeting.QMP.capabilities == []
        assert (await client.execute("query-status"))["status"] == "running"
        assert (await client.execute("query-name"))["name"] == "echo"
        assert len((await client.execute("query-uuid"))["UUID"]) == 36
        assert "package" in await client.execute("query-version")
        cpus = await client.execute("query-cpus-fast")
        assert [cpu["cpu-index"] for cpu in cpus] == [0]
        assert await client.execute("query-block") == []
        names = {command["name"] for command in await client.execute("query-commands")}
        assert {"stop", "cont", "system_reset", "system_powerdown", "quit", "human-monitor-command", "send-key"} <= names
        assert await client.execute("send-key", {"keys": [{"type": "qcode", "data": "a"}]}) == {}
        status = await client.execute("human-monitor-command", {"command-line": "info status"})
        assert status == "VM status: running\r\n"
        await client.disconnect()

    run(scenario())


def test_stop_and_cont_pause_the_vm_with_events(echo_vm):  # noqa: F811
    async def scenario():
        client = await connected(echo_vm)
        await client.execute("stop")
        assert (await client.execute("query-status")) == {"running": False, "singlestep": False, "status": "paused"}
        stop = await next_event(client, "STOP")
        assert set(stop["timestamp"]) == {"seconds", "microseconds"}
        await client.execute("cont")
        assert (await client.execute("query-status"))["status"] == "running"
        await next_event(client, "RESUME")
        await client.disconnect()

    run(scenario())


def test_reset_and_powerdown_send_their_events(echo_vm):  # noqa: F811
    async def scenario():
        client = await connected(echo_vm)
        await client.execute("system_reset")
        await next_event(client, "RESET")
        await client.execute("system_powerdown")
        await next_event(client, "POWERDOWN")
        await client.disconnect()

    run(scenario())


def test_errors_have_qemus_shape(echo_vm):  # noqa: F811
    async def scenario():
        client = await connected(echo_vm)
        with pytest.raises(ExecuteError) as unknown:
            await client.execute("no-such-command")
        assert unknown.value.error_class == "CommandNotFound"
        with pytest.raises(ExecuteError) as extra:
            await client.execute("stop", {"force": True})
        assert extra.value.error_class == "GenericError"
        with pytest.raises(ExecuteError) as wrong_type:
            await client.execute("human-monitor-command", {"command-line": 42})
        assert "expected: string" in wrong_type.value.error.error.desc
        await client.disconnect()

    run(scenario())


def raw_client(run_dir):
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(run_dir / "qmp.sock"))
    raw.settimeout(10)
    reader = raw.makefile("rb")
    json.loads(reader.readline())  # greeting
    return raw, reader


def test_bad_input_gets_error_objects_and_others_are_still_served(echo_vm):  # noqa: F811
    raw, reader = raw_client(echo_vm)
    raw.sendall(b'{"execute": "query-status"}')
    assert json.loads(reader.readline())["error"]["class"] == "CommandNotFound", "negotiate first"
    raw.sendall(b'{"execute": "qmp_capabilities"}')
    assert json.loads(reader.readline()) == {"return": {}}
    raw.sendall(b"{this is not json\n")
    assert "JSON parse error" in json.loads(reader.readline())["error"]["desc"]
    raw.sendall(b'["a", "list"]')
    assert json.loads(reader.readline())["error"]["desc"] == "QMP input must be a JSON object"
    raw.sendall(b'{"execute": "query-name", "id": "' + b"x" * (10 * 1024 * 1024) + b'"}\n')
    assert "discarded" in json.loads(reader.readline())["error"]["desc"]

    async def other_client_still_served():
        client = await connected(echo_vm, "bystander")
        assert (await client.execute("query-status"))["status"] == "running"
        await client.disconnect()

    run(other_client_still_served())
    raw.sendall(b'{"execute": "query-name", "id": 5}')
    assert json.loads(reader.readline()) == {"return": {"name": "echo"}, "id": 5}
    raw.close()


def test_quit_ends_vmpod_with_status_0(echo_vm):  # noqa: F811
    async def scenario():
        client = await connected(echo_vm)
        await client.execute("quit")
        await next_event(client, "SHUTDOWN")
        try:
            await client.disconnect()
        except EOFError:
            pass  # vmpod has closed the socket, as it should after quit

    run(scenario())


def test_qmp_shell_works_interactively(echo_vm):  # noqa: F811
    """qmp-shell, the interactive client that ships with qemu.qmp, in a terminal."""
    import sys
    import time

    from test_serial_console import Tmux, wait_for

    shell = pathlib.Path(sys.executable).parent / "qmp-shell"
    tmux = Tmux(f"vmpod-qmp-shell-{int(time.time())}", f"{shell} {echo_vm / 'qmp.sock'}; sleep 60")
    try:
        wait_for(lambda: "(QEMU)" in tmux.screen(), "the qmp-shell prompt")
        tmux.keys("query-status", "Enter")
        wait_for(lambda: '"status": "running"' in tmux.screen(), "the query-status reply")
        tmux.keys("stop", "Enter")
        tmux.keys("query-status", "Enter")
        wait_for(lambda: '"status": "paused"' in tmux.screen(), "the paused status")
        tmux.keys("cont", "Enter")
    finally:
        tmux.close()

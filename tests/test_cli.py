"""`sfu` command line: `ctl` against a real control server, argument errors, `serve`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sfu
from sfu.cli import main
from sfu.control import ControlServer, start_control_server
from sfu.errors import BadRequest, NotFound
from sfu.events import EventBus

SECRET = "cli-secret"


class NodeThread:
    """A control server with a small real dispatcher, on its own loop in a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.bus = EventBus()
        self.rooms: set[str] = set()
        self.loop = asyncio.new_event_loop()
        self.server: ControlServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "control server did not start"

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "room.create":
            self.rooms.add(params["room"])
            self.bus.publish(params["room"], "room.created", {"room": params["room"]})
            return {"room": params["room"]}
        if method == "room.close":
            if params.get("room") not in self.rooms:
                raise NotFound(f"room {params.get('room')!r} does not exist")
            self.rooms.discard(params["room"])
            self.bus.publish(params["room"], "room.closed", {"room": params["room"]})
            return None
        if method == "room.list":
            return {"rooms": sorted(self.rooms), "raw": b"\x01\x02"}
        raise BadRequest(f"unknown method '{method}'")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = await start_control_server(self.call, self.bus, self.path,
                                                     ("127.0.0.1", 0), SECRET)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def run_sync(self, method: str, params: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.call(method, params), self.loop).result(5)

    def stop(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="sfucli", dir="/tmp")  # AF_UNIX path limit
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def node(short_dir: str) -> Iterator[NodeThread]:
    node = NodeThread(os.path.join(short_dir, "sfu.sock"))
    yield node
    node.stop()


def ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["ctl", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ctl_prints_pretty_json_result(node: NodeThread, capsys) -> None:
    code, out, err = ctl(capsys, "room.create", '{"room": "r1"}', "--control", node.path)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"room": "r1"}
    code, out, _ = ctl(capsys, "room.list", "--control", node.path)
    assert code == 0
    assert json.loads(out) == {"rooms": ["r1"], "raw": "0102"}  # bytes shown as hex
    assert out.startswith("{\n  ")  # indented
    code, out, _ = ctl(capsys, "room.close", '{"room": "r1"}', "--control", node.path)
    assert (code, json.loads(out)) == (0, {})
    assert node.rooms == set()


def test_ctl_typed_error_goes_to_stderr_with_exit_1(node: NodeThread, capsys) -> None:
    code, out, err = ctl(capsys, "room.close", '{"room": "r9"}', "--control", node.path)
    assert (code, out) == (1, "")
    assert err == "error: not_found: room 'r9' does not exist\n"
    code, _, err = ctl(capsys, "bogus.method", "--control", node.path)
    assert code == 1 and err.startswith("error: bad_request: unknown method 'bogus.method'")


def test_ctl_without_a_node_exits_2_with_a_hint(short_dir: str, capsys) -> None:
    path = os.path.join(short_dir, "nothing.sock")
    code, out, err = ctl(capsys, "node.info", "--control", path)
    assert (code, out) == (2, "")
    assert f"no node listening on {path}" in err and "make run" in err


@pytest.mark.parametrize("params", ['{"room": ', "[1, 2]", "room=r1"])
def test_ctl_bad_json_exits_2(node: NodeThread, capsys, params: str) -> None:
    code, out, err = ctl(capsys, "room.create", params, "--control", node.path)
    assert (code, out) == (2, "")
    assert "JSON-PARAMS" in err
    assert node.rooms == set()  # nothing was sent


def test_ctl_over_tcp_with_secret(node: NodeThread, capsys) -> None:
    assert node.server is not None and node.server.tcp_address is not None
    host, port = node.server.tcp_address
    address = f"{host}:{port}"
    code, out, _ = ctl(capsys, "room.create", '{"room": "t1"}', "--control-tcp", address,
                       "--secret", SECRET)
    assert (code, json.loads(out)) == (0, {"room": "t1"})
    code, out, err = ctl(capsys, "room.list", "--control-tcp", address, "--secret", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("error: unauthorized: wrong secret")


@pytest.mark.parametrize("command", ["serve", "ctl"])
def test_control_tcp_without_secret_is_a_usage_error(command: str, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFU_CONTROL_SECRET", raising=False)
    args = [command, "--control-tcp", "127.0.0.1:7000"]
    if command == "ctl":
        args.insert(1, "node.info")
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "--control-tcp needs --secret" in capsys.readouterr().err


def test_bad_host_port_and_no_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--udp", "5004"])
    assert info.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def _subprocess_env() -> dict[str, str]:
    # The package root that this test imported `sfu` from (source tree or install).
    root = str(Path(sfu.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root, "PYTHONUNBUFFERED": "1"}


def test_ctl_events_subscribe_streams_json_lines_until_ctrl_c(node: NodeThread) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "ctl", "events.subscribe", '{"rooms": ["e1"]}',
         "--control", node.path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env())
    try:
        assert node.server is not None
        deadline = time.monotonic() + 20
        # Wait until the subscription is registered (the bus has a listener).
        while not node.bus._listeners:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
        node.run_sync("room.create", {"room": "other"})  # filtered out
        node.run_sync("room.create", {"room": "e1"})
        node.run_sync("room.close", {"room": "e1"})
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        events = [json.loads(line) for line in lines]
        assert [(e["event"], e["room"], e["seq"]) for e in events] == [
            ("room.created", "e1", 1), ("room.closed", "e1", 2)]
        assert all(line.count("\n") == 1 for line in lines)  # one JSON per line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serve_runs_a_node_until_sigterm(short_dir: str, capsys) -> None:
    path = os.path.join(short_dir, "run", "sfu.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "serve", "--udp", "127.0.0.1:0", "--control", path,
         "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env())
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
        code, out, err = ctl(capsys, "node.info", "--control", path)
        assert (code, err) == (0, "")
        info = json.loads(out)
        assert info["udp"].startswith("127.0.0.1:") and info["rooms"] == 0
        # `sfu serve` turns QUIC and the viewer page on by default.
        assert info["quic"].startswith("127.0.0.1:") and info["http"].startswith("127.0.0.1:")
        assert ctl(capsys, "room.create", '{"room": "s1"}', "--control", path)[0] == 0
        assert json.loads(ctl(capsys, "room.list", "--control", path)[1]) == {"rooms": ["s1"]}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not os.path.exists(path)  # socket file removed on shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

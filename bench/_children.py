"""Baseline forwarders run as child processes of bench/fanout.py (pinned like the node).

Protocol on the pipes: the parent writes one JSON config line ({"kind", "dests", "cpu"});
the child answers {"port": P} once its socket is bound; then every "snap" line from the
parent gets one JSON line of counters back; EOF on stdin prints the counters and exits.

- floor: FloorForwarder (Cython), recvmmsg + sendmmsg and nothing else: the kernel floor.
- naive: asyncio DatagramProtocol on uvloop, one transport.sendto per destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import uvloop

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # run as a script: make the sfu package importable


def free_udp_port() -> int:
    """A UDP port on loopback that was free a moment ago (for a node started as a child)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def served_node(*extra: str, prefix: str = "sfu-bench-"
                      ) -> AsyncIterator[tuple[tuple[str, int], str, subprocess.Popen[bytes]]]:
    """`python -m sfu serve` in its own process on a free loopback port, with `extra`
    arguments; yields (media address, control socket path, process) once the control socket
    exists, and stops the node on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        sock, port = os.path.join(tmp, "sfu.sock"), free_udp_port()
        cmd = [sys.executable, "-m", "sfu", "serve", "--udp", f"127.0.0.1:{port}", "--no-quic",
               "--control", sock, "--log-level", "warning", *extra]
        proc = subprocess.Popen(cmd, cwd=_ROOT)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node did not start (exit {proc.poll()}): "
                                       f"{' '.join(cmd[3:])}")
                await asyncio.sleep(0.05)
            yield ("127.0.0.1", port), sock, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def native_module() -> ModuleType:
    """The extension holding the bench helpers: sfu._native, or (to test the helpers before
    the engine includes them) a standalone build named by SFU_BENCHTOOLS_MODULE."""
    return importlib.import_module(os.environ.get("SFU_BENCHTOOLS_MODULE", "sfu._native"))


def _read_line(fd: int) -> bytes:
    # Unbuffered, byte by byte: a buffered reader could swallow data the floor's epoll
    # loop must see on the fd.
    out = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b:
            return bytes(out)
        out += b
        if b == b"\n":
            return bytes(out)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _run_floor(dests: list[tuple[str, int]]) -> None:
    ff = native_module().FloorForwarder(dests)
    _emit({"port": ff.port})
    while True:
        ff.run(0)  # returns when stdin has a command or EOF
        line = _read_line(0)
        _emit(ff.counters())
        if not line:
            return


class NaiveForwarder(asyncio.DatagramProtocol):
    """What a first asyncio SFU would do: a Python callback and a sendto per copy."""

    def __init__(self, dests: list[tuple[str, int]]) -> None:
        self.dests = dests
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.transport: Any = None  # uvloop's UDPTransport is not an asyncio subclass

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        transport = self.transport
        if transport is None:
            return
        for dest in self.dests:
            transport.sendto(data, dest)
        self.sent += len(self.dests)

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1

    def counters(self) -> dict[str, int]:
        return {"received": self.received, "sent": self.sent, "send_errors": self.send_errors}


async def _naive_main(dests: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    # Same socket buffers as the floor and the node, so only the forwarding code differs.
    sock = native_module().bench_udp_socket("127.0.0.1", 0)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: NaiveForwarder(dests), sock=sock)
    done = loop.create_future()

    def on_command() -> None:
        data = os.read(0, 4096)
        for _ in range(max(1, data.count(b"\n"))):
            _emit(proto.counters())
        if not data and not done.done():
            done.set_result(None)

    loop.add_reader(0, on_command)
    _emit({"port": sock.getsockname()[1]})
    await done
    loop.remove_reader(0)
    transport.close()


def main() -> int:
    cfg = json.loads(_read_line(0))
    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {int(cfg["cpu"])})
    if cfg.get("nice"):
        os.setpriority(os.PRIO_PROCESS, 0, int(cfg["nice"]))
    if cfg.get("rt"):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(cfg["rt"])))
    dests = [(str(h), int(p)) for h, p in cfg["dests"]]
    if cfg["kind"] == "floor":
        _run_floor(dests)
    elif cfg["kind"] == "naive":
        uvloop.run(_naive_main(dests))
    else:
        raise SystemExit(f"unknown forwarder kind {cfg['kind']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared scaffolding of the node's UDP integration tests (test_node_udp.py,
test_node_udp_security.py): an in-process node (start_node) on loopback, real UDP clients in
the node's own loop, real engine. The node's timer (on_tick) runs for real; every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from sfu import _native, stun
from sfu.config import NodeConfig
from sfu.control import Client
from sfu.errors import SfuError
from sfu.server import RunningNode, start_node

HOST_SSRC = 0x11223344
PT = 96

# Datagrams that end in exactly one of these (engine accounting invariant).
INGRESS_OUTCOMES = ("rx_rtp", "rx_rtcp", "rx_stun", "drop_malformed", "drop_unbound",
                    "drop_not_rtp", "drop_unknown_ssrc", "drop_ssrc_not_owned",
                    "drop_payload_type", "drop_duplicate", "drop_no_slot")


def run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test on uvloop (the production loop) with a hard bound."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return uvloop.run(asyncio.wait_for(fn(*args, **kwargs), 60))
    return wrapper


class UdpClient(asyncio.DatagramProtocol):
    """A loopback UDP endpoint that records every datagram it receives."""

    def __init__(self) -> None:
        self.rx: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.rx.append(data)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    @property
    def addr_str(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        if not data:  # asyncio transports silently skip empty datagrams; the kernel won't
            fd = self.transport.get_extra_info("socket").fileno()
            with socket.socket(fileno=os.dup(fd)) as raw:
                raw.sendto(data, to)
            return
        self.transport.sendto(data, to)

    def rtp(self) -> list[dict[str, Any]]:
        return [_native.parse_rtp(d) for d in self.rx if datagram_kind(d) == "rtp"]

    def rtcp(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for d in self.rx:
            if datagram_kind(d) == "rtcp":
                out.extend(_native.parse_rtcp(d))
        return out

    def stun(self) -> list[stun.StunMessage]:
        return [stun.parse(d) for d in self.rx if datagram_kind(d) == "stun"]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def datagram_kind(data: bytes) -> str:
    if stun.is_stun(data):
        return "stun"
    if len(data) >= 2 and 192 <= data[1] <= 223:  # RFC 5761 §4 demux
        return "rtcp"
    return "rtp"


async def open_client() -> UdpClient:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    return proto


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def settle(node: RunningNode, rounds: int = 3) -> None:
    """Let in-flight loopback datagrams be read by the node and by the clients."""
    for _ in range(rounds):
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_node(**overrides: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="sfu-a2-") as tmp:
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0,
                            control_path=os.path.join(tmp, "sfu.sock"), **overrides)
        running = await start_node(config)
        try:
            yield running
        finally:
            await running.close()
        assert not os.path.exists(config.control_path)  # socket file cleaned up


def counters(running: RunningNode) -> dict[str, int]:
    c = running.node.engine.counters
    return {name: int(c[i]) for i, name in enumerate(_native.COUNTER_NAMES)}


async def call(running: RunningNode, method: str, **params: Any) -> Any:
    return await running.node.call(method, params)


async def join_bound(running: RunningNode, room: str, pid: str, role: str) -> UdpClient:
    """Join and bind with a STUN Binding Request; returns the participant's client."""
    j = await call(running, "participant.join", room=room, participant=pid, role=role)
    client = await open_client()
    client.send(stun.binding_request(j["ice_ufrag"] + ":remote", j["ice_pwd"]),
                running.udp_address)
    assert await wait_until(lambda: any(datagram_kind(d) == "stun" for d in client.rx))
    msg = client.stun()[-1]
    assert msg.msg_type == stun.BINDING_SUCCESS
    client.rx.clear()
    return client


async def publish_video(running: RunningNode, room: str, pid: str,
                        ssrc: int = HOST_SSRC) -> str:
    result = await call(running, "track.publish", room=room, participant=pid, kind="video",
                        codec="VP8", payload_type=PT, clock_rate=90000,
                        layers=[{"rid": "f", "ssrc": ssrc}])
    return str(result["track"])


async def host_and_viewers(running: RunningNode, n: int) -> tuple[UdpClient, str,
                                                                  list[UdpClient],
                                                                  list[dict[str, Any]]]:
    await call(running, "room.create", room="r1")
    host = await join_bound(running, "r1", "host", "host")
    track = await publish_video(running, "r1", "host")
    viewers, subs = [], []
    for i in range(n):
        v = await join_bound(running, "r1", f"v{i}", "audience")
        subs.append(await call(running, "track.subscribe", room="r1", participant=f"v{i}",
                               track=track))
        viewers.append(v)
    return host, track, viewers, subs


def rtp_packet(seq: int, ts: int, ssrc: int = HOST_SSRC, size: int = 120) -> bytes:
    payload = (seq & 0xFFFF).to_bytes(2, "big") * (size // 2)
    return _native.build_rtp(PT, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload,
                             marker=seq % 3 == 0)


@asynccontextmanager
async def node_with_room(room: str) -> Any:
    """A node on loopback, a control client connected over its Unix socket, and `room`."""
    async with running_node() as running:
        assert running.control_path is not None
        client = await Client.connect_unix(running.control_path)
        try:
            await client.call("room.create", room=room)
            yield running, client
        finally:
            await client.close()


Scenario = Callable[[RunningNode, list[dict[str, Any]]], Awaitable[None]]


def with_node(scenario: Scenario, **overrides: Any) -> None:
    """Run ``scenario(running, events)`` against a fresh node (all rooms' events recorded),
    no control socket: Node.call in-process."""
    async def main() -> None:
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0, control_path=None, **overrides)
        running = await start_node(config)
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(None, events.append)
        try:
            await asyncio.wait_for(scenario(running, events), 30)
        finally:
            await running.close()
    uvloop.run(main())


def expect(exc: type[SfuError], match: str) -> Any:
    """pytest.raises for a typed control error whose message contains ``match``."""
    return pytest.raises(exc, match=re.escape(match))

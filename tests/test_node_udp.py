"""Integration: an in-process node (start_node) on loopback, real UDP clients, real engine.

Clients are plain asyncio datagram endpoints in the node's own loop; the node's timer
(on_tick) runs for real. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from sfu import _native, stun
from sfu.config import NodeConfig
from sfu.control.client import Client
from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, Unauthorized
from sfu.server import RunningNode, start_node

HOST_SSRC = 0x11223344
PT = 96

# Datagrams that end in exactly one of these (engine accounting invariant).
INGRESS_OUTCOMES = ("rx_rtp", "rx_rtcp", "rx_stun", "drop_malformed", "drop_unbound",
                    "drop_not_rtp", "drop_unknown_ssrc", "drop_ssrc_not_owned",
                    "drop_payload_type", "drop_rtx_unsupported", "drop_no_slot")


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
        return [_native.parse_rtp(d) for d in self.rx if _kind(d) == "rtp"]

    def rtcp(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for d in self.rx:
            if _kind(d) == "rtcp":
                out.extend(_native.parse_rtcp(d))
        return out

    def stun(self) -> list[stun.StunMessage]:
        return [stun.parse(d) for d in self.rx if _kind(d) == "stun"]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _kind(data: bytes) -> str:
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
    assert await wait_until(lambda: any(_kind(d) == "stun" for d in client.rx))
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


# -- STUN binding ---------------------------------------------------------------------------


@run_async
async def test_stun_binding_good_binds_and_maps_address():
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        j = await call(running, "participant.join", room="r1", participant="p", role="host")
        assert len(j["ice_pwd"]) >= 22 and j["udp"] == running.udp
        client = await open_client()
        request = stun.binding_request(j["ice_ufrag"] + ":x", j["ice_pwd"], b"T" * 12)
        client.send(request, running.udp_address)
        assert await wait_until(lambda: bool(client.rx))
        raw = client.rx[0]
        msg = stun.parse(raw)
        assert msg.msg_type == stun.BINDING_SUCCESS and msg.transaction_id == b"T" * 12
        assert msg.xor_mapped_address() == client.address
        assert stun.verify_integrity(raw, j["ice_pwd"].encode())
        assert stun.verify_fingerprint(raw)
        snap = await call(running, "room.snapshot", room="r1")
        assert snap["participants"][0]["address"] == client.addr_str
        stats = await call(running, "stats.get")
        assert stats["counters"]["stun_bound"] == 1
        assert stats["counters"]["stun_rejected"] == 0


@run_async
async def test_stun_bad_integrity_not_bound_and_rtp_dropped():
    async with running_node() as running:
        host, track, viewers, _ = await host_and_viewers(running, 1)
        j = await call(running, "participant.join", room="r1", participant="evil",
                       role="host")
        evil = await open_client()
        bad = stun.binding_request(j["ice_ufrag"], "not-the-password-at-all")
        unknown = stun.binding_request("nosuchufrag", j["ice_pwd"])
        evil.send(bad, running.udp_address)
        evil.send(unknown, running.udp_address)
        assert await wait_until(lambda: len(evil.rx) == 2)
        for msg in evil.stun():
            assert msg.msg_type == stun.BINDING_ERROR
            assert msg.error_code() == (401, "Unauthorized")
        snap = await call(running, "room.snapshot", room="r1")
        assert {p["participant"]: p["address"] for p in snap["participants"]}["evil"] is None
        before = counters(running)
        for seq in range(5):
            evil.send(rtp_packet(seq, seq), running.udp_address)
        assert await wait_until(lambda: counters(running)["drop_unbound"]
                                == before["drop_unbound"] + 5)
        await settle(running)
        assert viewers[0].rtp() == []
        stats = await call(running, "stats.get")
        assert stats["counters"]["stun_rejected"] == 2
        assert stats["counters"]["forwarded"] == 0


@run_async
async def test_stun_bad_fingerprint_indication_and_junk_are_ignored():
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        j = await call(running, "participant.join", room="r1", participant="p", role="host")
        client = await open_client()
        good = bytearray(stun.binding_request(j["ice_ufrag"], j["ice_pwd"]))
        good[-1] ^= 0xFF  # FINGERPRINT no longer matches; MESSAGE-INTEGRITY still does
        indication = stun.encode(stun.BINDING_INDICATION, b"I" * 12, [])
        junk = stun.binding_request(j["ice_ufrag"], j["ice_pwd"])[:20] + b"\x00\x06\x00"
        for data in (bytes(good), indication, junk):
            client.send(data, running.udp_address)
        assert await wait_until(lambda: counters(running)["rx_stun"]
                                + counters(running)["drop_malformed"] == 3)
        await settle(running)
        assert client.rx == []  # silently discarded, nothing bound
        c = (await call(running, "stats.get"))["counters"]
        assert c["stun_rejected"] == 1 and c["stun_ignored"] == 1 and c["stun_bound"] == 0
        assert c["stun_malformed"] + c["drop_malformed"] >= 1
        snap = await call(running, "room.snapshot", room="r1")
        assert snap["participants"][0]["address"] is None


@run_async
async def test_stun_from_new_address_moves_participant():
    async with running_node() as running:
        host, track, viewers, subs = await host_and_viewers(running, 1)
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(["r1"], events.append)
        j = await call(running, "participant.join", room="r1", participant="mobile",
                       role="cohost")
        a, b = await open_client(), await open_client()
        a.send(stun.binding_request(j["ice_ufrag"], j["ice_pwd"]), running.udp_address)
        assert await wait_until(lambda: bool(a.rx))
        assert [e["event"] for e in events] == ["participant.joined"]  # first bind: no move
        await publish_video(running, "r1", "mobile", ssrc=777)
        b.send(stun.binding_request(j["ice_ufrag"], j["ice_pwd"]), running.udp_address)
        assert await wait_until(lambda: bool(b.rx))
        assert b.stun()[0].xor_mapped_address() == b.address
        moved = [e for e in events if e["event"] == "participant.moved"]
        assert len(moved) == 1
        assert moved[0]["data"] == {"participant": "mobile", "address": b.addr_str,
                                    "previous": a.addr_str}
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # The old address is unbound now; the new one is the participant.
        before = counters(running)
        a.send(rtp_packet(1, 1, ssrc=777), running.udp_address)
        b.send(rtp_packet(2, 2, ssrc=777), running.udp_address)
        assert await wait_until(lambda: counters(running)["rx_rtp"] == before["rx_rtp"] + 1)
        assert counters(running)["drop_unbound"] == before["drop_unbound"] + 1
        stats = await call(running, "stats.get")
        assert stats["counters"]["stun_moved"] == 1


@run_async
async def test_participant_connect_for_non_stun_tools():
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        await call(running, "participant.join", room="r1", participant="ffmpeg", role="host")
        tool = await open_client()
        assert await call(running, "participant.connect", room="r1", participant="ffmpeg",
                          remote=tool.addr_str) is None
        track = await publish_video(running, "r1", "ffmpeg")
        viewer = await join_bound(running, "r1", "v", "audience")
        await call(running, "track.subscribe", room="r1", participant="v", track=track)
        for seq in range(10):
            tool.send(rtp_packet(seq, seq * 3000), running.udp_address)
        assert await wait_until(lambda: len(viewer.rtp()) == 10)
        other = await open_client()
        with pytest.raises(Conflict):  # that address already belongs to the viewer
            await call(running, "participant.connect", room="r1", participant="ffmpeg",
                       remote=viewer.addr_str)
        with pytest.raises(BadRequest, match="remote"):
            await call(running, "participant.connect", room="r1", participant="ffmpeg",
                       remote="localhost:99999")
        other.close()


# -- forwarding -----------------------------------------------------------------------------


@run_async
async def test_one_host_fifty_viewers_exact_accounting():
    n_viewers, n_packets = 50, 200
    async with running_node() as running:
        host, track, viewers, subs = await host_and_viewers(running, n_viewers)
        before = counters(running)
        sent_bytes = 0
        for seq in range(n_packets):
            pkt = rtp_packet(1000 + seq, 90000 + seq * 3000)
            sent_bytes += len(pkt)
            host.send(pkt, running.udp_address)
            if seq % 10 == 9:  # keep loopback queues far below their limits
                await wait_until(lambda s=seq: counters(running)["rx_rtp"]
                                 >= before["rx_rtp"] + s + 1, 5)
                await asyncio.sleep(0.002)
        assert await wait_until(lambda: all(len(v.rtp()) == n_packets for v in viewers), 15)
        await settle(running)
        after = counters(running)
        assert after["rx_rtp"] - before["rx_rtp"] == n_packets
        assert after["forwarded"] - before["forwarded"] == n_packets * n_viewers
        drops = {k: after[k] - before[k] for k in after if k.startswith("drop_")}
        assert not any(drops.values()), drops
        for v, sub in zip(viewers, subs, strict=True):
            assert len(v.rtp()) == n_packets
            assert {p["ssrc"] for p in v.rtp()} == {sub["ssrc"]}
        stats = await call(running, "stats.get", room="r1")
        (track_stats,) = stats["tracks"]
        assert track_stats["source"]["packets"] == n_packets
        assert track_stats["source"]["bytes"] == sent_bytes
        assert len(track_stats["subscriptions"]) == n_viewers
        for sub_stats in track_stats["subscriptions"]:
            assert sub_stats["downtrack"]["packets"] == n_packets
        peers = {p["participant"]: p["peer"] for p in stats["participants"]}
        assert peers["host"]["rx_packets"] == n_packets
        assert all(peers[f"v{i}"]["tx_packets"] >= n_packets for i in range(n_viewers))
        info = await call(running, "node.info")
        assert info["load"]["participants"] == n_viewers + 1
        assert info["load"]["downtracks"] == n_viewers


@run_async
async def test_rewrites_ssrc_seq_ts_pt_across_wrap():
    async with running_node() as running:
        host, track, (early,), (sub,) = await host_and_viewers(running, 1)
        assert sub["payload_type"] == PT and sub["ssrc"] not in (0, HOST_SSRC)
        assert sub["rtx_ssrc"] not in (0, sub["ssrc"])
        first_seq, first_ts = 65530, 0xFFFFF000  # both wrap during the test
        sent = [rtp_packet(first_seq + i, first_ts + i * 3000) for i in range(12)]
        for pkt in sent[:6]:
            host.send(pkt, running.udp_address)
        assert await wait_until(lambda: len(early.rtp()) == 6)
        late = await join_bound(running, "r1", "late", "audience")
        late_sub = await call(running, "track.subscribe", room="r1", participant="late",
                              track=track)
        for pkt in sent[6:]:
            host.send(pkt, running.udp_address)
        assert await wait_until(lambda: len(early.rtp()) == 12 and len(late.rtp()) == 6)
        originals = [_native.parse_rtp(p) for p in sent]
        for client, subscription, src in ((early, sub, originals),
                                          (late, late_sub, originals[6:])):
            out = client.rtp()
            base_seq, base_ts = out[0]["sequence_number"], out[0]["timestamp"]
            for i, (o, s) in enumerate(zip(out, src, strict=True)):
                assert o["ssrc"] == subscription["ssrc"]
                assert o["payload_type"] == subscription["payload_type"]
                assert o["sequence_number"] == (base_seq + i) & 0xFFFF
                assert o["timestamp"] == (base_ts + (s["timestamp"] - src[0]["timestamp"])) \
                    & 0xFFFFFFFF
                assert o["marker"] == s["marker"]
            # Payload bytes are forwarded untouched.
            assert [d[-o["payload_size"]:] for d, o in zip(
                [d for d in client.rx if _kind(d) == "rtp"], out, strict=True)] == \
                [p[-120:] for p in sent[len(sent) - len(out):]]


@run_async
async def test_spoofed_and_hijacked_ssrc_never_delivered():
    async with running_node() as running:
        host, track, (viewer, v2), subs = await host_and_viewers(running, 2)
        spoofer = await open_client()  # never bound
        before = counters(running)
        for seq in range(20):
            spoofer.send(rtp_packet(seq, seq), running.udp_address)
            viewer.send(rtp_packet(seq, seq), running.udp_address)  # bound, not the owner
        assert await wait_until(
            lambda: counters(running)["drop_unbound"] - before["drop_unbound"] == 20
            and counters(running)["drop_ssrc_not_owned"]
            - before["drop_ssrc_not_owned"] == 20)
        await settle(running)
        assert viewer.rtp() == [] and v2.rtp() == []
        assert counters(running)["forwarded"] == before["forwarded"]
        stats = await call(running, "stats.get", room="r1", participant="v0")
        assert stats["peer"]["drop_ssrc_not_owned"] == 20
        # The real owner still gets through afterwards.
        host.send(rtp_packet(100, 100), running.udp_address)
        assert await wait_until(lambda: len(viewer.rtp()) == 1 and len(v2.rtp()) == 1)


@run_async
async def test_malformed_garbage_survived_and_counted():
    rng = random.Random(1234)
    async with running_node() as running:
        host, track, (viewer,), _ = await host_and_viewers(running, 1)
        stranger = await open_client()
        before = counters(running)
        sent = 0
        for length in list(range(0, 64)) + [100, 172, 500, 1200, 1500, 2000, 2048, 4000]:
            for sender in (host, stranger):
                body = bytes(rng.getrandbits(8) for _ in range(length))
                sender.send(body, running.udp_address)
                sent += 1
            # RTP-looking header with random tails, from the owner's address.
            if length >= 12:
                hdr = bytearray(rtp_packet(5, 5)[:12])
                hdr[0] = 0x80 | rng.getrandbits(5)  # P/X/CC bits set at random
                host.send(bytes(hdr) + bytes(rng.getrandbits(8) for _ in range(length - 12)),
                          running.udp_address)
                sent += 1
            await asyncio.sleep(0)
        assert await wait_until(
            lambda: counters(running)["rx_datagrams"] - before["rx_datagrams"] == sent, 10)
        await settle(running)
        after = counters(running)
        delta = {k: after[k] - before[k] for k in after}
        assert sum(delta[k] for k in INGRESS_OUTCOMES) == sent, delta
        assert delta["drop_malformed"] + delta["drop_unbound"] + delta["drop_not_rtp"] > 0
        # Still alive and forwarding.
        marker = rtp_packet(200, 200)
        host.send(marker, running.udp_address)
        assert await wait_until(lambda: any(d.endswith(marker[-120:]) for d in viewer.rx))
        info = await call(running, "node.info")
        assert info["rooms"] == 1


@run_async
async def test_oversized_datagram_is_dropped_not_truncated():
    async with running_node() as running:
        host, track, (viewer,), _ = await host_and_viewers(running, 1)
        before = counters(running)
        # A valid RTP packet from the owner, larger than any receive slot: the tail would
        # be cut by the kernel (MSG_TRUNC), so it must be dropped, not forwarded cut.
        host.send(rtp_packet(1, 1, size=4000), running.udp_address)
        host.send(rtp_packet(2, 2), running.udp_address)
        assert await wait_until(lambda: counters(running)["rx_datagrams"]
                                == before["rx_datagrams"] + 2)
        await settle(running)
        after = counters(running)
        assert after["drop_malformed"] == before["drop_malformed"] + 1
        assert [p["payload_size"] for p in viewer.rtp()] == [120]


# -- control ----------------------------------------------------------------------------------


@run_async
async def test_audience_publishing_unauthorized():
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        await call(running, "participant.join", room="r1", participant="a", role="audience")
        with pytest.raises(Unauthorized, match="audience"):
            await publish_video(running, "r1", "a")
        assert running.node.engine.live()["sources"] == 0


@run_async
async def test_leave_and_close_free_native_state():
    async with running_node() as running:
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(None, events.append)
        host, track, viewers, subs = await host_and_viewers(running, 3)
        await call(running, "participant.join", room="r1", participant="co", role="cohost")
        co_track = await publish_video(running, "r1", "co", ssrc=4242)
        await call(running, "track.subscribe", room="r1", participant="host", track=co_track)
        for seq in range(5):
            host.send(rtp_packet(seq, seq), running.udp_address)
        assert await wait_until(lambda: all(len(v.rtp()) == 5 for v in viewers))
        live = running.node.engine.live()
        assert live["peers"] == 5 and live["sources"] == 2 and live["downtracks"] == 4
        events.clear()
        await call(running, "participant.leave", room="r1", participant="host")
        names = [e["event"] for e in events]
        # Own subscription first, then others' subscriptions to its track, then the track.
        assert names == ["subscription.removed"] * 4 + ["track.unpublished",
                                                         "participant.left"]
        assert events[-2]["data"] == {"track": track, "participant": "host"}
        live = running.node.engine.live()
        assert live["peers"] == 4 and live["sources"] == 1 and live["downtracks"] == 0
        snap = await call(running, "room.snapshot", room="r1")
        assert [t["track"] for t in snap["tracks"]] == [co_track]
        assert snap["seq"] == events[-1]["seq"]
        await call(running, "room.close", room="r1")
        assert events[-1]["event"] == "room.closed"
        assert all(v == 0 for k, v in running.node.engine.live().items()), \
            running.node.engine.live()
        with pytest.raises(NotFound):
            await call(running, "room.snapshot", room="r1")


@run_async
async def test_control_errors_over_the_socket():
    async with running_node(max_rooms=1) as running:
        assert running.control_path is not None
        async with await Client.connect_unix(running.control_path) as client:
            info = await client.node_info()
            assert info["udp"] == running.udp and info["quic"] is None
            await client.room_create("r1", max_participants=1)
            cases = [
                (BadRequest, "participant.join", {"room": "r1", "participant": "x",
                                                  "role": "king"}),
                (NotFound, "room.snapshot", {"room": "nope"}),
                (Conflict, "room.create", {"room": "r1"}),
                (LimitExceeded, "room.create", {"room": "r2"}),
            ]
            for exc, method, params in cases:
                with pytest.raises(exc):
                    await client.call(method, **params)
            await client.participant_join("r1", "a", "audience")
            with pytest.raises(LimitExceeded, match="full"):
                await client.participant_join("r1", "b", "audience")
            with pytest.raises(Unauthorized):
                await client.track_publish("r1", "a", "video", "VP8", PT, 90000,
                                           [{"rid": "f", "ssrc": 5}])
            await client.room_close("r1")
            assert (await client.room_list())["rooms"] == []


# -- RTCP -------------------------------------------------------------------------------------


@run_async
async def test_pli_reaches_publisher_at_most_once_per_300ms():
    async with running_node() as running:
        host, track, (v1, v2), (s1, s2) = await host_and_viewers(running, 2)
        host.send(rtp_packet(1, 1), running.udp_address)
        assert await wait_until(lambda: len(v1.rtp()) == 1 and len(v2.rtp()) == 1)
        # A burst of PLIs from both viewers in one go: one reaches the publisher.
        for _ in range(5):
            v1.send(_native.build_pli(0xA1, s1["ssrc"]), running.udp_address)
            v2.send(_native.build_pli(0xA2, s2["ssrc"]), running.udp_address)

        def plis() -> list[dict[str, Any]]:
            return [r for r in host.rtcp() if r["type"] == "pli"]

        assert await wait_until(lambda: counters(running)["pli_in"] == 10)
        await settle(running)
        assert len(plis()) == 1
        assert plis()[0]["media_ssrc"] == HOST_SSRC
        assert counters(running)["pli_coalesced"] == 9
        await asyncio.sleep(0.35)
        v1.send(_native.build_pli(0xA1, s1["ssrc"]), running.udp_address)
        assert await wait_until(lambda: len(plis()) == 2)
        stats = await call(running, "stats.get", room="r1")
        assert stats["tracks"][0]["source"]["pli_sent"] == 2


@run_async
async def test_receiver_report_from_viewer_in_stats():
    async with running_node() as running:
        host, track, (viewer,), (sub,) = await host_and_viewers(running, 1)
        for seq in range(3):
            host.send(rtp_packet(seq, seq), running.udp_address)
        assert await wait_until(lambda: len(viewer.rtp()) == 3)
        highest = viewer.rtp()[-1]["sequence_number"]
        viewer.send(_native.build_rr(0xBEEF, [{"ssrc": sub["ssrc"], "fraction_lost": 25,
                                               "packets_lost": 7, "highest_seq": highest,
                                               "jitter": 33}]), running.udp_address)
        assert await wait_until(lambda: counters(running)["rr_in"] == 1)
        stats = await call(running, "stats.get", room="r1", participant="v0")
        dt = stats["subscriptions"][0]["downtrack"]
        assert dt["rr_count"] == 1
        assert dt["rr_fraction_lost"] == 25
        assert dt["rr_cumulative_lost"] == 7
        assert dt["rr_jitter"] == 33
        assert dt["rr_highest_seq"] & 0xFFFF == highest


@run_async
async def test_node_sends_sr_to_viewers_and_rr_to_publisher():
    async with running_node() as running:
        host, track, (viewer,), (sub,) = await host_and_viewers(running, 1)
        for seq in range(10):
            host.send(rtp_packet(seq, seq * 3000), running.udp_address)
        assert await wait_until(lambda: len(viewer.rtp()) == 10)
        # Reports come from the engine's own timer (rtcp_interval ≈ 1 s).
        assert await wait_until(lambda: any(r["type"] == "sr" for r in viewer.rtcp()), 5)
        assert await wait_until(lambda: any(r["type"] == "rr" for r in host.rtcp()), 5)
        sr = next(r for r in viewer.rtcp() if r["type"] == "sr")
        assert sr["ssrc"] == sub["ssrc"]
        assert sr["packets"] == 10
        assert sr["octets"] == sum(p["payload_size"] for p in viewer.rtp())
        ntp_seconds = (sr["ntp"] >> 32) - 2208988800  # NTP era 0 → Unix time
        assert abs(ntp_seconds - time.time()) < 60
        rr = next(r for r in host.rtcp() if r["type"] == "rr")
        (block,) = [b for b in rr["reports"] if b["ssrc"] == HOST_SSRC]
        assert block["highest_seq"] & 0xFFFF == 9
        assert block["packets_lost"] == 0

"""RTP over QUIC end to end: a real node with its QUIC port, real aioquic clients, real VP8.

Publishers and viewers over QUIC (and a UDP viewer beside them) must see the same frames as
over UDP; a client that does not present a valid token gets nothing through; datagram sizing
never stalls a queue.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sfu import _native
from sfu.client.publisher import Publisher
from sfu.client.quic import QuicLink, QuicRefused
from sfu.client.subscriber import Subscriber
from sfu.config import NodeConfig
from sfu.control import Client
from sfu.server import RunningNode, start_node
from sfu.transports import roq
from tests.test_e2e_video import run, wait_until

ROOM = "roq"


@asynccontextmanager
async def quic_node(**options: object) -> AsyncIterator[tuple[RunningNode, Client]]:
    with tempfile.TemporaryDirectory(prefix="sfu-quic-") as tmp:
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0, quic_port=0,
                            control_path=os.path.join(tmp, "sfu.sock"), **options)  # type: ignore[arg-type]
        running = await start_node(config)
        try:
            assert running.control_path is not None
            client = await Client.connect_unix(running.control_path)
            try:
                await client.call("room.create", room=ROOM)
                yield running, client
            finally:
                await client.close()
        finally:
            await running.close()


def counter(running: RunningNode, name: str) -> int:
    node = running.node
    if node.quic is not None and name in node.quic.counters:
        return node.quic.counters[name]
    return int(node.engine.counters[_native.COUNTER_NAMES.index(name)])


def test_quic_publisher_reaches_quic_and_udp_viewers_bit_exact() -> None:
    frames = 45

    async def main() -> None:
        async with quic_node() as (running, client):
            pub = await Publisher.join(client, ROOM, "host", width=320, height=240, fps=30,
                                       bitrate=400_000, record=True, transport="quic",
                                       keyframe_interval=15)
            subs: list[Subscriber] = []
            try:
                assert pub.track is not None and pub.quic is not None
                for i, transport in enumerate(("quic", "quic", "udp")):
                    subs.append(await Subscriber.join(client, ROOM, f"v{i}", pub.track,
                                                      keep_frames=True, transport=transport))
                await pub.run(frames=frames)
                await wait_until(
                    lambda: all(s.stats.frames_complete + s.stats.frames_dropped >= frames
                                for s in subs), 10.0,
                    lambda: f"viewers {[s.stats for s in subs]}, node "
                            f"{running.node.quic.counters if running.node.quic else None}")
                sent = pub.sent
                for s in subs:
                    assert [f.data for f in s.frames] == [f.data for f in sent]
                    assert s.stats.frames_decoded == frames
                # Keyframes rode the RoQ stream, the rest DATAGRAM frames.
                assert pub.quic.stats["stream_packets_out"] >= sum(
                    f.packets for f in sent if f.keyframe)
                assert pub.quic.stats["datagrams_out"] > 0
                assert counter(running, "quic_stream_packets") > 0
                assert counter(running, "quic_datagrams_in") > 0
                # The engine sealed the viewers' packets itself.
                assert counter(running, "quic_sealed") >= 2 * sum(f.packets for f in sent)
                assert counter(running, "quic_too_big") == 0
                for s in subs[:2]:
                    assert s.quic is not None and s.quic.stats["datagrams_in"] > 0
            finally:
                for s in subs:
                    s.close()
                pub.close()

    run(main)


def test_bad_token_is_refused_and_nothing_flows_before_auth() -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            joined = await client.call("participant.join", room=ROOM, participant="mallory",
                                       role="host")
            host, port = joined["quic"].rsplit(":", 1)
            link = QuicLink((host, int(port)))
            await link.connect()
            try:
                # Media before auth: dropped and counted, never ingested.
                rx_before = counter(running, "rx_datagrams")
                for i in range(5):
                    link.send(_native.build_rtp(96, i, 0, 0x1234, b"x" * 100))
                await wait_until(lambda: counter(running, "quic_unauth_drops") >= 5, 3.0,
                                 lambda: str(running.node.quic.counters
                                             if running.node.quic else None))
                assert counter(running, "rx_datagrams") == rx_before
                with pytest.raises(QuicRefused) as info:
                    await link.authenticate(ROOM, "mallory", joined["token"] + "x")
                assert info.value.code == "unauthorized"
                assert counter(running, "quic_auth_failed") == 1
                p = running.node.rooms.participant(ROOM, "mallory")
                assert p.address is None  # the engine peer was never bound
            finally:
                link.close()
            # Unknown participant: not_found, same connection-level refusal.
            link2 = QuicLink((host, int(port)))
            await link2.connect()
            try:
                with pytest.raises(QuicRefused) as info2:
                    await link2.authenticate(ROOM, "nobody", "t")
                assert info2.value.code == "not_found"
            finally:
                link2.close()

    run(main)


def test_datagram_sizing_never_stalls() -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            joined = await client.call("participant.join", room=ROOM, participant="p",
                                       role="host")
            host, port = joined["quic"].rsplit(":", 1)
            # A client left at aioquic's default packet size (1200): about 1177 bytes fit.
            small = QuicLink((host, int(port)), max_datagram=1200)
            await small.connect()
            try:
                ok = await small.authenticate(ROOM, "p", joined["token"])
                # The node never sends this client packets over the 1200 bytes it declared.
                assert ok["max_payload"] == 1200 - roq.datagram_overhead(8)
                assert 1150 <= small.max_payload <= 1180
                # A datagram bigger than fits would sit at the head of aioquic's queue
                # forever and block everything behind it; ours goes on the RoQ stream.
                big = _native.build_rtp(96, 1, 0, 0x55, b"B" * 1300)
                assert len(big) > small.max_payload
                drops = counter(running, "drop_unknown_ssrc")
                small.send(big)
                for i in range(2, 12):
                    small.send(_native.build_rtp(96, i, 0, 0x55, b"s" * 200))
                # The node ingests all 11 (the SSRC is not published: dropped there, counted
                # as unknown, which proves each one arrived).
                await wait_until(lambda: counter(running, "drop_unknown_ssrc") - drops >= 11,
                                 3.0, lambda: str(running.node.quic.counters
                                                  if running.node.quic else None))
                assert small.stats["stream_packets_out"] == 1
                assert small.stats["datagrams_out"] == 10
                assert not small.quic._datagrams_pending
            finally:
                small.close()
            # With the node's default (1452) a full 1400-byte RTP packet fits one datagram.
            big_link = QuicLink((host, int(port)))
            await big_link.connect()
            try:
                ok = await big_link.authenticate(ROOM, "p", joined["token"])
                assert ok["max_payload"] == 1452 - roq.datagram_overhead(8)
                assert big_link.max_payload >= 1400
            finally:
                big_link.close()

    run(main)

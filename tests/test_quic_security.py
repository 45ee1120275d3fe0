"""Bad input on the QUIC port never crashes the node and never costs others their media:
garbage datagrams, a malformed auth frame, a wrong flow id, a broken RoQ stream."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from sfu import _native
from sfu.client.publisher import Publisher
from sfu.client.quic import QuicLink, QuicRefused
from sfu.client.subscriber import Subscriber
from sfu.transports import roq
from tests.test_quic_transport import ROOM, counter, quic_node, run, wait_until


def test_garbage_and_broken_sessions_leave_others_untouched() -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            pub = await Publisher.join(client, ROOM, "host", width=160, height=120, fps=15,
                                       bitrate=100_000, transport="quic")
            assert pub.track is not None
            sub = await Subscriber.join(client, ROOM, "v", pub.track, transport="quic")
            try:
                sending = asyncio.create_task(pub.run(seconds=3.0))
                assert running.node.quic is not None
                port = running.node.quic.port
                # 1. Random datagrams, short-header lookalikes and truncated long headers.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                    rng = __import__("random").Random(6)
                    for i in range(2000):
                        size = rng.choice((0, 1, 5, 20, 60, 1200, 1500))
                        data = bytes(rng.getrandbits(8) for _ in range(size))
                        if i % 3 == 0 and data:
                            data = bytes([0x40 | (data[0] & 0x3F)]) + data[1:]
                        if i % 3 == 1 and size > 7:
                            data = bytes([0xC0]) + b"\x00\x00\x00\x01" + data[5:]
                        raw.sendto(data, ("127.0.0.1", port))
                        if i % 200 == 0:
                            await asyncio.sleep(0)
                joined = await client.call("participant.join", room=ROOM, participant="m",
                                           role="cohost")
                # 2. An auth frame that is not msgpack: that connection is closed, typed.
                bad = QuicLink(("127.0.0.1", port))
                await bad.connect()
                sid = bad.quic.get_next_available_stream_id()
                bad.quic.send_stream_data(sid, roq.encode_varint(3) + b"\xc1\xc1\xc1")
                bad._transmit()
                await wait_until(lambda: bad.closed, 3.0, lambda: "bad auth frame not closed")
                # 3. A first frame that is not auth: bad_request.
                odd = QuicLink(("127.0.0.1", port))
                await odd.connect()
                odd._control_id = odd.quic.get_next_available_stream_id()
                odd._control_reply = asyncio.get_running_loop().create_future()
                odd.quic.send_stream_data(odd._control_id, roq.control_frame({"type": "hello"}))
                odd._transmit()
                with pytest.raises(QuicRefused) as info:  # the close carries "code: message"
                    await asyncio.wait_for(odd._control_reply, 3.0)
                assert info.value.code == "bad_request"
                assert "the first control frame must be 'auth'" in str(info.value)
                odd.close()
                # 4. An authenticated session with a wrong flow id and a broken RoQ stream.
                m = QuicLink(("127.0.0.1", port), flow_id=5)
                await m.connect()
                await m.authenticate(ROOM, "m", joined["token"])
                m.quic.send_datagram_frame(roq.encode_varint(9) + b"\x80" * 20)  # other flow
                m.quic.send_datagram_frame(b"\xff")  # truncated flow id varint
                uni = m.quic.get_next_available_stream_id(is_unidirectional=True)
                m.quic.send_stream_data(uni, roq.encode_varint(5) + roq.encode_varint(1 << 20))
                m._transmit()
                await wait_until(lambda: counter(running, "quic_bad_flow") >= 1
                                 and counter(running, "quic_bad_frames") >= 2, 3.0,
                                 lambda: str(running.node.quic.counters
                                             if running.node.quic else None))
                m.close()
                await sending
                sent = pub.stats.frames
                # (The flood runs in the test's own loop, which the viewer shares: its very
                # first frame may be one it started after; every frame after it must come.)
                await wait_until(lambda: sub.stats.frames_decoded >= sent - 1, 5.0,
                                 lambda: f"{sub.stats} of {sent} frames")
                # The honest viewer lost nothing through all of it.
                st = sub.stats
                assert st.lost_after_recovery == st.frames_dropped == st.decode_errors == 0, st
                assert sent >= 30
                assert counter(running, "quic_sessions") >= 3
            finally:
                sub.close()
                pub.close()

    run(main)


def test_engine_counters_are_consistent_after_garbage() -> None:
    """Nothing garbage on the QUIC port reaches the engine: aioquic drops it first."""
    async def main() -> None:
        async with quic_node() as (running, _client):
            assert running.node.quic is not None
            before = counter(running, "rx_datagrams")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for _ in range(500):
                    raw.sendto(os.urandom(100), ("127.0.0.1", running.node.quic.port))
            await asyncio.sleep(0.3)
            assert counter(running, "rx_datagrams") == before
            assert int(running.node.engine.counters[
                _native.COUNTER_NAMES.index("quic_sealed")]) == 0

    run(main)


def test_address_held_by_another_participant_is_refused_typed() -> None:
    """A stale participant still bound to the client's address: the QUIC session is refused
    with `conflict` and no engine state points at it; a fresh connection then works."""
    async def main() -> None:
        async with quic_node() as (running, client):
            stale = await client.call("participant.join", room=ROOM, participant="stale",
                                      role="audience")
            fresh = await client.call("participant.join", room=ROOM, participant="fresh",
                                      role="audience")
            del stale
            host, port = fresh["quic"].rsplit(":", 1)
            link = QuicLink((host, int(port)))
            await link.connect()
            try:
                local = link.local_address
                await client.call("participant.connect", room=ROOM, participant="stale",
                                  remote=f"{local[0]}:{local[1]}")
                with pytest.raises(QuicRefused) as info:
                    await link.authenticate(ROOM, "fresh", fresh["token"])
                assert info.value.code == "conflict"
                assert running.node.quic is not None and not running.node.quic.sessions
            finally:
                link.close()
            again = QuicLink((host, int(port)))
            await again.connect()
            try:
                ok = await again.authenticate(ROOM, "fresh", fresh["token"])
                assert ok["type"] == "ok"
            finally:
                again.close()

    run(main)

"""RTP over QUIC end to end: a real node with its QUIC port, real aioquic clients, real VP8.

Publishers and viewers over QUIC (and a UDP viewer beside them) must see the same frames as
over UDP; a client that does not present a valid token gets nothing through; datagram sizing
never stalls a queue.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sfu import _native, data_wire
from sfu.client.publisher import Publisher
from sfu.client.quic import QuicLink, QuicRefused
from sfu.client.subscriber import Subscriber
from sfu.control import Client
from sfu.server import RunningNode
from sfu.transports import roq
from tests.node_helpers import running_node
from tests.test_e2e_video import run, wait_until

ROOM = "roq"


@asynccontextmanager
async def quic_node(**options: object) -> AsyncIterator[tuple[RunningNode, Client]]:
    async with running_node(quic_port=0, **options) as running:
        assert running.control_path is not None
        client = await Client.connect_unix(running.control_path)
        try:
            await client.call("room.create", room=ROOM)
            yield running, client
        finally:
            await client.close()


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


def test_late_quic_viewer_gets_state_with_layout_on_connect() -> None:
    """STATE and the layout go out when they change; a viewer that connects later gets both
    when its transport binds (else it would not know its SSRCs until the next change)."""
    async def main() -> None:
        async with quic_node() as (running, client):
            await client.call("room.create", room="live", auto_subscribe=True)
            pub = await Publisher.join(client, "live", "host", width=160, height=120, fps=15,
                                       bitrate=100_000)
            try:
                await client.call("costream.set_layout", room="live", mode="grid")
                await asyncio.sleep(2.0)  # past the STATE re-sends of earlier changes
                joined = await client.call("participant.join", room="live",
                                           participant="late", role="audience")
                await asyncio.sleep(2.0)  # its subscription's STATE went nowhere (unbound)
                host, port = joined["quic"].rsplit(":", 1)
                link = QuicLink((host, int(port)))
                states: list[dict[str, object]] = []

                def on_datagram(data: bytes) -> None:
                    if data_wire.has_sfud(data):
                        for subtype, _ssrc, payload in data_wire.parse_app(data):
                            if subtype == data_wire.STATE:
                                states.append(data_wire.decode_state(payload))
                link.on_datagram = on_datagram
                await link.connect()
                try:
                    await link.authenticate("live", "late", joined["token"])
                    await wait_until(lambda: bool(states), 3.0, lambda: "no STATE")
                    state = states[0]
                    assert [s["track"] for s in state["subs"]] == [pub.track]  # type: ignore[index,union-attr]
                    layout = state["layout"]
                    assert layout["mode"] == "grid"  # type: ignore[index]
                    assert [slot[0] for slot in layout["slots"]] == ["host"]  # type: ignore[index]
                finally:
                    link.close()
            finally:
                pub.close()

    run(main)


def test_certificate_is_short_lived_ecdsa_and_renewed() -> None:
    """Browsers take a certificate by hash only if it is ECDSA and valid under 14 days; the
    node renews its own before it runs out, and new sessions (and the page) get the new one."""
    async def main() -> None:
        async with quic_node(http_port=0) as (running, client):
            node = running.node
            assert node.quic is not None
            cert = node.quic.cert
            life = cert.not_after - cert.certificate.not_valid_before_utc
            assert life < datetime.timedelta(days=14)
            assert isinstance(cert.certificate.public_key(), ec.EllipticCurvePublicKey)
            assert not cert.due_for_renewal()
            assert cert.due_for_renewal(cert.not_after - datetime.timedelta(days=1))
            old = node.web_config()["cert_sha256"]
            node.quic.renew_certificate()
            assert node.web_config()["cert_sha256"] != old
            joined = await client.call("participant.join", room=ROOM, participant="p",
                                       role="audience")
            host, port = joined["quic"].rsplit(":", 1)
            link = QuicLink((host, int(port)))
            await link.connect()
            try:
                await link.authenticate(ROOM, "p", joined["token"])
                der = link.quic.tls._peer_certificate.public_bytes(serialization.Encoding.DER)
                assert hashlib.sha256(der).hexdigest() == node.web_config()["cert_sha256"]
            finally:
                link.close()

    run(main)

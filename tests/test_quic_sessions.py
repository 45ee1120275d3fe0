"""Session lifecycle on the QUIC port (found by review): a replaced session never reuses a
packet number the engine sealed (AES-GCM nonce), media only goes to a validated address, a
participant that leaves takes its session with it, and a STUN binding hands the peer back to
the UDP port."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from sfu import stun
from sfu.client.quic import QuicLink
from sfu.transports import roq
from tests.test_quic_transport import ROOM, quic_node, run, wait_until


async def viewer(node: Any, client: Any, name: str, **link: Any) -> tuple[QuicLink, dict[str, Any]]:
    """An audience participant joined over the control socket and connected over RoQ."""
    joined = await client.call("participant.join", room=ROOM, participant=name, role="audience")
    q = QuicLink(("127.0.0.1", node.quic.port), **link)
    await q.connect()
    await q.authenticate(ROOM, name, joined["token"])
    return q, joined


def test_replaced_session_never_reuses_an_engine_packet_number() -> None:
    """The old session's close must carry a packet number past every one the engine sealed:
    a reused one is a duplicate to the client's QUIC stack, which would drop the close (and,
    with the same key, it is a repeated AES-GCM nonce)."""
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None
            a, j = await viewer(node, client, "v")
            pid = node.rooms.participant(ROOM, "v").pid
            old = node.quic.sessions[pid]
            await asyncio.sleep(0.1)  # the handshake's own packets are acknowledged
            for i in range(5):  # the engine seals these with the session's keys
                node.data.send(ROOM, "system", text=f"hello {i}")
            sealed = node.engine.quic_next_pn(pid)
            # What a reconnect does to the old session, with no aioquic send in between.
            old.close_for("replaced by a new session")
            try:
                # A close numbered below `sealed` repeats a number the client already
                # received: its QUIC stack drops it as a duplicate and never closes.
                await wait_until(lambda: a.closed, 3.0,
                                 lambda: f"old session's close lost (engine sealed up to "
                                         f"{sealed - 1})")
                assert pid not in node.quic.sessions
                # A reconnect with the same token takes over.
                b = QuicLink(("127.0.0.1", node.quic.port))
                await b.connect()
                await b.authenticate(ROOM, "v", j["token"])
                assert node.quic.sessions[pid] is not old
                b.close()
            finally:
                a.close()

    run(main)


def test_media_waits_for_a_validated_path() -> None:
    """Auth sent from a new address that never answers (a spoofed victim): the engine keeps
    sending to the validated address and the victim gets only aioquic's bounded probing."""
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None
            j = await client.call("participant.join", room=ROOM, participant="v",
                                  role="audience")
            a = QuicLink(("127.0.0.1", node.quic.port))
            await a.connect()
            try:
                first = a.local_address
                a.rebind()
                assert a._sock is not None and a._loop is not None
                a._loop.remove_reader(a._sock.fileno())  # the new address never answers
                a._control_id = a.quic.get_next_available_stream_id()
                a.quic.send_stream_data(a._control_id, roq.control_frame({
                    "type": "auth", "room": ROOM, "participant": "v", "token": j["token"]}))
                a._transmit()
                p = node.rooms.participant(ROOM, "v")
                await wait_until(lambda: p.pid in node.quic.sessions, 3.0,
                                 lambda: "no session")
                assert p.address == first  # bound to the validated path, not the new one
                for _ in range(50):
                    node.data.send(ROOM, "system", text="x" * 400)
                await asyncio.sleep(0.3)
                got = 0
                while True:
                    try:
                        got += len(a._sock.recv(65536))
                    except BlockingIOError:
                        break
                assert got < 3 * 1500, got  # not the ~25 KB of messages
            finally:
                a.close()

    run(main)


def test_leaving_participant_takes_its_session_along() -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None
            errors: list[object] = []
            asyncio.get_running_loop().set_exception_handler(
                lambda _loop, ctx: errors.append(ctx.get("exception")))
            a, _ = await viewer(node, client, "v")
            pid = node.rooms.participant(ROOM, "v").pid
            await client.call("participant.leave", room=ROOM, participant="v")
            await client.call("participant.join", room=ROOM, participant="w", role="audience")
            assert node.rooms.participant(ROOM, "w").pid == pid  # the handle is reused
            assert pid not in node.quic.sessions
            for _ in range(10):
                a.send(b"\x81\xc9\x00\x01" + b"\x00" * 4)
                await asyncio.sleep(0.02)
            await wait_until(lambda: a.closed, 3.0, lambda: "client not told")
            assert not errors, errors
            a.close()

    run(main)


def test_stun_binding_hands_the_peer_back_to_udp() -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None
            a, j = await viewer(node, client, "v")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", 0))
                udp.settimeout(2.0)
                host, port = j["udp"].rsplit(":", 1)
                udp.sendto(stun.binding_request(j["ice_ufrag"] + ":c", j["ice_pwd"]),
                           (host, int(port)))
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(None, udp.recvfrom, 2048)
                assert answer[1] == (host, int(port))  # the STUN answer
                await wait_until(lambda: a.closed, 3.0, lambda: "QUIC session not closed")
                assert node.quic.counters["quic_to_udp"] == 1
                node.data.send(ROOM, "system", text="over udp")
                data, source = await loop.run_in_executor(None, udp.recvfrom, 2048)
                assert source == (host, int(port))  # from the UDP port, not the QUIC one
                assert data[1] == 204  # a plain SFUD APP packet, not a QUIC packet
            a.close()

    run(main)


def test_idle_viewer_stays_connected_by_keepalive() -> None:
    """A viewer in a room with no media receives nothing; the node closes idle sessions, so
    the client pings (here the node's idle timeout is cut to 1 s for the test)."""
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None and node.quic._server is not None
            node.quic._server._configuration.idle_timeout = 1.0
            links = [(await viewer(node, client, name, keepalive=keepalive))[0]
                     for name, keepalive in (("kept", 0.3), ("idle", 30.0))]
            try:
                await asyncio.sleep(3.0)
                kept, idle = links
                assert not kept.closed
                assert idle.closed or node.rooms.participant(ROOM, "idle").address is None
                assert node.rooms.participant(ROOM, "kept").address is not None
            finally:
                for link in links:
                    link.close()

    run(main)


def test_closed_connections_are_freed_promptly() -> None:
    """A closing connection lasts ~3 PTOs, not the idle timeout: the ACK-only shortcut once
    pushed its deadline 30 s out, and 100 departed viewers then lingered in the node."""
    async def main() -> None:
        async with quic_node() as (running, client):
            node = running.node
            assert node.quic is not None and node.quic._server is not None
            links = [(await viewer(node, client, f"v{i}"))[0] for i in range(30)]
            for _ in range(20):  # traffic, so the viewers ACK
                node.data.send(ROOM, "system", text="x")
                await asyncio.sleep(0.01)
            for i, link in enumerate(links):  # ACKs still on their way when the node closes
                await node.call("participant.leave", {"room": ROOM, "participant": f"v{i}"})
                link.close()
            server = node.quic._server
            await wait_until(lambda: not server._protocols, 3.0,
                             lambda: f"{len(server._protocols)} connection ids still mapped")
            assert not node.quic.sessions

    run(main)

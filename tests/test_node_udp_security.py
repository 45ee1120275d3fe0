"""Integration: the node under hostile or invalid input, with real UDP clients on loopback
(tests/node_helpers.py): bad STUN, spoofed and hijacked SSRCs, garbage and oversized
datagrams, and control requests it must refuse with typed errors. It never forwards what it
must drop, counts every datagram exactly once and keeps serving.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from node_helpers import (
    INGRESS_OUTCOMES,
    PT,
    call,
    counters,
    host_and_viewers,
    open_client,
    publish_video,
    rtp_packet,
    run_async,
    running_node,
    settle,
    wait_until,
)

from sfu import stun
from sfu.control.client import Client
from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, Unauthorized

# -- STUN ---------------------------------------------------------------------------------


@run_async
async def test_stun_bad_integrity_not_bound_and_rtp_dropped():
    async with running_node() as running:
        host, track, viewers, _ = await host_and_viewers(running, 1)
        j = await call(running, "participant.join", room="r1", participant="evil",
                       role="cohost")
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


# -- media --------------------------------------------------------------------------------


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


# -- control ------------------------------------------------------------------------------


@run_async
async def test_audience_publishing_unauthorized():
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        await call(running, "participant.join", room="r1", participant="a", role="audience")
        with pytest.raises(Unauthorized, match="audience"):
            await publish_video(running, "r1", "a")
        assert running.node.engine.live()["sources"] == 0


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

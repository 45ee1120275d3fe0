"""Integration: an in-process node on loopback with real UDP clients (tests/node_helpers.py):
STUN binding and address moves, forwarding with SSRC/seq/timestamp rewriting, teardown of
native state, and the RTCP the node relays and sends itself.

Hostile and invalid input is covered in test_node_udp_security.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from node_helpers import (
    HOST_SSRC,
    PT,
    call,
    counters,
    datagram_kind,
    host_and_viewers,
    join_bound,
    open_client,
    publish_video,
    rtp_packet,
    run_async,
    running_node,
    settle,
    wait_until,
)

from sfu import _native, stun
from sfu.errors import BadRequest, Conflict, NotFound

# -- STUN binding -------------------------------------------------------------------------


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
        # First bind: no move (a co-host joining takes a seat at once).
        assert [e["event"] for e in events] == ["participant.joined", "costream.seat_taken"]
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


# -- forwarding ---------------------------------------------------------------------------


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
                [d for d in client.rx if datagram_kind(d) == "rtp"], out, strict=True)] == \
                [p[-120:] for p in sent[len(sent) - len(out):]]


# -- control ------------------------------------------------------------------------------


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


# -- RTCP ---------------------------------------------------------------------------------


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
        # To the host: an SR from the node SSRC carrying the report blocks (RTT via LSR).
        assert await wait_until(lambda: any(r["type"] == "sr" for r in host.rtcp()), 5)
        sr = next(r for r in viewer.rtcp() if r["type"] == "sr")
        assert sr["ssrc"] == sub["ssrc"]
        assert sr["packets"] == 10
        assert sr["octets"] == sum(p["payload_size"] for p in viewer.rtp())
        ntp_seconds = (sr["ntp"] >> 32) - 2208988800  # NTP era 0 → Unix time
        assert abs(ntp_seconds - time.time()) < 60
        rr = next(r for r in host.rtcp() if r["type"] == "sr")
        assert rr["packets"] == 0
        (block,) = [b for b in rr["reports"] if b["ssrc"] == HOST_SSRC]
        assert block["highest_seq"] & 0xFFFF == 9
        assert block["packets_lost"] == 0

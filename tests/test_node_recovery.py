"""Loss recovery through a running node: negotiation in track.subscribe, RTX toward a
viewer, and the per-viewer FEC policy driven by that viewer's receiver reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from node_helpers import (
    HOST_SSRC,
    UdpClient,
    call,
    host_and_viewers,
    join_bound,
    rtp_packet,
    run_async,
    running_node,
    wait_until,
)

from sfu import _native
from sfu.errors import BadRequest


async def stream(host: UdpClient, to: tuple[str, int], seconds: float, pps: int = 300,
                 start: int = 0) -> int:
    """Paced packets from the host; returns the next sequence number."""
    seq = start
    for _ in range(int(seconds * pps / 10)):
        for _ in range(10):
            host.send(rtp_packet(seq, seq * 300, size=400), to)
            seq += 1
        await asyncio.sleep(10 / pps)
    return seq


def media_seqs(client: UdpClient, ssrc: int) -> list[int]:
    return [p["sequence_number"] for p in client.rtp() if p["ssrc"] == ssrc]


async def report_loss(viewer: UdpClient, to: tuple[str, int], sub: dict[str, Any],
                      fraction: float, stop: asyncio.Event) -> None:
    """RRs claiming `fraction` of the packets so far were lost (what a lossy link shows)."""
    while not stop.is_set():
        seqs = media_seqs(viewer, sub["ssrc"])
        if seqs:
            highest = seqs[-1] + 65536  # one cycle: any consistent extension will do
            lost = int(len(seqs) * fraction)  # as if only 1 - fraction had arrived
            rr = _native.build_rr(0x5EED, [{
                "ssrc": sub["ssrc"], "fraction_lost": int(fraction * 256),
                "packets_lost": lost, "highest_seq": highest, "jitter": 0,
                "lsr": 0, "dlsr": 0}])
            viewer.send(rr, to)
        await asyncio.sleep(0.2)


@run_async
async def test_subscribe_negotiates_recovery_and_rejects_bad_params() -> None:
    async with running_node() as running:
        host, track, _, (sub,) = await host_and_viewers(running, 1)
        assert sub["rtx_payload_type"] == 97 and sub["fec_payload_type"] == 125
        assert sub["fec"] == "auto" and sub["fec_ssrc"] not in (sub["ssrc"], sub["rtx_ssrc"])
        await join_bound(running, "r1", "plain", "audience")
        plain = await call(running, "track.subscribe", room="r1", participant="plain",
                           track=track, recovery={"rtx": False, "fec": "off"})
        assert plain["rtx_ssrc"] is None and plain["fec"] == "off"
        for bad, words in (({"fec": "raptor"}, "recovery.fec"), ({"nack": 1}, "recovery.nack"),
                           ({"rtx": True, "x": 1}, "x"), ("rs", "recovery")):
            await join_bound(running, "r1", f"b{len(words)}{words[:3]}", "audience")
            with pytest.raises(BadRequest, match=words.split(".")[-1]):
                await call(running, "track.subscribe", room="r1",
                           participant=f"b{len(words)}{words[:3]}", track=track, recovery=bad)
        with pytest.raises(BadRequest, match="rtx_payload_type"):
            await call(running, "track.publish", room="r1", participant="host", kind="video",
                       codec="VP8", payload_type=100, clock_rate=90000, rtx_payload_type=72,
                       layers=[{"ssrc": 42}])
        host.close()


@run_async
async def test_viewer_nack_gets_rtx_on_the_negotiated_ssrc() -> None:
    async with running_node() as running:
        host, _, (viewer,), (sub,) = await host_and_viewers(running, 1)
        to = running.udp_address
        await stream(host, to, 0.1, pps=200)
        assert await wait_until(lambda: len(media_seqs(viewer, sub["ssrc"])) == 20)
        seqs = media_seqs(viewer, sub["ssrc"])
        viewer.send(_native.build_nack(0x5EED, sub["ssrc"], [seqs[3], seqs[4]]), to)
        assert await wait_until(lambda: len([p for p in viewer.rtp()
                                             if p["ssrc"] == sub["rtx_ssrc"]]) == 2)
        rtx = [p for p in viewer.rtp() if p["ssrc"] == sub["rtx_ssrc"]]
        assert [int.from_bytes(p["payload"][:2]) for p in rtx] == [seqs[3], seqs[4]]
        assert all(p["payload_type"] == sub["rtx_payload_type"] for p in rtx)
        stats = await call(running, "stats.get", room="r1", participant="v0")
        down = stats["subscriptions"][0]["downtrack"]
        assert down["rtx_sent"] == 2 and down["nack_seqs"] == 2
        host.close()
        viewer.close()


@run_async
async def test_lossy_viewer_gets_fec_and_a_clean_viewer_gets_none() -> None:
    async with running_node() as running:
        host, _, (lossy, clean), (s_lossy, s_clean) = await host_and_viewers(running, 2)
        to = running.udp_address
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(["r1"], lambda ev: events.append(dict(ev)))
        stop = asyncio.Event()
        reporters = [asyncio.ensure_future(report_loss(lossy, to, s_lossy, 0.2, stop)),
                     asyncio.ensure_future(report_loss(clean, to, s_clean, 0.0, stop))]
        try:
            await stream(host, to, 3.0)
        finally:
            stop.set()
            await asyncio.gather(*reporters)
        changed = [e["data"] for e in events if e["event"] == "subscription.recovery_changed"]
        lossy_plans = [d for d in changed if d["subscription"] == s_lossy["subscription"]]
        assert lossy_plans, "the lossy viewer's reports changed its plan"
        plan = lossy_plans[-1]
        # The clean viewer's plan may be re-tuned (RTT), but never to FEC.
        assert all(d.get("fec") in (None, "off") for d in changed
                   if d["subscription"] == s_clean["subscription"]), changed
        assert plan["fec"] == "rs" and plan["m"] >= 1 and plan["k"] >= plan["m"]
        assert 0.15 <= plan["loss"] <= 0.25
        fec = [d for d in lossy.rx if len(d) > 12 and d[1] & 0x7F == 125]
        assert fec, "FEC packets reached the lossy viewer"
        head = _native.rs_parse(fec[-1])
        assert head["media_ssrc"] == s_lossy["ssrc"] and head["fec_ssrc"] == s_lossy["fec_ssrc"]
        assert not any(d[1] & 0x7F == 125 for d in clean.rx), "a clean link costs no FEC"
        stats = await call(running, "stats.get", room="r1", participant="v0")
        rec = stats["subscriptions"][0]["recovery"]
        assert rec["plan"]["m"] == plan["m"] and rec["link"]["loss"] > 0.1
        assert stats["subscriptions"][0]["downtrack"]["fec_sent"] == len(fec)
        assert HOST_SSRC  # the host's own SSRC is never given to a viewer
        for c in (host, lossy, clean):
            c.close()


@run_async
async def test_publisher_holes_are_nacked_unless_the_track_says_not_to() -> None:
    async with running_node() as running:
        host, _, _, _ = await host_and_viewers(running, 0)
        to = running.udp_address
        await join_bound(running, "r1", "h2", "cohost")
        quiet = await join_bound(running, "r1", "h2b", "cohost")
        await call(running, "track.publish", room="r1", participant="h2b", kind="video",
                   codec="VP8", payload_type=96, clock_rate=90000, nack=False,
                   layers=[{"ssrc": 4242}])
        for seq in (1, 2, 5, 6):  # 3 and 4 lost on the way
            host.send(rtp_packet(seq, seq * 300), to)
            quiet.send(rtp_packet(seq, seq * 300, ssrc=4242), to)
        assert await wait_until(lambda: any(r["type"] == "nack" for r in host.rtcp()), 2)
        nack = next(r for r in host.rtcp() if r["type"] == "nack")
        assert nack["media_ssrc"] == HOST_SSRC and nack["lost"] == [3, 4]
        await asyncio.sleep(0.3)
        assert not any(r["type"] == "nack" for r in quiet.rtcp())
        with pytest.raises(BadRequest, match="nack"):
            await call(running, "track.publish", room="r1", participant="h2", kind="video",
                       codec="VP8", payload_type=96, clock_rate=90000, nack="no",
                       layers=[{"ssrc": 4343}])
        host.close()
        quiet.close()

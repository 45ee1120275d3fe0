"""Client loss recovery: SendHistory (RTX, dedupe, eviction), NackGenerator (fake clock:
reorder wait, retries timed from RTT, cap, give-up, wraparound, FEC fill), RecoveringReceiver
with real RTX and ULPFEC packets, and publisher -> receiver recovery over a lossy loopback
link without the node (direct mode)."""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from node_helpers import node_with_room

from sfu import _native
from sfu.client.loss import (
    DUPLICATE,
    FILLED,
    FILLED_NACKED,
    LATE,
    NEW,
    NackGenerator,
    RecoveringReceiver,
    SendHistory,
    SeqCounter,
    build_rtx,
    unwrap_rtx,
)
from sfu.client.probe import ProbePublisher
from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from lossy_link import LinkProfile, LossyLink  # noqa: E402

SSRC, RTX_SSRC, PT, RTX_PT = 0x11223344, 0x55667788, 96, 97


def run(fn: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(fn(), timeout)

    asyncio.run(bounded())


def media(seq: int, ts: int = 9000, payload: bytes = b"payload", marker: bool = True,
          **kw: object) -> bytes:
    return _native.build_rtp(PT, seq & 0xFFFF, ts, SSRC, payload, marker=marker,
                             **kw)  # type: ignore[arg-type]


def vp8_media(seq: int, ts: int, key: bool) -> bytes:
    # RFC 7741 descriptor S=1 PID=0, then a VP8 header byte whose P bit says key/delta
    return media(seq, ts, bytes([0x10, 0x00 if key else 0x01]) + bytes(30))


# -- RTX wire format ---------------------------------------------------------------------

def test_rtx_copies_header_and_carries_original_seq() -> None:
    orig = _native.build_rtp(PT, 4242, 123456, SSRC, b"abcdef", marker=True, csrcs=[7, 8],
                             extensions={3: b"xy"}, padding=4)
    rtx = build_rtx(orig, RTX_SSRC, RTX_PT, 17)
    assert rtx is not None
    p = _native.parse_rtp(rtx)
    assert (p["payload_type"], p["sequence_number"], p["ssrc"]) == (RTX_PT, 17, RTX_SSRC)
    assert (p["timestamp"], p["marker"], p["csrcs"]) == (123456, True, [7, 8])
    assert p["extensions"] == {3: b"xy"} and p["padding"] is False
    assert p["payload"] == struct.pack("!H", 4242) + b"abcdef"
    back = unwrap_rtx(rtx, SSRC, PT)
    assert back is not None
    q = _native.parse_rtp(back)
    assert (q["payload_type"], q["sequence_number"], q["ssrc"]) == (PT, 4242, SSRC)
    assert q["payload"] == b"abcdef" and q["csrcs"] == [7, 8] and q["extensions"] == {3: b"xy"}
    assert unwrap_rtx(rtx[:len(rtx) - 7], SSRC, PT) is None  # no OSN left
    assert unwrap_rtx(b"\x80\x61", SSRC, PT) is None


# -- SendHistory -------------------------------------------------------------------------

def test_send_history_rtx_plain_dedupe_and_missing() -> None:
    h = SendHistory(capacity_packets=100, max_age_s=2.0)
    h.rtt = 0.04  # dedupe window 20 ms
    for s in range(65530, 65540):  # across the wrap
        h.add(media(s), now=0.0)
    counter = SeqCounter(500)
    out = h.resend([65534, 2, 9], 0.1, RTX_SSRC, RTX_PT, counter)
    assert [_native.parse_rtp(p)["sequence_number"] for p in out] == [500, 501]
    assert [unwrap_rtx(p, SSRC, PT) for p in out] == [media(65534), media(2)]
    assert h.stats.missing == 1 and counter.value == 502  # seq 9 was never sent
    assert h.resend([65534], 0.11, RTX_SSRC, RTX_PT, counter) == []  # within RTT/2
    assert h.stats.deduped == 1
    # A repeated request: two copies (distinct RTX seqs), one more loss costs no round trip.
    again = h.resend([65534], 0.125, RTX_SSRC, RTX_PT, counter)
    assert len(again) == 2 and again[0][12:] == again[1][12:] and again[0][2:4] != again[1][2:4]
    assert h.resend([3], 0.2) == [media(3)]  # no RTX negotiated: the original again
    assert h.stats.resent == 5 and h.stats.requested == 6
    with pytest.raises(ValueError):
        h.resend([3], 0.3, RTX_SSRC, RTX_PT, None)


def test_send_history_evicts_by_capacity_and_age() -> None:
    h = SendHistory(capacity_packets=4, max_age_s=1.0)
    for s in range(6):
        h.add(media(s), now=0.1 * s)
    assert len(h) == 4 and h.get(0) is None and h.get(1) is None and h.get(5) == media(5)
    assert h.resend([2, 5], 1.45) == [media(5)]  # seq 2 (sent at 0.2) is older than 1 s
    assert h.stats.missing == 1


# -- NackGenerator -----------------------------------------------------------------------

def feed(ng: NackGenerator, seqs: range | list[int], t0: float, step: float = 0.01) -> float:
    t = t0
    for s in seqs:
        ng.on_packet(s, t)
        t += step
    return t - step


def test_nack_waits_for_reordering_then_retries_at_rtt() -> None:
    ng = NackGenerator(rtt=0.05, deadline_s=1.0, max_retries=10, repeat_from=0)
    ng.update_rtt(0.05, now=0.0)  # a measured RTT: no backoff
    t = feed(ng, range(100, 110), 0.0)
    wait = ng.reorder_wait()
    t += 0.01
    assert ng.on_packet(111, t) == NEW  # 110 is missing
    assert ng.poll(t + wait - 0.001) == []  # still within the reorder wait
    t1 = t + wait
    assert ng.poll(t1) == [110]
    assert ng.poll(t1 + 1.2 * 0.05 - 0.001) == []
    t2 = t1 + 1.2 * 0.05
    assert ng.poll(t2) == [110]  # retry after 1.2 x RTT
    ng.update_rtt(0.001)  # tiny RTT: the retry floor is 10 ms
    assert ng.poll(t2 + 0.0099) == []
    assert ng.poll(t2 + 0.06) == [110]
    assert ng.nacks_sent == 3 and ng.nack_seqs == 3


def test_rtt_below_the_real_one_backs_off_until_a_clean_sample() -> None:
    ng = NackGenerator(rtt=0.02, deadline_s=5.0, max_retries=10, repeat_from=0)
    t = feed(ng, [1, 3, 6], 0.0)
    t1 = t + ng.reorder_wait()
    assert ng.poll(t1) == [2, 4, 5]
    assert ng.poll(t1 + 0.024) == [2, 4, 5]  # retried before the (30 ms) answers
    assert ng.on_packet(4, t1 + 0.028, "media") == FILLED_NACKED  # not an RTX: no verdict
    assert ng.rtt == pytest.approx(0.02)
    assert ng.on_packet(2, t1 + 0.03, "rtx") == FILLED_NACKED  # ambiguous: no sample...
    assert ng.rtt_samples == 0 and ng.rtt == pytest.approx(0.04)  # ...so it doubles
    assert ng.on_packet(5, t1 + 0.031, "rtx") == FILLED_NACKED
    assert ng.rtt == pytest.approx(0.04)  # at most once per RTT
    t = feed(ng, [7, 9], t1 + 0.05)
    t2 = t + ng.reorder_wait()
    assert ng.poll(t2) == [8] and ng.next_due() == pytest.approx(t2 + 0.048)
    assert ng.on_packet(8, t2 + 0.03, "rtx") == FILLED_NACKED  # answered before the retry
    assert ng.rtt_samples == 1 and ng.rtt == pytest.approx(0.03)
    for i in range(8):  # without samples it doubles up to the cap, never beyond
        ng._backoff(10.0 + i)
    assert ng.rtt == NackGenerator.RTT_MAX


def test_late_and_last_rounds_are_sent_twice() -> None:
    ng = NackGenerator(rtt=0.05, deadline_s=0.3, repeat_from=2, repeat_gap=0.004)
    t = feed(ng, [1, 3], 0.0)
    t1 = t + ng.reorder_wait()
    assert ng.poll(t1) == [2] and ng.next_due() == pytest.approx(t1 + 0.06)
    t2 = t1 + 0.06
    assert ng.poll(t2) == [2]  # second round: repeated 4 ms later, retries unchanged
    assert ng.next_due() == pytest.approx(t2 + 0.004)
    assert ng.poll(t2 + 0.003) == [] and ng.poll(t2 + 0.004) == [2]
    assert ng.poll(t2 + 0.01) == []
    assert ng.nack_seqs == 3
    solo = NackGenerator(rtt=0.05, deadline_s=0.1, repeat_from=5, repeat_gap=0.004)
    t = feed(solo, [1, 3], 0.0)
    t1 = t + solo.reorder_wait()
    assert solo.poll(t1) == [2] and solo.poll(t1 + 0.004) == [2]  # the only round that fits


def test_reordered_packet_is_not_nacked_and_counts_filled() -> None:
    ng = NackGenerator(rtt=0.05)
    t = feed(ng, [1, 2, 4], 0.0)
    assert ng.on_packet(3, t + 0.001) == FILLED
    assert ng.poll(t + 1.0) == [] and ng.given_up == 0
    assert ng.on_packet(3, t + 0.002) == DUPLICATE


def test_nack_cap_and_deadline_give_up() -> None:
    ng = NackGenerator(rtt=0.02, deadline_s=10.0, max_retries=3, repeat_from=0)
    t = feed(ng, [10, 12], 0.0)
    sent = 0
    now = t
    while now < t + 1.0:
        sent += len(ng.poll(now))
        now += 0.001
    assert sent == 3 and ng.take_lost() == [11] and ng.given_up == 1
    assert ng.on_packet(11, now) == LATE  # an answer after giving up is late
    ng2 = NackGenerator(rtt=0.02, deadline_s=0.1, max_retries=100, repeat_from=0)
    t = feed(ng2, [10, 12], 0.0)
    assert ng2.poll(t + 0.099)
    assert ng2.poll(t + 0.1) == [] and ng2.take_lost() == [11]  # past the playout deadline


def test_nack_across_seq_wraparound_and_rtt_from_rtx() -> None:
    ng = NackGenerator(rtt=0.1)
    t = feed(ng, [65533, 65534, 65535, 1, 2], 0.0)
    t1 = t + 0.05
    assert ng.poll(t1) == [0]
    assert ng.on_packet(0, t1 + 0.03, "rtx") == FILLED_NACKED
    assert ng.rtt == pytest.approx(0.03) and ng.rtt_samples == 1
    t = feed(ng, [3, 5], t1 + 0.04)
    ng.poll(t + 0.05)
    ng.poll(t + 0.05 + 1.2 * 0.03)  # second NACK for 4: its answer is ambiguous (Karn)
    assert ng.on_packet(4, t + 0.2, "rtx") == FILLED_NACKED
    assert ng.rtt_samples == 1


def test_fec_recovered_before_nack_is_due_is_not_nacked() -> None:
    ng = NackGenerator(rtt=0.05)
    t = feed(ng, [7, 9], 0.0)
    assert ng.on_packet(8, t + 0.001, "fec") == FILLED
    assert ng.poll(t + 0.5) == [] and ng.nack_seqs == 0


def test_nack_disabled_still_accounts_losses() -> None:
    ng = NackGenerator(deadline_s=0.05, enabled=False)
    t = feed(ng, [1, 3], 0.0)
    assert ng.poll(t + 0.01) == []
    assert ng.poll(t + 0.06) == [] and ng.take_lost() == [2]


# -- RecoveringReceiver ------------------------------------------------------------------

def test_receiver_rtx_fills_hole_and_reports_raw_loss() -> None:
    rx = RecoveringReceiver(SSRC, PT, 90000, "vp8", RTX_SSRC, RTX_PT, budget_s=0.1,
                            sender_ssrc=0xABC)
    pkts = [vp8_media(1000 + i, 3000 * i, i == 0) for i in range(10)]
    for i, p in enumerate(pkts):
        if i != 4:
            rx.feed(p, 0.001 * i)
    frames, nack, _ = rx.poll(0.05)
    assert frames == [] and nack is not None
    (fb,) = _native.parse_rtcp(nack)
    assert fb["type"] == "nack" and fb["lost"] == [1004]
    assert (fb["sender_ssrc"], fb["media_ssrc"]) == (0xABC, SSRC)
    rtx = build_rtx(pkts[4], RTX_SSRC, RTX_PT, 1)
    assert rtx is not None
    assert rx.feed(rtx, 0.06) == [(pkts[4], "rtx")]
    assert rx.feed(rtx, 0.061) == []  # duplicate RTX
    frames, nack, key_needed = rx.poll(0.3)
    assert nack is None and not key_needed
    assert [f[3] for f in frames] == [True] * 10 and frames[4][2] == [pkts[4][12:]]
    st = rx.stats
    assert (st.received, st.recovered_rtx, st.duplicates, st.lost_after_recovery) == (9, 1, 1, 0)
    block = rx.report_block(0.3)
    assert block["packets_lost"] == 1 and block["highest_seq"] & 0xFFFF == 1009


def test_receiver_ulpfec_recovers_and_unrecovered_frame_needs_keyframe() -> None:
    rx = RecoveringReceiver(SSRC, PT, 90000, "vp8", budget_s=0.1, nack=False)
    enc = _native.UlpfecEncoder(116, 0x999, max_group=4)
    pkts = [vp8_media(50 + i, 3000 * i, i == 0) for i in range(8)]
    fec = [f for p in pkts for f in enc.add(p)]
    assert len(fec) == 2
    for i, p in enumerate(pkts):
        if i not in (1, 5, 6):  # one loss in group 1, two in group 2
            rx.feed(p, 0.0)
    got = rx.feed(fec[0], 0.001)
    assert got == [(pkts[1], "fec")]
    assert rx.feed(fec[1], 0.002) == []  # two missing: not recoverable (yet)
    assert rx.stats.recovered_fec == 1 and rx.stats.fec_packets == 2
    frames, nack, key_needed = rx.poll(0.5)
    assert nack is None  # NACK disabled
    # frames 5 and 6 vanished whole: the jitter buffer plays the rest, the receiver asks
    # for a key frame because the decoder's references are gone
    assert [(f[0], f[3]) for f in frames] == [(3000 * i, True) for i in (0, 1, 2, 3, 4, 7)]
    assert key_needed and rx.stats.lost_after_recovery == 2
    assert rx.feed(pkts[5], 0.6) == [] and rx.stats.late == 1


def test_receiver_ulpfec_waits_for_rtx_then_recovers() -> None:
    rx = RecoveringReceiver(SSRC, PT, 90000, "vp8", RTX_SSRC, RTX_PT, budget_s=0.2)
    enc = _native.UlpfecEncoder(116, 0x999, max_group=4)
    pkts = [vp8_media(7 + i, 3000 * i, i == 0) for i in range(4)]
    fec = [f for p in pkts for f in enc.add(p)]
    rx.feed(pkts[0], 0.0)
    rx.feed(pkts[3], 0.0)
    assert rx.feed(fec[0], 0.0) == []
    rtx = build_rtx(pkts[1], RTX_SSRC, RTX_PT, 1)
    assert rtx is not None
    assert rx.feed(rtx, 0.03) == [(pkts[1], "rtx"), (pkts[2], "fec")]


def test_receiver_sfu_rs_rebuilds_a_burst_before_any_nack() -> None:
    rx = RecoveringReceiver(SSRC, PT, 90000, "vp8", RTX_SSRC, RTX_PT, budget_s=0.1)
    enc = _native.RsEncoder(125, 0xF0F0, 4, 2, 7)
    pkts = [vp8_media(65534 + i, 3000 * i, i == 0) for i in range(8)]  # across the wrap
    parity = [f for p in pkts for f in enc.add(p)]
    assert len(parity) == 4
    got = []
    for i, p in enumerate(pkts):
        if i not in (1, 2, 5):  # a burst of two in block 1, one in block 2
            got += rx.feed(p, 0.0)
    for f in parity:
        got += rx.feed(f, 0.001)
    assert [(p, how) for p, how in got if how == "fec"] == [(pkts[1], "fec"), (pkts[2], "fec"),
                                                           (pkts[5], "fec")]
    frames, nack, key_needed = rx.poll(0.5)
    assert nack is None and rx.stats.nack_seqs == 0  # rebuilt before their NACK was due
    assert [f[3] for f in frames] == [True] * 8 and not key_needed
    st = rx.stats
    assert (st.recovered_fec, st.fec_packets, st.fec_scheme, st.lost_after_recovery) == \
        (3, 4, "rs", 0)
    assert rx.reception.lost == 3  # receiver reports still show the raw loss
    assert rx.feed(parity[0], 0.6) == [] and rx.feed(b"\x80\x7d" + bytes(20), 0.6) == []


def test_receiver_counts_garbage_and_foreign() -> None:
    rx = RecoveringReceiver(SSRC, PT, 90000, "vp8", RTX_SSRC, RTX_PT)
    for junk in (b"", b"\x80", bytes(12), b"\x80\x60" + bytes(5),
                 _native.build_rtp(PT, 1, 0, 0x42, b"x"),
                 _native.build_rtp(RTX_PT, 1, 0, RTX_SSRC, b"x"),  # RTX without OSN
                 _native.build_rtp(116, 1, 0, 0x42, b"bad fec"),
                 _native.build_rtp(PT, 2, 0, SSRC, b"\x90\x80", marker=True)):  # truncated VP8
        assert rx.feed(junk, 0.0) in ([], [(junk, "direct")])
    st = rx.stats
    assert st.malformed >= 5 and st.foreign == 1 and st.rtx_packets == 1


# -- direct mode: publisher -> lossy link -> receiver, no node ----------------------------

class DirectReceiver(asyncio.DatagramProtocol):
    """Receives a ProbePublisher's stream straight from the lossy link and NACKs it back."""

    def __init__(self, budget_s: float, nack: bool) -> None:
        self.budget = budget_s
        self.nack = nack
        self.rx: RecoveringReceiver | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None
        self.on_time: set[int] = set()
        self.base: float | None = None
        self.arrivals: list[tuple[int, float, float]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        if self.rx is None or len(data) < 2 or 192 <= data[1] <= 223:
            return
        now = asyncio.get_running_loop().time()
        for pkt, how in self.rx.feed(data, now):
            index, sent = struct.unpack_from("!Qd", pkt, 12)
            self.arrivals.append((index, sent, now))
            if how == "direct" and (self.base is None or now - sent < self.base):
                self.base = now - sent

    def poll(self) -> None:
        assert self.rx is not None and self.transport is not None
        _, nack, _ = self.rx.poll(asyncio.get_running_loop().time())
        if nack is not None and self.peer is not None:
            self.transport.sendto(nack, self.peer)

    def residual(self, sent: int) -> float:
        base = self.base or 0.0
        ok = {i for i, s, at in self.arrivals if at <= s + base + self.budget}
        return 1 - len(ok) / sent


async def direct_run(loss: float, rtx: bool, nack: bool, seconds: float = 2.0,
                     fec: tuple[int, int] | None = None
                     ) -> tuple[DirectReceiver, ProbePublisher, LossyLink]:
    loop = asyncio.get_running_loop()
    recv = DirectReceiver(0.2, nack)
    await loop.create_datagram_endpoint(lambda: recv, local_addr=("127.0.0.1", 0))
    assert recv.transport is not None
    target = recv.transport.get_extra_info("sockname")[:2]
    link = await LossyLink.start(target, up=LinkProfile.iid(loss, delay_ms=20),
                                 down=LinkProfile(delay_ms=20), seed=11)
    pub = ProbePublisher(link.address, rate_pps=200, size=200, rtx=rtx, fec=fec)
    await pub.open()
    recv.rx = RecoveringReceiver(pub.ssrc, pub.payload_type, 90000, None, pub.rtx_ssrc,
                                 pub.rtx_pt, budget_s=0.2, sender_ssrc=0x5151, nack=nack)

    async def polls() -> None:
        while True:
            await asyncio.sleep(0.005)
            recv.poll()

    poller = loop.create_task(polls())
    try:
        await pub.run(seconds)
        await asyncio.sleep(0.4)
    finally:
        poller.cancel()
        pub.close()
        await link.close()
        recv.transport.close()
    return recv, pub, link


@pytest.mark.parametrize("rtx", [True, False], ids=["rtx", "plain-resend"])
def test_direct_mode_nack_recovers_ten_percent_loss(rtx: bool) -> None:
    async def main() -> None:
        recv, pub, link = await direct_run(0.10, rtx=rtx, nack=True, seconds=1.5)
        sent = pub.stats()["sent"]
        assert recv.rx is not None
        st = recv.rx.stats
        assert link.up.dropped_loss > 0.05 * sent  # the link really lost packets
        assert recv.residual(sent) < 0.01, (st, pub.stats())
        assert st.recovered_rtx >= 0.8 * link.up.dropped_loss * (1 - 0.1)
        assert pub.stats()["nacks_in"] > 0 and pub.stats()["rtx_sent"] > 0
        assert (st.rtx_packets > 0) == rtx
        # receiver reports describe the raw link: recovered packets are not "received"
        assert recv.rx.reception.lost >= 0.7 * link.up.dropped_loss
        if rtx:
            assert recv.rx.nack.rtt_samples > 0 and 0.03 < recv.rx.nack.rtt < 0.2

    run(main)


def test_direct_mode_uplink_sfu_rs_without_nack() -> None:
    async def main() -> None:
        recv, pub, link = await direct_run(0.10, rtx=True, nack=False, seconds=1.5,
                                           fec=(8, 3))
        ps = pub.stats()
        sent, lost = ps["sent"], link.up.dropped_loss
        assert recv.rx is not None and lost > 0.05 * sent
        assert ps["fec_sent"] == 3 * -(-sent // 8) and ps["nacks_in"] == 0  # last one flushed
        assert recv.rx.stats.recovered_fec > 0.5 * lost * sent / link.up.sent
        assert recv.residual(sent) < 0.4 * lost / link.up.sent, recv.rx.stats

    run(main)


def test_direct_mode_without_nack_shows_the_loss() -> None:
    async def main() -> None:
        recv, pub, link = await direct_run(0.10, rtx=True, nack=False, seconds=1.0)
        sent = pub.stats()["sent"]
        assert recv.residual(sent) >= 0.8 * link.up.dropped_loss / sent > 0.03
        assert pub.stats()["nacks_in"] == 0

    run(main)


# -- real VP8 through the node, both legs lossy --------------------------------------------

ROOM = "loss"


def node() -> Any:
    return node_with_room(ROOM)


async def vp8_run(recover: bool, seconds: float = 2.0) -> tuple[Any, Any, LossyLink]:
    """VP8 through the node, 10 % loss on the uplink and on the viewer's downlink."""
    async with node() as (running, client):
        addr = running.udp_address
        up = await LossyLink.start(addr, up=LinkProfile.iid(0.1, delay_ms=15),
                                   down=LinkProfile(delay_ms=15), seed=2)
        down = await LossyLink.start(addr, up=LinkProfile(delay_ms=15),
                                     down=LinkProfile.iid(0.1, delay_ms=15), seed=6)
        pub = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                   bitrate=400_000, keyframe_interval=10_000, via=up.address)
        assert pub.track is not None
        opts: dict[str, Any] = {} if recover else {"nack": False, "rtx": False, "fec": "off"}
        sub = await Subscriber.join(client, ROOM, "viewer", pub.track, via=down.address,
                                    **opts)
        try:
            await pub.run(seconds=seconds)
            await asyncio.sleep(0.5)
            return pub, sub, down
        finally:
            sub.close()
            pub.close()
            await up.close()
            await down.close()


def test_vp8_through_node_with_loss_on_both_legs() -> None:
    async def main() -> None:
        pub, sub, down = await vp8_run(recover=True)
        st = sub.stats
        assert down.down.dropped_loss > 10
        assert pub.stats.nacks_received > 0 and pub.stats.rtx_sent > 0  # uplink repaired
        assert st.nacks_sent > 0 and st.recovered_rtx + st.recovered_fec > 0.5 * st.lost
        assert st.frames_expected >= 55 and st.decode_errors == 0
        assert st.frames_decoded >= 0.7 * st.frames_expected, st
        assert st.lost_after_recovery <= 0.25 * st.lost, st
        # the same links without recovery at the viewer: the downlink loss shows
        _, bare, _ = await vp8_run(recover=False)
        b = bare.stats
        assert b.nacks_sent == 0 and b.recovered_rtx == b.recovered_fec == 0
        assert b.frames_dropped > st.frames_dropped
        assert b.frames_decoded < st.frames_decoded, (b, st)

    run(main, timeout=25.0)


def test_publisher_fec_auto_follows_the_reported_uplink_loss() -> None:
    from sfu.client.publisher import RecoveringSender

    s = RecoveringSender(("127.0.0.1", 9), "u", "p", ssrc=None, payload_type=96,
                         clock_rate=90000, fec="auto")
    assert s.fec_ssrc is not None and s.layer()["fec_ssrc"] == s.fec_ssrc
    assert s.fec_encoder is None  # nothing until a loss is known

    def report(fraction: float) -> None:
        s.counters.packets += 100
        s.counters.bytes += 100_000
        packets, octets, firsts, _ = s._fec_mark
        s._fec_mark = (packets, octets, firsts, s._fec_mark[3] - 1.0)  # 100 packets/s
        s._adapt_fec(fraction)

    report(0.4)  # smoothed to 20 %
    assert s.fec_plan is not None and s.fec_plan.fec == "rs" and s.fec_encoder is not None
    assert s.fec_plan.m >= 1 and s.fec_encoder.m == s.fec_plan.m
    for _ in range(12):  # the link heals: the parity stops
        report(0.0)
    assert s.fec_plan.fec == "off" and s.fec_encoder is None
    s.history.add(_native.build_rtp(96, 1, 0, s.ssrc, b"x"), 0.0)
    s.history.resend([1], 0.1)
    assert s.history.stats.first_requests == 1
    s.history.resend([1], 0.5)
    assert s.history.stats.first_requests == 1  # a retry is not a new loss


def test_video_publisher_with_fec_auto_protects_its_start() -> None:
    # The first key frame is the largest and most needed frame, sent before the node has
    # reported any uplink loss: it goes out with parity until the first report decides.
    from sfu.client.media import Vp8Encoder
    from sfu.client.publisher import Publisher

    pub = Publisher(("127.0.0.1", 9), "u", "p", Vp8Encoder(160, 96), fec="auto")
    assert pub.fec_encoder is not None and (pub.fec_encoder.k, pub.fec_encoder.m) == (10, 4)
    assert Publisher(("127.0.0.1", 9), "u", "p", Vp8Encoder(160, 96)).fec_encoder is None

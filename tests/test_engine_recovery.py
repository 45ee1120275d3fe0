"""Loss recovery in the native engine: retransmission history, NACK answers (RTX per
RFC 4588 and plain resends), the NACK generator toward publishers, RTX repair on the
uplink, duplicates, expiry and pool pressure. Real loopback sockets, fake clock."""

import socket

import pytest
from test_engine import counters, pump, recv_all, udp

from sfu import _native as n

PUB_SSRC, RTX_SSRC, FEC_SSRC = 1111, 1112, 1113
OUT_SSRC, OUT_RTX, OUT_FEC = 5000, 6000, 7000
PT, RTX_PT, OUT_PT = 96, 97, 100


class Link:
    """An engine with one video publisher (media + RTX + FEC SSRCs) and one viewer."""

    def __init__(self, **kw: object) -> None:
        kw.setdefault("stun_rate", 0)
        self.e = n.Engine(**kw)
        self.srv = udp()
        self.addr = self.srv.getsockname()
        self.tid = self.e.add_udp(self.srv.fileno())
        self.pub, self.view = udp(), udp()
        self.pp = self.e.add_peer(self.tid)
        self.e.bind_peer(self.pp, *self.pub.getsockname())
        self.sid = self.e.add_source(self.pp, n.KIND_VIDEO, 90000)
        self.e.add_ingress(self.sid, PUB_SSRC, PT, rtx_ssrc=RTX_SSRC, rtx_payload_type=RTX_PT,
                           fec_ssrc=FEC_SSRC, fec_payload_type=125)
        self.vp = self.e.add_peer(self.tid)
        self.e.bind_peer(self.vp, *self.view.getsockname())
        self.did = self.e.add_downtrack(self.sid, self.vp, OUT_SSRC, OUT_PT)

    def publish(self, seqs: list[int], now: float, size: int = 200) -> list[bytes]:
        pkts = [n.build_rtp(PT, s & 0xFFFF, 3000 * s, PUB_SSRC, bytes([s & 0xFF]) * size,
                            extensions={3: b"\x01\x02"}) for s in seqs]
        for p in pkts:
            self.pub.sendto(p, self.addr)
        pump(self.e, self.tid, now, len(pkts))
        return pkts

    def stats(self) -> dict[str, int]:
        row = self.e.downtrack_stats[self.did].tolist()
        return dict(zip(n.DOWNTRACK_FIELDS, row, strict=True))

    def source(self) -> dict[str, int]:
        row = self.e.source_stats[self.sid].tolist()
        return dict(zip(n.SOURCE_FIELDS, row, strict=True))

    def close(self) -> None:
        for s in (self.srv, self.pub, self.view):
            s.close()


@pytest.fixture
def link():
    lk = Link()
    yield lk
    lk.close()


def rtcp_of(sock: socket.socket, count: int = 1) -> list[dict[str, object]]:
    """Every RTCP packet waiting on sock (all datagrams within 0.1 s; count is a minimum hint)."""
    return [p for d in recv_all(sock, 100, timeout=0.1) for p in n.parse_rtcp(d)]


def rtp_of(sock: socket.socket) -> list[bytes]:
    return [d for d in recv_all(sock, 100, timeout=0.1) if not 192 <= d[1] <= 223]


def test_nack_is_answered_with_plain_resends_identical_to_the_forwarded_copies(link: Link):
    link.publish(list(range(10)), 1.0)
    forwarded = recv_all(link.view, 10)
    assert len(forwarded) == 10
    base = n.parse_rtp(forwarded[0])["sequence_number"]
    link.view.sendto(n.build_nack(9, OUT_SSRC, [(base + 3) & 0xFFFF, (base + 7) & 0xFFFF]),
                     link.addr)
    pump(link.e, link.tid, 1.1, 1)
    again = recv_all(link.view, 2)
    assert again == [forwarded[3], forwarded[7]]
    st = link.stats()
    assert st["rtx_sent"] == 2 and st["nack_seqs"] == 2 and st["nack_runs"] == 2
    assert counters(link.e)["resend_sent"] == 2


def test_nack_is_answered_with_rtx_per_rfc4588(link: Link):
    link.e.set_downtrack_recovery(link.did, rtx_ssrc=OUT_RTX, rtx_payload_type=RTX_PT)
    pkts = link.publish(list(range(10)), 1.0)
    forwarded = [n.parse_rtp(d) for d in recv_all(link.view, 10)]
    base = forwarded[0]["sequence_number"]
    lost = [(base + 4) & 0xFFFF, (base + 5) & 0xFFFF, (base + 6) & 0xFFFF]
    link.view.sendto(n.build_nack(9, OUT_SSRC, lost), link.addr)
    pump(link.e, link.tid, 1.1, 1)
    rtx = [n.parse_rtp(d) for d in recv_all(link.view, 3)]
    assert [r["ssrc"] for r in rtx] == [OUT_RTX] * 3
    assert [r["payload_type"] for r in rtx] == [RTX_PT] * 3
    # Own sequence space, consecutive; same timestamp as the original; OSN first.
    assert [(r["sequence_number"] - rtx[0]["sequence_number"]) & 0xFFFF for r in rtx] == [0, 1, 2]
    for r, i in zip(rtx, (4, 5, 6), strict=True):
        payload = r["payload"]
        assert int.from_bytes(payload[:2]) == (base + i) & 0xFFFF
        assert payload[2:] == n.parse_rtp(pkts[i])["payload"]
        assert r["timestamp"] == forwarded[i]["timestamp"]
        assert n.rtp_extension(n.build_rtp(0, 0, 0, 0, b"", extensions={}), 3) is None
    st = link.stats()
    assert st["rtx_sent"] == 3 and st["nack_runs"] == 1
    assert counters(link.e)["rtx_sent"] == 3


def test_nack_for_a_packet_no_longer_held_is_counted_not_answered(link: Link):
    link.publish(list(range(5)), 1.0)
    base = n.parse_rtp(recv_all(link.view, 5)[0])["sequence_number"]
    link.e.on_tick(3.5)  # video history: ~2 s
    assert link.e.live()["slots_in_use"] == 0
    link.view.sendto(n.build_nack(9, OUT_SSRC, [(base + 1) & 0xFFFF]), link.addr)
    pump(link.e, link.tid, 3.5, 1)
    assert rtp_of(link.view) == []
    assert link.stats()["resend_miss"] == 1


def test_viewer_with_nack_off_gets_no_resends(link: Link):
    link.e.set_downtrack_recovery(link.did, nack=False)
    link.publish(list(range(3)), 1.0)
    base = n.parse_rtp(recv_all(link.view, 3)[0])["sequence_number"]
    link.view.sendto(n.build_nack(9, OUT_SSRC, [base]), link.addr)
    pump(link.e, link.tid, 1.0, 1)
    assert rtp_of(link.view) == []


def test_duplicates_are_dropped_and_counted(link: Link):
    link.publish([1, 2, 3], 1.0)
    link.publish([2, 3], 1.0)
    assert len(recv_all(link.view, 5, timeout=0.2)) == 3
    assert counters(link.e)["drop_duplicate"] == 2
    assert link.source()["duplicates"] == 2


def test_holes_are_nacked_retried_and_given_up_with_a_keyframe_request(link: Link):
    link.publish([10, 11, 14, 15], 1.0)
    recv_all(link.view, 4)
    # Before the reorder wait (5 ms) nothing is sent; at the next tick the NACK goes out.
    deadline = link.e.on_tick(1.0)
    assert 1.0 < deadline <= 1.006
    assert [p for p in rtcp_of(link.pub) if p["type"] == "nack"] == []
    link.e.on_tick(1.006)
    nacks = [p for p in rtcp_of(link.pub, 1) if p["type"] == "nack"]
    # Sent twice: a lost NACK would cost a whole retry interval.
    assert len(nacks) == 2 and nacks[0] == nacks[1] and nacks[0]["media_ssrc"] == PUB_SSRC
    assert nacks[0]["lost"] == [12, 13] and nacks[0]["sender_ssrc"] == 1
    # Retried one RTT later (0.1 s default until measured, ×1.2 + 5 ms), not before.
    link.e.on_tick(1.05)
    assert [p for p in rtcp_of(link.pub, 1) if p["type"] == "nack"] == []
    link.e.on_tick(1.14)
    assert [p["lost"] for p in rtcp_of(link.pub, 1) if p["type"] == "nack"] == [[12, 13]] * 2
    # Past nack_max_age (1 s) the holes are given up: counted, and a PLI asks for a keyframe.
    link.e.on_tick(2.2)
    got = rtcp_of(link.pub, 2)
    assert any(p["type"] == "pli" for p in got)
    src = link.source()
    assert src["missing"] == 2 and src["unrecovered"] == 2 and src["nack_sent"] >= 4
    assert counters(link.e)["unrecovered"] == 2


def test_rtx_from_the_publisher_fills_the_hole_for_every_viewer(link: Link):
    pkts = link.publish([20, 21, 23], 1.0)
    fwd = recv_all(link.view, 3)
    link.e.on_tick(1.01)
    assert [p["lost"] for p in rtcp_of(link.pub, 1) if p["type"] == "nack"] == [[22]] * 2
    original = n.build_rtp(PT, 22, 3000 * 22, PUB_SSRC, bytes([22]) * 200,
                           extensions={3: b"\x01\x02"})
    body = n.parse_rtp(original)
    rtx = n.build_rtp(RTX_PT, 500, body["timestamp"], RTX_SSRC, (22).to_bytes(2) + body["payload"],
                      extensions={3: b"\x01\x02"})
    link.pub.sendto(rtx, link.addr)
    pump(link.e, link.tid, 1.05, 1)
    (got,) = rtp_of(link.view)
    g, first = n.parse_rtp(got), n.parse_rtp(fwd[0])
    assert g["ssrc"] == OUT_SSRC and g["payload_type"] == OUT_PT
    assert (g["sequence_number"] - first["sequence_number"]) & 0xFFFF == 2
    assert (g["timestamp"] - first["timestamp"]) & 0xFFFFFFFF == 6000
    assert g["payload"] == body["payload"]
    assert n.rtp_extension(got, 3) == b"\x01\x02"
    src = link.source()
    assert src["recovered_rtx"] == 1 and src["rtx_in"] == 1
    # NACK -> RTX took 40 ms: the uplink RTT estimate moved from 0 toward it.
    link.e.on_tick(2.5)
    assert 30_000 <= link.source()["rtt_us"] <= 50_000
    # The same RTX again is a duplicate, not forwarded twice.
    link.pub.sendto(rtx, link.addr)
    pump(link.e, link.tid, 2.5, 1)
    assert rtp_of(link.view) == []
    assert len(pkts) == 3


def test_malformed_rtx_is_dropped_and_counted(link: Link):
    link.publish([1], 1.0)
    link.pub.sendto(n.build_rtp(RTX_PT, 1, 0, RTX_SSRC, b"\x00"), link.addr)
    pump(link.e, link.tid, 1.0, 1)
    assert counters(link.e)["drop_malformed"] == 1


def test_publisher_rr_on_the_node_sr_gives_uplink_rtt(link: Link):
    link.publish([1, 2], 1.0)
    link.e.set_wallclock_offset(0.0)
    link.e.on_tick(1.5)
    sr = next(p for p in rtcp_of(link.pub, 1) if p["type"] == "sr")
    assert sr["ssrc"] == 1 and sr["packets"] == 0
    lsr = (sr["ntp"] >> 16) & 0xFFFFFFFF
    rr = n.build_rr(PUB_SSRC, [{"ssrc": 1, "lsr": lsr, "dlsr": int(0.01 * 65536)}])
    link.pub.sendto(rr, link.addr)
    pump(link.e, link.tid, 1.57, 1)  # 70 ms later, 10 ms of it held by the publisher
    link.e.on_tick(2.6)
    assert 55_000 <= link.source()["rtt_us"] <= 65_000


def test_history_gives_way_under_pool_pressure():
    lk = Link(pool_slots=256, batch=32)
    try:
        for r in range(6):
            lk.publish(list(range(100 * r, 100 * r + 100)), 1.0 + r * 0.01)
            recv_all(lk.view, 100)
        c = counters(lk.e)
        assert c["forwarded"] == 600 and c["hist_evicted"] > 0
        assert c["recv_no_slot"] == 0 and c["drop_no_slot"] == 0
        assert lk.e.live()["slots_in_use"] <= 256
    finally:
        lk.close()


def test_removing_the_source_releases_its_history(link: Link):
    link.publish(list(range(50)), 1.0)
    assert link.e.live()["slots_in_use"] == 50
    link.e.remove_source(link.sid)
    assert link.e.live()["slots_in_use"] == 0


def test_recovery_configuration_errors_are_value_errors(link: Link):
    with pytest.raises(ValueError, match="fec_m"):
        link.e.set_downtrack_recovery(link.did, fec_m=17, fec_ssrc=OUT_FEC, fec_payload_type=125)
    with pytest.raises(ValueError, match="fec_ssrc"):
        link.e.set_downtrack_recovery(link.did, fec_m=2)
    with pytest.raises(ValueError, match="already in use"):
        link.e.set_downtrack_recovery(link.did, rtx_ssrc=PUB_SSRC)
    with pytest.raises(ValueError, match="fec_k"):
        link.e.set_source_recovery(link.sid, fec_k=65)
    with pytest.raises(ValueError, match="already in use"):
        link.e.add_ingress(link.sid, 4242, PT, rtx_ssrc=OUT_SSRC)
    with pytest.raises(ValueError):
        n.Engine(nack_max_tries=0)


def test_inband_ulpfec_to_a_viewer_uses_the_media_seq_space(link: Link):
    # GStreamer's rtpulpfecdec finds FEC only on the media SSRC, in its seq space.
    link.e.set_downtrack_recovery(link.did, ulpfec_k=4, ulpfec_payload_type=116)
    link.publish(list(range(12)), 1.0)
    got = rtp_of(link.view)
    assert len(got) == 15
    parsed = [n.parse_rtp(d) for d in got]
    seq0 = parsed[0]["sequence_number"]
    assert [(p["sequence_number"] - seq0) & 0xFFFF for p in parsed] == list(range(15))
    assert [p["payload_type"] for p in parsed] == ([OUT_PT] * 4 + [116]) * 3
    assert {p["ssrc"] for p in parsed} == {OUT_SSRC}
    for g in range(3):
        group, fec = got[5 * g:5 * g + 4], got[5 * g + 4]
        for lost in range(4):
            others = {n.parse_rtp(d)["sequence_number"]: d
                      for i, d in enumerate(group) if i != lost}
            assert n.ulpfec_recover(fec, others) == group[lost]
    # A NACK for a FEC seq gets that FEC packet again; a media seq its packet.
    link.view.sendto(n.build_nack(9, OUT_SSRC, [(seq0 + 9) & 0xFFFF, (seq0 + 7) & 0xFFFF]),
                     link.addr)
    pump(link.e, link.tid, 1.1, 1)
    assert sorted(rtp_of(link.view)) == sorted([got[9], got[7]])
    assert link.stats()["fec_sent"] == 4


def test_ulpfec_k_is_fixed_once_the_viewer_started(link: Link):
    link.publish([1], 1.0)
    with pytest.raises(ValueError, match="ulpfec_k"):
        link.e.set_downtrack_recovery(link.did, ulpfec_k=4)


def test_publisher_inband_ulpfec_repairs_a_hole_and_is_relayed_re_encoded():
    lk = Link()
    try:
        e = lk.e
        e.remove_source(lk.sid)
        lk.sid = e.add_source(lk.pp, n.KIND_VIDEO, 90000)
        e.add_ingress(lk.sid, PUB_SSRC, PT, ulpfec_payload_type=116)
        lk.did = e.add_downtrack(lk.sid, lk.vp, OUT_SSRC, OUT_PT)
        media = [n.build_rtp(PT, 100 + i, 9000, PUB_SSRC, bytes([i]) * (100 + 10 * i),
                             marker=i == 3) for i in range(4)]
        fec = n.ulpfec_encode(media, 116, 104, 9000, PUB_SSRC)
        for i in (0, 1, 3):
            lk.pub.sendto(media[i], lk.addr)
        lk.pub.sendto(fec, lk.addr)
        pump(e, lk.tid, 1.0, 4)
        raw = rtp_of(lk.view)
        got = [n.parse_rtp(d) for d in raw]
        base = got[0]["sequence_number"]
        # 100, 101, 103, then 102 rebuilt by the node, then the FEC at its own seq (104),
        # re-encoded for this viewer: it rebuilds the viewer's copies, not the publisher's.
        assert [(g["sequence_number"] - base) & 0xFFFF for g in got] == [0, 1, 3, 2, 4]
        assert [g["payload_type"] for g in got] == [OUT_PT, OUT_PT, OUT_PT, OUT_PT, 116]
        assert got[3]["payload"] == n.parse_rtp(media[2])["payload"]
        viewer_copies = {g["sequence_number"]: d for g, d in zip(got[:4], raw[:4], strict=True)}
        for lost, copy in viewer_copies.items():
            others = {s: d for s, d in viewer_copies.items() if s != lost}
            assert n.ulpfec_recover(raw[4], others) == copy
        src = dict(zip(n.SOURCE_FIELDS, e.source_stats[lk.sid].tolist(), strict=True))
        assert src["recovered_fec"] == 1 and src["fec_in"] == 1
        # A NACK for the FEC seq gets the re-encoded FEC again.
        lk.view.sendto(n.build_nack(9, OUT_SSRC, [(base + 4) & 0xFFFF]), lk.addr)
        pump(e, lk.tid, 1.0, 1)
        assert rtp_of(lk.view) == [raw[4]]
        # PT 116 is FEC only where declared: elsewhere it is a wrong payload type.
        lk.pub.sendto(n.build_rtp(117, 105, 0, PUB_SSRC, b"x"), lk.addr)
        pump(e, lk.tid, 1.0, 1)
        assert counters(e)["drop_payload_type"] == 1
    finally:
        lk.close()


def test_block_length_change_shows_in_every_fec_viewers_stats(link: Link):
    link.e.set_source_recovery(link.sid, fec_k=4)
    link.e.set_downtrack_recovery(link.did, fec_ssrc=OUT_FEC, fec_payload_type=125, fec_m=1)
    link.e.set_source_recovery(link.sid, fec_k=8)
    assert link.stats()["fec_k"] == 8


def test_rtx_after_a_retry_is_no_rtt_sample(link: Link):
    # Karn's rule: the answer to a retried NACK may be the answer to the first one.
    link.publish([30, 32], 1.0)
    link.e.on_tick(1.01)   # NACK 31
    link.e.on_tick(1.14)   # retry (no RTT yet: 0.1 s default x 1.2 + 5 ms)
    assert [p["lost"] for p in rtcp_of(link.pub) if p["type"] == "nack"] == [[31]] * 4
    body = n.parse_rtp(n.build_rtp(PT, 31, 3000 * 31, PUB_SSRC, bytes([31]) * 200))
    rtx = n.build_rtp(RTX_PT, 9, body["timestamp"], RTX_SSRC, (31).to_bytes(2) + body["payload"])
    link.pub.sendto(rtx, link.addr)
    pump(link.e, link.tid, 1.15, 1)
    assert link.source()["recovered_rtx"] == 1
    link.e.on_tick(2.5)
    assert link.source()["rtt_us"] == 0  # 10 ms would have been a wrong sample


def test_rtx_that_arrives_after_the_parity_completes_the_block(link: Link):
    # Two holes, one parity row: stuck until a retransmission fills one hole, then the
    # parity rebuilds the other (FEC and NACK work together, not one after the other).
    pkts = [n.build_rtp(PT, 500 + i, 900 * i, PUB_SSRC, bytes([i]) * 80) for i in range(4)]
    (parity,) = n.rs_encode(pkts, 4, 1, 500, 125, 3, FEC_SSRC)
    for p in (pkts[0], pkts[3], parity):
        link.pub.sendto(p, link.addr)
    pump(link.e, link.tid, 1.0, 3)
    assert link.source()["recovered_fec"] == 0
    body = n.parse_rtp(pkts[1])
    link.pub.sendto(n.build_rtp(RTX_PT, 1, body["timestamp"], RTX_SSRC,
                                (501).to_bytes(2) + body["payload"]), link.addr)
    pump(link.e, link.tid, 1.05, 1)
    src = link.source()
    assert src["recovered_rtx"] == 1 and src["recovered_fec"] == 1
    got = {n.parse_rtp(d)["payload"] for d in rtp_of(link.view)}
    assert {n.parse_rtp(p)["payload"] for p in pkts} <= got


def test_rtx_of_a_stream_first_packet_still_reaches_the_viewer(link: Link):
    # The very first packet (a key frame's start) was lost: the node never saw a hole, but
    # its retransmission must still be forwarded, or the viewer waits for the next key frame.
    link.publish([41, 42, 43], 1.0)
    first = n.parse_rtp(rtp_of(link.view)[0])
    body = n.parse_rtp(n.build_rtp(PT, 40, 3000 * 40, PUB_SSRC, bytes([40]) * 200))
    link.pub.sendto(n.build_rtp(RTX_PT, 1, body["timestamp"], RTX_SSRC,
                                (40).to_bytes(2) + body["payload"]), link.addr)
    pump(link.e, link.tid, 1.05, 1)
    (got,) = [n.parse_rtp(d) for d in rtp_of(link.view)]
    assert (first["sequence_number"] - got["sequence_number"]) & 0xFFFF == 1
    assert got["payload"] == body["payload"]


def test_viewer_nack_for_a_hole_being_repaired_upstream_hurries_the_publisher(link: Link):
    link.publish([60, 62], 1.0)
    base = n.parse_rtp(rtp_of(link.view)[0])["sequence_number"]
    link.e.on_tick(1.01)  # first NACK for 61 upstream; the next retry is due at 1.135
    assert [p["lost"] for p in rtcp_of(link.pub) if p["type"] == "nack"] == [[61]] * 2
    link.view.sendto(n.build_nack(9, OUT_SSRC, [(base + 1) & 0xFFFF]), link.addr)
    pump(link.e, link.tid, 1.08, 1)  # the viewer asks at 1.08: the node cannot answer yet
    assert link.stats()["resend_miss"] == 1
    # ... so it asks the publisher again at once instead of at 1.135.
    assert [p["lost"] for p in rtcp_of(link.pub) if p["type"] == "nack"] == [[61]] * 2

"""Simulcast in the native engine: one layer per viewer, keyframe-gated switches with
continuous seq/ts/PictureID/TL0PICIDX, VP8 temporal filtering, transport-wide seq stamping,
padding probes, the GOP-cache start, per-layer PLIs and RID learning. Real loopback sockets,
fake clock."""

from __future__ import annotations

import socket

import pytest
from test_engine import pump, recv_all, udp

from sfu import _native as n
from sfu.client.vp8 import build_descriptor, parse_descriptor

SSRCS = (1001, 1002, 1003)  # layers q, h, f
RTX = (2001, 2002, 2003)
OUT_SSRC, OUT_RTX, OUT_PT, PT = 5000, 6000, 100, 96
TW = 5  # transport-wide seq extension id
L1T3 = (0, 2, 1, 2)
KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + b"K" * 20  # P bit 0: keyframe
DELTA = bytes([0x11, 0x02, 0x00]) + b"D" * 20


class Sim:
    """An engine with a 3-layer VP8 L1T3 publisher and viewers."""

    def __init__(self, gop_cache: bool = True, temporal: int = 3, layers: int = 3) -> None:
        self.e = n.Engine(stun_rate=0)
        self.srv = udp()
        self.addr = self.srv.getsockname()
        self.tid = self.e.add_udp(self.srv.fileno())
        self.pub = udp()
        self.pp = self.e.add_peer(self.tid)
        self.e.bind_peer(self.pp, *self.pub.getsockname())
        self.sid = self.e.add_source(self.pp, n.KIND_VIDEO, 90000)
        self.e.set_source_media(self.sid, "VP8", temporal, layers, gop_cache)
        for i in range(layers):
            self.e.add_ingress(self.sid, SSRCS[i], PT, rtx_ssrc=RTX[i], layer=i)
        self.seq = [100 * (i + 1) for i in range(3)]
        self.ts_base = [1_000_000 * (i + 1) for i in range(3)]
        self.frame = [0, 0, 0]
        self.pic = [10 * (i + 1) for i in range(3)]
        self.tl0 = [50 * (i + 1) for i in range(3)]
        self.socks: list[socket.socket] = [self.srv, self.pub]

    def viewer(self, out_ssrc: int = OUT_SSRC,
               twcc: bool = False) -> tuple[int, int, socket.socket]:
        sock = udp()
        self.socks.append(sock)
        vp = self.e.add_peer(self.tid)
        self.e.bind_peer(vp, *sock.getsockname())
        if twcc:
            self.e.set_peer_transport_cc(vp, TW)
        did = self.e.add_downtrack(self.sid, vp, out_ssrc, OUT_PT)
        self.e.set_downtrack_recovery(did, rtx_ssrc=out_ssrc + 1, rtx_payload_type=97)
        return vp, did, sock

    def frame_packets(self, layer: int, key: bool = False, parts: int = 2,
                      ext: dict[int, bytes] | None = None) -> list[bytes]:
        """One frame of a layer as RTP packets (and advances that layer's counters)."""
        i = self.frame[layer]
        tid = 0 if key else L1T3[i % 4]
        if tid == 0 and i:
            self.tl0[layer] = (self.tl0[layer] + 1) & 0xFF
        ts = self.ts_base[layer] + 3000 * i
        pkts = []
        for part in range(parts):
            desc = build_descriptor(part == 0, picture_id=self.pic[layer],
                                    tl0picidx=self.tl0[layer], tid=tid,
                                    layer_sync=tid > 0 and i % 4 != 3)
            body = (KEY if key else DELTA) if part == 0 else b"x" * 30
            pkts.append(n.build_rtp(PT, self.seq[layer] & 0xFFFF, ts & 0xFFFFFFFF,
                                    SSRCS[layer], desc + body, marker=part == parts - 1,
                                    extensions=ext))
            self.seq[layer] += 1
        self.frame[layer] += 1
        self.pic[layer] = (self.pic[layer] + 1) & 0x7FFF
        return pkts

    def send(self, pkts: list[bytes], now: float) -> None:
        for p in pkts:
            self.pub.sendto(p, self.addr)
        pump(self.e, self.tid, now, len(pkts))

    def tick_all(self, now: float, key: bool = False, layers: tuple[int, ...] = (0, 1, 2)) -> None:
        """One frame on every layer (keyframes if key)."""
        self.send([p for lay in layers for p in self.frame_packets(lay, key)], now)

    def stats(self, did: int) -> dict[str, int]:
        return dict(zip(n.DOWNTRACK_FIELDS, self.e.downtrack_stats[did].tolist(), strict=True))

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def sim():
    s = Sim()
    yield s
    s.close()


def rtp(sock: socket.socket) -> list[dict[str, object]]:
    out = []
    for d in recv_all(sock, 1000, timeout=0.1):
        if 192 <= d[1] <= 223:
            continue
        p = n.parse_rtp(d)
        p["raw"] = d
        if p["payload_size"]:
            payload = d[p["header_size"]:len(d) - p["padding_size"]]
            p["desc"] = parse_descriptor(payload)
        out.append(p)
    return out


def media(pkts: list[dict[str, object]]) -> list[dict[str, object]]:
    return [p for p in pkts if p["payload_size"]]


def check_continuous(pkts: list[dict[str, object]]) -> None:
    """One SSRC, seq +1 each, ts never back, PictureID +1 per frame, TL0PICIDX +1 per TL0."""
    assert {p["ssrc"] for p in pkts} == {OUT_SSRC}
    seqs = [p["sequence_number"] for p in pkts]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
    starts = [p for p in pkts if p["desc"].start]
    for a, b in zip(starts, starts[1:], strict=False):
        assert (b["desc"].picture_id - a["desc"].picture_id) & 0x7FFF == 1
        assert 0 < (b["timestamp"] - a["timestamp"]) & 0xFFFFFFFF < 90000
        d_tl0 = (b["desc"].tl0picidx - a["desc"].tl0picidx) & 0xFF
        assert d_tl0 == (1 if b["desc"].tid == 0 else 0)


def test_codec_probes() -> None:
    d = build_descriptor(True, picture_id=300, tl0picidx=7, tid=2, layer_sync=True)
    assert n.probe_media("vp8", d + KEY) == {
        "key": True, "start": True, "desc_len": 6, "sync": True, "tid": 2, "tl0picidx": 7,
        "picture_id": 300, "picture_id_bits": 15}
    assert not n.probe_media("vp8", d + DELTA)["key"]
    cont = n.probe_media("vp8", build_descriptor(False, picture_id=3, picture_id_bits=7) + KEY)
    assert (cont["start"], cont["key"], cont["picture_id_bits"]) == (False, False, 7)
    assert n.probe_media("vp8", b"\x90\xe0")["picture_id"] is None  # truncated: no fields
    sps, idr, non_idr = b"\x67abc", b"\x65xyz", b"\x41xyz"
    assert n.probe_media("h264", idr)["key"] and not n.probe_media("h264", non_idr)["key"]
    stap = b"\x18" + len(sps).to_bytes(2, "big") + sps + len(idr).to_bytes(2, "big") + idr
    assert n.probe_media("h264", stap)["key"]
    fu_start, fu_mid = b"\x7c\x85rest", b"\x7c\x05rest"
    assert n.probe_media("h264", fu_start) == {**n.probe_media("h264", fu_start), "key": True,
                                               "start": True}
    assert not n.probe_media("h264", fu_mid)["start"]
    assert n.probe_media("opus", b"\x01")["key"]
    with pytest.raises(ValueError):
        n.probe_media("vp9", b"")


def test_viewer_gets_one_layer_and_switches_only_at_a_keyframe(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True)                     # keyframes on all layers, held (GOP)
    sim.e.set_downtrack_layer(did, 0, 3, 1.01)      # starts from the q keyframe at once
    for k in range(6):
        sim.tick_all(1.03 + 0.033 * k)
    got = media(rtp(sock))
    assert len(got) == 14 and all(p["raw"][-30:] == b"x" * 30 or True for p in got)
    assert sim.stats(did)["layer"] == 0 and sim.stats(did)["gop_sent"] == 2
    # Ask for f: keeps q until f's keyframe, which is requested by one PLI to f's SSRC.
    assert sim.e.set_downtrack_layer(did, 2, 3, 1.3) is True
    plis = [p for d in recv_all(sim.pub, 10, timeout=0.1) for p in n.parse_rtcp(d)]
    assert [p["media_ssrc"] for p in plis if p["type"] == "pli"] == [SSRCS[2]]
    for k in range(3):
        sim.tick_all(1.31 + 0.033 * k)
    before = media(rtp(sock))
    assert len(before) == 6 and sim.stats(did)["layer"] == 0     # still q, no freeze
    sim.tick_all(1.5, key=True, layers=(2,))
    sim.tick_all(1.53, layers=(0, 1, 2))
    after = media(rtp(sock))
    assert len(after) == 4 and sim.stats(did)["layer"] == 2
    assert after[0]["desc"].start and after[0]["raw"].endswith(KEY[3:])
    check_continuous(got + before + after)
    events = [ev for ev in sim.e.drain_events() if ev[0] == n.EV_LAYER]
    assert [(ev[2], ev[3]) for ev in events] == [(0, 3), (2, 3)]


def test_timestamps_are_aligned_through_sender_reports(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True)
    sim.e.set_downtrack_layer(did, 0, 3, 1.0)
    # SRs: at NTP t, q's clock reads ts_base[0] + 3000*i; f's reads ts_base[2] + 3000*i.
    ntp = 0x1_0000_0000 * 1000
    for lay in (0, 2):
        sr = n.build_sr(SSRCS[lay], ntp, sim.ts_base[lay] + 3000, 1, 1)
        sim.pub.sendto(sr, sim.addr)
    pump(sim.e, sim.tid, 1.02, 2)
    sim.tick_all(1.033)
    sim.e.set_downtrack_layer(did, 2, 3, 1.04)
    sim.tick_all(1.066, key=True, layers=(2,))
    got = media(rtp(sock))
    q_last = [p for p in got if p["desc"].picture_id is not None][-3]   # q frame 1
    f_key = got[-2]
    # Same capture instant (frame 2 of each layer) must map to q frame 1 + 3000.
    assert (f_key["timestamp"] - q_last["timestamp"]) & 0xFFFFFFFF == 3000


def test_temporal_down_switch_within_one_frame_and_up_at_tl0(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True, layers=(1,))
    sim.e.set_downtrack_layer(did, 1, 3, 1.0)
    for k in range(3):                                   # frames 1..3: TID 2, 1, 2
        sim.tick_all(1.03 + 0.03 * k, layers=(1,))
    sim.e.set_downtrack_layer(did, 1, 0, 1.2)            # only TL0 from the next frame
    for k in range(8):                                   # frames 4..11
        sim.tick_all(1.23 + 0.03 * k, layers=(1,))
    low = media(rtp(sock))
    tids = [p["desc"].tid for p in low if p["desc"].start]
    assert tids == [0, 2, 1, 2, 0, 0]                    # frames 4 and 8 only after
    assert sim.stats(did)["dropped_temporal"] == 12
    sim.e.set_downtrack_layer(did, 1, 2, 1.5)            # back up: waits for a TL0 frame
    for k in range(6):                                   # frames 12..17: 0 2 1 2 0 2
        sim.tick_all(1.53 + 0.03 * k, layers=(1,))
    high = media(rtp(sock))
    assert [p["desc"].tid for p in high if p["desc"].start] == [0, 2, 1, 2, 0, 2]
    check_continuous(low + high)


def test_nacks_are_answered_in_the_viewers_numbering_and_late_repairs_fill_holes(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True, layers=(2,))
    sim.e.set_downtrack_layer(did, 2, 1, 1.0)            # drop TID 2
    f1 = sim.frame_packets(2)                            # TID 2: dropped
    f2 = sim.frame_packets(2)                            # TID 1
    f3 = sim.frame_packets(2)                            # TID 2
    f4 = sim.frame_packets(2)                            # TID 0
    sim.send(f1 + [f2[0]] + f3 + f4, 1.1)                # f2[1] lost upstream
    got = media(rtp(sock))
    seqs = [p["sequence_number"] for p in got]
    # Held back: one seq reserved for f2[1] between f2[0] and f4[0].
    assert (seqs[-2] - seqs[-3]) & 0xFFFF == 2
    hole = (seqs[-3] + 1) & 0xFFFF
    sim.send([f2[1]], 1.12)                              # the repair arrives: fills the hole
    late = media(rtp(sock))
    assert [p["sequence_number"] for p in late] == [hole]
    check_continuous(sorted(got + late, key=lambda p: (p["sequence_number"] - seqs[0]) & 0xFFFF))
    # A NACK for a forwarded seq is answered by RTX with the same rewrite (OSN = that seq).
    sock.sendto(n.build_nack(9, OUT_SSRC, [seqs[-1]]), sim.addr)
    pump(sim.e, sim.tid, 1.2, 1)
    rtx = rtp(sock)
    assert len(rtx) == 1 and rtx[0]["ssrc"] == OUT_SSRC + 1
    raw = rtx[0]["raw"]
    hs = rtx[0]["header_size"]
    assert int.from_bytes(raw[hs:hs + 2], "big") == seqs[-1]
    assert raw[hs + 2:] == got[-1]["raw"][got[-1]["header_size"]:]


def test_late_repair_of_a_filtered_frame_becomes_padding(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True, layers=(2,))
    sim.e.set_downtrack_layer(did, 2, 0, 1.0)            # TL0 only
    f1 = sim.frame_packets(2)                            # TID 2 (lost, then repaired)
    f2, f3, f4 = (sim.frame_packets(2) for _ in range(3))
    sim.send(f2 + f3 + f4, 1.1)                          # f1 missing: 2 seqs reserved
    rtp(sock)
    sim.send(f1, 1.15)
    pad = rtp(sock)
    assert len(pad) == 2 and all(p["payload_size"] == 0 and p["padding_size"] > 0 for p in pad)
    assert all(p["ssrc"] == OUT_SSRC for p in pad)


def test_transport_wide_seq_is_stamped_on_everything_to_a_twcc_viewer(sim: Sim) -> None:
    vp, did, sock = sim.viewer(twcc=True)
    _, plain_did, plain = sim.viewer(out_ssrc=7000)
    sim.e.set_downtrack_layer(plain_did, 0, 3, 1.0)
    sim.tick_all(1.0, key=True, layers=(0,))
    sim.e.set_downtrack_layer(did, 0, 3, 1.0)
    sim.send(sim.frame_packets(0, ext={3: b"\x01\x02", TW: b"\xff\xff"}), 1.05)
    sim.send(sim.frame_packets(0), 1.08)
    got = rtp(sock)
    assert len(got) == 6
    tw = [int.from_bytes(n.rtp_extension(p["raw"], TW), "big") for p in got]
    assert tw == [(tw[0] + i) & 0xFFFF for i in range(6)]
    assert n.rtp_extension(got[2]["raw"], 3) == b"\x01\x02"     # the publisher's kept
    # A viewer without TWCC gets the publisher's extensions untouched.
    plain_got = rtp(plain)
    assert [n.rtp_extension(p["raw"], TW) for p in plain_got] == [None, None, b"\xff\xff",
                                                                   b"\xff\xff", None, None]
    # Padding probe: on the RTX SSRC, stamped, payload only padding.
    assert sim.e.probe(vp, 1e6, 0.05, 1.2)
    assert sim.e.probe(vp + 1, 1e6, 0.05, 1.2) is False          # no TWCC: no probe
    t = 1.2
    while t < 1.26:
        sim.e.on_tick(t)
        t += 0.005
    probes = rtp(sock)
    assert len(probes) >= 20
    assert all(p["ssrc"] == OUT_SSRC + 1 and p["payload_size"] == 0 for p in probes)
    tw2 = [int.from_bytes(n.rtp_extension(p["raw"], TW), "big") for p in probes]
    assert tw2[0] == (tw[-1] + 1) & 0xFFFF


def test_new_viewer_starts_from_the_gop_cache_or_with_a_pli_without_it() -> None:
    for gop in (True, False):
        s = Sim(gop_cache=gop)
        try:
            s.tick_all(1.0, key=True)
            for k in range(4):
                s.tick_all(1.03 + 0.03 * k)
            recv_all(s.pub, 10, timeout=0.05)
            _, did, sock = s.viewer()
            s.e.set_downtrack_layer(did, 1, 3, 1.2)
            got = media(rtp(sock))
            plis = [p for d in recv_all(s.pub, 10, timeout=0.1) for p in n.parse_rtcp(d)
                    if p["type"] == "pli"]
            if gop:
                assert len(got) == 10 and got[0]["raw"].endswith(KEY[3:])
                check_continuous(got)
                assert plis == []
            else:
                assert got == [] and [p["media_ssrc"] for p in plis] == [SSRCS[1]]
        finally:
            s.close()


def test_viewer_pli_asks_only_its_own_layer(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True)
    sim.e.set_downtrack_layer(did, 1, 3, 1.0)
    recv_all(sim.pub, 10, timeout=0.05)
    sock.sendto(n.build_pli(9, OUT_SSRC), sim.addr)
    pump(sim.e, sim.tid, 2.0, 1)
    plis = [p for d in recv_all(sim.pub, 10, timeout=0.1) for p in n.parse_rtcp(d)
            if p["type"] == "pli"]
    assert [p["media_ssrc"] for p in plis] == [SSRCS[1]]


def test_pause_stops_at_a_frame_boundary_and_resume_continues_numbering(sim: Sim) -> None:
    _, did, sock = sim.viewer()
    sim.tick_all(1.0, key=True, layers=(0,))
    sim.e.set_downtrack_layer(did, 0, 3, 1.0)
    sim.tick_all(1.03, layers=(0,))
    sim.e.set_downtrack_layer(did, -1, 3, 1.05)
    sim.tick_all(1.06, layers=(0,))
    a = media(rtp(sock))
    assert len(a) == 4 and sim.stats(did)["layer"] == -1
    sim.e.set_downtrack_layer(did, 0, 3, 1.1)
    sim.tick_all(1.13, key=True, layers=(0,))
    b = media(rtp(sock))
    assert len(b) == 2
    seqs = [p["sequence_number"] for p in a + b]
    assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:], strict=False))


def test_rid_of_an_undeclared_ssrc_is_reported_once() -> None:
    e = n.Engine(stun_rate=0)
    srv, pub = udp(), udp()
    try:
        tid = e.add_udp(srv.fileno())
        pp = e.add_peer(tid)
        e.bind_peer(pp, *pub.getsockname())
        e.set_peer_transport_cc(pp, 0, 10)
        pkt = n.build_rtp(PT, 1, 1, 4242, b"x", extensions={10: b"h"})
        for _ in range(3):
            pub.sendto(pkt, srv.getsockname())
        pump(e, tid, 1.0, 3)
        rid = [ev for ev in e.drain_events() if ev[0] == n.EV_RID]
        assert rid == [(n.EV_RID, pp, 4242, ord("h"))]
    finally:
        srv.close()
        pub.close()


def test_bad_layer_arguments_raise(sim: Sim) -> None:
    _, did, _ = sim.viewer()
    for layer, temporal in ((8, 0), (-2, 0), (0, 4)):
        with pytest.raises(ValueError):
            sim.e.set_downtrack_layer(did, layer, temporal, 1.0)
    with pytest.raises(ValueError):
        sim.e.set_source_media(sim.sid, "VP8", 1, 1)      # fixed once viewers exist
    with pytest.raises(ValueError):
        sim.e.add_ingress(sim.sid, 9999, PT, layer=1)     # layer 1 already has an SSRC
    with pytest.raises(ValueError):
        sim.e.set_peer_transport_cc(0, 15)

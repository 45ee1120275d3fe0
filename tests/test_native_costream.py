"""Co-streaming additions to the native engine (issue 5): RTCP APP "SFUD" data packets in
(EV_DATA, rate limit), datagrams out (send_datagram), RFC 6464 audio levels, source clocks
and server-side mute (pinned, switched, NACK/RTX/FEC/GOP paths). Real loopback sockets,
fake clock."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from test_engine import counters, pump, recv_all, udp
from test_simulcast_engine import SSRCS, Sim, media, rtp

from sfu import _native as n

PUB_SSRC, PUB_RTX = 1111, 1112
OUT_SSRC, OUT_RTX, OUT_FEC = 5000, 6000, 7000
PT, RTX_PT, OUT_PT = 96, 97, 100
AL = 1  # audio level extension id


def app(subtype: int, payload: bytes, name: bytes = b"SFUD", pad: bool = False,
        ssrc: int = 0) -> bytes:
    """An RTCP APP packet (RFC 3550 6.7), padded to 4 bytes with RTCP padding if pad."""
    body = ssrc.to_bytes(4, "big") + name + payload
    padding = (4 - len(body) % 4) % 4
    if padding and not pad:
        raise ValueError("payload not a multiple of 4 without padding")
    if pad and not padding:
        padding = 4
    body += b"\x00" * (padding - 1) + bytes([padding]) if padding else b""
    first = 0x80 | (0x20 if padding else 0) | subtype
    return bytes([first, 204]) + ((len(body) + 4) // 4 - 1).to_bytes(2, "big") + body


class Room:
    """An engine with one publisher (audio or video) and viewers, all on loopback."""

    def __init__(self, kind: int = n.KIND_AUDIO, viewers: int = 2, **kw: object) -> None:
        kw.setdefault("stun_rate", 0)
        self.e = n.Engine(**kw)
        self.srv = udp()
        self.addr = self.srv.getsockname()
        self.tid = self.e.add_udp(self.srv.fileno())
        self.pub = udp()
        self.pp = self.e.add_peer(self.tid)
        self.e.bind_peer(self.pp, *self.pub.getsockname())
        self.kind = kind
        self.sid = self.e.add_source(self.pp, kind, 48000 if kind == n.KIND_AUDIO else 90000)
        self.e.add_ingress(self.sid, PUB_SSRC, PT, rtx_ssrc=PUB_RTX, rtx_payload_type=RTX_PT)
        self.views: list[socket.socket] = []
        self.vps: list[int] = []
        self.dts: list[int] = []
        for _ in range(viewers):
            self.viewer()
        self.seq = 100

    def viewer(self) -> int:
        sock = udp()
        vp = self.e.add_peer(self.tid)
        self.e.bind_peer(vp, *sock.getsockname())
        self.views.append(sock)
        self.vps.append(vp)
        self.dts.append(self.e.add_downtrack(self.sid, vp, OUT_SSRC + len(self.dts), OUT_PT))
        return len(self.dts) - 1

    def packet(self, seq: int, tag: bytes = b"m", ext: dict[int, bytes] | None = None) -> bytes:
        return n.build_rtp(PT, seq & 0xFFFF, 960 * seq, PUB_SSRC, tag + bytes([seq & 0xFF]) * 40,
                           extensions=ext)

    def publish(self, count: int, now: float, tag: bytes = b"m",
                ext: dict[int, bytes] | None = None) -> list[bytes]:
        pkts = [self.packet(self.seq + i, tag, ext) for i in range(count)]
        self.seq += count
        self.send(self.pub, pkts, now)
        return pkts

    def send(self, sock: socket.socket, pkts: list[bytes], now: float) -> None:
        for p in pkts:
            sock.sendto(p, self.addr)
        assert pump(self.e, self.tid, now, len(pkts)) == len(pkts)

    def got(self, i: int) -> list[bytes]:
        return [d for d in recv_all(self.views[i], 1000, timeout=0.1) if not 192 <= d[1] <= 223]

    def nack(self, i: int, seqs: list[int], now: float) -> list[bytes]:
        self.send(self.views[i], [n.build_nack(9, OUT_SSRC + i, [s & 0xFFFF for s in seqs])],
                  now)
        return self.got(i)

    def source(self) -> dict[str, int]:
        return dict(zip(n.SOURCE_FIELDS, self.e.source_stats[self.sid].tolist(), strict=True))

    def close(self) -> None:
        for s in [self.srv, self.pub, *self.views]:
            s.close()


@pytest.fixture
def room():
    r = Room()
    yield r
    r.close()


def seqs(pkts: list[bytes]) -> list[int]:
    return [n.parse_rtp(p)["sequence_number"] for p in pkts]


def payloads(pkts: list[bytes]) -> list[bytes]:
    return [n.parse_rtp(p)["payload"] for p in pkts]


def data_events(e: n.Engine) -> list[tuple[object, ...]]:
    return [ev for ev in e.drain_events() if ev[0] == n.EV_DATA]


# ---------------------------------------------------------------- data in (RTCP APP)

def test_sfud_app_becomes_an_ev_data_event_with_subtype_and_payload(room: Room) -> None:
    e = room.e
    rr = n.build_rr(PUB_SSRC, [])
    room.send(room.pub, [app(0, b"\x81\xa1k\xa4like"[:8], pad=False)], 1.0)
    room.send(room.pub, [rr + app(2, b"abcde", pad=True)], 1.0)       # compound, padded
    room.send(room.views[0], [app(3, b"", pad=False)], 1.0)            # empty payload
    room.send(room.pub, [app(1, b"wxyz", name=b"OTHR")], 1.0)          # another APP: ignored
    evs = data_events(e)
    assert evs == [(n.EV_DATA, room.pp, 0, b"\x81\xa1k\xa4like"[:8]),
                   (n.EV_DATA, room.pp, 2, b"abcde"),
                   (n.EV_DATA, room.vps[0], 3, b"")]
    c = counters(e)
    assert c["data_in"] == 3 and c["data_malformed"] == 0 and c["rx_rtcp"] == 4
    assert e.peer_stats[room.pp][n.PEER_FIELDS.index("data_in")] == 2
    assert e.peer_stats[room.vps[0]][n.PEER_FIELDS.index("data_in")] == 1


def test_data_is_rate_limited_per_participant(room: Room) -> None:
    e = room.e
    e.set_data_limits(10.0, 5.0)
    room.send(room.pub, [app(0, bytes([i]) * 4) for i in range(8)], 2.0)
    room.send(room.views[0], [app(0, b"view")], 2.0)     # its own bucket
    evs = data_events(e)
    assert [ev[3] for ev in evs if ev[1] == room.pp] == [bytes([i]) * 4 for i in range(5)]
    assert [ev[3] for ev in evs if ev[1] == room.vps[0]] == [b"view"]
    assert counters(e)["data_rate_limited"] == 3
    room.send(room.pub, [app(0, b"late") for _ in range(3)], 2.2)     # 0.2 s: two tokens
    assert [ev[3] for ev in data_events(e)] == [b"late", b"late"]
    assert counters(e)["data_rate_limited"] == 4 and counters(e)["data_in"] == 8
    with pytest.raises(ValueError):
        e.set_data_limits(0, 10)
    with pytest.raises(ValueError):
        e.set_data_limits(10, 0.5)


def test_default_limit_is_a_burst_of_400(room: Room) -> None:
    room.send(room.pub, [app(0, b"1234")] * 450, 3.0)
    assert len(data_events(room.e)) == 400
    assert counters(room.e)["data_rate_limited"] == 50


def test_unbound_participant_data_is_ignored(room: Room) -> None:
    stranger = udp()
    try:
        room.send(stranger, [app(0, b"spam")], 1.0)
        room.e.unbind_peer(room.vps[1])
        room.send(room.views[1], [app(0, b"spam")], 1.0)
    finally:
        stranger.close()
    assert data_events(room.e) == []
    c = counters(room.e)
    assert c["drop_unbound"] == 2 and c["data_in"] == 0


def test_malformed_data_packets_are_counted_not_crashing(room: Room) -> None:
    short = bytes([0x80, 204, 0, 1]) + b"\x00\x00\x00\x00"               # no name
    pad_eats_header = bytes([0xA0, 204, 0, 3]) + b"\x00" * 4 + b"SFUD" + b"\x00" * 3 + b"\x08"
    oversized = app(0, b"x" * 1404)
    bad_padding = bytes([0xA0, 204, 0, 2]) + b"\x00" * 4 + b"SFU" + bytes([200])
    wrong_version = bytes([0x40, 204, 0, 2]) + b"\x00" * 4 + b"SFUD"
    room.send(room.pub, [short, pad_eats_header, oversized, bad_padding, wrong_version], 1.0)
    room.send(room.pub, [app(0, b"x" * 1400)], 1.0)                    # the largest allowed
    evs = data_events(room.e)
    assert len(evs) == 1 and len(evs[0][3]) == 1400
    c = counters(room.e)
    assert c["data_malformed"] == 3 and c["data_in"] == 1
    assert c["drop_malformed"] + c["drop_not_rtp"] == 2                # whole datagram bad
    assert c["rx_datagrams"] == 6


# ---------------------------------------------------------------- datagrams out

def test_send_datagram_reaches_only_bound_peers(room: Room) -> None:
    e = room.e
    room.viewer()
    e.unbind_peer(room.vps[1])
    msg = app(1, b"batch-of-msgs", pad=True)
    assert e.send_datagram([room.vps[0], room.vps[1], room.vps[2], 4000, -1], msg) == 2
    assert recv_all(room.views[0], 1) == [msg]
    assert recv_all(room.views[2], 1) == [msg]
    assert recv_all(room.views[1], 1, timeout=0.1) == []
    assert e.send_datagram(np.array([room.vps[2]], dtype=np.int32), b"x" * 1500) == 1
    assert recv_all(room.views[2], 1) == [b"x" * 1500]
    assert e.send_datagram([], b"x") == 0
    c = counters(e)
    assert c["data_out"] == 3 and c["tx_datagrams"] == 3
    for bad in (b"", b"x" * 1501):
        with pytest.raises(ValueError):
            e.send_datagram([room.vps[0]], bad)
    with pytest.raises(ValueError):
        e.send_datagram([["x"]], b"x")


# ---------------------------------------------------------------- audio levels

def test_audio_levels_accumulate_and_reset(room: Room) -> None:
    e = room.e
    e.set_source_audio_level(room.sid, AL)
    room.publish(1, 1.0, ext={AL: bytes([0x80 | 20])})                 # voiced, -20 dBov
    room.publish(1, 1.0, ext={AL: bytes([50]), 2: b"ab"})              # unvoiced
    room.publish(1, 1.0, ext={AL: bytes([0x80 | 30]), 20: b"\x01"})    # two-byte header
    room.publish(1, 1.0)                                               # absent
    room.publish(1, 1.0, ext={AL: b"\x85\x00"})                        # not one octet
    room.publish(1, 1.0, ext={2: bytes([0x80 | 40])})                  # other id
    dup = room.packet(room.seq - 6, ext={AL: bytes([0x80 | 20])})      # a duplicate
    # Element list overrunning the extension block: packet valid, element malformed.
    bad = bytearray(room.packet(room.seq, ext={AL: bytes([0x80 | 10])}))
    bad[16] = (AL << 4) | 7
    room.seq += 1
    room.send(room.pub, [dup, bytes(bad)], 1.0)
    assert counters(e)["drop_duplicate"] == 1
    assert len(room.got(0)) == 7
    assert e.audio_levels() == [(room.sid, 3, 100, 2)]
    assert e.audio_levels() == []
    room.publish(2, 1.1, ext={AL: bytes([127])})
    assert e.audio_levels() == [(room.sid, 2, 254, 0)]
    e.set_source_audio_level(room.sid, 0)
    room.publish(2, 1.2, ext={AL: bytes([127])})
    assert e.audio_levels() == []
    with pytest.raises(ValueError):
        e.set_source_audio_level(room.sid, 15)
    with pytest.raises(ValueError):
        e.set_source_audio_level(999, 1)


def test_audio_levels_skip_muted_packets_and_rtx(room: Room) -> None:
    e = room.e
    e.set_source_audio_level(room.sid, AL)
    room.publish(3, 1.0, ext={AL: bytes([0x80 | 10])})
    hole = room.seq
    rtx = n.build_rtp(RTX_PT, 1, 960, PUB_RTX, hole.to_bytes(2, "big") + b"r" * 10,
                      extensions={AL: bytes([0x80 | 10])})
    room.send(room.pub, [room.packet(hole + 1, ext={AL: bytes([0x80 | 10])})], 1.0)
    room.send(room.pub, [rtx], 1.0)                                    # fills the hole
    assert counters(e)["recovered_rtx"] == 1
    room.seq += 2
    e.set_source_muted(room.sid, True)
    room.publish(3, 1.0, ext={AL: bytes([0x80 | 10])})
    assert e.audio_levels() == [(room.sid, 4, 40, 4)]


# ---------------------------------------------------------------- source clock

def test_source_clock_reports_newest_packet_and_sender_report() -> None:
    sim = Sim(layers=2)
    try:
        e = sim.e
        assert e.source_clock(sim.sid) == []
        sim.send(sim.frame_packets(0, key=True), 5.0)
        assert e.source_clock(sim.sid) == [(0, 1_000_000, 5.0, 0, 0)]
        sim.send(sim.frame_packets(0), 5.1)
        late = n.build_rtp(96, (sim.seq[0] - 5) & 0xFFFF, 999_000, SSRCS[0], b"\x10old")
        sim.send([late], 5.2)                                          # reordered: ignored
        ntp = (3_900_000_000 << 32) | (1 << 31)
        sim.send([n.build_sr(SSRCS[0], ntp, 1_002_500, 10, 1000, [])], 5.3)
        sim.send(sim.frame_packets(1, key=True), 5.4)
        clock = sorted(e.source_clock(sim.sid))
        assert clock == [(0, 1_003_000, 5.1, ntp, 1_002_500), (1, 2_000_000, 5.4, 0, 0)]
        with pytest.raises(ValueError):
            e.source_clock(4000)
    finally:
        sim.close()


# ---------------------------------------------------------------- mute: pinned

def test_mute_pinned_audio_seq_continues_and_nothing_muted_leaks(room: Room) -> None:
    e = room.e
    e.set_downtrack_recovery(room.dts[1], rtx_ssrc=OUT_RTX, rtx_payload_type=RTX_PT)
    before = room.publish(5, 1.0, tag=b"a")
    fwd = room.got(0)
    assert payloads(fwd) == payloads(before) and len(room.got(1)) == 5
    s0 = seqs(fwd)[0]
    e.set_source_muted(room.sid, True)
    e.set_source_muted(room.sid, True)                                 # idempotent
    muted = room.publish(5, 1.1, tag=b"M")
    assert room.got(0) == [] and room.got(1) == []
    assert room.source()["muted_drops"] == 5 and counters(e)["muted_drops"] == 5
    # The seqs the muted packets would have had, NACKed: nothing.
    assert room.nack(0, [s0 + 5 + i for i in range(5)], 1.15) == []
    # A new viewer while muted gets nothing either.
    k = room.viewer()
    room.publish(2, 1.2, tag=b"M")
    assert room.got(k) == []
    e.set_source_muted(room.sid, False, 1.3)
    after = room.publish(5, 1.3, tag=b"b")
    got = room.got(0)
    assert seqs(got) == [(s0 + 5 + i) & 0xFFFF for i in range(5)]      # no gap
    assert payloads(got) == payloads(after)
    assert payloads(room.got(k)) == payloads(after)
    assert payloads(room.got(1)) == payloads(after)
    # NACKs: before the mute -> that packet; after -> that one; out of range -> nothing.
    again = room.nack(0, [s0 + 2, s0 + 7], 1.4)
    assert again == [fwd[2], got[2]]
    assert room.nack(0, [s0 - 40, s0 + 300], 1.4) == []
    # Late copies of muted packets (direct or RTX from the publisher) are dropped.
    drops = room.source()["muted_drops"]
    osn = n.parse_rtp(muted[1])["sequence_number"]
    rtx = n.build_rtp(RTX_PT, 7, 960, PUB_RTX, osn.to_bytes(2, "big") + b"M" * 20)
    room.send(room.pub, [muted[3], rtx], 1.5)
    assert room.got(0) == [] and room.got(1) == []
    assert room.source()["muted_drops"] == drops + 2
    c = counters(e)
    drops_in = sum(v for name, v in c.items() if name.startswith("drop_")
                   and name not in ("drop_send_eagain", "drop_send_error", "drop_event_overflow"))
    assert c["rx_rtp"] + c["rx_rtcp"] + c["rx_stun"] + drops_in == c["rx_datagrams"]


def test_mute_pinned_rtx_viewer_gets_pre_mute_packets_only(room: Room) -> None:
    e = room.e
    d = room.dts[1]
    e.set_downtrack_recovery(d, rtx_ssrc=OUT_RTX, rtx_payload_type=RTX_PT)
    room.publish(4, 1.0)
    fwd = room.got(1)
    s0 = seqs(fwd)[0]
    e.set_source_muted(room.sid, True)
    room.publish(30, 1.1, tag=b"M")
    e.set_source_muted(room.sid, False)
    after = room.publish(3, 1.2, tag=b"b")
    got = room.got(1)
    assert seqs(got) == [(s0 + 4 + i) & 0xFFFF for i in range(3)]
    rtx = [n.parse_rtp(p) for p in room.nack(1, [s0 + 3, s0 + 4, s0 + 10], 1.3)]
    assert [r["ssrc"] for r in rtx] == [OUT_RTX, OUT_RTX]
    assert [r["payload"][2:] for r in rtx] == [n.parse_rtp(fwd[3])["payload"],
                                              n.parse_rtp(after[0])["payload"]]
    assert all(b"M" not in r["payload"][2:3] for r in rtx)


def test_two_mutes_without_packets_between_keep_the_seq_continuous(room: Room) -> None:
    e = room.e
    room.publish(3, 1.0)
    s0 = seqs(room.got(0))[0]
    for t in (1.1, 1.3):
        e.set_source_muted(room.sid, True)
        room.publish(7, t, tag=b"M")
        e.set_source_muted(room.sid, False)
    room.publish(2, 1.5)
    assert seqs(room.got(0)) == [(s0 + 3) & 0xFFFF, (s0 + 4) & 0xFFFF]
    e.set_source_muted(room.sid, True)
    room.publish(9, 1.6, tag=b"M")
    e.set_source_muted(room.sid, False)
    room.publish(1, 1.7)
    assert seqs(room.got(0)) == [(s0 + 5) & 0xFFFF]
    # One unmute back: still its packet. Two back (only one previous delta is kept):
    # nothing rather than a wrong packet.
    assert seqs(room.nack(0, [s0 + 3], 1.8)) == [(s0 + 3) & 0xFFFF]
    assert room.nack(0, [s0 + 1], 1.8) == []


def test_mute_video_pinned_gop_new_viewer_and_pli_on_unmute() -> None:
    r = Room(kind=n.KIND_VIDEO, viewers=1)
    try:
        e = r.e
        e.set_source_media(r.sid, "h264")
        r.publish(1, 1.0, tag=b"\x65")                  # IDR: the GOP cache starts here
        r.publish(3, 1.0, tag=b"\x41")
        assert len(r.got(0)) == 4
        e.set_source_muted(r.sid, True, 1.0)
        r.publish(1, 1.1, tag=b"\x65")                  # a muted keyframe
        r.publish(3, 1.1, tag=b"\x41")
        recv_all(r.pub, 10, timeout=0.1)
        e.drain_events()
        k = r.viewer()
        e.set_downtrack_layer(r.dts[k], 0, 3, 1.15)    # would replay the GOP cache
        assert r.got(k) == [] and r.got(0) == []
        assert recv_all(r.pub, 10, timeout=0.1) == []  # and no pointless PLI while muted
        assert e.drain_events() == []
        e.request_keyframe(r.sid, 1.15)                # a recent PLI must not hide the next
        recv_all(r.pub, 10, timeout=0.1)
        e.drain_events()
        e.set_source_muted(r.sid, False, 1.2)
        plis = [p for d in recv_all(r.pub, 10, timeout=0.2) for p in n.parse_rtcp(d)
                if p["type"] == "pli"]
        assert [p["media_ssrc"] for p in plis] == [PUB_SSRC]
        assert [ev[:2] for ev in e.drain_events() if ev[0] == n.EV_PLI] == [(n.EV_PLI, r.sid)]
        after = r.publish(3, 1.3, tag=b"\x41")
        assert payloads(r.got(0)) == payloads(after)
        assert payloads(r.got(k)) == payloads(after)
        # A viewer joining after the unmute gets no pre-mute GOP either: it waits for
        # the next keyframe.
        j = r.viewer()
        e.set_downtrack_layer(r.dts[j], 0, 3, 1.35)
        assert r.got(j) == []
        key = r.publish(1, 1.4, tag=b"\x65")
        assert payloads(r.got(j)) == payloads(key)
    finally:
        r.close()


def test_mute_sends_no_fec_for_muted_packets() -> None:
    r = Room(kind=n.KIND_VIDEO, viewers=1)
    try:
        e = r.e
        e.set_source_recovery(r.sid, fec_k=4)
        e.set_downtrack_recovery(r.dts[0], fec_ssrc=OUT_FEC, fec_payload_type=125, fec_m=1)
        r.publish(6, 1.0)
        first = recv_all(r.views[0], 20, timeout=0.1)
        e.set_source_muted(r.sid, True)
        r.publish(10, 1.1, tag=b"M")
        assert recv_all(r.views[0], 20, timeout=0.1) == []
        e.set_source_muted(r.sid, False)
        r.publish(10, 1.2)
        out = [n.parse_rtp(d) for d in recv_all(r.views[0], 40, timeout=0.1)
               if not 192 <= d[1] <= 223]
        media_seqs = {p["sequence_number"] for p in out if p["ssrc"] == OUT_SSRC}
        fec = [p for p in out if p["ssrc"] == OUT_FEC]
        assert len(media_seqs) == 10 and len(fec) == 2
        last_before = [n.parse_rtp(d)["sequence_number"] for d in first
                       if n.parse_rtp(d)["ssrc"] == OUT_SSRC][-1]
        first_after = [p["sequence_number"] for p in out if p["ssrc"] == OUT_SSRC][0]
        assert first_after == (last_before + 1) & 0xFFFF
        for f in fec:                   # SFU-RS header: SN base at payload offset 4
            base = int.from_bytes(f["payload"][4:6], "big")
            assert {base + i & 0xFFFF for i in range(4)} <= media_seqs
    finally:
        r.close()


def test_mute_errors() -> None:
    r = Room(viewers=0)
    try:
        with pytest.raises(ValueError):
            r.e.set_source_muted(77, True)
    finally:
        r.close()


# ---------------------------------------------------------------- mute: switched

def test_mute_switched_viewer_resumes_at_keyframe_with_continuous_seq() -> None:
    sim = Sim()
    try:
        e = sim.e
        _, did, sock = sim.viewer()
        sim.tick_all(1.0, key=True)
        e.set_downtrack_layer(did, 0, 3, 1.01)
        for k in range(3):
            sim.tick_all(1.03 + 0.033 * k)
        before = media(rtp(sock))
        assert len(before) == 8
        e.set_source_muted(sim.sid, True, 1.2)
        sim.tick_all(1.21, key=True)
        sim.tick_all(1.25)
        _, did2, sock2 = sim.viewer(out_ssrc=5100)
        e.set_downtrack_layer(did2, 0, 3, 1.26)       # joins while muted: nothing
        sim.tick_all(1.28)
        assert rtp(sock) == [] and rtp(sock2) == []
        # NACK for the seqs right after the last one: nothing was given out there.
        last = before[-1]["sequence_number"]
        sock.sendto(n.build_nack(9, 5000, [(last + i) & 0xFFFF for i in range(1, 5)]),
                    sim.addr)
        pump(e, sim.tid, 1.29, 1)
        assert media(rtp(sock)) == []
        recv_all(sim.pub, 20, timeout=0.1)
        e.set_source_muted(sim.sid, False, 1.3)
        plis = [p for d in recv_all(sim.pub, 10, timeout=0.2) for p in n.parse_rtcp(d)
                if p["type"] == "pli"]
        assert sorted(p["media_ssrc"] for p in plis) == sorted(SSRCS)
        sim.tick_all(1.31)                            # delta frames: waits for a keyframe
        assert media(rtp(sock)) == []
        sim.tick_all(1.4, key=True)
        sim.tick_all(1.43)
        after = media(rtp(sock))
        assert len(after) == 4 and after[0]["desc"].start
        assert after[0]["sequence_number"] == (last + 1) & 0xFFFF
        assert [(p["sequence_number"] - last) & 0xFFFF for p in after] == [1, 2, 3, 4]
        assert (after[0]["desc"].picture_id - before[-1]["desc"].picture_id) & 0x7FFF == 1
        assert 0 < (after[0]["timestamp"] - before[-1]["timestamp"]) & 0xFFFFFFFF < 90000
        assert len(media(rtp(sock2))) == 4            # the late joiner starts at that key
        # Pre-mute packets are still answered.
        sock.sendto(n.build_nack(9, 5000, [before[2]["sequence_number"]]), sim.addr)
        pump(e, sim.tid, 1.5, 1)
        rtx = [n.parse_rtp(d) for d in recv_all(sock, 10, timeout=0.1)
               if not 192 <= d[1] <= 223]
        assert len(rtx) == 1 and rtx[0]["payload"][2:] == before[2]["payload"]
        assert sim.e.source_stats[sim.sid][n.SOURCE_FIELDS.index("muted_drops")] == 18
    finally:
        sim.close()


def test_pre_mute_hole_repaired_after_unmute_gets_its_old_viewer_seq(room: Room) -> None:
    e = room.e
    first = room.publish(2, 1.0)
    room.seq += 1                                                      # a hole
    room.publish(2, 1.0)
    s0 = seqs(room.got(0))[0]
    e.set_source_muted(room.sid, True)
    room.publish(6, 1.1, tag=b"M")
    e.set_source_muted(room.sid, False)
    room.publish(2, 1.2)
    assert seqs(room.got(0)) == [(s0 + 5) & 0xFFFF, (s0 + 6) & 0xFFFF]
    hole = n.parse_rtp(first[1])["sequence_number"] + 1
    repaired = room.packet(hole)
    rtx = n.build_rtp(RTX_PT, 3, 960 * hole, PUB_RTX,
                      hole.to_bytes(2, "big") + n.parse_rtp(repaired)["payload"])
    room.send(room.pub, [rtx], 1.3)
    got = room.got(0)
    assert seqs(got) == [(s0 + 2) & 0xFFFF]
    assert payloads(got) == payloads([repaired])


def test_muted_packet_older_than_the_history_is_not_forwarded(room: Room) -> None:
    e = room.e
    room.publish(3, 1.0)
    e.set_source_muted(room.sid, True)
    muted = room.publish(3, 1.1, tag=b"M")
    e.set_source_muted(room.sid, False)
    for k in range(3):                                                 # audio history: 256
        room.publish(100, 1.2 + 0.01 * k)
    assert len(room.got(0)) == 303
    drops = room.source()["muted_drops"]
    room.send(room.pub, [muted[0]], 1.3)
    assert room.got(0) == []
    assert room.source()["muted_drops"] == drops + 1


def test_mute_ulpfec_viewer_media_index_continues_and_fec_spans_the_mute() -> None:
    r = Room(kind=n.KIND_VIDEO, viewers=1)
    try:
        e = r.e
        e.set_downtrack_recovery(r.dts[0], ulpfec_k=4, ulpfec_payload_type=116)
        r.publish(6, 1.0)
        before = r.got(0)
        out0 = seqs(before)[0]
        assert [(s - out0) & 0xFFFF for s in seqs(before)] == list(range(7))
        e.set_source_muted(r.sid, True)
        r.publish(10, 1.1, tag=b"M")
        assert r.got(0) == []
        e.set_source_muted(r.sid, False)
        r.publish(6, 1.2)
        after = r.got(0)
        assert [(s - out0) & 0xFFFF for s in seqs(after)] == list(range(7, 15))
        assert [n.parse_rtp(p)["payload_type"] for p in after] == [OUT_PT] * 2 + [116] + \
            [OUT_PT] * 4 + [116]
        # The block across the mute: two media before, two after, one FEC for all four.
        group = [before[5], before[6], after[0], after[1]]
        for lost in range(4):
            others = {n.parse_rtp(d)["sequence_number"]: d for i, d in enumerate(group)
                      if i != lost}
            assert n.ulpfec_recover(after[2], others) == group[lost]
        again = r.nack(0, [out0 + 5, out0 + 7, out0 + 9], 1.3)
        assert sorted(again) == sorted([before[5], after[0], after[2]])
    finally:
        r.close()

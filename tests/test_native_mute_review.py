"""Regression tests from the review of the native mute: the viewer's seq mapping across a
mute under reordering, loss with RTX and wrap-around (randomised, checked against the
publisher's order, and every NACK answer too); a backward seq jump after a mute; a late
pre-mute keyframe must not restart the GOP cache; unmute of a source with no ingress."""

from __future__ import annotations

import random
import socket

import pytest
from test_engine import counters
from test_native_costream import PT, PUB_RTX, PUB_SSRC, RTX_PT, Room, seqs

from sfu import _native as n


def pkt(seq: int, tag: bytes) -> bytes:
    return n.build_rtp(PT, seq & 0xFFFF, (960 * seq) & 0xFFFFFFFF, PUB_SSRC,
                       tag + seq.to_bytes(4, "big") + b"x" * 30)


def rtx(seq: int, tag: bytes, k: int) -> bytes:
    body = n.parse_rtp(pkt(seq, tag))["payload"]
    return n.build_rtp(RTX_PT, k & 0xFFFF, (960 * seq) & 0xFFFFFFFF, PUB_RTX,
                       (seq & 0xFFFF).to_bytes(2, "big") + body)
@pytest.mark.parametrize("seed", range(40))
def test_seq_mapping_across_mutes_randomised(seed: int) -> None:
    rnd = random.Random(seed)
    r = Room(viewers=1)
    e = r.e
    start = rnd.choice([100, 65500, 65530])
    s = start
    now = 1.0
    order = []          # non-muted publisher seqs in order
    rk = 0
    muted = False
    bad = []
    for _phase in range(8):
        cnt = rnd.randint(1, 12)
        seqs_ph = list(range(s, s + cnt))
        s += cnt
        if muted:
            batch = [pkt(q, b"M") for q in seqs_ph]
            rnd.shuffle(batch)
            r.send(r.pub, batch, now)
        else:
            order += seqs_ph
            lost = {q for q in seqs_ph if rnd.random() < 0.3}
            sendl = [q for q in seqs_ph if q not in lost]
            # reorder within phase
            for i in range(len(sendl) - 1):
                if rnd.random() < 0.3:
                    sendl[i], sendl[i + 1] = sendl[i + 1], sendl[i]
            if sendl:
                r.send(r.pub, [pkt(q, b"a") for q in sendl], now)
            if lost:
                r.send(r.pub, [rtx(q, b"a", rk + i) for i, q in enumerate(sorted(lost))], now)
                rk += len(lost)
        now += 0.01
        muted = not muted if rnd.random() < 0.8 else muted
        e.set_source_muted(r.sid, muted, now)
    got = r.got(0)
    assert got, "nothing"
    idx = {q: i for i, q in enumerate(order)}
    base = None
    for p in got:
        pr = n.parse_rtp(p)
        pl = pr["payload"]
        assert pl[:1] != b"M", "muted leaked"
        q = int.from_bytes(pl[1:5], "big")
        off = (pr["sequence_number"] - idx[q]) & 0xFFFF
        if base is None:
            base = off
        if off != base:
            bad.append((q - start, idx[q], (pr["sequence_number"] - base) & 0xFFFF))
    assert not bad, f"seed {seed} start {start}: (pubseq-start, expected idx, got viewer idx) {bad}"
    # NACK every viewer seq in range: answers must match mapping
    first = (base) & 0xFFFF
    ns = [(first + i) & 0xFFFF for i in range(len(order) + 5)]
    ans = []
    for i in range(0, len(ns), 16):
        ans += r.nack(0, ns[i:i + 16], now)
    for p in ans:
        pr = n.parse_rtp(p)
        pl = pr["payload"]
        assert pl[:1] != b"M", "muted leaked via NACK"
        q = int.from_bytes(pl[1:5], "big")
        assert (pr["sequence_number"] - base) & 0xFFFF == idx[q], ("nack mismatch", q - start,
                                                                   idx[q])
    r.close()


def test_reordered_first_packet_after_unmute_keeps_seqs_contiguous() -> None:
    r = Room(viewers=1)
    r.publish(5, 1.0)
    s0 = seqs(r.got(0))[0]
    r.e.set_source_muted(r.sid, True)
    r.publish(5, 1.1, tag=b"M")
    r.e.set_source_muted(r.sid, False)
    a = r.seq
    p0, p1, p2 = r.packet(a), r.packet(a + 1), r.packet(a + 2)
    r.seq += 3
    r.send(r.pub, [p1, p0, p2], 1.2)
    assert sorted((s - s0) & 0xFFFF for s in seqs(r.got(0))) == [5, 6, 7]
    r.close()


@pytest.mark.parametrize("mute", [False, True])
def test_backward_seq_jump_after_a_mute_is_forwarded(mute: bool) -> None:
    r = Room(viewers=1)
    r.publish(10, 1.0)
    if mute:
        r.e.set_source_muted(r.sid, True, 1.0)
        r.e.set_source_muted(r.sid, False, 1.0)
    r.got(0)
    r.seq += 65536 - 3000  # the publisher restarts its seq (same SSRC) 3000 back
    r.publish(50, 2.0)
    assert len(r.got(0)) == 50
    assert counters(r.e)["muted_drops"] == 0
    r.close()


def test_late_pre_mute_keyframe_does_not_restart_the_gop() -> None:
    r = Room(kind=n.KIND_VIDEO, viewers=1)
    e = r.e
    e.set_source_media(r.sid, "h264")
    idr = r.packet(r.seq, b"\x65")  # an IDR lost on the way, repaired after the unmute
    r.seq += 1
    r.publish(3, 1.0, tag=b"\x41")
    e.set_source_muted(r.sid, True, 1.0)
    r.publish(5, 1.1, tag=b"\x41")
    e.set_source_muted(r.sid, False, 1.2)
    r.publish(3, 1.3, tag=b"\x41")
    q = n.parse_rtp(idr)["sequence_number"]
    repair = n.build_rtp(RTX_PT, 1, 0, PUB_RTX, q.to_bytes(2, "big") + n.parse_rtp(idr)["payload"])
    r.send(r.pub, [repair], 1.35)
    r.got(0)
    k = r.viewer()
    e.set_downtrack_layer(r.dts[k], 0, 3, 1.4)
    assert r.got(k) == []  # no GOP to replay: the new viewer waits for a fresh keyframe
    r.close()


def test_unmute_of_a_source_without_ssrcs_sends_nothing() -> None:
    """A layer learned from its RID has no SSRC until the first packet: unmuting it must
    not send an empty datagram as a PLI."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    e = n.Engine(max_peers=4, max_sources=4, max_downtracks=4)
    tid = e.add_udp(sock.fileno())
    try:
        pid = e.add_peer(tid)
        e.bind_peer(pid, "127.0.0.1", 9)
        sid = e.add_source(pid, n.KIND_VIDEO, 90000)
        e.set_source_muted(sid, True, 1.0)
        e.set_source_muted(sid, False, 1.1)
        assert counters(e)["pli_sent"] == 0
        assert counters(e)["tx_datagrams"] == 0
        assert e.drain_events() == []
    finally:
        e.remove_transport(tid)
        sock.close()

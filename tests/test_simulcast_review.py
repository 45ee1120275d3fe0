"""Edge cases of the native simulcast / bandwidth path found in review: 7-bit PictureIDs,
compaction after a switch, repairs around a pause, RID event throttling, FEC refusals."""

from __future__ import annotations

import pytest
from test_engine import pump
from test_simulcast_engine import DELTA, KEY, OUT_SSRC, PT, SSRCS, TW, Sim, media, rtp

from sfu import _native as n
from sfu.client.vp8 import build_descriptor


def test_ulpfec_and_transport_wide_stamping_are_refused_together() -> None:
    # The transport-wide extension changes the bytes in-band ULPFEC protects (and is stamped
    # after the copy is made): the engine refuses the combination in either order.
    s = Sim(temporal=1, layers=1)
    try:
        vp, did, _ = s.viewer(twcc=True)
        with pytest.raises(ValueError, match="ULPFEC"):
            s.e.set_downtrack_recovery(did, ulpfec_k=2, ulpfec_payload_type=116)
        vp2, did2, _ = s.viewer(out_ssrc=7000)
        s.e.set_downtrack_recovery(did2, ulpfec_k=2, ulpfec_payload_type=116)
        with pytest.raises(ValueError, match="ULPFEC"):
            s.e.set_peer_transport_cc(vp2, TW)
    finally:
        s.close()


def _pkt(s: Sim, layer: int, pic: int, tid: int, key: bool = False, pic_bits: int = 15,
         csrcs: list[int] | None = None, ext: dict[int, bytes] | None = None,
         padding: int = 0) -> bytes:
    """One single-packet frame of a layer with a chosen PictureID / TID."""
    i = s.frame[layer]
    if tid == 0 and i:
        s.tl0[layer] = (s.tl0[layer] + 1) & 0xFF
    desc = build_descriptor(True, picture_id=pic, picture_id_bits=pic_bits,
                            tl0picidx=s.tl0[layer], tid=tid, layer_sync=False)
    body = KEY if key else DELTA
    p = n.build_rtp(PT, s.seq[layer] & 0xFFFF, (s.ts_base[layer] + 3000 * i) & 0xFFFFFFFF,
                    SSRCS[layer], desc + body, marker=True, csrcs=csrcs, extensions=ext,
                    padding=padding)
    s.seq[layer] += 1
    s.frame[layer] += 1
    return p


def test_7bit_picture_ids_stay_continuous_across_their_wrap() -> None:
    # A publisher's 7-bit PictureIDs stay 7-bit for the viewer and wrap at 128: 127 -> 0 is
    # +1, not a jump back by 127 in a 15-bit space.
    s = Sim()
    try:
        _, did, sock = s.viewer()
        pkts = [_pkt(s, 0, 125, 0, key=True, pic_bits=7)]
        for pic in (126, 127, 0, 1):
            pkts.append(_pkt(s, 0, pic, 0, pic_bits=7))
        s.send(pkts[:1], 1.0)
        s.e.set_downtrack_layer(did, 0, 3, 1.0)
        s.send(pkts[1:], 1.05)
        got = media(rtp(sock))
        pids = [p["desc"].picture_id for p in got]
        assert len(pids) == 5 and {p["desc"].picture_id_bits for p in got} == {7}
        assert all((b - a) & 0x7F == 1 for a, b in zip(pids, pids[1:], strict=False)), pids
    finally:
        s.close()


def test_dropped_frame_compaction_is_not_skipped_after_a_layer_switch() -> None:
    # drop_pic remembers the last TID-filtered PictureID of the OLD layer; a frame of the new
    # layer with the same PictureID value is then not compacted and the viewer sees a gap.
    s = Sim()
    try:
        _, did, sock = s.viewer()
        s.send([_pkt(s, 0, 500, 0, key=True)], 1.0)
        s.e.set_downtrack_layer(did, 0, 0, 1.0)                  # TL0 only
        s.send([_pkt(s, 0, 501, 2), _pkt(s, 0, 502, 0)], 1.03)  # 501 dropped
        s.e.set_downtrack_layer(did, 2, 0, 1.05)
        s.send([_pkt(s, 2, 500, 0, key=True)], 1.06)            # switch to layer 2
        s.send([_pkt(s, 2, 501, 2), _pkt(s, 2, 502, 0)], 1.1)   # 501 (layer 2) dropped
        got = media(rtp(sock))
        pids = [p["desc"].picture_id for p in got]
        assert len(pids) == 4
        assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:], strict=False)), pids
    finally:
        s.close()


def test_late_repair_of_the_last_frame_before_a_pause_is_forwarded() -> None:
    # The viewer got f1[0]; f1[1] (the frame's last packet) was lost upstream. The viewer
    # pauses at f2; then the upstream repair of f1[1] arrives. It completes the frame the
    # viewer shows while paused: it must be forwarded (or at least answer a NACK), but
    # eng_dt_map drops every packet once cur_layer = -1.
    s = Sim()
    try:
        _, did, sock = s.viewer()
        s.send(s.frame_packets(0, key=True), 1.0)
        s.e.set_downtrack_layer(did, 0, 3, 1.0)
        f1 = s.frame_packets(0)
        s.send(f1[:1], 1.03)
        first = media(rtp(sock))
        s.e.set_downtrack_layer(did, -1, 3, 1.04)
        s.send(s.frame_packets(0), 1.06)                 # pause takes effect here
        assert s.stats(did)["layer"] == -1
        s.send(f1[1:], 1.07)                              # the repair arrives
        late = rtp(sock)
        hole = (first[-1]["sequence_number"] + 1) & 0xFFFF
        if not late:                                      # not forwarded: ask for it
            sock.sendto(n.build_nack(9, OUT_SSRC, [hole]), s.addr)
            pump(s.e, s.tid, 1.1, 1)
            late = rtp(sock)
        assert late and late[0]["payload_size"] > 0, "the held repair never reaches the viewer"
    finally:
        s.close()


def test_rid_events_are_throttled_per_ssrc_when_layers_interleave() -> None:
    # Three undeclared layers arrive interleaved; eng_rid_in remembers only the LAST unknown
    # SSRC, so every packet raises an EV_RID (one per SSRC per 200 ms is the contract).
    s = Sim(layers=1)
    try:
        s.e.set_peer_transport_cc(s.pp, 0, 10)
        pkts = [n.build_rtp(PT, i, i, 4240 + i % 3, b"x", extensions={10: b"qhf"[i % 3:i % 3 + 1]})
                for i in range(12)]
        s.send(pkts, 1.0)
        rid = [ev for ev in s.e.drain_events() if ev[0] == n.EV_RID]
        assert len(rid) == 3, len(rid)
    finally:
        s.close()

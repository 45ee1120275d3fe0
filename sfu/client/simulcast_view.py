"""Simulcast viewer: receives the one video stream the node forwards to it (whatever layer the
node picks), decodes every frame as soon as it is complete, answers with transport-wide CC
feedback, NACKs, receiver reports and PLIs, and checks that the node's rewrite across layer
switches keeps the stream continuous.

Receive path, per RTP packet:

1. transport-wide seq (RFC 8285 one-byte extension ``twcc_ext_id``) → :class:`TwccFeedback`,
   for every packet: media, RTX, and padding-only probes on the RTX SSRC (then dropped);
2. RTX (RFC 4588) is unwrapped to the original packet;
3. continuity of the media seq (jumps of more than 100 either way count as
   ``seq_discontinuities``), RR statistics (direct arrivals only), NACK log;
4. a reorder stage releases whole frames in seq order: a hole blocks until it is filled
   (reordering, RTX) or given up by the NACK generator; a complete key frame after a hole
   releases at once (the frames before it are useless);
5. per frame, in order: PictureID (+1 mod 2^15 unless packets were lost before it) and RTP
   timestamp (never backwards) checks, then decode with PyAV — no playout delay, since the
   benches measure how fast a layer switch shows up.

After lost frames the L1T3 structure (TID 0,2,1,2; TID 0 refs the previous TID 0, TID 2
frames are never referenced) decides: a TID 0 frame whose TL0PICIDX follows the last decoded
one is still decodable; other frames are skipped until one is, or a key frame comes (PLI).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from sfu import _native
from sfu.client.loss import (
    DUPLICATE,
    LATE,
    RTX_PT,
    NackGenerator,
    ReceptionStats,
    rtp_bounds,
    rtp_seq,
    rtp_ssrc,
    unwrap_rtx,
)
from sfu.client.media import Vp8Decoder
from sfu.client.publisher import (
    VIDEO_CLOCK,
    PollTimer,
    RtpEndpoint,
    parse_rtcp_counted,
    random_ssrc,
)
from sfu.client.twcc import TwccFeedback
from sfu.client.vp8 import PICTURE_ID_MOD, is_keyframe, parse_descriptor

__all__ = ["DecodedFrame", "SimulcastViewer"]

SEQ_JUMP = 100  # a seq step larger than this (either way) is a broken rewrite, not loss
STASH = 512  # packets kept while the subscription's SSRCs are not known yet
BUFFER = 2048  # packets held by the reorder stage at most
MAX_FRAME_PACKETS = 1024


@dataclass(slots=True)
class DecodedFrame:
    t: float  # time.monotonic() when the decoder returned the picture
    width: int
    height: int
    picture_id: int | None
    tl0picidx: int | None
    tid: int | None
    keyframe: bool
    ssrc: int


@dataclass(slots=True)
class _Pkt:
    ts: int
    marker: bool
    start: bool  # S=1, PID 0: first packet of a frame
    keyframe: bool  # start of a key frame
    picture_id: int | None
    tl0picidx: int | None
    tid: int | None
    data: bytes  # VP8 payload after the descriptor
    filler: bool = False  # occupies a seq but carries no VP8 (padding, in-band FEC)
    bad: bool = False  # malformed descriptor: its frame cannot be decoded


@dataclass(slots=True)
class _Counters:
    rx_packets: int = 0  # every RTP datagram (media, RTX, padding, foreign)
    rx_bytes: int = 0  # their whole size
    padding: int = 0  # padding-only packets (bandwidth probes)
    rtx_packets: int = 0
    nacks: int = 0  # NACK RTCP packets sent
    nack_seqs: int = 0
    twcc_feedbacks: int = 0
    rr_sent: int = 0
    pli_sent: int = 0
    sr_received: int = 0
    rtcp_errors: int = 0
    seq_discontinuities: int = 0
    picture_id_discontinuities: int = 0
    ts_backwards: int = 0
    duplicates: int = 0
    late: int = 0  # arrived after their seq was given up or passed
    malformed: int = 0
    foreign: int = 0  # unknown SSRC or payload type
    unrecovered: int = 0  # holes given up (neither arrived nor retransmitted in time)
    frames_skipped: int = 0  # complete frames not decoded (waiting for a usable reference)
    frames_broken: int = 0  # frames dropped because packets were missing


class SimulcastViewer(RtpEndpoint):
    """One video subscription: TWCC feedback, NACK, RR, PLI, immediate decoding."""

    TWCC_EXT_ID = 5

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, *, twcc: bool = True,
                 nack: bool = True, feedback_interval: float = 0.05) -> None:
        super().__init__(node, ufrag, pwd)
        self.ssrc = random_ssrc()  # our RTCP sender SSRC
        self.twcc_enabled = twcc
        self.twcc_ext_id = self.TWCC_EXT_ID
        self.twcc = TwccFeedback(self.ssrc, 0, feedback_interval)
        self.nack_enabled = nack
        self.feedback_interval = feedback_interval
        self.rr_interval = 0.5
        self.pli_interval = 0.3
        self.subscription: str | None = None
        self.media_ssrc = 0
        self.payload_type = 96
        self.rtx_ssrc: int | None = None
        self.rtx_pt = RTX_PT["video"]
        self.frames: list[DecodedFrame] = []
        self.decoder_errors = 0
        self.first_frame_at: float | None = None
        self.c = _Counters()
        self.decoder = Vp8Decoder()
        self._stash: list[tuple[bytes, float]] = []
        self._timer: PollTimer | None = None
        self._next_rr = 0.0
        self._lost_prior = 0
        self._reset_stream()

    def _reset_stream(self) -> None:
        """Forget the receive state (new subscription, or the seq space jumped)."""
        if getattr(self, "reception", None) is not None:
            self._lost_prior += self.reception.lost
        self.reception = ReceptionStats(VIDEO_CLOCK)
        # Without NACK a hole is only reordering: give it up after a short wait.
        deadline = 0.3 if self.nack_enabled else 0.03
        self.nack = NackGenerator(deadline_s=deadline, enabled=self.nack_enabled)
        self._hi16: int | None = None  # highest direct media seq (continuity check)
        self._ext_hi: int | None = None  # highest extended seq (media or RTX)
        self._buf: dict[int, _Pkt] = {}
        self._gone: set[int] = set()  # extended seqs given up
        self._keystarts: set[int] = set()
        self._next: int | None = None  # next extended seq to release; None: need a key frame
        self._first_seen: int | None = None
        self._gap = False  # packets were lost before the next released frame
        self._waiting_key = True
        self._broken_refs = False  # frames lost: only a TID 0 successor or a key frame decodes
        self._last_tl0: int | None = None  # TL0PICIDX of the last decoded TID 0 frame
        self._prev_pid: int | None = None
        self._prev_ts: int | None = None
        self._started_at: float | None = None
        self._blocked: tuple[int | None, float] = (None, 0.0)  # release point, since when

    # -- setup ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the socket, bind with STUN (as Subscriber does) and start the timers."""
        if self.transport is None:
            await self.open()
        try:
            await self.bind()
        except BaseException:
            self.close()
            raise
        if self._timer is None:
            self._timer = PollTimer(self._poll, min(self.feedback_interval, 0.05))
            self._timer.at(None)

    def apply_subscription(self, res: dict[str, Any]) -> None:
        """Take the SSRCs of a track.subscribe result (``ssrc``, ``payload_type``,
        ``rtx_ssrc``, optional ``rtx_payload_type`` and ``twcc_ext_id``) and replay the
        packets that arrived before it."""
        self.subscription = res.get("subscription")
        self.media_ssrc = int(res["ssrc"])
        self.payload_type = int(res.get("payload_type") or 96)
        self.rtx_ssrc = int(res["rtx_ssrc"]) if res.get("rtx_ssrc") else None
        self.rtx_pt = int(res.get("rtx_payload_type") or RTX_PT["video"])
        if isinstance(res.get("twcc_ext_id"), int):
            self.twcc_ext_id = int(res["twcc_ext_id"])
        self.twcc.media_ssrc = self.media_ssrc
        self._reset_stream()
        stash, self._stash = self._stash, []
        for data, at in stash:
            b = rtp_bounds(data)
            if b is not None:
                self._dispatch(data, b, at)
        self._drain()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
        super().close()

    def stats(self) -> dict[str, int]:
        c = self.c
        return {
            "rx_packets": c.rx_packets, "rx_bytes": c.rx_bytes, "padding": c.padding,
            "lost": max(0, self._lost_prior + self.reception.lost), "nacks": c.nacks,
            "twcc_feedbacks": c.twcc_feedbacks, "seq_discontinuities": c.seq_discontinuities,
            "picture_id_discontinuities": c.picture_id_discontinuities,
            "ts_backwards": c.ts_backwards,
            # extras
            "frames": len(self.frames), "keyframes": sum(f.keyframe for f in self.frames),
            "decoder_errors": self.decoder_errors, "nack_seqs": c.nack_seqs,
            "rtx_packets": c.rtx_packets, "unrecovered": c.unrecovered,
            "duplicates": c.duplicates, "late": c.late, "malformed": c.malformed,
            "foreign": c.foreign, "pli_sent": c.pli_sent, "rr_sent": c.rr_sent,
            "sr_received": c.sr_received, "rtcp_errors": c.rtcp_errors,
            "frames_skipped": c.frames_skipped, "frames_broken": c.frames_broken,
            "twcc_recorded": self.twcc.packets_recorded,
        }

    # -- RTP -----------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        now = time.monotonic()
        c = self.c
        c.rx_packets += 1
        c.rx_bytes += len(data)
        b = rtp_bounds(data)
        if b is None:
            c.malformed += 1
            return
        if self.twcc_enabled:
            try:
                ext = _native.rtp_extension(data, self.twcc_ext_id)
            except ValueError:
                ext = None
            if ext is not None and len(ext) >= 2:
                self.twcc.record((ext[0] << 8) | ext[1], now)
                if not self.twcc.media_ssrc:  # any SSRC we receive will do until subscribed
                    self.twcc.media_ssrc = rtp_ssrc(data)
        if not self.media_ssrc:
            # The node may forward before the subscribe result reaches us.
            if len(self._stash) < STASH:
                self._stash.append((data, now))
            return
        self._dispatch(data, b, now)
        self._drain()
        if self._timer is not None and self.nack.pending:
            self._timer.at(self.nack.next_due())

    def _dispatch(self, data: bytes, b: tuple[int, int], now: float) -> None:
        c = self.c
        ssrc = rtp_ssrc(data)
        hs, end = b
        if self.rtx_ssrc is not None and ssrc == self.rtx_ssrc:
            if end == hs:  # padding-only probe
                c.padding += 1
                return
            orig = unwrap_rtx(data, self.media_ssrc, self.payload_type)
            if orig is None:
                c.malformed += 1
                return
            c.rtx_packets += 1
            self._media(orig, now, rtx=True)
        elif ssrc == self.media_ssrc:
            if end == hs:
                c.padding += 1
            self._media(data, now, rtx=False)
        else:
            c.foreign += 1

    def _unwrap(self, seq: int) -> int:
        h = self._ext_hi
        if h is None:
            return seq + (1 << 16)
        return h + ((seq - h + 0x8000) & 0xFFFF) - 0x8000

    def _media(self, pkt: bytes, now: float, *, rtx: bool) -> None:
        c = self.c
        seq = rtp_seq(pkt)
        ts = int.from_bytes(pkt[4:8], "big")
        if not rtx:
            if self._hi16 is not None:
                d = ((seq - self._hi16 + 0x8000) & 0xFFFF) - 0x8000
                if d > SEQ_JUMP or d < -SEQ_JUMP:
                    # A broken rewrite (or a sender restart): start over from here.
                    c.seq_discontinuities += 1
                    self._resync()
                elif d > 0:
                    self._hi16 = seq
            if self._hi16 is None:
                self._hi16 = seq
        res = self.nack.on_packet(seq, now, "rtx" if rtx else "media")
        if res == DUPLICATE:
            c.duplicates += 1
            return
        if not rtx:  # RR statistics describe the link: direct arrivals only
            self.reception.update(seq, ts, now)
        if res == LATE:
            c.late += 1
            return
        ext = self._unwrap(seq)
        if self._ext_hi is None or ext > self._ext_hi:
            self._ext_hi = ext
        if self._started_at is None:
            self._started_at = now
        if (self._next is not None and ext < self._next) or ext in self._buf:
            c.late += 1
            return
        p = self._parse(pkt)
        if p.bad:
            c.malformed += 1
        self._buf[ext] = p
        if p.keyframe:
            self._keystarts.add(ext)
        if self._next is None and not p.filler:
            self._startup_hole(ext, p, now)
        if len(self._buf) > BUFFER:
            for s in sorted(self._buf)[: len(self._buf) - BUFFER]:
                del self._buf[s]
                self._keystarts.discard(s)
                if self._next is not None and s >= self._next:
                    self._next, self._gap = s + 1, True

    def _startup_hole(self, ext: int, p: _Pkt, now: float) -> None:
        """Before the first key frame: when the earliest packet so far does not start a frame,
        the one before it (often the start of the key frame) was lost before any later packet
        could show the hole; NACK it, one step at a time (as Subscriber does)."""
        if self._first_seen is not None and ext > self._first_seen:
            return
        self._first_seen = ext
        if not p.start:
            self.nack.add_holes_before(ext & 0xFFFF, 1, now)

    def _parse(self, pkt: bytes) -> _Pkt:
        ts = int.from_bytes(pkt[4:8], "big")
        marker = bool(pkt[1] & 0x80)
        b = rtp_bounds(pkt)
        if b is None or b[0] == b[1] or (pkt[1] & 0x7F) != self.payload_type:
            return _Pkt(ts, marker, False, False, None, None, None, b"", filler=True)
        payload = pkt[b[0] : b[1]]
        try:
            d = parse_descriptor(payload)
        except ValueError:
            return _Pkt(ts, marker, False, False, None, None, None, b"", bad=True)
        data = payload[d.size :]
        start = d.start and d.partition_id == 0
        return _Pkt(ts, marker, start, start and is_keyframe(data), d.picture_id, d.tl0picidx,
                    d.tid, data)

    def _resync(self) -> None:
        lsr, lsr_at = self.reception.lsr, self.reception.lsr_at
        frames_state = (self._prev_pid, self._prev_ts, self._last_tl0)
        self._reset_stream()
        self.reception.lsr, self.reception.lsr_at = lsr, lsr_at
        self._prev_pid, self._prev_ts, self._last_tl0 = frames_state
        self._gap = True

    # -- reorder stage: release whole frames in seq order ---------------------------------

    def _frame_at(self, s: int) -> tuple[str, int, list[_Pkt]]:
        """The frame starting at ``s``: ("complete", last seq, packets), ("wait", hole, [])
        or ("broken", where to resume, [])."""
        buf = self._buf
        first = buf[s]
        pkts: list[_Pkt] = []
        e = s
        while e - s < MAX_FRAME_PACKETS:
            p = buf.get(e)
            if p is None:
                return ("broken" if e in self._gone else "wait", e, [])
            if p.filler:
                e += 1
                continue
            if e != s and (p.ts != first.ts or p.start):
                return "broken", e, []  # the previous frame never saw its marker
            if p.bad:
                return "broken", e + 1, []
            pkts.append(p)
            if p.marker:
                return "complete", e, pkts
            e += 1
        return "broken", e, []

    def _pop(self, lo: int, hi: int) -> None:
        """Forget buffered packets and given-up holes in [lo, hi)."""
        if hi - lo > len(self._buf):
            for s in [s for s in self._buf if lo <= s < hi]:
                del self._buf[s]
        else:
            for s in range(lo, hi):
                self._buf.pop(s, None)
        self._keystarts = {k for k in self._keystarts if k >= hi}
        self._gone = {g for g in self._gone if g >= hi}

    def _complete_keyframe(self, after: int | None) -> tuple[int, int, list[_Pkt]] | None:
        for k in sorted(self._keystarts):
            if after is not None and k <= after:
                continue
            kind, e, pkts = self._frame_at(k)
            if kind == "complete":
                return k, e, pkts
        return None

    def _drain(self) -> None:
        while True:
            s = self._next
            if s is None:
                key = self._complete_keyframe(None)
                if key is None:
                    return
                k, e, pkts = key
                self._pop(min(self._buf, default=k), e + 1)
                self._next = e + 1
                self._gap = False
                self._on_frame(pkts, True)
                continue
            p = self._buf.get(s)
            if p is None:
                if s in self._gone:
                    self._gone.discard(s)
                    self._gap = True
                    self._next = s + 1
                    continue
                if self._ext_hi is None or s > self._ext_hi or not self._skip_to_key():
                    return
                continue
            if p.filler or not p.start or p.bad:  # the rest of a frame whose start is lost
                if not p.filler:
                    self._gap = True
                self._pop(s, s + 1)
                self._next = s + 1
                continue
            kind, e, pkts = self._frame_at(s)
            if kind == "complete":
                self._pop(s, e + 1)
                self._next = e + 1
                gap, self._gap = self._gap, False
                self._on_frame(pkts, gap)
            elif kind == "broken":
                self.c.frames_broken += 1
                self._pop(s, e)
                self._next = e
                self._gap = True
            elif not self._skip_to_key():
                return

    def _skip_to_key(self) -> bool:
        """Blocked on a hole: jump to a complete key frame further on, if there is one."""
        assert self._next is not None
        key = self._complete_keyframe(self._next)
        if key is None:
            return False
        k = key[0]
        self.c.frames_broken += 1
        self._pop(self._next, k)
        self._next = k
        self._gap = True
        return True

    def _unblock(self, now: float) -> None:
        """Safety net: a hole the NACK generator does not track (it cannot know every case
        of reordering across a resync) must not hold the stream forever: when the release
        point has not moved for longer than a NACK deadline, the first missing seq is lost."""
        nxt = self._next
        if nxt is None or not self._buf:
            self._blocked = (nxt, now)
            return
        if self._blocked[0] != nxt:
            self._blocked = (nxt, now)
            return
        if now - self._blocked[1] < self.nack.deadline_s + 0.2:
            return
        hole = next((s for s in range(nxt, max(self._buf) + 1) if s not in self._buf), None)
        if hole is not None:
            self._gone.add(hole)
            self._drain()
        self._blocked = (self._next, now)

    # -- frames --------------------------------------------------------------------------

    def _on_frame(self, pkts: list[_Pkt], gap: bool) -> None:
        c = self.c
        first = pkts[0]
        pid, tl0, tid, ts = first.picture_id, first.tl0picidx, first.tid, first.ts
        if pid is not None:
            prev = self._prev_pid
            if prev is not None and not gap and pid != (prev + 1) % PICTURE_ID_MOD:
                c.picture_id_discontinuities += 1
            self._prev_pid = pid
        if self._prev_ts is not None and (ts - self._prev_ts) & 0xFFFF_FFFF >= 0x8000_0000:
            c.ts_backwards += 1
        self._prev_ts = ts
        if gap:
            self._broken_refs = True
        if first.keyframe:
            self._waiting_key = self._broken_refs = False
        elif self._waiting_key:
            c.frames_skipped += 1
            self.request_keyframe()
            return
        elif self._broken_refs:
            last = self._last_tl0
            if tid == 0 and tl0 is not None and last is not None and tl0 == (last + 1) & 0xFF:
                self._broken_refs = False  # only upper temporal layers were lost
            elif tid and tl0 is not None and last is not None and tl0 == last:
                c.frames_skipped += 1  # may reference a lost TID 1 frame: wait for TID 0
                return
            else:
                c.frames_skipped += 1
                self._waiting_key = True
                self.request_keyframe()
                return
        self._decode(b"".join(p.data for p in pkts), first)

    def _decode(self, data: bytes, first: _Pkt) -> None:
        try:
            pictures = self.decoder.decode(data)
        except Exception:  # noqa: BLE001 (a decoder failure must never stop the viewer)
            pictures = []
            self.decoder.errors += 1
        self.decoder_errors = self.decoder.errors
        if not pictures:
            self._waiting_key = True
            self.request_keyframe()
            return
        pic = pictures[-1]
        now = time.monotonic()
        if first.tid == 0 or first.keyframe:
            self._last_tl0 = first.tl0picidx
        self.frames.append(DecodedFrame(now, pic.width, pic.height, first.picture_id,
                                        first.tl0picidx, first.tid, first.keyframe,
                                        self.media_ssrc))
        if self.first_frame_at is None:
            self.first_frame_at = now

    # -- RTCP ----------------------------------------------------------------------------

    def request_keyframe(self, force: bool = False) -> bool:
        """Send a PLI unless one went out less than ``pli_interval`` ago."""
        if not self.send_pli(self.ssrc, self.media_ssrc, force):
            return False
        self.c.pli_sent += 1
        return True

    def send_rr(self) -> None:
        if not self.media_ssrc:
            return
        now = time.monotonic()
        block = (self.reception.report_block(self.media_ssrc, now)
                 if self.reception.base is not None else {"ssrc": self.media_ssrc})
        self.send(_native.build_rr(self.ssrc, [block])
                  + _native.build_sdes(self.ssrc, "simulcast-viewer"))
        self.c.rr_sent += 1

    def send_feedback(self, now: float) -> None:
        for packet in self.twcc.build(now):
            self.send(packet)
            self.c.twcc_feedbacks += 1

    def on_rtcp(self, data: bytes) -> None:
        for pkt in parse_rtcp_counted(data, self.c):
            if pkt["type"] == "sr" and pkt["ssrc"] == self.media_ssrc:
                self.c.sr_received += 1
                self.reception.on_sr(cast(int, pkt["ntp"]), time.monotonic())

    def _poll(self) -> float | None:
        """NACKs that are due, given-up holes, TWCC feedback, RR, PLI retries; returns when
        the next of them is due."""
        now = time.monotonic()
        c = self.c
        if self.media_ssrc:
            seqs = self.nack.poll(now)
            if seqs:
                self.send(_native.build_nack(self.ssrc, self.media_ssrc, seqs))
                c.nacks += 1
                c.nack_seqs += len(seqs)
            lost = self.nack.take_lost()
            if lost:
                c.unrecovered += len(lost)
                self._gone.update(self._unwrap(s) for s in lost)
                self._drain()
            self._unblock(now)
            if self._next is None and self._started_at is not None and (
                    now - self._started_at > self.pli_interval):
                self.request_keyframe()  # no complete key frame yet
            elif self._waiting_key and c.pli_sent:
                self.request_keyframe()  # the earlier PLI may have been lost
        if self.twcc_enabled and self.twcc.due(now):
            self.send_feedback(now)
        if now >= self._next_rr:
            self._next_rr = now + self.rr_interval
            self.send_rr()
        due = [self._next_rr]
        if self.twcc_enabled:
            due.append(self.twcc.next_due)
        nd = self.nack.next_due()
        if nd is not None:
            due.append(nd)
        return min(due)

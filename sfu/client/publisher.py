"""The VP8 publisher and the sender-side loss recovery (RTX history, SFU-RS parity).

The endpoint (UDP + STUN, or QUIC) lives in ``sfu.client.endpoint``; its names are
re-exported here for existing imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from sfu import _native
from sfu.client.endpoint import (
    VIDEO_CLOCK,
    PollTimer,
    RtpEndpoint,
    _dicts,
    ntp_now,
    parse_hostport,
    parse_rtcp_counted,
    random_ssrc,
    use_transport,
)
from sfu.client.loss import RS_FEC_PT, RTX_PT, SendHistory, SeqCounter, rs_encoder
from sfu.client.media import EncodedFrame, Vp8Encoder
from sfu.client.vp8 import Vp8Packetizer

__all__ = ["VIDEO_CLOCK", "PollTimer", "Publisher", "PublisherStats", "RecoveringSender",
           "RtpEndpoint", "SentFrame", "SenderStats", "ntp_now", "parse_hostport",
           "parse_rtcp_counted", "random_ssrc", "use_transport"]

log = logging.getLogger(__name__)

FecOption = tuple[int, int] | str | None  # (k, m), "auto" or None


@dataclass(frozen=True, slots=True)
class SentFrame:
    timestamp: int  # RTP timestamp
    data: bytes
    keyframe: bool
    packets: int
    at: float = 0.0  # time.monotonic() when it was sent


@dataclass(slots=True)
class SenderStats:
    packets: int = 0
    bytes: int = 0  # RTP payload octets (what SR counts)
    sr_sent: int = 0
    pli_received: int = 0
    fir_received: int = 0
    rr_received: int = 0
    rtcp_errors: int = 0
    nacks_received: int = 0  # NACK packets for our SSRC
    nack_seqs: int = 0  # seqs they asked for
    rtx_sent: int = 0  # RTX packets (or plain resends without RTX)
    rtx_bytes: int = 0  # whole datagrams
    fec_sent: int = 0  # SFU-RS parity packets
    fec_bytes: int = 0
    rtt_ms: float = 0.0  # from the LSR/DLSR of the node's report about us
    last_rr: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PublisherStats(SenderStats):
    frames: int = 0
    keyframes: int = 0


class RecoveringSender(RtpEndpoint):
    """Sends one RTP stream and recovers its losses on the uplink: keeps a send history and
    answers the node's NACKs with RTX (RFC 4588) on ``rtx_ssrc`` (plain resends without
    one), optionally adds SFU-RS parity (``fec=(k, m)``) on ``fec_ssrc``, sends SRs
    carrying a report block about the node's SR (so the node measures the uplink RTT) and
    measures the RTT itself from the node's report about us."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, *, ssrc: int | None,
                 payload_type: int, clock_rate: int, kind: str = "video", rtx: bool = True,
                 fec: FecOption = None, history_packets: int = 1024,
                 history_s: float = 2.0) -> None:
        super().__init__(node, ufrag, pwd)
        self.ssrc = ssrc or random_ssrc()
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.rtx_ssrc: int | None = random_ssrc() if rtx else None
        self.rtx_pt = RTX_PT.get(kind, 97)
        self.rtx_seq = SeqCounter()
        self.history = SendHistory(history_packets, history_s)
        self.counters = SenderStats()  # subclasses put a richer dataclass here
        self.fec_ssrc: int | None = None
        self.fec_pt = RS_FEC_PT
        self.fec_encoder: Any | None = None
        self.fec_auto = fec == "auto"
        # fec="auto": the uplink's share of a viewer's playout budget, the residual aimed at
        # and the overhead allowed (× p/(1-p)): every viewer pays for an uplink loss.
        self.fec_budget_s, self.fec_target, self.fec_max_overhead = 0.12, 0.001, 3.0
        self.fec_max_block_s = 0.04
        self.fec_plan: Any | None = None  # sfu.recovery.Plan chosen by fec="auto"
        self._fec_seq = SeqCounter()
        self._loss = 0.0  # smoothed fraction lost in the node's reports about us
        # packets, bytes, first NACK requests, when: the window fec="auto" measures over
        self._fec_mark = (0, 0, 0, time.monotonic())
        if fec == "auto":
            self.fec_ssrc = random_ssrc()
        elif fec is not None:
            self.fec_ssrc = random_ssrc()
            self.fec_encoder = rs_encoder(self.fec_pt, self.fec_ssrc, fec[0], fec[1],
                                          int.from_bytes(os.urandom(2), "big"))
        self.participant = ""
        self._rtt_samples: deque[float] = deque(maxlen=8)
        self._node_sr: tuple[int, int, float] | None = None  # (node ssrc, lsr, received at)
        self._last_ts = 0
        self._last_ts_wall = time.time()

    def layer(self, rid: str = "f") -> dict[str, Any]:
        """The track.publish layer entry declaring our SSRCs."""
        layer: dict[str, Any] = {"rid": rid, "ssrc": self.ssrc}
        if self.rtx_ssrc is not None:
            layer["rtx_ssrc"] = self.rtx_ssrc
        if self.fec_ssrc is not None:
            layer["fec_ssrc"] = self.fec_ssrc
        return layer

    def send_media(self, packet: bytes, payload_len: int, reliable: bool = False) -> None:
        """Send one media packet: kept for retransmission, fed to the FEC encoder.
        ``reliable``: over QUIC it goes on the RoQ stream (keyframes)."""
        self.send(packet, reliable)
        self.history.add(packet, time.monotonic())
        st = self.counters
        st.packets += 1
        st.bytes += payload_len
        if self.fec_auto and time.monotonic() - self._fec_mark[3] >= 0.25:
            self._adapt_fec()
        if self.fec_encoder is not None:
            for parity in self.fec_encoder.add(packet):
                self.send(parity)
                st.fec_sent += 1
                st.fec_bytes += len(parity)

    def send_sr(self) -> None:
        wall = time.time()
        # Extrapolate the RTP clock to "now" so the SR pairs NTP and RTP time correctly.
        ts = (self._last_ts + int((wall - self._last_ts_wall) * self.clock_rate)) & 0xFFFF_FFFF
        reports = []
        if self._node_sr is not None:
            node_ssrc, lsr, at = self._node_sr
            reports.append({"ssrc": node_ssrc, "lsr": lsr,
                            "dlsr": int((time.monotonic() - at) * 65536) & 0xFFFF_FFFF})
        sr = _native.build_sr(self.ssrc, ntp_now(wall), ts, self.counters.packets & 0xFFFF_FFFF,
                              self.counters.bytes & 0xFFFF_FFFF, reports=reports)
        self.send(sr + _native.build_sdes(self.ssrc, self.participant or "publisher"))
        self.counters.sr_sent += 1

    def on_rtcp(self, data: bytes) -> None:
        for pkt in parse_rtcp_counted(data, self.counters):
            self.on_rtcp_packet(pkt)

    def _resend(self, seqs: list[int]) -> None:
        """Retransmit ``seqs`` from the history (RTX when declared, else plain)."""
        st = self.counters
        for out in self.history.resend(seqs, time.monotonic(), self.rtx_ssrc, self.rtx_pt,
                                       self.rtx_seq):
            self.send(out)
            st.rtx_sent += 1
            st.rtx_bytes += len(out)

    def on_rtcp_packet(self, pkt: dict[str, object]) -> None:
        kind = pkt["type"]
        st = self.counters
        if kind == "nack" and pkt["media_ssrc"] == self.ssrc:
            lost = cast(list[int], pkt.get("lost", []))
            st.nacks_received += 1
            st.nack_seqs += len(lost)
            self._resend(lost)
        elif kind in ("rr", "sr"):
            if kind == "sr" and pkt["ssrc"] != self.ssrc:
                self._node_sr = (cast(int, pkt["ssrc"]),
                                 (cast(int, pkt["ntp"]) >> 16) & 0xFFFF_FFFF, time.monotonic())
            for block in _dicts(pkt, "reports"):
                if block["ssrc"] == self.ssrc:
                    st.rr_received += 1
                    st.last_rr = dict(block)
                    self._rtt_from(block)
                    if self.fec_auto:
                        self._adapt_fec(block.get("fraction_lost", 0) / 256)

    def _adapt_fec(self, reported: float | None = None) -> None:
        """fec="auto": the uplink FEC rate (sfu.recovery's model within ``fec_budget_s``,
        NACK included; none on a clean link) for the uplink loss: the node's report, or
        between reports the share of recent packets the node NACKed (a faster signal)."""
        from sfu import recovery  # numpy-backed policy: only publishers that adapt need it

        now = time.monotonic()
        packets, octets, firsts, at = self._fec_mark
        st = self.counters
        sent, elapsed = st.packets - packets, now - at
        if sent <= 0 or elapsed <= 0 or (reported is None and sent < 40):
            return
        asked = self.history.stats.first_requests - firsts
        self._fec_mark = (st.packets, st.bytes, self.history.stats.first_requests, now)
        sample = asked / sent if reported is None else max(reported, asked / sent)
        self._loss += (min(sample, 0.9) - self._loss) / 2
        link = recovery.Link(min(self._loss, 0.9), rtt_s=(st.rtt_ms or 100.0) / 1000,
                             pps=sent / elapsed,
                             packet_bytes=12 + max(1.0, (st.bytes - octets) / sent))
        plan = recovery.choose_plan(link, self.fec_budget_s, self.fec_target,
                                    self.fec_max_overhead, current=self.fec_plan,
                                    k=recovery.block_length(link.pps, self.fec_max_block_s))
        if plan == self.fec_plan:
            return
        self.fec_plan = plan
        if plan.fec != "rs":
            self._flush_fec()
            self.fec_encoder = None
        elif self.fec_encoder is None:
            assert self.fec_ssrc is not None
            self.fec_encoder = rs_encoder(self.fec_pt, self.fec_ssrc, plan.k, plan.m,
                                          self._fec_seq.value)
        else:
            self.fec_encoder.set_rate(plan.k, plan.m)

    def _flush_fec(self) -> None:
        if self.fec_encoder is None:
            return
        for parity in self.fec_encoder.flush():
            self.send(parity)
            self.counters.fec_sent += 1
            self.counters.fec_bytes += len(parity)
        self._fec_seq.value = self.fec_encoder.next_seq

    def _rtt_from(self, block: dict[str, int]) -> None:
        # RFC 3550 §6.4.1: RTT = A - LSR - DLSR in 1/65536 s (middle 32 bits of NTP).
        lsr, dlsr = block.get("lsr", 0), block.get("dlsr", 0)
        if not lsr:
            return
        now_mid = (ntp_now() >> 16) & 0xFFFF_FFFF
        rtt = ((now_mid - lsr - dlsr) & 0xFFFF_FFFF) / 65536
        if rtt < 10.0:
            # A stalled loop only inflates samples: the recent minimum is the link's RTT.
            self._rtt_samples.append(rtt)
            best = min(self._rtt_samples)
            self.counters.rtt_ms = best * 1000
            self.history.rtt = best


class Publisher(RecoveringSender):
    """Publishes one VP8 track of synthetic video; a PLI/FIR forces the next key frame.
    Losses on the uplink are repaired by RTX (declared by default) and optional SFU-RS."""

    counters: PublisherStats

    def __init__(
        self,
        node: tuple[str, int],
        ufrag: str,
        pwd: str,
        encoder: Vp8Encoder,
        *,
        ssrc: int | None = None,
        payload_type: int = 96,
        max_payload: int = 1200,
        record: bool = False,
        rtx: bool = True,
        fec: FecOption = None,
    ) -> None:
        super().__init__(node, ufrag, pwd, ssrc=ssrc, payload_type=payload_type,
                         clock_rate=VIDEO_CLOCK, kind="video", rtx=rtx, fec=fec)
        # Real video: one unrepaired packet costs the frames until the next keyframe, so
        # the uplink FEC aims lower and its blocks may span 100 ms (a few packets otherwise).
        self.fec_target, self.fec_max_block_s = 1e-4, 0.1
        if self.fec_auto:
            # Until the node's first report (~1 s) the uplink loss is unknown, and the first
            # key frame is the largest and most needed frame: protect the start, then let
            # the reports decide (a clean link drops it at the first one).
            from sfu.recovery import Plan

            self.fec_plan = Plan(True, "rs", 10, 4)
            assert self.fec_ssrc is not None
            self.fec_encoder = rs_encoder(self.fec_pt, self.fec_ssrc, 10, 4,
                                          self._fec_seq.value)
        self.encoder = encoder
        self.packetizer = Vp8Packetizer(max_payload, int.from_bytes(os.urandom(2)) & 0x7FFF)
        self.counters = PublisherStats()
        self.record = record
        self.sent: list[SentFrame] = []
        self.track: str | None = None
        self.room = ""
        self.participant = ""
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._ts_base = int.from_bytes(os.urandom(4), "big")
        self._last_ts = self._ts_base
        self._last_ts_wall = time.time()
        self.keyframe_requested = asyncio.Event()
        self.resend_first_s = 0.03  # 0: do not repeat the first frame

    @property
    def stats(self) -> PublisherStats:
        return self.counters

    @classmethod
    async def join(
        cls,
        control: Any,
        room: str,
        participant: str,
        *,
        role: str = "host",
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        bitrate: int = 800_000,
        keyframe_interval: int = 300,
        record: bool = False,
        bind_timeout: float = 5.0,
        rtx: bool = True,
        fec: FecOption = None,
        via: tuple[str, int] | None = None,
        nack: bool = True,
        transport: str = "udp",
    ) -> Publisher:
        """Join ``room`` through the control client, bind with STUN and publish a track.

        ``control`` is an ``sfu.control.Client`` (anything with ``await call(method, **p)``).
        ``rtx`` declares an RTX SSRC; ``fec=(k, m)`` adds SFU-RS parity on a ``fec_ssrc``,
        ``fec="auto"`` chooses (k, m) from the loss the node reports (none when clean).
        ``via`` sends media to that address instead of the node's (a lossy-link proxy in
        front of the UDP port, or of the QUIC port with ``transport="quic"``).
        ``nack=False`` asks the node not to NACK this track (no uplink retransmission).
        ``transport="quic"`` carries the media over RTP over QUIC (keyframes on the stream).
        """
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        encoder = Vp8Encoder(width, height, fps, bitrate, keyframe_interval)
        pub = cls(via or parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                  encoder, record=record, rtx=rtx, fec=fec)
        pub.room, pub.participant = room, participant
        use_transport(pub, transport, joined, room, participant, via)
        res = await pub.open_bind_call(
            control, bind_timeout, "track.publish", room=room, participant=participant,
            kind="video", codec="VP8", payload_type=pub.payload_type, clock_rate=VIDEO_CLOCK,
            layers=[pub.layer()], nack=nack,
        )
        pub.track = res["track"]
        return pub

    def rtp_timestamp(self, pts: int) -> int:
        return (self._ts_base + pts * VIDEO_CLOCK // self.encoder.fps) & 0xFFFF_FFFF

    def send_frame(self, frame: EncodedFrame) -> int:
        """Packetize and send one encoded frame; returns the number of packets."""
        ts = self.rtp_timestamp(frame.pts)
        payloads = self.packetizer.packetize(frame.data)
        last = len(payloads) - 1
        first_seq = self._seq
        for i, payload in enumerate(payloads):
            self.send_media(_native.build_rtp(self.payload_type, self._seq, ts, self.ssrc,
                                              payload, marker=i == last), len(payload),
                            reliable=frame.keyframe)
            self._seq = (self._seq + 1) & 0xFFFF
        if not self.stats.frames and self.resend_first_s > 0:
            # The node NACKs only holes after the first packet it got: if the stream's
            # first packets are lost on the way, no one asks for them and every viewer
            # starts with a broken key frame. Send the first frame once more, a bit later.
            seqs = [(first_seq + i) & 0xFFFF for i in range(len(payloads))]
            with contextlib.suppress(RuntimeError):  # no loop: a synchronous caller
                asyncio.get_running_loop().call_later(self.resend_first_s, self._resend,
                                                      seqs)
        self.stats.frames += 1
        self.stats.keyframes += frame.keyframe
        self._last_ts, self._last_ts_wall = ts, time.time()
        if self.record:
            self.sent.append(SentFrame(ts, frame.data, frame.keyframe, len(payloads),
                                       time.monotonic()))
        return len(payloads)

    def send_next(self) -> list[EncodedFrame]:
        """Encode the next picture and send what the encoder produced."""
        frames = self.encoder.encode_next()
        for frame in frames:
            self.send_frame(frame)
        return frames

    async def run(self, seconds: float | None = None, frames: int | None = None,
                  sr_interval: float = 1.0) -> None:
        """Send frames at the encoder's fps until ``seconds`` or ``frames`` is reached."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        period = 1.0 / self.encoder.fps
        next_sr = start
        sent = 0
        while (frames is None or sent < frames) and (
            seconds is None or loop.time() - start < seconds
        ):
            # libvpx releases the GIL: encoding in a thread keeps the loop (the node, the
            # viewers, retransmissions in tests and benches) from stalling for a frame time.
            for frame in await loop.run_in_executor(None, self.encoder.encode_next):
                self.send_frame(frame)
            sent += 1
            now = loop.time()
            if now >= next_sr:
                self.send_sr()
                next_sr = now + sr_interval
            # Absolute schedule: a slow frame does not push every later frame back.
            await asyncio.sleep(max(0.0, start + sent * period - loop.time()))

    def on_rtcp_packet(self, pkt: dict[str, object]) -> None:
        kind = pkt["type"]
        if kind == "pli" and pkt["media_ssrc"] == self.ssrc:
            self.stats.pli_received += 1
            self._keyframe_wanted()
        elif kind == "fir" and any(e["ssrc"] == self.ssrc for e in _dicts(pkt, "entries")):
            self.stats.fir_received += 1
            self._keyframe_wanted()
        else:
            super().on_rtcp_packet(pkt)

    def _keyframe_wanted(self) -> None:
        self.encoder.force_keyframe()
        self.keyframe_requested.set()

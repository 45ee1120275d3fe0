"""VP8 subscriber: binds with STUN, subscribes, reassembles, decodes, reports.

It sends a receiver report every second (RFC 3550 §6.4.2 fields computed per §A.3 and
§A.8) and a PLI (RFC 4585 §6.3.1) whenever it cannot decode: before the first key
frame, after a frame was lost, or after a decode error. Until a key frame arrives it
skips delta frames rather than decode them against a broken reference.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

from sfu import _native
from sfu.client.media import Vp8Decoder
from sfu.client.publisher import (
    VIDEO_CLOCK,
    RtpEndpoint,
    parse_hostport,
    parse_rtcp_counted,
    random_ssrc,
)
from sfu.client.vp8 import AssembledFrame, FrameAssembler

__all__ = ["Subscriber", "SubscriberStats"]


def _int(fields: dict[str, object], key: str) -> int:
    """An integer field of a parse_rtp/parse_rtcp result, typed for the checker."""
    return cast(int, fields[key])


@dataclass(slots=True)
class SubscriberStats:
    packets: int = 0  # RTP packets of our stream
    bytes: int = 0  # RTP payload octets
    lost: int = 0  # by sequence gaps
    late: int = 0  # duplicates / behind the highest seq
    malformed: int = 0  # unparseable RTP or VP8 descriptor
    foreign: int = 0  # RTP with an unexpected SSRC or payload type
    frames_complete: int = 0
    frames_dropped: int = 0  # incomplete frames
    frames_decoded: int = 0
    frames_skipped: int = 0  # delta frames skipped while waiting for a key frame
    keyframes: int = 0
    decode_errors: int = 0
    pli_sent: int = 0
    rr_sent: int = 0
    sr_received: int = 0
    rtcp_errors: int = 0
    bitrate: float = 0.0  # bit/s of RTP payload over the last report interval
    jitter: float = 0.0  # interarrival jitter, RTP timestamp units


class Subscriber(RtpEndpoint):
    """Receives one subscribed VP8 track."""

    def __init__(
        self,
        node: tuple[str, int],
        ufrag: str,
        pwd: str,
        *,
        decode: bool = True,
        keep_frames: bool = False,
        pli_interval: float = 0.3,
    ) -> None:
        super().__init__(node, ufrag, pwd)
        self.ssrc = random_ssrc()  # our RTCP sender SSRC
        self.media_ssrc = 0  # the downtrack's SSRC, from track.subscribe
        self.payload_type = -1
        self.subscription: str | None = None
        self.stats = SubscriberStats()
        self.assembler = FrameAssembler()
        self.decoder = Vp8Decoder() if decode else None
        self.keep_frames = keep_frames
        self.frames: list[AssembledFrame] = []
        self.last_size: tuple[int, int] | None = None
        self.pli_interval = pli_interval
        self.waiting_keyframe = True
        self._last_pli = -1e9
        self._dropped_seen = 0
        self._report_task: asyncio.Task[None] | None = None
        self.frame_event = asyncio.Event()  # set on every decoded frame
        # RFC 3550 A.3 reception state
        self._base_seq: int | None = None
        self._max_seq = 0
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self._lsr = 0
        self._lsr_at = 0.0
        self._bytes_prior = 0
        self._rate_at = time.monotonic()

    @classmethod
    async def join(
        cls,
        control: Any,
        room: str,
        participant: str,
        track: str,
        *,
        role: str = "audience",
        decode: bool = True,
        keep_frames: bool = False,
        report_interval: float = 1.0,
        bind_timeout: float = 5.0,
    ) -> Subscriber:
        """Join ``room``, bind with STUN, subscribe to ``track`` and start reporting."""
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        sub = cls(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                  decode=decode, keep_frames=keep_frames)
        res = await sub.open_bind_call(control, bind_timeout, "track.subscribe", room=room,
                                       participant=participant, track=track)
        sub.subscription = res["subscription"]
        sub.media_ssrc = int(res["ssrc"])
        sub.payload_type = int(res["payload_type"])
        sub.start_reports(report_interval)
        return sub

    def start_reports(self, interval: float = 1.0) -> None:
        if self._report_task is None:
            self._report_task = asyncio.get_running_loop().create_task(self._reports(interval))

    async def _reports(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.send_rr()
            if self.waiting_keyframe and self.stats.packets:
                self.request_keyframe()  # the earlier PLI may have been lost

    def close(self) -> None:
        if self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None
        super().close()

    # -- RTP --------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        st = self.stats
        try:
            rtp = _native.parse_rtp(data)
        except ValueError:
            st.malformed += 1
            return
        if rtp["ssrc"] != self.media_ssrc or rtp["payload_type"] != self.payload_type:
            st.foreign += 1
            return
        seq, ts = _int(rtp, "sequence_number"), _int(rtp, "timestamp")
        start = _int(rtp, "header_size")
        payload = data[start : start + _int(rtp, "payload_size")]
        st.packets += 1
        st.bytes += len(payload)
        self._update_reception(seq, ts)
        frame = self.assembler.push(seq, ts, bool(rtp["marker"]), payload)
        a = self.assembler.stats
        st.lost, st.late, st.frames_complete = a.lost, a.late, a.frames_complete
        st.malformed = a.malformed
        if a.frames_dropped != self._dropped_seen:
            st.frames_dropped = self._dropped_seen = a.frames_dropped
            self._lost_sync()
        if frame is not None:
            self._on_frame(frame)

    def _on_frame(self, frame: AssembledFrame) -> None:
        st = self.stats
        st.keyframes += frame.keyframe
        if self.keep_frames:
            self.frames.append(frame)
        if self.waiting_keyframe and not frame.keyframe:
            st.frames_skipped += 1
            self.request_keyframe()
            return
        self.waiting_keyframe = False
        if self.decoder is None:
            return
        pictures = self.decoder.decode(frame.data)
        st.decode_errors = self.decoder.errors
        if not pictures:
            self._lost_sync()
            return
        st.frames_decoded += len(pictures)
        self.last_size = self.decoder.last_size
        self.frame_event.set()

    def _lost_sync(self) -> None:
        self.waiting_keyframe = True
        self.request_keyframe()

    def _update_reception(self, seq: int, ts: int) -> None:
        # RFC 3550 A.1 (simplified: no probation) and A.8 interarrival jitter.
        if self._base_seq is None:
            self._base_seq = self._max_seq = seq
        elif 0 < ((seq - self._max_seq) & 0xFFFF) < 0x8000:
            if seq < self._max_seq:
                self._cycles += 1 << 16
            self._max_seq = seq
        self._received += 1
        arrival = int(time.monotonic() * VIDEO_CLOCK)
        transit = (arrival - ts) & 0xFFFF_FFFF
        if self._transit is not None:
            d = abs(((transit - self._transit + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000)
            self.stats.jitter += (d - self.stats.jitter) / 16
        self._transit = transit

    # -- RTCP -------------------------------------------------------------------------

    def request_keyframe(self, force: bool = False) -> bool:
        """Send a PLI unless one went out less than ``pli_interval`` ago."""
        now = time.monotonic()
        if not self.media_ssrc or (not force and now - self._last_pli < self.pli_interval):
            return False
        self._last_pli = now
        self.send(_native.build_pli(self.ssrc, self.media_ssrc))
        self.stats.pli_sent += 1
        return True

    def report_block(self) -> dict[str, int]:
        """The RR report block for our stream (RFC 3550 §6.4.1, A.3)."""
        if self._base_seq is None:
            return {"ssrc": self.media_ssrc}
        ext_max = self._cycles + self._max_seq
        expected = ext_max - self._base_seq + 1
        lost = expected - self._received
        exp_int = expected - self._expected_prior
        rec_int = self._received - self._received_prior
        self._expected_prior, self._received_prior = expected, self._received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        dlsr = int((time.monotonic() - self._lsr_at) * 65536) if self._lsr else 0
        return {
            "ssrc": self.media_ssrc,
            "fraction_lost": fraction,
            "packets_lost": max(-(1 << 23), min(lost, (1 << 23) - 1)) & 0xFFFFFF,
            "highest_seq": ext_max & 0xFFFF_FFFF,
            "jitter": int(self.stats.jitter),
            "lsr": self._lsr,
            "dlsr": dlsr & 0xFFFF_FFFF,
        }

    def send_rr(self) -> None:
        now = time.monotonic()
        elapsed = now - self._rate_at
        if elapsed > 0:
            self.stats.bitrate = (self.stats.bytes - self._bytes_prior) * 8 / elapsed
        self._bytes_prior, self._rate_at = self.stats.bytes, now
        if not self.media_ssrc:
            return
        rr = _native.build_rr(self.ssrc, [self.report_block()])
        self.send(rr + _native.build_sdes(self.ssrc, "subscriber"))
        self.stats.rr_sent += 1

    def on_rtcp(self, data: bytes) -> None:
        for pkt in parse_rtcp_counted(data, self.stats):
            if pkt["type"] == "sr" and pkt["ssrc"] == self.media_ssrc:
                self.stats.sr_received += 1
                self._lsr = (_int(pkt, "ntp") >> 16) & 0xFFFF_FFFF  # middle 32 bits
                self._lsr_at = time.monotonic()

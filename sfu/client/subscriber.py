"""VP8 subscriber: binds with STUN, subscribes, recovers losses, plays out, decodes, reports.

Packets go through a :class:`~sfu.client.loss.RecoveringReceiver`: holes are NACKed (RFC 4585)
and filled by RTX (RFC 4588) or FEC (SFU-RS, ULPFEC) before their playout deadline; frames
leave the native jitter buffer at their playout time (target delay within ``budget_s``).
It sends a receiver report every 0.5 s (RFC 3550 §6.4.2, computed from direct arrivals
only, so the node sees the raw link loss) and a PLI (RFC 4585 §6.3.1) whenever it cannot
decode: before the first key frame, after a frame was lost, or after a decode error. Until
a key frame arrives it skips delta frames rather than decode them against a broken reference.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, cast

from sfu import _native
from sfu.client.loss import RS_FEC_PT, RTX_PT, ULPFEC_PT, Frame, RecoveringReceiver, rtp_bounds
from sfu.client.media import Vp8Decoder
from sfu.client.publisher import (
    VIDEO_CLOCK,
    PollTimer,
    RtpEndpoint,
    parse_hostport,
    parse_rtcp_counted,
    random_ssrc,
    use_transport,
)
from sfu.client.vp8 import AssembledFrame, is_keyframe, parse_descriptor

__all__ = ["Subscriber", "SubscriberStats", "recovery_params"]

FEC_MODES = ("auto", "off", "rs", "ulpfec")


def _int(fields: dict[str, object], key: str) -> int:
    """An integer field of a parse_rtp/parse_rtcp result, typed for the checker."""
    return cast(int, fields[key])


def recovery_params(nack: bool, rtx: bool, fec: str) -> dict[str, Any]:
    """Extra track.subscribe params: ``recovery`` only when it differs from the node's
    default (nack, rtx, fec auto), so nodes without loss recovery still accept the call."""
    if fec not in FEC_MODES:
        raise ValueError(f"fec must be one of {', '.join(FEC_MODES)}, got {fec!r}")
    if nack and rtx and fec == "auto":
        return {}
    return {"recovery": {"nack": nack, "rtx": rtx, "fec": fec}}


@dataclass(slots=True)
class _KeyTrack:
    first_at: float
    seqs: set[int] = field(default_factory=set)
    start: int | None = None
    end: int | None = None


@dataclass(slots=True)
class SubscriberStats:
    packets: int = 0  # RTP packets of our stream that arrived directly (not recovered)
    bytes: int = 0  # their RTP payload octets
    lost: int = 0  # raw link loss by sequence gaps (before recovery)
    late: int = 0  # arrived after their frame was played out or given up
    duplicates: int = 0
    malformed: int = 0  # unparseable RTP or VP8 descriptor
    foreign: int = 0  # RTP with an unexpected SSRC or payload type
    recovered_rtx: int = 0
    recovered_fec: int = 0
    lost_after_recovery: int = 0  # packets given up
    nacks_sent: int = 0
    nack_seqs: int = 0
    rtx_bytes: int = 0
    fec_bytes: int = 0
    rtt_ms: float = 0.0  # from NACK -> RTX round trips
    frames_complete: int = 0
    frames_dropped: int = 0  # incomplete at their playout time
    frames_expected: int = 0  # complete + dropped + frames that vanished whole
    frames_decoded: int = 0
    frames_skipped: int = 0  # delta frames skipped while waiting for a key frame
    longest_freeze_ms: float = 0.0  # longest gap between two decoded frames
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
        budget_s: float = 0.2,
        nack: bool = True,
        rtx: bool = True,
        fec: str = "auto",
        poll_interval: float = 0.005,
        late_wait: float = 0.15,
    ) -> None:
        super().__init__(node, ufrag, pwd)
        recovery_params(nack, rtx, fec)  # validates fec
        self.ssrc = random_ssrc()  # our RTCP sender SSRC
        self.media_ssrc = 0  # the downtrack's SSRC, from track.subscribe
        self.payload_type = -1
        self.rtx_ssrc: int | None = None
        self.rtx_pt = RTX_PT["video"]
        self.fec_pt = RS_FEC_PT
        self.ulpfec_pt = ULPFEC_PT
        self.budget_s = budget_s
        # A frame still missing a packet at its playout time may freeze playout this much
        # longer while its repair arrives (a freeze < 200 ms beats a keyframe round trip).
        self.late_wait = late_wait if nack or fec != "off" else 0.0
        self.nack, self.rtx, self.fec = nack, rtx, fec
        self.poll_interval = poll_interval
        self.subscription: str | None = None
        self.stats = SubscriberStats()
        self.receiver: RecoveringReceiver | None = None
        self.decoder = Vp8Decoder() if decode else None
        self.keep_frames = keep_frames
        self.frames: list[AssembledFrame] = []
        self.last_size: tuple[int, int] | None = None
        self.pli_interval = pli_interval
        self.waiting_keyframe = True
        self._last_decoded_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: PollTimer | None = None
        self._start_seq: int | None = None  # earliest seq seen before the first playout
        self._keys: dict[int, _KeyTrack] = {}  # ts -> key frame assembly, while waiting
        self._key_ready: tuple[int, float] | None = None  # a complete key frame: ts, arrival
        self.frame_event = asyncio.Event()  # set on every decoded frame
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
        report_interval: float = 0.5,
        bind_timeout: float = 5.0,
        budget_s: float = 0.2,
        nack: bool = True,
        rtx: bool = True,
        fec: str = "auto",
        via: tuple[str, int] | None = None,
        transport: str = "udp",
    ) -> Subscriber:
        """Join ``room``, bind with STUN, subscribe to ``track`` and start reporting.

        ``budget_s`` is the playout delay; ``nack``/``rtx``/``fec`` the recovery asked of
        the node; ``via`` receives through that address (a lossy-link proxy)."""
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        sub = cls(via or parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                  decode=decode, keep_frames=keep_frames, budget_s=budget_s, nack=nack,
                  rtx=rtx, fec=fec)
        use_transport(sub, transport, joined, room, participant, via)
        res = await sub.open_bind_call(control, bind_timeout, "track.subscribe", room=room,
                                       participant=participant, track=track,
                                       **recovery_params(nack, rtx, fec))
        sub.apply_subscription(res)
        sub.start_reports(report_interval)
        return sub

    def apply_subscription(self, res: dict[str, Any]) -> None:
        """Take the SSRCs and payload types of a track.subscribe result."""
        self.subscription = res["subscription"]
        self.media_ssrc = int(res["ssrc"])
        self.payload_type = int(res["payload_type"])
        self.rtx_ssrc = int(res["rtx_ssrc"]) if self.rtx and res.get("rtx_ssrc") else None
        self.rtx_pt = int(res.get("rtx_payload_type") or self.rtx_pt)
        self.fec_pt = int(res.get("fec_payload_type") or self.fec_pt)
        self.ulpfec_pt = int(res.get("ulpfec_payload_type") or self.ulpfec_pt)
        self.receiver = None  # rebuilt for the new SSRCs on the next packet

    def _receiver(self) -> RecoveringReceiver:
        rx = self.receiver
        if rx is None or rx.media_ssrc != self.media_ssrc or rx.media_pt != self.payload_type:
            rx = self.receiver = RecoveringReceiver(
                self.media_ssrc, self.payload_type, VIDEO_CLOCK, "vp8", self.rtx_ssrc,
                self.rtx_pt, self.fec_pt, self.ulpfec_pt, self.budget_s,
                sender_ssrc=self.ssrc, nack=self.nack, late_wait=self.late_wait)
        return rx

    def start_reports(self, interval: float = 0.5) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._reports(interval))]
            self._timer = PollTimer(self.poll, self.poll_interval)
            self._timer.at(None)

    async def _reports(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.send_rr()
            if self.waiting_keyframe and self.stats.pli_sent:
                self.request_keyframe()  # the earlier PLI may have been lost

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        super().close()

    # -- RTP --------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        if not self.media_ssrc:
            self.stats.foreign += 1
            return
        rx = self._receiver()
        now = time.monotonic()
        got = rx.feed(data, now)
        for pkt, _how in got:
            if not rx.stats.frames_expected:
                self._stream_start(rx, pkt, now)
            if self.waiting_keyframe:
                self._track_keyframe(pkt, now)
        self._sync_stats(rx)
        if self._timer is not None and rx.nack.pending:
            self._timer.at(rx.nack.next_due())

    def _stream_start(self, rx: RecoveringReceiver, pkt: bytes, now: float) -> None:
        """Before anything is played: when the earliest packet so far does not start a
        frame, the packet before it (the start of the first key frame, often) was lost
        before any later packet could show the hole, so NACK it, one step at a time."""
        seq = (pkt[2] << 8) | pkt[3]
        if self._start_seq is not None and (seq - self._start_seq) & 0xFFFF < 0x8000:
            return  # not before the earliest packet seen
        self._start_seq = seq
        b = rtp_bounds(pkt)
        try:
            desc = parse_descriptor(pkt[b[0] : b[1]]) if b else None
        except ValueError:
            return
        if desc is not None and not (desc.start and desc.partition_id == 0):
            rx.nack.add_holes_before(seq, 1, now)

    def _track_keyframe(self, pkt: bytes, now: float) -> None:
        """While waiting for a key frame, note when one is complete: :meth:`poll` then plays
        it at once instead of after the playout delay (the frames before it are useless),
        which takes a whole budget off every freeze."""
        b = rtp_bounds(pkt)
        if b is None:
            return
        seq, ts = (pkt[2] << 8) | pkt[3], int.from_bytes(pkt[4:8], "big")
        track = self._keys.get(ts)
        if track is None:
            if len(self._keys) >= 16:
                del self._keys[next(iter(self._keys))]
            track = self._keys[ts] = _KeyTrack(now)
        track.seqs.add(seq)
        track.first_at = min(track.first_at, now)
        if pkt[1] & 0x80:
            track.end = seq
        payload = pkt[b[0] : b[1]]
        try:
            desc = parse_descriptor(payload)
        except ValueError:
            return
        if desc.start and desc.partition_id == 0 and is_keyframe(payload[desc.size :]):
            track.start = seq
        if (track.start is not None and track.end is not None
                and len(track.seqs) == ((track.end - track.start) & 0xFFFF) + 1):
            self._key_ready = (ts, track.first_at)

    def _sync_stats(self, rx: RecoveringReceiver) -> None:
        st, r = self.stats, rx.stats
        st.packets, st.bytes, st.lost = r.received, r.received_bytes, rx.reception.lost
        st.late, st.duplicates, st.malformed, st.foreign = (r.late, r.duplicates, r.malformed,
                                                            r.foreign)
        st.recovered_rtx, st.recovered_fec = r.recovered_rtx, r.recovered_fec
        st.lost_after_recovery, st.nacks_sent, st.nack_seqs = (r.lost_after_recovery,
                                                               r.nacks_sent, r.nack_seqs)
        st.rtx_bytes, st.fec_bytes = r.rtx_bytes, r.fec_bytes
        st.jitter = rx.reception.jitter
        st.frames_expected = r.frames_expected

    def poll(self) -> float | None:
        """Play out due frames, send a due NACK, ask for a key frame when one is needed;
        returns when the next NACK is due (None: nothing pending)."""
        rx = self.receiver
        if rx is None:
            return None
        now = time.monotonic()
        early: list[Frame] = []
        early_vanished: list[int] = []
        if self._key_ready is not None:
            key_ts, key_at = self._key_ready
            # Frames after the key frame whose packets came no later than it would be
            # released too, before their recovery time is up: leave those to the schedule.
            later_first = all(t.first_at > key_at for ts, t in self._keys.items()
                              if 0 < (ts - key_ts) & 0xFFFF_FFFF < 0x8000_0000)
            # Not at start-up (nothing decoded yet): no freeze to shorten there.
            if (self.waiting_keyframe and rx.jitter is not None and later_first
                    and self._last_decoded_at is not None):
                early = rx.play_until(key_at + rx.jitter.target_delay)
                early_vanished = rx.vanished
            self._key_ready = None
            self._keys.clear()
        frames, nack, keyframe_needed = rx.poll(now)
        frames = early + frames
        if nack is not None:
            self.send(nack)
        self._sync_stats(rx)
        if rx.nack.rtt_samples:
            self.stats.rtt_ms = rx.nack.rtt * 1000
        vanished = early_vanished + rx.vanished
        for (ts, _key, payloads, complete), gone in zip(frames, vanished, strict=True):
            if gone:
                self._lost_sync()  # whole frames vanished: the references are gone
            self._on_played(ts, payloads, complete, now)
        if keyframe_needed and not self.waiting_keyframe:
            self._lost_sync()
        return rx.nack.next_due()

    def _on_played(self, ts: int, payloads: list[bytes], complete: bool, now: float) -> None:
        st = self.stats
        if not complete:
            st.frames_dropped += 1
            self._lost_sync()
            return
        try:
            parts = [p[parse_descriptor(p).size :] for p in payloads]
            picture_id = parse_descriptor(payloads[0]).picture_id
        except (ValueError, IndexError):
            st.malformed += 1
            st.frames_dropped += 1
            self._lost_sync()
            return
        data = b"".join(parts)
        st.frames_complete += 1
        self._on_frame(AssembledFrame(ts, data, is_keyframe(data), -1, -1, picture_id), now)

    def _on_frame(self, frame: AssembledFrame, now: float) -> None:
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
            self._decoded(1, now)
            return
        pictures = self.decoder.decode(frame.data)
        st.decode_errors = self.decoder.errors
        if not pictures:
            self._lost_sync()
            return
        self._decoded(len(pictures), now)
        self.last_size = self.decoder.last_size

    def _decoded(self, count: int, now: float) -> None:
        st = self.stats
        if self.decoder is not None:
            st.frames_decoded += count
        if self._last_decoded_at is not None:
            st.longest_freeze_ms = max(st.longest_freeze_ms,
                                       (now - self._last_decoded_at) * 1000)
        self._last_decoded_at = now
        self.frame_event.set()

    def _lost_sync(self) -> None:
        if not self.waiting_keyframe:
            self._keys.clear()
            self._key_ready = None
        self.waiting_keyframe = True
        self.request_keyframe()

    # -- RTCP -------------------------------------------------------------------------

    def request_keyframe(self, force: bool = False) -> bool:
        """Send a PLI unless one went out less than ``pli_interval`` ago."""
        if not self.send_pli(self.ssrc, self.media_ssrc, force):
            return False
        self.stats.pli_sent += 1
        return True

    def report_block(self) -> dict[str, int]:
        """The RR report block for our stream (RFC 3550 §6.4.1, A.3), direct arrivals only."""
        if self.receiver is None:
            return {"ssrc": self.media_ssrc}
        return self.receiver.report_block(time.monotonic())

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
                self._receiver().on_sr(_int(pkt, "ntp"), time.monotonic())

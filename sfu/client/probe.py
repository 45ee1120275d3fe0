"""Packet probes for loss-recovery measurements (bench/loss.py, tests).

``ProbePublisher`` sends a paced stream of equal packets whose payload starts with an
8-byte index and the 8-byte send time (``time.monotonic()``, big-endian double); every
packet carries the marker bit, so each is one frame. It answers the node's NACKs with RTX
and can add uplink SFU-RS FEC. ``ProbeSubscriber`` receives the subscription through a
:class:`~sfu.client.loss.RecoveringReceiver` (NACK, RTX, SFU-RS, ULPFEC) and records when
each index became available, directly or recovered; :meth:`ProbeSubscriber.result` turns
that into residual loss within a playout budget. Both accept the node's UDP address or a
``bench/lossy_link.py`` proxy in front of it as ``node``.

Byte counts are whole RTP datagrams (header included) unless a name says otherwise.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from sfu import _native
from sfu.client.loss import RS_FEC_PT, RTX_PT, ULPFEC_PT, RecoveringReceiver, rtp_bounds
from sfu.client.publisher import PollTimer, RecoveringSender, RtpEndpoint, random_ssrc
from sfu.client.subscriber import recovery_params

__all__ = ["ProbePublisher", "ProbeSubscriber"]

_HEAD = struct.Struct("!Qd")  # index, send time
_CODECS = {"video": ("VP8", 96, 90_000), "audio": ("opus", 111, 48_000)}


class ProbePublisher(RecoveringSender):
    """A paced packet source publishing one track (see the module docstring)."""

    def __init__(self, node: tuple[str, int], rate_pps: float = 200, size: int = 1000,
                 kind: str = "video", rtx: bool = True,
                 fec: tuple[int, int] | str | None = None) -> None:
        if kind not in _CODECS:
            raise ValueError(f"kind must be 'video' or 'audio', got {kind!r}")
        if not 0 < rate_pps <= 20_000:
            raise ValueError("rate_pps must be in (0, 20000]")
        if not _HEAD.size <= size <= 1400:
            raise ValueError(f"size must be in {_HEAD.size}..1400 (payload bytes)")
        codec, pt, clock = _CODECS[kind]
        super().__init__(node, "", "", ssrc=None, payload_type=pt, clock_rate=clock,
                         kind=kind, rtx=rtx, fec=fec,
                         history_packets=min(32768, max(1024, int(rate_pps * 2.5))))
        self.kind, self.codec = kind, codec
        self.rate_pps, self.size = rate_pps, size
        self.track: str | None = None
        self.room = ""
        self._index = 0
        self._seq = random_ssrc() & 0xFFFF
        self._ts_base = random_ssrc()
        self._filler = bytes(size - _HEAD.size)

    async def join(self, control: Any, room: str, participant: str,
                   bind_timeout: float = 5.0) -> str:
        """participant.join, STUN-bind through ``node``, track.publish; returns the track."""
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role="host")
        self.ufrag, self.pwd = joined["ice_ufrag"], joined["ice_pwd"]
        self.room, self.participant = room, participant
        _, pt, clock = _CODECS[self.kind]
        res = await self.open_bind_call(
            control, bind_timeout, "track.publish", room=room, participant=participant,
            kind=self.kind, codec=self.codec, payload_type=pt, clock_rate=clock,
            layers=[self.layer()])
        self.track = str(res["track"])
        return self.track

    def send_one(self) -> None:
        i = self._index
        self._index += 1
        ts = (self._ts_base + int(i * self.clock_rate / self.rate_pps)) & 0xFFFF_FFFF
        payload = _HEAD.pack(i, time.monotonic()) + self._filler
        header = struct.pack("!BBHII", 0x80, 0x80 | self.payload_type, self._seq, ts, self.ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        self._last_ts, self._last_ts_wall = ts, time.time()
        self.send_media(header + payload, len(payload))

    async def run(self, seconds: float, sr_interval: float = 1.0) -> None:
        """Send at ``rate_pps`` for ``seconds`` (absolute schedule, catching up after a
        stall), with an SR every ``sr_interval``; a pending FEC block is flushed at the end."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(seconds * self.rate_pps)
        first = self._index
        next_sr = start
        while self._index - first < total:
            now = loop.time()
            due = min(total, int((now - start) * self.rate_pps) + 1)
            while self._index - first < due:
                self.send_one()
            if now >= next_sr:
                self.send_sr()
                next_sr = now + sr_interval
            nxt = start + (self._index - first) / self.rate_pps
            await asyncio.sleep(max(0.0, nxt - loop.time()))
        self._flush_fec()
        self.send_sr()

    def stats(self) -> dict[str, Any]:
        st = self.counters
        return {
            "sent": self._index,
            "sent_bytes": self._index * (12 + self.size),
            "rtx_sent": st.rtx_sent,
            "rtx_bytes": st.rtx_bytes,
            "fec_sent": st.fec_sent,
            "fec_bytes": st.fec_bytes,
            "nacks_in": st.nacks_received,
            "nack_seqs_in": st.nack_seqs,
            "rtt_ms": st.rtt_ms or None,
        }


class _Span:
    """Sequence span and bytes of one received stream (what the sender must have sent)."""

    __slots__ = ("first", "highest", "packets", "bytes")

    def __init__(self) -> None:
        self.first: int | None = None
        self.highest = 0
        self.packets = 0
        self.bytes = 0

    def add(self, seq: int, size: int) -> None:
        if self.first is None:
            self.first = self.highest = seq + (1 << 16)
        else:
            h = self.highest
            ext = h + ((seq - h + 0x8000) & 0xFFFF) - 0x8000
            self.first = min(self.first, ext)
            self.highest = max(h, ext)
        self.packets += 1
        self.bytes += size

    def sent_bytes(self) -> float:
        """Bytes the sender emitted: the seq span times the mean size seen."""
        if self.first is None or not self.packets:
            return 0.0
        return (self.highest - self.first + 1) * self.bytes / self.packets


class ProbeSubscriber(RtpEndpoint):
    """Receives a probe track with loss recovery and measures on-time delivery."""

    def __init__(self, node: tuple[str, int], budget_s: float = 0.2, nack: bool = True,
                 rtx: bool = True, fec: str = "auto") -> None:
        super().__init__(node, "", "")
        self._recovery = recovery_params(nack, rtx, fec)  # validates fec
        self.budget_s = budget_s
        self.nack, self.rtx, self.fec = nack, rtx, fec
        self.ssrc = random_ssrc()
        self.receiver: RecoveringReceiver | None = None
        self.subscription: str | None = None
        self.rtcp_errors = 0
        self.rr_sent = 0
        self.fec_scheme = ""
        # index -> (send time, available at, how)
        self.available: dict[int, tuple[float, float, str]] = {}
        self.base_delay: float | None = None
        self._media = _Span()  # every seq on the media SSRC (in-band ULPFEC shares it)
        self._fec: dict[int, _Span] = {}  # FEC streams with their own SSRC
        self._inband = [0, 0]  # in-band FEC packets seen, bytes
        self._index_span: list[int] = []  # lowest, highest index seen
        self._media_seen = [0, 0]  # distinct media packets available, bytes
        self._rtx_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: PollTimer | None = None
        self._first_index: int | None = None

    async def join(self, control: Any, room: str, participant: str, track: str,
                   bind_timeout: float = 5.0) -> None:
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role="audience")
        self.ufrag, self.pwd = joined["ice_ufrag"], joined["ice_pwd"]
        res = await self.open_bind_call(control, bind_timeout, "track.subscribe", room=room,
                                        participant=participant, track=track,
                                        **self._recovery)
        self.subscription = str(res["subscription"])
        pt = int(res["payload_type"])
        clock = 48_000 if pt == 111 else 90_000
        rtx_ssrc = int(res["rtx_ssrc"]) if self.rtx and res.get("rtx_ssrc") else None
        self.fec_scheme = str(res.get("fec", ""))
        self.receiver = RecoveringReceiver(
            int(res["ssrc"]), pt, clock, None, rtx_ssrc,
            int(res.get("rtx_payload_type") or RTX_PT["audio" if pt == 111 else "video"]),
            int(res.get("fec_payload_type") or RS_FEC_PT),
            int(res.get("ulpfec_payload_type") or ULPFEC_PT), self.budget_s,
            sender_ssrc=self.ssrc, nack=self.nack)

    def start(self, report_interval: float = 0.5, poll_interval: float = 0.005) -> None:
        """Start the receiver-report and NACK loops."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._reports(report_interval))]
            self._timer = PollTimer(self._poll, poll_interval)
            self._timer.at(None)

    async def _reports(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            rx = self.receiver
            if rx is not None:
                rr = _native.build_rr(self.ssrc, [rx.report_block(time.monotonic())])
                self.send(rr + _native.build_sdes(self.ssrc, "probe"))
                self.rr_sent += 1

    def _poll(self) -> float | None:
        """Send the NACKs due now; returns when the next one is due."""
        rx = self.receiver
        if rx is None:
            return None
        _, nack, _ = rx.poll(time.monotonic())
        if nack is not None:
            self.send(nack)
        return rx.nack.next_due()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        super().close()

    # -- input ------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        rx = self.receiver
        if rx is None:
            self.garbage += 1
            return
        now = time.monotonic()
        pt = data[1] & 0x7F
        if len(data) >= 12 and pt in (rx.fec_pt, rx.ulpfec_pt):
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc == rx.media_ssrc:
                self._media.add((data[2] << 8) | data[3], len(data))
                self._inband[0] += 1
                self._inband[1] += len(data)
            else:
                self._fec.setdefault(ssrc, _Span()).add((data[2] << 8) | data[3], len(data))
        for pkt, how in rx.feed(data, now):
            self._on_media(pkt, how, now)
        if self._timer is not None and rx.nack.pending:
            self._timer.at(rx.nack.next_due())

    def _on_media(self, pkt: bytes, how: str, now: float) -> None:
        b = rtp_bounds(pkt)
        if b is None or b[1] - b[0] < _HEAD.size:
            return
        index, sent_at = _HEAD.unpack_from(pkt, b[0])
        self._media.add((pkt[2] << 8) | pkt[3], len(pkt))
        if self._first_index is None:
            self._index_span = [index, index]
            self._first_index = index
            self._nack_head(pkt, index, now)
        if index in self.available:
            return
        self.available[index] = (sent_at, now, how)
        lo, hi = self._index_span
        self._index_span = [min(lo, index), max(hi, index)]
        self._media_seen[0] += 1
        self._media_seen[1] += len(pkt)
        if how == "direct":
            transit = now - sent_at
            if self.base_delay is None or transit < self.base_delay:
                self.base_delay = transit

    def _nack_head(self, pkt: bytes, index: int, now: float) -> None:
        # The first packets of the stream may be lost before any later packet shows a
        # hole: the index says how many came before, so they are NACKed like holes.
        rx = self.receiver
        if rx is None or not 0 < index < 512:
            return
        seq = (pkt[2] << 8) | pkt[3]
        rx.nack.add_holes_before(seq, index, now)

    def on_rtcp(self, data: bytes) -> None:
        try:
            packets = _native.parse_rtcp(data)
        except ValueError:
            self.rtcp_errors += 1
            return
        rx = self.receiver
        for p in packets:
            if rx is not None and p["type"] == "sr" and p["ssrc"] == rx.media_ssrc:
                rx.on_sr(int(p["ntp"]), time.monotonic())  # type: ignore[call-overload]

    # -- result -----------------------------------------------------------------------

    def _sent_bytes(self) -> tuple[float, float]:
        """Media and FEC bytes the node sent us (lost ones included): media from the index
        span, FEC on its own SSRC from its seq span, in-band FEC from the seqs of the media
        SSRC that carried no media."""
        n, size = self._media_seen
        if not n:
            return 0.0, 0.0
        media_packets = self._index_span[1] - self._index_span[0] + 1
        media = media_packets * size / n
        fec = sum(s.sent_bytes() for s in self._fec.values())
        count, fec_size = self._inband
        if count:
            span = self._media.highest - (self._media.first or 0) + 1
            fec += max(0, span - media_packets) * fec_size / count  # resends counted once
        return media, fec

    def result(self, sent: int) -> dict[str, Any]:
        """On-time delivery of indices 0..sent-1 within base_delay + budget_s."""
        base = self.base_delay or 0.0
        direct = rtx = fec = late = 0
        for index, (sent_at, at, how) in self.available.items():
            if index >= sent:
                continue
            if at > sent_at + base + self.budget_s:
                late += 1
            if how == "direct":
                direct += 1
            elif how == "rtx":
                rtx += 1
            else:
                fec += 1
        available = direct + rtx + fec
        on_time = available - late
        rx = self.receiver
        rs = rx.stats if rx is not None else None
        media_bytes, fec_sent_bytes = self._sent_bytes()
        rtt = rx.nack.rtt * 1000 if rx is not None and rx.nack.rtt_samples else None
        return {
            "expected": sent,
            "on_time": on_time,
            "direct": direct,
            "recovered_rtx": rtx,
            "recovered_fec": fec,
            "late": late,
            "never": sent - available,
            "residual": 1.0 - on_time / sent if sent else 0.0,
            "media_bytes": round(media_bytes),
            "rtx_bytes": rs.rtx_bytes if rs else 0,
            "fec_bytes": rs.fec_bytes if rs else 0,
            "fec_sent_bytes": round(fec_sent_bytes),
            "fec_overhead": fec_sent_bytes / media_bytes if media_bytes else 0.0,
            "fec_scheme": (rs.fec_scheme if rs and rs.fec_scheme else self.fec_scheme),
            "nacks_sent": rs.nacks_sent if rs else 0,
            "nack_seqs": rs.nack_seqs if rs else 0,
            "lost_after_recovery": rs.lost_after_recovery if rs else 0,
            "base_delay_ms": base * 1000,
            "rtt_ms": rtt,
        }


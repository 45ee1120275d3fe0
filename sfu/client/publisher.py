"""Media endpoint (UDP + STUN binding) and the VP8 publisher.

A client talks to the node on one UDP socket connected to the node's media port: a
STUN Binding Request authenticated with the participant's ICE credentials binds the
socket's address to the participant (design.md §3), then RTP and RTCP flow on it.
Datagrams are demultiplexed on the first byte (RFC 7983) and, for RTP vs RTCP, on the
payload type byte (RFC 5761 §4: 192..223 is RTCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sfu import _native, stun
from sfu.client.media import EncodedFrame, Vp8Encoder
from sfu.client.vp8 import Vp8Packetizer

__all__ = ["Publisher", "PublisherStats", "RtpEndpoint", "SentFrame", "ntp_now", "random_ssrc"]

log = logging.getLogger(__name__)

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
VIDEO_CLOCK = 90_000


def ntp_now(wall: float | None = None) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of the wall clock."""
    t = time.time() if wall is None else wall
    return int((t + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def random_ssrc() -> int:
    while True:
        ssrc = int.from_bytes(os.urandom(4), "big")
        if ssrc:
            return ssrc


def _dicts(packet: dict[str, object], key: str) -> list[dict[str, int]]:
    """A list-of-dicts field of a parse_rtcp result, typed for the checker."""
    return cast(list[dict[str, int]], packet.get(key, []))


class _RtcpErrorCount(Protocol):
    rtcp_errors: int


def parse_rtcp_counted(data: bytes, stats: _RtcpErrorCount) -> list[dict[str, object]]:
    """The packets of an RTCP compound; a malformed one counts in ``stats.rtcp_errors`` and
    yields none (bad network input never raises into the event loop)."""
    try:
        return _native.parse_rtcp(data)
    except ValueError:
        stats.rtcp_errors += 1
        return []


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class RtpEndpoint(asyncio.DatagramProtocol):
    """A UDP socket connected to the node, bound to a participant with STUN."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str) -> None:
        self.node = node
        self.ufrag = ufrag
        self.pwd = pwd
        self.transport: asyncio.DatagramTransport | None = None
        self.mapped: tuple[str, int] | None = None  # our address as the node sees it
        self.garbage = 0  # datagrams we could not classify or parse
        self._stun_waiters: dict[bytes, asyncio.Future[stun.StunMessage]] = {}

    async def open(self, local_host: str = "127.0.0.1", rcvbuf: int = 2 << 20) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: self, local_addr=(local_host, 0), remote_addr=self.node
        )
        # Many endpoints share one loop (tests, demo); while PyAV decodes for one of
        # them the others' packets queue in the kernel. The default ~200 KiB buffer
        # overflows after a short stall on a busy machine, so ask for more (the kernel
        # caps it at net.core.rmem_max).
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport on every Python/loop.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the node may not be up yet; STUN retries.
        log.debug("udp error: %s", exc)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for fut in self._stun_waiters.values():
            if not fut.done():
                fut.cancel()

    async def bind(self, timeout: float = 5.0, retry: float = 0.1) -> tuple[str, int]:
        """Send Binding Requests until the node answers with a valid success response."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tid = os.urandom(12)
            fut: asyncio.Future[stun.StunMessage] = loop.create_future()
            self._stun_waiters[tid] = fut
            self.send(stun.binding_request(self.ufrag, self.pwd, tid))
            try:
                msg = await asyncio.wait_for(fut, min(retry, max(0.0, deadline - loop.time())))
            except TimeoutError:
                msg = None
            finally:
                self._stun_waiters.pop(tid, None)
            if msg is not None:
                if msg.msg_type != stun.BINDING_SUCCESS:
                    err = msg.error_code()
                    raise ConnectionRefusedError(f"STUN binding rejected: {err}")
                mapped = msg.xor_mapped_address()
                if mapped is None:
                    raise ConnectionError("STUN success without XOR-MAPPED-ADDRESS")
                self.mapped = mapped
                return mapped
            if loop.time() >= deadline:
                raise TimeoutError(f"no STUN binding response from {self.node} in {timeout}s")

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data:
            return
        first = data[0]
        if first < 4:
            self._on_stun(data)
        elif 128 <= first < 192 and len(data) >= 2:
            if 192 <= data[1] <= 223:
                self.on_rtcp(data)
            else:
                self.on_rtp(data)
        else:
            self.garbage += 1

    def _on_stun(self, data: bytes) -> None:
        try:
            msg = stun.parse(data)
        except ValueError:
            self.garbage += 1
            return
        fut = self._stun_waiters.get(msg.transaction_id)
        if fut is None or fut.done():
            return
        # Success responses are authenticated with our password (RFC 8489 §9.1.4);
        # errors carry no integrity (see stun.binding_error), so they are taken as is.
        if msg.msg_type == stun.BINDING_SUCCESS and not stun.verify_integrity(
            data, self.pwd.encode()
        ):
            self.garbage += 1
            return
        fut.set_result(msg)

    async def open_bind_call(self, control: Any, bind_timeout: float, method: str,
                             **params: Any) -> Any:
        """Open the socket, bind with STUN, then make one control call (the publish or
        subscribe this endpoint is for); the socket is closed if any step fails."""
        await self.open()
        try:
            await self.bind(bind_timeout)
            return await control.call(method, **params)
        except BaseException:
            self.close()
            raise

    def on_rtp(self, data: bytes) -> None:
        self.garbage += 1  # endpoints that receive media override this

    def on_rtcp(self, data: bytes) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SentFrame:
    timestamp: int  # RTP timestamp
    data: bytes
    keyframe: bool
    packets: int


@dataclass(slots=True)
class PublisherStats:
    frames: int = 0
    keyframes: int = 0
    packets: int = 0
    bytes: int = 0  # RTP payload octets (what SR counts)
    sr_sent: int = 0
    pli_received: int = 0
    fir_received: int = 0
    rr_received: int = 0
    rtcp_errors: int = 0
    last_rr: dict[str, int] = field(default_factory=dict)


class Publisher(RtpEndpoint):
    """Publishes one VP8 track of synthetic video; a PLI/FIR forces the next key frame."""

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
    ) -> None:
        super().__init__(node, ufrag, pwd)
        self.encoder = encoder
        self.ssrc = ssrc or random_ssrc()
        self.payload_type = payload_type
        self.packetizer = Vp8Packetizer(max_payload, int.from_bytes(os.urandom(2)) & 0x7FFF)
        self.stats = PublisherStats()
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
    ) -> Publisher:
        """Join ``room`` through the control client, bind with STUN and publish a track.

        ``control`` is an ``sfu.control.Client`` (anything with ``await call(method, **p)``).
        """
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        encoder = Vp8Encoder(width, height, fps, bitrate, keyframe_interval)
        pub = cls(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                  encoder, record=record)
        pub.room, pub.participant = room, participant
        res = await pub.open_bind_call(
            control, bind_timeout, "track.publish", room=room, participant=participant,
            kind="video", codec="VP8", payload_type=pub.payload_type, clock_rate=VIDEO_CLOCK,
            layers=[{"rid": "f", "ssrc": pub.ssrc}],
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
        for i, payload in enumerate(payloads):
            self.send(_native.build_rtp(self.payload_type, self._seq, ts, self.ssrc, payload,
                                        marker=i == last))
            self._seq = (self._seq + 1) & 0xFFFF
            self.stats.packets += 1
            self.stats.bytes += len(payload)
        self.stats.frames += 1
        self.stats.keyframes += frame.keyframe
        self._last_ts, self._last_ts_wall = ts, time.time()
        if self.record:
            self.sent.append(SentFrame(ts, frame.data, frame.keyframe, len(payloads)))
        return len(payloads)

    def send_next(self) -> list[EncodedFrame]:
        """Encode the next picture and send what the encoder produced."""
        frames = self.encoder.encode_next()
        for frame in frames:
            self.send_frame(frame)
        return frames

    def send_sr(self) -> None:
        wall = time.time()
        # Extrapolate the RTP clock to "now" so the SR pairs NTP and RTP time correctly.
        ts = (self._last_ts + int((wall - self._last_ts_wall) * VIDEO_CLOCK)) & 0xFFFF_FFFF
        sr = _native.build_sr(self.ssrc, ntp_now(wall), ts, self.stats.packets & 0xFFFF_FFFF,
                              self.stats.bytes & 0xFFFF_FFFF)
        self.send(sr + _native.build_sdes(self.ssrc, self.participant or "publisher"))
        self.stats.sr_sent += 1

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
            self.send_next()
            sent += 1
            now = loop.time()
            if now >= next_sr:
                self.send_sr()
                next_sr = now + sr_interval
            # Absolute schedule: a slow frame does not push every later frame back.
            await asyncio.sleep(max(0.0, start + sent * period - loop.time()))

    def on_rtcp(self, data: bytes) -> None:
        for pkt in parse_rtcp_counted(data, self.stats):
            kind = pkt["type"]
            if kind == "pli" and pkt["media_ssrc"] == self.ssrc:
                self.stats.pli_received += 1
                self._keyframe_wanted()
            elif kind == "fir" and any(e["ssrc"] == self.ssrc for e in _dicts(pkt, "entries")):
                self.stats.fir_received += 1
                self._keyframe_wanted()
            elif kind in ("rr", "sr"):
                for block in _dicts(pkt, "reports"):
                    if block["ssrc"] == self.ssrc:
                        self.stats.rr_received += 1
                        self.stats.last_rr = dict(block)

    def _keyframe_wanted(self) -> None:
        self.encoder.force_keyframe()
        self.keyframe_requested.set()

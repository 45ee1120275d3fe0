"""H.264 for clients: a libx264 encoder, the RFC 6184 payload format and a publisher.

Packetization mode 1 (RFC 6184 §6.3, non-interleaved): a NAL unit that fits ``max_payload``
goes alone (single NAL unit packet, §5.6), a larger one is cut into FU-A fragments (§5.8).
The depacketizer also takes STAP-A (§5.7.1), which other senders use for SPS + PPS. Access
units travel as Annex-B byte streams (start codes), the form libx264 emits, FFmpeg's decoder
takes and a browser's WebCodecs ``VideoDecoder`` accepts without a description.

Pure Python on purpose, like sfu/client/vp8.py: this is the client side (tests, demo).
"""

from __future__ import annotations

from typing import Any

import av

from sfu.client.media import PatternEncoder
from sfu.client.publisher import VIDEO_CLOCK, Publisher, parse_hostport, use_transport

__all__ = ["H264Depacketizer", "H264Encoder", "H264Packetizer", "H264Publisher",
           "NAL_FU_A", "NAL_IDR", "NAL_PPS", "NAL_SPS", "NAL_STAP_A", "annexb",
           "is_keyframe", "split_annexb"]

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_STAP_A, NAL_FU_A = 5, 6, 7, 8, 24, 28
H264_PT = 102
START_CODE = b"\x00\x00\x00\x01"


def split_annexb(stream: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (start codes of 3 or 4 bytes removed)."""
    out: list[bytes] = []
    n = len(stream)
    i = stream.find(b"\x00\x00\x01")
    if i < 0:
        return [stream] if stream else []
    start = i + 3
    while True:
        j = stream.find(b"\x00\x00\x01", start)
        if j < 0:
            nal = stream[start:n]
        else:
            # A 4-byte start code's leading zero belongs to it, not to the NAL before
            # (trailing zero bytes of a NAL are not allowed, §7.4.1.2.4 of H.264).
            nal = stream[start:j].rstrip(b"\x00")
        if nal:
            out.append(nal)
        if j < 0:
            return out
        start = j + 3


def annexb(nals: list[bytes]) -> bytes:
    return b"".join(START_CODE + nal for nal in nals)


def is_keyframe(access_unit: bytes) -> bool:
    """Whether an Annex-B access unit holds an IDR slice."""
    return any(nal[0] & 0x1F == NAL_IDR for nal in split_annexb(access_unit))


class H264Encoder(PatternEncoder):
    """Encodes the test pattern with libx264 (constrained baseline, zerolatency: one frame
    in, one frame out, no B-frames), Annex-B out with SPS/PPS before every IDR so a viewer
    can start at any keyframe. :meth:`force_keyframe` makes the next frame an IDR (the
    answer to a PLI)."""

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30,
                 bitrate: int = 800_000, keyframe_interval: int = 300, seed: int = 11) -> None:
        if "libx264" not in av.codecs_available:
            raise RuntimeError("PyAV was built without libx264: H.264 encoding is unavailable")
        super().__init__("libx264", {
            "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
            # A forced I frame must be an IDR (decoders restart only there), and scene cuts
            # in the synthetic pattern must not add unplanned ones.
            "forced-idr": "1", "x264-params": "repeat-headers=1:scenecut=0:bframes=0",
        }, width, height, fps, bitrate, keyframe_interval, seed,
            threads=1)  # frame threads would delay output by a frame each


class H264Packetizer:
    """RFC 6184 packetization mode 1: single NAL unit packets and FU-A fragments. The caller
    sets the RTP marker on the last payload of the access unit (§5.1)."""

    def __init__(self, max_payload: int = 1200) -> None:
        if max_payload < 3:
            raise ValueError("max_payload must leave room for the FU-A headers")
        self.max_payload = max_payload

    def packetize(self, access_unit: bytes) -> list[bytes]:
        nals = split_annexb(access_unit)
        if not nals:
            raise ValueError("h264: access unit without NAL units")
        out: list[bytes] = []
        for nal in nals:
            if len(nal) <= self.max_payload:
                out.append(nal)
                continue
            # FU indicator keeps F and NRI, type 28; FU header S/E/R + the NAL type (§5.8).
            indicator = bytes(((nal[0] & 0xE0) | NAL_FU_A,))
            nal_type = nal[0] & 0x1F
            body = memoryview(nal)[1:]
            budget = self.max_payload - 2
            count = -(-len(body) // budget)
            base, extra = divmod(len(body), count)  # balanced: no runt last fragment
            pos = 0
            for i in range(count):
                size = base + (1 if i < extra else 0)
                header = nal_type | (0x80 if i == 0 else 0) | (0x40 if i == count - 1 else 0)
                out.append(indicator + bytes((header,)) + body[pos:pos + size])
                pos += size
        return out


class H264Depacketizer:
    """RTP payloads in sequence order → NAL units. ``push`` returns the NAL units a payload
    completes; a FU-A that misses its start, or whose sequence numbers have a gap, is
    dropped (``dropped`` counts it). Malformed payloads raise ``ValueError``."""

    def __init__(self) -> None:
        self._fu: bytearray | None = None
        self._fu_seq = -1
        self.dropped = 0

    def reset(self) -> None:
        if self._fu is not None:
            self.dropped += 1
        self._fu = None

    def push(self, payload: bytes, seq: int | None = None) -> list[bytes]:
        if not payload:
            raise ValueError("h264: empty payload")
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self.reset()
            return [bytes(payload)]
        if kind == NAL_STAP_A:
            self.reset()
            nals, pos = [], 1
            while pos < len(payload):
                if pos + 2 > len(payload):
                    raise ValueError("h264: STAP-A size field truncated")
                size = int.from_bytes(payload[pos:pos + 2], "big")
                pos += 2
                if size == 0 or pos + size > len(payload):
                    raise ValueError("h264: STAP-A unit beyond the payload")
                nals.append(bytes(payload[pos:pos + size]))
                pos += size
            if not nals:
                raise ValueError("h264: empty STAP-A")
            return nals
        if kind == NAL_FU_A:
            if len(payload) < 3:
                raise ValueError("h264: FU-A without data")
            header = payload[1]
            start, end = bool(header & 0x80), bool(header & 0x40)
            if start:
                self.reset()
                self._fu = bytearray(((payload[0] & 0xE0) | (header & 0x1F),))
            elif self._fu is None or (seq is not None and seq != (self._fu_seq + 1) & 0xFFFF):
                self._fu = None  # the rest of a broken NAL, or a fragment without start
                self.dropped += 1
                return []
            assert self._fu is not None
            self._fu += payload[2:]
            self._fu_seq = -1 if seq is None else seq
            if end:
                nal, self._fu = bytes(self._fu), None
                return [nal]
            return []
        raise ValueError(f"h264: unsupported NAL/packet type {kind}")


class H264Publisher(Publisher):
    """Publishes one H.264 track of synthetic video over a STUN-bound ``RtpEndpoint``
    socket; a PLI or FIR makes the next frame an IDR, NACKs are answered with RTX and
    sender reports go out as for VP8 (everything but the codec is ``Publisher``'s)."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, encoder: H264Encoder, *,
                 ssrc: int | None = None, payload_type: int = H264_PT,
                 max_payload: int = 1200, record: bool = False, rtx: bool = True) -> None:
        # Publisher only needs fps, encode_next and force_keyframe of its encoder.
        plain: Any = encoder
        super().__init__(node, ufrag, pwd, plain, ssrc=ssrc, payload_type=payload_type,
                         max_payload=max_payload, record=record, rtx=rtx)
        self.packetizer: Any = H264Packetizer(max_payload)

    @classmethod
    async def join_h264(cls, control: Any, room: str, participant: str, *,
                        role: str = "cohost", width: int = 640, height: int = 360,
                        fps: int = 30, bitrate: int = 800_000, keyframe_interval: int = 300,
                        max_payload: int = 1200, bind_timeout: float = 5.0,
                        transport: str = "udp") -> H264Publisher:
        """Join ``room``, bind with STUN and publish the H.264 track (``control``: anything
        with ``await call(method, **params)``; ``transport="quic"``: RTP over QUIC)."""
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        encoder = H264Encoder(width, height, fps, bitrate, keyframe_interval)
        pub = cls(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                  encoder, max_payload=max_payload)
        pub.room, pub.participant = room, participant
        use_transport(pub, transport, joined, room, participant)
        res = await pub.open_bind_call(
            control, bind_timeout, "track.publish", room=room, participant=participant,
            kind="video", codec="H264", payload_type=pub.payload_type,
            clock_rate=VIDEO_CLOCK, layers=[pub.layer()])
        pub.track = res["track"]
        return pub

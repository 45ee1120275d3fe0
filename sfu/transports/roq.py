"""RTP over QUIC wire pieces shared by the node and the client (draft-ietf-avtcore-rtp-over-quic).

- A DATAGRAM frame (RFC 9221) carries ``flow id (varint) || one RTP or RTCP packet``.
- A RoQ stream (unidirectional) starts with the flow id (varint), then carries packets, each
  as ``length (varint) || packet``. We use it for what must not be lost: keyframe packets and
  packets larger than the path's datagram size.
- The session's signalling is ours, not the draft's: the client's first bidirectional stream
  carries ``length (varint) || msgpack map`` frames. The first client frame is ``auth``
  (room, participant, token); nothing else is accepted, and no media flows, before the node
  answers ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

ALPN = "roq"
DEFAULT_FLOW_ID = 0
MAX_CONTROL_FRAME = 64 * 1024
MAX_STREAM_PACKET = 64 * 1024
# QUIC short header (1 + DCID up to 20 + 4-byte PN) + DATAGRAM type + AEAD tag; the flow id
# comes on top. Used to size packets before they are queued.
SHORT_HEADER_MAX = 1 + 20 + 4
DATAGRAM_FRAME_TYPE = 1
AEAD_TAG = 16


class RoqError(ValueError):
    """Malformed RoQ framing from the network (dropped and counted, never raised further)."""


def encode_varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value < 1 << 62:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint {value} does not fit 62 bits")


def decode_varint(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """``(value, next offset)``; RoqError if the bytes end inside the varint."""
    if offset >= len(data):
        raise RoqError("varint: no bytes")
    first = data[offset]
    size = 1 << (first >> 6)
    if offset + size > len(data):
        raise RoqError("varint: truncated")
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[offset + i]
    return value, offset + size


def datagram_overhead(dcid_len: int, flow_id: int = DEFAULT_FLOW_ID) -> int:
    """Bytes a QUIC packet adds around one RTP packet sent as a RoQ datagram."""
    return 1 + dcid_len + 4 + DATAGRAM_FRAME_TYPE + len(encode_varint(flow_id)) + AEAD_TAG


class FrameReader:
    """Reassembles ``length (varint) || body`` frames from stream data of any chunking."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while self._buf:
            try:
                size, off = decode_varint(self._buf)
            except RoqError:
                return  # the length itself is still incomplete
            if size > self.limit:
                raise RoqError(f"frame of {size} bytes exceeds {self.limit}")
            if len(self._buf) < off + size:
                return
            body = bytes(self._buf[off:off + size])
            del self._buf[:off + size]
            yield body


class RoqStreamReader:
    """A RoQ media stream: the flow id first, then length-prefixed packets."""

    def __init__(self) -> None:
        self.flow_id: int | None = None
        self._head = bytearray()
        self._frames = FrameReader(MAX_STREAM_PACKET)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.flow_id is None:
            self._head += data
            try:
                self.flow_id, off = decode_varint(self._head)
            except RoqError:
                if len(self._head) >= 8:
                    raise
                return
            data = bytes(self._head[off:])
            self._head.clear()
        yield from self._frames.feed(data)


def control_frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message)
    return encode_varint(len(body)) + body


def decode_control(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=4096,
                              max_str_len=4096, max_array_len=256, max_map_len=64)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise RoqError(f"control frame is not msgpack: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise RoqError("control frame must be a map with a 'type'")
    return obj


def stream_packet(packet: bytes) -> bytes:
    return encode_varint(len(packet)) + packet

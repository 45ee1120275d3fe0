"""RoQ framing: varints (RFC 9000 §16), length-prefixed frames in any chunking, the control
frames, and malformed input raising RoqError (which the transport drops and counts)."""

from __future__ import annotations

import msgpack
import pytest

from sfu.transports import roq


@pytest.mark.parametrize("value,encoded", [
    (0, "00"), (37, "25"), (63, "3f"), (64, "4040"), (15293, "7bbd"), (16383, "7fff"),
    (16384, "80004000"), (494878333, "9d7f3e7d"), (151288809941952652, "c2197c5eff14e88c"),
])
def test_varint_rfc9000_vectors(value: int, encoded: str) -> None:
    assert roq.encode_varint(value).hex() == encoded
    assert roq.decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


def test_varint_limits_and_truncation() -> None:
    with pytest.raises(ValueError):
        roq.encode_varint(1 << 62)
    with pytest.raises(roq.RoqError):
        roq.decode_varint(b"")
    with pytest.raises(roq.RoqError):
        roq.decode_varint(bytes.fromhex("9d7f3e"))  # 4-byte varint, 3 bytes


def test_frames_reassemble_from_any_chunking() -> None:
    packets = [bytes([i]) * n for i, n in enumerate((1, 63, 64, 300, 1500))]
    wire = b"".join(roq.stream_packet(p) for p in packets)
    for step in (1, 2, 7, 64, len(wire)):
        reader = roq.FrameReader(roq.MAX_STREAM_PACKET)
        out = [f for i in range(0, len(wire), step) for f in reader.feed(wire[i:i + step])]
        assert out == packets


def test_roq_stream_reads_flow_id_first() -> None:
    reader = roq.RoqStreamReader()
    wire = roq.encode_varint(300) + roq.stream_packet(b"abc") + roq.stream_packet(b"de")
    out = [p for b in wire for p in reader.feed(bytes([b]))]
    assert reader.flow_id == 300
    assert out == [b"abc", b"de"]


def test_oversized_frame_is_refused() -> None:
    reader = roq.FrameReader(100)
    with pytest.raises(roq.RoqError):
        list(reader.feed(roq.encode_varint(101) + b"x"))


def test_control_frames() -> None:
    frame = roq.control_frame({"type": "auth", "room": "r"})
    (body,) = list(roq.FrameReader(roq.MAX_CONTROL_FRAME).feed(frame))
    assert roq.decode_control(body) == {"type": "auth", "room": "r"}
    for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"no": "type"}),
                msgpack.packb({"type": 3})):
        with pytest.raises(roq.RoqError):
            roq.decode_control(bad)


def test_datagram_overhead() -> None:
    # short header 1 + 8-byte DCID + 4-byte PN, DATAGRAM type, 1-byte flow id, AEAD tag
    assert roq.datagram_overhead(8) == 1 + 8 + 4 + 1 + 1 + 16
    assert roq.datagram_overhead(8, flow_id=64) == roq.datagram_overhead(8) + 1

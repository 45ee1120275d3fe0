"""Pure-Python RTP reference parser/builder (RFC 3550 §5.1, RFC 8285 header extensions).

Written for clarity, not speed: every check is explicit and raises ``ValueError``
with a message naming the defect. ``parse`` returns the same dict keys as
``sfu._native.parse_rtp`` so the two can be compared directly.
"""

import random
import struct
from collections.abc import Iterator
from typing import Any

RTP_HEADER = 12
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 §4.2
TWO_BYTE_PROFILE_MASK = 0xFFF0  # RFC 8285 §4.3: 0x100 followed by 4 "appbits"
TWO_BYTE_PROFILE = 0x1000


def iter_extensions(profile: int, block: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (id, value) of an RFC 8285 extension block in wire order.

    ``block`` is the bytes after the 4-byte extension header. Unknown profiles yield
    nothing (the block is opaque, RFC 3550 §5.3.1). Padding bytes (id 0) are skipped;
    an element running past the block raises ``ValueError`` when reached.
    """
    i = 0
    n = len(block)
    if profile == ONE_BYTE_PROFILE:
        while i < n:
            b = block[i]
            ext_id, length = b >> 4, (b & 0x0F) + 1
            if ext_id == 0:
                # RFC 8285 §4.2: padding byte; its length nibble must be 0 but we
                # only need to skip one byte.
                i += 1
                continue
            if ext_id == 15:
                # RFC 8285 §4.2: id 15 stops processing of the whole block.
                break
            if i + 1 + length > n:
                raise ValueError("rtp extension element overruns extension block")
            yield ext_id, bytes(block[i + 1 : i + 1 + length])
            i += 1 + length
    elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        while i < n:
            ext_id = block[i]
            if ext_id == 0:
                i += 1
                continue
            if i + 2 > n:
                raise ValueError("rtp extension element overruns extension block")
            length = block[i + 1]
            if i + 2 + length > n:
                raise ValueError("rtp extension element overruns extension block")
            yield ext_id, bytes(block[i + 2 : i + 2 + length])
            i += 2 + length


def parse_extensions(profile: int, block: bytes) -> dict[int, bytes]:
    """All elements of a block; the first occurrence of a repeated id wins, which is
    what a lazy by-id lookup (``rtp_extension``) returns."""
    out: dict[int, bytes] = {}
    for ext_id, value in iter_extensions(profile, block):
        out.setdefault(ext_id, value)
    return out


def parse(data: bytes, elements: bool = True) -> dict[str, object]:
    """Parse one RTP packet; checks run in wire order (version, CSRCs, ext, padding).

    With ``elements=False`` the extension block is located but not decoded (what the
    engine's data path does: elements are only looked up lazily, by id).
    """
    n = len(data)
    if n < RTP_HEADER:
        raise ValueError("rtp packet shorter than the fixed header")
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data, 0)
    version = b0 >> 6
    if version != 2:
        raise ValueError(f"rtp version {version} != 2")
    padding = bool(b0 & 0x20)
    extension = bool(b0 & 0x10)
    cc = b0 & 0x0F
    pos = RTP_HEADER + 4 * cc
    if pos > n:
        raise ValueError("rtp csrc list overruns packet")
    csrcs = list(struct.unpack_from(f"!{cc}I", data, RTP_HEADER))
    ext_profile: int | None = None
    extensions: dict[int, bytes] = {}
    if extension:
        if pos + 4 > n:
            raise ValueError("rtp extension header overruns packet")
        ext_profile, words = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + 4 * words > n:
            raise ValueError("rtp extension length overruns packet")
        ext_block = bytes(data[pos : pos + 4 * words])
        pos += 4 * words
    padding_size = 0
    if padding:
        if n == pos:
            raise ValueError("rtp padding bit set but no padding octet")
        padding_size = data[-1]
        if padding_size == 0:
            raise ValueError("rtp padding count is zero")
        if padding_size > n - pos:
            raise ValueError("rtp padding larger than payload")
    if extension and elements:
        assert ext_profile is not None
        extensions = parse_extensions(ext_profile, ext_block)
    return {
        "version": version,
        "padding": padding,
        "extension": extension,
        "csrc_count": cc,
        "marker": bool(b1 & 0x80),
        "payload_type": b1 & 0x7F,
        "sequence_number": seq,
        "timestamp": ts,
        "ssrc": ssrc,
        "csrcs": csrcs,
        "ext_profile": ext_profile,
        "extensions": extensions,
        "header_size": pos,
        "payload_size": n - pos - padding_size,
        "padding_size": padding_size,
        "payload": bytes(data[pos : n - padding_size]),
    }


def extension(data: bytes, ext_id: int) -> bytes | None:
    """What ``rtp_extension`` must return: the first element with ``ext_id`` or None.

    Lazy like the native lookup: only elements before the match are examined, so a
    defect after it is not noticed; one before it raises ``ValueError``.
    """
    p = parse(data, elements=False)
    if not p["extension"]:
        return None
    start = RTP_HEADER + 4 * int(p["csrc_count"])  # type: ignore[call-overload]
    block = bytes(data[start + 4 : int(p["header_size"])])  # type: ignore[call-overload]
    for found, value in iter_extensions(int(p["ext_profile"]), block):  # type: ignore[call-overload]
        if found == ext_id:
            return value
    return None


def build_extension_block(extensions: dict[int, bytes], two_byte: bool | None = None) -> bytes:
    """Build the ext header + elements, one-byte form when every element allows it."""
    if not extensions:
        return b""
    if two_byte is None:
        two_byte = any(not 1 <= i <= 14 or not 1 <= len(v) <= 16 for i, v in extensions.items())
    body = bytearray()
    for ext_id, value in extensions.items():
        if two_byte:
            if not 1 <= ext_id <= 255 or len(value) > 255:
                raise ValueError("two-byte extension id/length out of range")
            body += bytes((ext_id, len(value))) + value
        else:
            if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
                raise ValueError("one-byte extension id/length out of range")
            body += bytes(((ext_id << 4) | (len(value) - 1),)) + value
    body += b"\x00" * (-len(body) % 4)
    profile = TWO_BYTE_PROFILE if two_byte else ONE_BYTE_PROFILE
    return struct.pack("!HH", profile, len(body) // 4) + bytes(body)


def build(
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    csrcs: list[int] | None = None,
    extensions: dict[int, bytes] | None = None,
    padding: int = 0,
    two_byte: bool | None = None,
    raw_extension: tuple[int, bytes] | None = None,
) -> bytes:
    """Mirror of ``sfu._native.build_rtp`` (plus knobs to force forms for tests).

    ``raw_extension`` = (profile, block) writes an arbitrary extension block
    (length must be a multiple of 4).
    """
    csrcs = csrcs or []
    if len(csrcs) > 15 or not 0 <= padding <= 255 or not 0 <= payload_type <= 127:
        raise ValueError("field out of range")
    if raw_extension is not None:
        profile, block = raw_extension
        if len(block) % 4:
            raise ValueError("extension block must be a multiple of 4 bytes")
        ext = struct.pack("!HH", profile, len(block) // 4) + block
    else:
        ext = build_extension_block(extensions or {}, two_byte)
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | payload_type
    out = struct.pack("!BBHII", b0, b1, sequence_number, timestamp, ssrc)
    out += struct.pack(f"!{len(csrcs)}I", *csrcs) + ext + payload
    if padding:
        out += b"\x00" * (padding - 1) + bytes((padding,))
    return out


def random_args(rng: random.Random) -> dict[str, Any]:
    """Keyword arguments for ``build``/``build_rtp``: a random valid packet's fields."""
    n_ext = rng.choice((0, 0, 1, 2, 4))
    two_byte = rng.random() < 0.3
    extensions: dict[int, bytes] = {}
    for _ in range(n_ext):
        if two_byte:
            extensions[rng.randint(1, 255)] = rng.randbytes(rng.randint(0, 20))
        else:
            extensions[rng.randint(1, 14)] = rng.randbytes(rng.randint(1, 16))
    return {
        "payload_type": rng.randint(0, 127),
        "sequence_number": rng.randint(0, 0xFFFF),
        "timestamp": rng.getrandbits(32),
        "ssrc": rng.getrandbits(32),
        "payload": rng.randbytes(rng.choice((0, 1, 3, 20, 160, 1200))),
        "marker": rng.random() < 0.5,
        "csrcs": [rng.getrandbits(32) for _ in range(rng.choice((0, 0, 1, 3, 15)))],
        "extensions": extensions,
        "padding": rng.choice((0, 0, 1, 4, 255)),
    }

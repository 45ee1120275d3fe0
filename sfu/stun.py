"""STUN (RFC 8489) codec: just what ICE-lite binding needs, pure Python.

Used by the node (transports/udp.py) to authenticate Binding Requests and by the client
library to send them. Parsing is strict: anything malformed raises ``ValueError`` and the
caller drops the datagram.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_SIZE = 20

# Message types (method | class bits), RFC 8489 §5.
BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

# Attribute types, RFC 8489 §18.3 and RFC 8445 §16.1.
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A

_FINGERPRINT_XOR = 0x5354554E
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


@dataclass(slots=True)
class StunMessage:
    """A parsed STUN message; attributes keep wire order and raw (unpadded) values."""

    msg_type: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, attr_type: int) -> bytes | None:
        """The first attribute of this type (later duplicates are ignored, RFC 8489 §14)."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    def username(self) -> str | None:
        value = self.get(USERNAME)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def xor_mapped_address(self) -> tuple[str, int] | None:
        value = self.get(XOR_MAPPED_ADDRESS)
        return None if value is None else decode_xor_address(value, self.transaction_id)

    def error_code(self) -> tuple[int, str] | None:
        value = self.get(ERROR_CODE)
        if value is None or len(value) < 4:
            return None
        code = (value[2] & 0x07) * 100 + value[3]
        return code, value[4:].decode("utf-8", "replace")

    @property
    def is_request(self) -> bool:
        return self.msg_type & 0x0110 == 0x0000


def is_stun(data: bytes) -> bool:
    """Cheap demux test (RFC 7983: first byte 0..3 and the magic cookie)."""
    return len(data) >= HEADER_SIZE and data[0] < 4 and data[4:8] == _COOKIE_BYTES


def parse(data: bytes) -> StunMessage:
    """Parse a STUN message; raises ValueError naming the defect."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"stun: {len(data)} bytes is shorter than the 20-byte header")
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type & 0xC000:
        raise ValueError("stun: the two most significant bits must be zero")
    if data[4:8] != _COOKIE_BYTES:
        raise ValueError("stun: bad magic cookie")
    if length % 4:
        raise ValueError(f"stun: message length {length} is not a multiple of 4")
    if HEADER_SIZE + length != len(data):
        raise ValueError(f"stun: message length {length} does not match {len(data) - 20} bytes")
    attributes: list[tuple[int, bytes]] = []
    pos = HEADER_SIZE
    end = HEADER_SIZE + length
    while pos < end:
        if pos + 4 > end:
            raise ValueError("stun: truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + attr_len > end:
            raise ValueError(f"stun: attribute 0x{attr_type:04x} length {attr_len} overruns")
        attributes.append((attr_type, bytes(data[pos:pos + attr_len])))
        pos += (attr_len + 3) & ~3
    if pos != end:
        raise ValueError("stun: attribute padding overruns the message")
    return StunMessage(msg_type, bytes(data[8:20]), attributes)


def _attr_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset of attribute header, value length) for each attribute; data pre-parsed."""
    out: list[tuple[int, int, int]] = []
    pos = HEADER_SIZE
    end = min(len(data), HEADER_SIZE + struct.unpack_from("!H", data, 2)[0])
    while pos + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        out.append((attr_type, pos, attr_len))
        pos += 4 + ((attr_len + 3) & ~3)
    return out


def _with_length(data: bytes, offset: int, length: int) -> bytes:
    """The first ``offset`` bytes with the header length field set to ``length``."""
    return data[:2] + struct.pack("!H", length) + data[4:offset]


def verify_integrity(data: bytes, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY (RFC 8489 §14.5/6).

    The HMAC covers the message up to the attribute, with the header length adjusted to end
    just after it. Attributes after the MAC other than FINGERPRINT make the message invalid.
    """
    try:
        parse(data)
    except ValueError:
        return False
    offsets = _attr_offsets(data)
    # Prefer the stronger MAC when both are present (RFC 8489 §14.6).
    for wanted, digest in ((MESSAGE_INTEGRITY_SHA256, hashlib.sha256),
                           (MESSAGE_INTEGRITY, hashlib.sha1)):
        for i, (attr_type, pos, attr_len) in enumerate(offsets):
            if attr_type != wanted:
                continue
            if wanted == MESSAGE_INTEGRITY and attr_len != 20:
                return False
            # SHA256 may be truncated to ≥16 bytes in multiples of 4.
            if wanted == MESSAGE_INTEGRITY_SHA256 and not (
                    16 <= attr_len <= 32 and attr_len % 4 == 0):
                return False
            if any(t != FINGERPRINT for t, _, _ in offsets[i + 1:]):
                return False
            covered = _with_length(data, pos, pos + 4 + attr_len - HEADER_SIZE)
            mac = hmac.new(key, covered, digest).digest()[:attr_len]
            return hmac.compare_digest(mac, data[pos + 4:pos + 4 + attr_len])
    return False


def verify_fingerprint(data: bytes) -> bool:
    """True if the message ends with a correct FINGERPRINT attribute (RFC 8489 §14.7)."""
    try:
        parse(data)
    except ValueError:
        return False
    offsets = _attr_offsets(data)
    if not offsets:
        return False
    attr_type, pos, attr_len = offsets[-1]
    if attr_type != FINGERPRINT or attr_len != 4:
        return False
    expected = (zlib.crc32(data[:pos]) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return struct.unpack_from("!I", data, pos + 4)[0] == expected


def has_fingerprint(msg: StunMessage) -> bool:
    return any(t == FINGERPRINT for t, _ in msg.attributes)


# -- encoding -----------------------------------------------------------------------------


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 8489 §14.2) for an IPv4 or IPv6 address."""
    ip = ipaddress.ip_address(host)
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = int.from_bytes(ip.packed, "big") ^ MAGIC_COOKIE
        return struct.pack("!BBHI", 0, _FAMILY_IPV4, xport, xaddr)
    mask = _COOKIE_BYTES + transaction_id
    xaddr6 = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=True))
    return struct.pack("!BBH", 0, _FAMILY_IPV6, xport) + xaddr6


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """(host, port) from an XOR-MAPPED-ADDRESS value; raises ValueError if malformed."""
    if len(value) < 4:
        raise ValueError("stun: XOR-MAPPED-ADDRESS too short")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    if family == _FAMILY_IPV4 and len(value) == 8:
        raw = struct.unpack_from("!I", value, 4)[0] ^ MAGIC_COOKIE
        return str(ipaddress.IPv4Address(raw)), port
    if family == _FAMILY_IPV6 and len(value) == 20:
        mask = _COOKIE_BYTES + transaction_id
        raw6 = bytes(a ^ b for a, b in zip(value[4:], mask, strict=True))
        return str(ipaddress.IPv6Address(raw6)), port
    raise ValueError(f"stun: bad XOR-MAPPED-ADDRESS family {family} / length {len(value)}")


def encode(
    msg_type: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]],
    *,
    integrity_key: bytes | None = None,
    integrity_sha256: bool = False,
    fingerprint: bool = True,
    padding: bytes = b"\x00",
) -> bytes:
    """Serialize a message, appending MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT last.

    ``padding`` is the pad byte (any value is legal; RFC 5769 vectors use spaces).
    """
    if len(transaction_id) != 12:
        raise ValueError("stun: transaction id must be 12 bytes")
    body = bytearray()
    for attr_type, value in attributes:
        body += struct.pack("!HH", attr_type, len(value)) + value
        body += padding * (-len(value) % 4)
    header = struct.pack("!HH", msg_type, 0) + _COOKIE_BYTES + transaction_id
    if integrity_key is not None:
        kind, digest, size = ((MESSAGE_INTEGRITY_SHA256, hashlib.sha256, 32) if integrity_sha256
                              else (MESSAGE_INTEGRITY, hashlib.sha1, 20))
        covered = struct.pack("!HH", msg_type, len(body) + 4 + size) + header[4:] + body
        body += struct.pack("!HH", kind, size) + hmac.new(integrity_key, covered, digest).digest()
    if fingerprint:
        covered = struct.pack("!HH", msg_type, len(body) + 8) + header[4:] + body
        crc = (zlib.crc32(covered) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
        body += struct.pack("!HHI", FINGERPRINT, 4, crc)
    return struct.pack("!HH", msg_type, len(body)) + header[4:] + bytes(body)


def binding_request(
    username: str, password: str, transaction_id: bytes | None = None,
    *, priority: int | None = None, controlling: bool = True,
) -> bytes:
    """A Binding Request with USERNAME, MESSAGE-INTEGRITY (short-term credentials:
    key = password; SASLprep of ASCII is the identity) and FINGERPRINT."""
    tid = os.urandom(12) if transaction_id is None else transaction_id
    attrs: list[tuple[int, bytes]] = [(USERNAME, username.encode("utf-8"))]
    if priority is not None:
        attrs.append((PRIORITY, struct.pack("!I", priority)))
    if controlling:
        attrs.append((ICE_CONTROLLING, os.urandom(8)))
    return encode(BINDING_REQUEST, tid, attrs, integrity_key=password.encode("utf-8"))


def binding_success(
    request: StunMessage, host: str, port: int, password: str | None,
    *, software: str | None = None, padding: bytes = b"\x00",
) -> bytes:
    """Binding success response echoing the transaction id, with XOR-MAPPED-ADDRESS
    (IPv4 or IPv6), MESSAGE-INTEGRITY keyed with ``password`` (if given) and FINGERPRINT."""
    attrs: list[tuple[int, bytes]] = []
    if software is not None:
        attrs.append((SOFTWARE, software.encode("utf-8")))
    attrs.append((XOR_MAPPED_ADDRESS, encode_xor_address(host, port, request.transaction_id)))
    key = None if password is None else password.encode("utf-8")
    return encode(BINDING_SUCCESS, request.transaction_id, attrs, integrity_key=key,
                  padding=padding)


def binding_error(request: StunMessage, code: int, reason: str) -> bytes:
    """Binding error response with ERROR-CODE (RFC 8489 §14.8) and FINGERPRINT. It carries
    no MESSAGE-INTEGRITY: a 401 is sent exactly when the sender's key is not trusted."""
    if not 300 <= code <= 699:
        raise ValueError(f"stun: error code {code} out of range 300..699")
    value = struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")
    return encode(BINDING_ERROR, request.transaction_id, [(ERROR_CODE, value)])

"""Wire format of data messages: RTCP APP packets (RFC 3550 §6.7) named ``SFUD``.

Byte 0 is ``0x80 | subtype`` (``| 0x20`` when RTCP padding brings the packet to a multiple
of 4 bytes), byte 1 is PT 204, then the length in 32-bit words minus one, an SSRC, the name
and a msgpack payload (docs/data.md "Wire format"). Node-to-client messages are packed
once (``pack_message``) and then only concatenated into batches, so a batch for a group of
viewers costs a ``bytes.join``, not a re-encode.

Every ``decode_*``/``parse_*`` function raises only ``WireError`` (a ``ValueError``) and
enforces size and shape limits: the payload comes from the network.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

__all__ = [
    "BATCH", "BATCH_TARGET", "MAX_EXTRA_BYTES", "MAX_MESSAGE_BYTES", "MAX_NACK", "MAX_PAYLOAD",
    "MAX_STATE_PARTS", "MAX_TEXT", "MSG", "NACK", "NAME", "SETTINGS", "STATE", "WireError",
    "build_app",
    "build_batches", "build_msg", "build_nack", "build_settings", "build_state",
    "check_extra", "decode_batch", "decode_msg", "decode_nack", "decode_settings",
    "decode_state", "has_sfud", "pack_message", "parse_app",
]

MSG, BATCH, NACK, SETTINGS, STATE = 0, 1, 2, 3, 4
NAME = b"SFUD"
PT_APP = 204
MAX_PAYLOAD = 1400  # the engine drops larger inbound payloads as malformed
BATCH_TARGET = 1100  # batches are split to stay under this payload size
# One message alone may exceed BATCH_TARGET (500 CJK characters are 1500 UTF-8 bytes) but
# must fit one datagram: header 12 + batch overhead <= 20 + padding 3 stays under 1500.
MAX_MESSAGE_BYTES = 1360
MAX_TEXT = 500  # characters
MAX_KIND = 32
MAX_ID = 128  # participant ids, track ids, roles
MAX_EXTRA_BYTES = 2048  # packed
MAX_EXTRA_DEPTH = 8
MAX_NACK = 64  # priority indices per NACK packet
MAX_BATCH_MESSAGES = 256
MAX_CAP = 100
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_I53 = (1 << 53) - 1  # counts and indices stay exact in every client language


class WireError(ValueError):
    """A malformed or over-limit data packet (network input: the caller drops and counts)."""


_HEADER = struct.Struct("!BBHI4s")
_UNPACK_LIMITS: dict[str, Any] = {
    "raw": False, "strict_map_key": True, "max_ext_len": 0,
    "max_str_len": 4 * MAX_TEXT + 64, "max_bin_len": MAX_EXTRA_BYTES,
    "max_array_len": MAX_BATCH_MESSAGES, "max_map_len": 64,
}


def _unpack(payload: bytes) -> Any:
    """One msgpack object, then at most 3 zero bytes: the fill to a 32-bit boundary."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=len(payload) or 1, **_UNPACK_LIMITS)
        unpacker.feed(payload)
        obj = unpacker.unpack()
        rest = payload[unpacker.tell():]
    except Exception as exc:  # msgpack raises ValueError subclasses, be safe on any
        raise WireError(f"bad msgpack: {exc}") from exc
    if len(rest) > 3 or any(rest):
        raise WireError(f"{len(rest)} bytes after the message are not its zero fill")
    return obj


# -- packets ---------------------------------------------------------------------------------

def build_app(subtype: int, ssrc: int, payload: bytes) -> bytes:
    """One SFUD APP packet. Application data must fill whole 32-bit words (RFC 3550 §6.7)
    and RTCP padding counts only multiples of four (§6.4.1), so the msgpack payload is
    followed by 0-3 zero bytes, which the decoders skip (msgpack knows where it ends)."""
    if not 0 <= subtype < 32:
        raise ValueError(f"subtype {subtype} out of 0..31")
    fill = -len(payload) % 4
    words = (12 + len(payload) + fill) // 4 - 1
    if words > 0xFFFF:
        raise ValueError("payload too large for one RTCP packet")
    return _HEADER.pack(0x80 | subtype, PT_APP, words, ssrc & _U32, NAME) + payload + \
        bytes(fill)


def parse_app(data: bytes) -> list[tuple[int, int, bytes]]:
    """The ``(subtype, ssrc, payload)`` of every SFUD APP packet of an RTCP datagram
    (compound or single/reduced-size); other RTCP packets are skipped."""
    out: list[tuple[int, int, bytes]] = []
    off, end = 0, len(data)
    if end < 4:
        raise WireError("short RTCP datagram")
    while off < end:
        if end - off < 4:
            raise WireError("truncated RTCP header")
        first, pt, words = data[off], data[off + 1], (data[off + 2] << 8) | data[off + 3]
        if first >> 6 != 2:
            raise WireError("RTCP version is not 2")
        size = (words + 1) * 4
        if off + size > end:
            raise WireError("RTCP length beyond the datagram")
        if pt == PT_APP and size >= 12 and data[off + 8:off + 12] == NAME:
            stop = off + size
            if first & 0x20:
                pad = data[stop - 1]
                if pad == 0 or pad > size - 12:
                    raise WireError("bad RTCP padding")
                stop -= pad
            ssrc = int.from_bytes(data[off + 4:off + 8], "big")
            out.append((first & 0x1F, ssrc, bytes(data[off + 12:stop])))
        off += size
    return out


def has_sfud(data: bytes) -> bool:
    """Whether an RTCP datagram holds an SFUD APP packet (any position; never raises)."""
    off, end = 0, len(data)
    while end - off >= 12:
        words = (data[off + 2] << 8) | data[off + 3]
        if data[off + 1] == PT_APP and data[off + 8:off + 12] == NAME:
            return True
        off += (words + 1) * 4
    return False


# -- value checks (shared by both directions) ------------------------------------------------

def _opt_str(obj: dict[str, Any], key: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise WireError(f"{key!r} must be a string of at most {limit} characters")
    return value


def _opt_int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{key!r} must be an integer in {lo}..{hi}")
    return value


def check_extra(extra: Any) -> bytes:
    """Validate an extra map (str keys, depth <= 8, <= 2 KB packed); returns it packed."""
    if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
        raise WireError("'x' must be a map with string keys")
    stack: list[tuple[Any, int]] = [(extra, 1)]
    seen = 0
    while stack:  # iterative: a hostile nesting depth must not recurse
        value, depth = stack.pop()
        seen += 1
        if depth > MAX_EXTRA_DEPTH or seen > 4 * MAX_EXTRA_BYTES:
            raise WireError("'x' is nested too deeply or too large")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
    try:
        packed = msgpack.packb(extra)
    except Exception as exc:
        raise WireError(f"'x' is not serialisable: {exc}") from exc
    if len(packed) > MAX_EXTRA_BYTES:
        raise WireError(f"'x' packs to {len(packed)} bytes (max {MAX_EXTRA_BYTES})")
    return packed


def _map(payload: bytes) -> dict[str, Any]:
    obj = _unpack(payload)
    if not isinstance(obj, dict):
        raise WireError("payload is not a map")
    return obj


# -- client -> node --------------------------------------------------------------------------

def build_msg(ssrc: int, kind: str, text: str | None = None, count: int | None = None,
              extra: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"k": kind}
    if text is not None:
        body["t"] = text
    if count is not None:
        body["n"] = count
    if extra is not None:
        body["x"] = extra
    return build_app(MSG, ssrc, msgpack.packb(body))


def decode_msg(payload: bytes) -> dict[str, Any]:
    """A client MSG: ``{"k": str, "t"?: str, "n"?: int, "x"?: map}`` (absent keys omitted)."""
    if len(payload) > MAX_PAYLOAD:
        raise WireError("MSG payload too large")
    obj = _map(payload)
    if set(obj) - {"k", "t", "n", "x"}:
        raise WireError("unknown keys in MSG")
    kind = _opt_str(obj, "k", MAX_KIND)
    if not kind:
        raise WireError("MSG without kind")
    out: dict[str, Any] = {"k": kind}
    text = _opt_str(obj, "t", MAX_TEXT)
    if text is not None:
        out["t"] = text
    count = _opt_int(obj, "n", 0, _I53)
    if count is not None:
        out["n"] = count
    if obj.get("x") is not None:
        check_extra(obj["x"])
        out["x"] = obj["x"]
    return out


def build_nack(ssrc: int, pis: Sequence[int]) -> bytes:
    if len(pis) > MAX_NACK:
        raise ValueError(f"at most {MAX_NACK} indices per NACK")
    return build_app(NACK, ssrc, msgpack.packb(list(pis)))


def decode_nack(payload: bytes) -> list[int]:
    obj = _unpack(payload)
    if not isinstance(obj, list) or len(obj) > MAX_NACK:
        raise WireError(f"NACK must be a list of at most {MAX_NACK} indices")
    if not all(type(v) is int and 0 < v <= _I53 for v in obj):
        raise WireError("NACK indices must be positive integers")
    return obj


def build_settings(ssrc: int, cap: int) -> bytes:
    return build_app(SETTINGS, ssrc, msgpack.packb({"cap": cap}))


def decode_settings(payload: bytes) -> dict[str, int]:
    obj = _map(payload)
    if set(obj) - {"cap"}:
        raise WireError("unknown keys in SETTINGS")
    cap = _opt_int(obj, "cap", 0, MAX_CAP)
    return {} if cap is None else {"cap": cap}


# -- node -> client --------------------------------------------------------------------------

def pack_message(msg: dict[str, Any]) -> bytes:
    """Pack one message map for batches; ``WireError`` if it cannot fit one datagram or
    cannot be encoded (text that is not valid Unicode, e.g. a lone surrogate)."""
    try:
        packed = msgpack.packb(msg)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise WireError(f"message cannot be encoded: {exc}") from None
    if len(packed) > MAX_MESSAGE_BYTES:
        raise WireError(f"message packs to {len(packed)} bytes (max {MAX_MESSAGE_BYTES})")
    return packed


def _array_header(n: int) -> bytes:
    return bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def _batch_payload(hp_packed: bytes, messages: Sequence[bytes]) -> bytes:
    # {"hp": hp, "m": [...]} assembled from pre-packed parts (fixmap 2, fixstr keys).
    return b"\x82\xa2hp" + hp_packed + b"\xa1m" + _array_header(len(messages)) + b"".join(
        messages)


def build_batches(ssrc: int, hp: int, messages: Iterable[bytes],
                  target: int = BATCH_TARGET) -> list[bytes]:
    """BATCH packets carrying pre-packed ``messages`` in order, each payload <= ``target``
    bytes (a single message larger than that goes alone); one packet with an empty list if
    there are no messages (it still tells the client ``hp``)."""
    hp_packed = msgpack.packb(hp)
    base = 8 + len(hp_packed)  # map, keys, array header (<= 3 bytes)
    packets: list[bytes] = []
    chunk: list[bytes] = []
    size = base
    for m in messages:
        if chunk and (size + len(m) > target or len(chunk) >= MAX_BATCH_MESSAGES):
            packets.append(build_app(BATCH, ssrc, _batch_payload(hp_packed, chunk)))
            chunk, size = [], base
        chunk.append(m)
        size += len(m)
    if chunk or not packets:
        packets.append(build_app(BATCH, ssrc, _batch_payload(hp_packed, chunk)))
    return packets


_MSG_KEYS = frozenset({"q", "pi", "k", "f", "r", "t", "n", "x", "media", "at"})


def _check_message(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict) or set(m) - _MSG_KEYS:
        raise WireError("message must be a map with known keys")
    if _opt_int(m, "q", 0, _I53) is None or not _opt_str(m, "k", MAX_KIND):
        raise WireError("message without q or k")
    _opt_int(m, "pi", 1, _I53)
    _opt_str(m, "f", MAX_ID)
    _opt_str(m, "r", MAX_ID)
    _opt_str(m, "t", MAX_TEXT)
    _opt_int(m, "n", -_I53, _I53)
    _opt_int(m, "at", 0, _U64)
    if m.get("x") is not None:
        check_extra(m["x"])
    media = m.get("media")
    if media is not None:
        if not isinstance(media, dict) or set(media) - {"track", "rtp_ts", "ntp"}:
            raise WireError("bad media stamp")
        _opt_str(media, "track", MAX_ID)
        _opt_int(media, "rtp_ts", 0, _U32)
        _opt_int(media, "ntp", 0, _U64)
    return m


def decode_batch(payload: bytes) -> tuple[int, list[dict[str, Any]]]:
    """``(hp, messages)`` of a BATCH payload; every message checked for shape and limits."""
    obj = _map(payload)
    hp = _opt_int(obj, "hp", 0, _I53)
    msgs = obj.get("m")
    if hp is None or not isinstance(msgs, list):
        raise WireError("BATCH needs hp and m")
    return hp, [_check_message(m) for m in msgs]


MAX_STATE_PARTS = 16


def build_state(ssrc: int, state: dict[str, Any]) -> list[bytes]:
    """STATE packets for ``state``: one if it fits, else its ``subs`` spread over parts
    (``"part": i, "parts": n``; part 0 has every other key, the others only ``v``), each
    payload <= MAX_PAYLOAD. ``ValueError`` if it cannot be split to fit."""
    payload = msgpack.packb(state)
    if len(payload) <= MAX_PAYLOAD:
        return [build_app(STATE, ssrc, payload)]
    subs = state.get("subs")
    if not isinstance(subs, list):
        raise ValueError(f"STATE packs to {len(payload)} bytes (max {MAX_PAYLOAD})")
    head = {k: v for k, v in state.items() if k != "subs"}
    overheads = (len(msgpack.packb(head)) + 24, len(msgpack.packb({"v": state.get("v")})) + 24)
    chunks: list[list[Any]] = [[]]
    size = overheads[0]
    for sub in subs:
        n = len(msgpack.packb(sub))
        if chunks[-1] and size + n > MAX_PAYLOAD:
            chunks.append([])
            size = overheads[1]
        chunks[-1].append(sub)
        size += n
    if len(chunks) > MAX_STATE_PARTS:
        raise ValueError(f"STATE needs more than {MAX_STATE_PARTS} packets")
    out = []
    for i, chunk in enumerate(chunks):
        part = dict(head) if i == 0 else {"v": state.get("v")}
        part.update(subs=chunk, part=i, parts=len(chunks))
        body = msgpack.packb(part)
        if len(body) > MAX_PAYLOAD:
            raise ValueError(f"STATE part {i} packs to {len(body)} bytes (max {MAX_PAYLOAD})")
        out.append(build_app(STATE, ssrc, body))
    return out


def decode_state(payload: bytes) -> dict[str, Any]:
    """A STATE map: ``v`` (int), ``subs`` (list of maps), ``layout`` (map), and for a state
    split over packets ``part``/``parts`` (DataChannel reassembles)."""
    obj = _map(payload)
    v = _opt_int(obj, "v", 0, _I53)
    subs = obj.get("subs", [])
    layout = obj.get("layout", {})
    if v is None or not isinstance(subs, list) or not isinstance(layout, dict):
        raise WireError("STATE needs v, subs list and layout map")
    if not all(isinstance(s, dict) for s in subs):
        raise WireError("STATE subs must be maps")
    parts = _opt_int(obj, "parts", 1, MAX_STATE_PARTS)
    part = _opt_int(obj, "part", 0, MAX_STATE_PARTS - 1)
    if (parts is None) != (part is None) or (parts is not None and part is not None
                                             and part >= parts):
        raise WireError("STATE part out of its parts")
    return obj

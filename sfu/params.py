"""Control-parameter validation shared by the control methods: every message names the
offending field, and every failure is a typed BadRequest."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from sfu.errors import BadRequest
from sfu.rooms import FEC_MODES, Layer, RecoveryRequest
from sfu.simulcast import Preferences

MAX_LAYERS = 4
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,127}$")
Params = dict[str, Any]


def _check_keys(params: Params, allowed: tuple[str, ...], where: str = "params") -> None:
    odd = [k for k in params if not isinstance(k, str)]
    if odd:
        raise BadRequest(f"field names in {where} must be strings, got {odd[0]!r:.40}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} in {where}; expected "
                         f"{', '.join(allowed) or 'none'}")


def _id(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise BadRequest(f"field {name!r} must be a string of 1-128 characters "
                         f"[A-Za-z0-9_.:@+=-], got {value!r:.60}")
    return value


def _int(params: Params, name: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
    value = params.get(name)
    if value is None:
        if optional:
            return None
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"field {name!r} must be an integer in {lo}..{hi}, got {value!r:.60}")
    return value


def _req_int(params: Params, name: str, lo: int, hi: int) -> int:
    value = _int(params, name, lo, hi)
    assert value is not None
    return value


def _enum(params: Params, name: str, choices: tuple[str, ...]) -> str:
    value = params.get(name)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if value not in choices:
        raise BadRequest(f"field {name!r} must be one of {', '.join(choices)}, got {value!r:.60}")
    return str(value)


def _address(params: Params, name: str) -> tuple[str, int]:
    value = params.get(name)
    if not isinstance(value, str) or value.count(":") != 1:
        raise BadRequest(f"field {name!r} must be 'ipv4:port', got {value!r:.60}")
    host, _, port_s = value.partition(":")
    try:
        ip = ipaddress.IPv4Address(host)
        port = int(port_s)
    except ValueError:
        raise BadRequest(f"field {name!r} must be 'ipv4:port', got {value!r:.60}") from None
    if not 1 <= port <= 65535:
        raise BadRequest(f"field {name!r} has port {port} outside 1..65535")
    return str(ip), port


def _layers(params: Params) -> list[Layer]:
    raw = params.get("layers")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_LAYERS:
        raise BadRequest(f"field 'layers' must be a list of 1..{MAX_LAYERS} layers")
    layers: list[Layer] = []
    seen: set[int] = set()
    for i, item in enumerate(raw):
        where = f"layers[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"field {where!r} must be a map with rid, ssrc, rtx_ssrc?, "
                             "fec_ssrc?")
        _check_keys(item, ("rid", "ssrc", "rtx_ssrc", "fec_ssrc", "width", "height",
                           "max_bitrate"), where)
        rid = item.get("rid", "")
        if not isinstance(rid, str) or len(rid) > 8 or not rid.isascii():
            raise BadRequest(f"field '{where}.rid' must be an ASCII string of ≤8 characters")
        try:
            ssrc = _int(item, "ssrc", 1, 0xFFFFFFFF, optional=True)
            rtx = _int(item, "rtx_ssrc", 1, 0xFFFFFFFF, optional=True)
            fec = _int(item, "fec_ssrc", 1, 0xFFFFFFFF, optional=True)
            width = _int(item, "width", 1, 16384, optional=True)
            height = _int(item, "height", 1, 16384, optional=True)
            max_bitrate = _int(item, "max_bitrate", 1000, 1_000_000_000, optional=True)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc}") from None
        for s in (ssrc, rtx, fec):
            if s is not None:
                if s in seen:
                    raise BadRequest(f"field '{where}' repeats ssrc {s}")
                seen.add(s)
        if any(lay.rid == rid for lay in layers):
            raise BadRequest(f"field '{where}.rid' repeats rid {rid!r}")
        if ssrc is None and (not rid or rtx or fec):
            raise BadRequest(f"field '{where}' needs an ssrc, or a rid (learned from the "
                             "RtpStreamId extension) and no rtx_ssrc/fec_ssrc")
        layers.append(Layer(rid, ssrc or 0, rtx, fec, width, height, max_bitrate))
    return layers


def _prefs(raw: object, layers: list[Layer], base: Preferences | None = None) -> Preferences:
    """track.subscribe `preferences` / track.set_preferences fields -> Preferences."""
    if not isinstance(raw, dict):
        raise BadRequest("field 'preferences' must be a map with max_layer?, max_height?, "
                         "max_temporal?, paused?")
    _check_keys(raw, ("max_layer", "max_height", "max_temporal", "paused"), "preferences")
    cur = base or Preferences()
    max_layer = cur.max_layer
    if "max_layer" in raw:
        rid = raw["max_layer"]
        rids = [lay.rid for lay in layers]
        if rid is not None and rid not in rids:
            raise BadRequest(f"field 'max_layer' must be one of the track's rids "
                             f"{', '.join(rids)} (or null), got {rid!r:.40}")
        max_layer = None if rid is None else rids.index(rid)
    max_height = _int(raw, "max_height", 1, 16384, optional=True) if "max_height" in raw \
        else cur.max_height
    max_temporal = _int(raw, "max_temporal", 0, 3, optional=True) if "max_temporal" in raw \
        else cur.max_temporal
    paused = raw.get("paused", cur.paused)
    if not isinstance(paused, bool):
        raise BadRequest("field 'paused' must be true or false")
    return Preferences(max_layer, max_height, max_temporal, paused)


def _payload_type(params: Params, name: str) -> int | None:
    pt = _int(params, name, 0, 127, optional=True)
    if pt is not None and 64 <= pt <= 95:  # would collide with RTCP packet types (RFC 5761 §4)
        raise BadRequest(f"field {name!r} {pt} is in the RTCP-reserved range 64..95")
    return pt


def _recovery(params: Params) -> RecoveryRequest:
    raw = params.get("recovery", {})
    if not isinstance(raw, dict):
        raise BadRequest("field 'recovery' must be a map with nack?, rtx?, fec?")
    _check_keys(raw, ("nack", "rtx", "fec"), "recovery")
    rec = RecoveryRequest()
    for name in ("nack", "rtx"):
        value = raw.get(name, True)
        if not isinstance(value, bool):
            raise BadRequest(f"field 'recovery.{name}' must be true or false")
        setattr(rec, name, value)
    rec.fec = raw.get("fec", "auto")
    if rec.fec not in FEC_MODES:
        raise BadRequest(f"field 'recovery.fec' must be one of {', '.join(FEC_MODES)}, "
                         f"got {rec.fec!r:.40}")
    return rec

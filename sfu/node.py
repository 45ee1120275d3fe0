"""The node: one Engine, one UDP transport, the rooms and the event bus, and the control
methods of design.md §4 (``Node.call``). Parameters are validated here; state rules live
in sfu/rooms.py."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sfu import __version__, _native
from sfu.config import NodeConfig
from sfu.errors import BadRequest
from sfu.events import EventBus
from sfu.recovery_loop import RecoveryController
from sfu.rooms import FEC_MODES, KINDS, ROLES, Layer, RecoveryRequest, RoomManager
from sfu.stats import StatsView
from sfu.transports.udp import UdpTransport

CODECS = ("opus", "VP8", "H264")
MAX_LAYERS = 4
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,127}$")
Params = dict[str, Any]
Handler = Callable[[Params], Awaitable[dict[str, Any] | None]]


# -- parameter validation (every message names the offending field) ------------------------


def _check_keys(params: Params, allowed: tuple[str, ...], where: str = "params") -> None:
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
        _check_keys(item, ("rid", "ssrc", "rtx_ssrc", "fec_ssrc"), where)
        rid = item.get("rid", "")
        if not isinstance(rid, str) or len(rid) > 16:
            raise BadRequest(f"field '{where}.rid' must be a string of ≤16 characters")
        try:
            ssrc = _req_int(item, "ssrc", 1, 0xFFFFFFFF)
            rtx = _int(item, "rtx_ssrc", 1, 0xFFFFFFFF, optional=True)
            fec = _int(item, "fec_ssrc", 1, 0xFFFFFFFF, optional=True)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc}") from None
        for s in (ssrc, rtx, fec):
            if s is not None:
                if s in seen:
                    raise BadRequest(f"field '{where}' repeats ssrc {s}")
                seen.add(s)
        if any(lay.rid == rid for lay in layers):
            raise BadRequest(f"field '{where}.rid' repeats rid {rid!r}")
        layers.append(Layer(rid, ssrc, rtx, fec))
    return layers


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


class Node:
    """Owns the Engine, the UDP transport, the rooms and the bus."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.bus = EventBus()
        # RFC 3550 §8: the node's own RTCP sender SSRC is random and never given out.
        self.node_ssrc = secrets.randbits(32) or 1
        self.engine = _native.Engine(max_peers=16384, max_downtracks=65536,
                                     node_ssrc=self.node_ssrc)
        self.udp: UdpTransport | None = None
        self.recovery: RecoveryController | None = None
        self._rooms: RoomManager | None = None
        self._stats: StatsView | None = None
        self.started = time.time()
        self._methods: dict[str, Handler] = {
            "node.info": self._node_info,
            "room.create": self._room_create,
            "room.close": self._room_close,
            "room.list": self._room_list,
            "room.snapshot": self._room_snapshot,
            "participant.join": self._participant_join,
            "participant.connect": self._participant_connect,
            "participant.leave": self._participant_leave,
            "track.publish": self._track_publish,
            "track.unpublish": self._track_unpublish,
            "track.subscribe": self._track_subscribe,
            "track.unsubscribe": self._track_unsubscribe,
            "stats.get": self._stats_get,
        }

    async def start(self) -> None:
        """Bind the UDP socket and start the engine timers (needs a running loop)."""
        loop = asyncio.get_running_loop()
        self.udp = UdpTransport(self.engine, loop, self.config.udp_host, self.config.udp_port)
        self._rooms = RoomManager(self.engine, self.bus, self.udp.tid,
                                  max_rooms=self.config.max_rooms,
                                  reserved_ssrcs=(self.node_ssrc,),
                                  max_participants_per_room=self.config.max_participants_per_room)
        self.recovery = RecoveryController(self.engine, self._rooms)
        self.udp.on_receiver_report = self.recovery.on_receiver_report
        self.udp.start(self._rooms)
        self._stats = StatsView(self.engine, self.udp, self.recovery)

    def close(self) -> None:
        if self._rooms is not None:
            for room_id in list(self._rooms.rooms):
                self._rooms.close_room(room_id)
        if self.udp is not None:
            self.udp.close()
            self.udp = None

    @property
    def rooms(self) -> RoomManager:
        if self._rooms is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self._rooms

    @property
    def stats(self) -> StatsView:
        if self._stats is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self._stats

    @property
    def udp_address(self) -> tuple[str, int]:
        """Where clients send media: (advertised host, bound port)."""
        if self.udp is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self.config.public_host, self.udp.port

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._methods)

    async def call(self, method: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
        """Run one control method; raises sfu.errors.SfuError subclasses."""
        handler = self._methods.get(method) if isinstance(method, str) else None
        if handler is None:
            raise BadRequest(f"unknown method {method!r:.60}; valid methods: "
                             f"{', '.join(self._methods)}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest("params must be a map")
        return await handler(params)

    # -- methods ---------------------------------------------------------------------------

    async def _node_info(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ())
        host, port = self.udp_address
        live = self.engine.live()
        return {
            "node_id": self.config.node_id, "version": __version__, "udp": f"{host}:{port}",
            "quic": None, "rooms": len(self.rooms.rooms),
            "load": {"participants": self.rooms.participant_count(),
                     "downtracks": live.get("downtracks", 0), "pps": self.stats.pps()},
            "uptime": round(time.time() - self.started, 3),
        }

    async def _room_create(self, params: Params) -> dict[str, Any]:
        # Options may come flat or nested under "options".
        _check_keys(params, ("room", "options", "max_participants", "max_cohosts"))
        raw_opts = params.get("options") or {}
        if not isinstance(raw_opts, dict):
            raise BadRequest("field 'options' must be a map")
        opts = dict(raw_opts)
        _check_keys(opts, ("max_participants", "max_cohosts"), "options")
        for key in ("max_participants", "max_cohosts"):
            if key in params:
                opts[key] = params[key]
        room = _id(params, "room")
        max_participants = _int(opts, "max_participants", 1, 1_000_000, optional=True)
        max_cohosts = _int(opts, "max_cohosts", 0, 1000, optional=True)
        self.rooms.create_room(room, max_participants, max_cohosts)
        return {"room": room}

    async def _room_close(self, params: Params) -> None:
        _check_keys(params, ("room",))
        self.rooms.close_room(_id(params, "room"))
        return None

    async def _room_list(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ())
        return {"rooms": list(self.rooms.rooms)}

    async def _room_snapshot(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room",))
        return self.rooms.snapshot(_id(params, "room"))

    async def _participant_join(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "role"))
        room, participant = _id(params, "room"), _id(params, "participant")
        role = _enum(params, "role", ROLES)
        p = self.rooms.join(room, participant, role)
        host, port = self.udp_address
        return {"participant": participant, "ice_ufrag": p.ice_ufrag, "ice_pwd": p.ice_pwd,
                "udp": f"{host}:{port}", "token": p.token}

    async def _participant_connect(self, params: Params) -> None:
        _check_keys(params, ("room", "participant", "remote"))
        p = self.rooms.participant(_id(params, "room"), _id(params, "participant"))
        host, port = _address(params, "remote")
        self.rooms.bind(p, host, port)
        return None

    async def _participant_leave(self, params: Params) -> None:
        _check_keys(params, ("room", "participant"))
        self.rooms.leave(_id(params, "room"), _id(params, "participant"))
        return None

    async def _track_publish(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "kind", "codec", "payload_type",
                             "clock_rate", "layers", "rtx_payload_type", "fec_payload_type",
                             "ulpfec_payload_type", "nack"))
        room, participant = _id(params, "room"), _id(params, "participant")
        kind = _enum(params, "kind", tuple(KINDS))
        codec = _enum(params, "codec", CODECS)
        if (kind == "audio") != (codec == "opus"):
            raise BadRequest(f"field 'codec' {codec!r} does not fit kind {kind!r}")
        payload_type = _req_int(params, "payload_type", 0, 127)
        if 64 <= payload_type <= 95:  # would collide with RTCP packet types (RFC 5761 §4)
            raise BadRequest(f"field 'payload_type' {payload_type} is in the RTCP-reserved "
                             "range 64..95")
        clock_rate = _req_int(params, "clock_rate", 1000, 1_000_000)
        layers = _layers(params)
        if kind == "audio" and len(layers) != 1:
            raise BadRequest("field 'layers' must hold exactly one layer for audio")
        rtx_pt = _payload_type(params, "rtx_payload_type")
        fec_pt = _payload_type(params, "fec_payload_type")
        ulp_pt = _payload_type(params, "ulpfec_payload_type")
        nack = params.get("nack", True)
        if not isinstance(nack, bool):
            raise BadRequest("field 'nack' must be true or false (NACK the publisher for "
                             "lost packets)")
        track = self.rooms.publish(room, participant, kind, codec, payload_type, clock_rate,
                                   layers, rtx_pt, fec_pt, ulp_pt, nack=nack)
        return {"track": track.track_id}

    async def _track_unpublish(self, params: Params) -> None:
        _check_keys(params, ("room", "participant", "track"))
        self.rooms.unpublish(_id(params, "room"), _id(params, "participant"),
                             _id(params, "track"))
        return None

    async def _track_subscribe(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "track", "recovery"))
        recovery = _recovery(params)
        sub = self.rooms.subscribe(_id(params, "room"), _id(params, "participant"),
                                   _id(params, "track"), recovery)
        return {"subscription": sub.subscription_id, "ssrc": sub.ssrc,
                "payload_type": sub.payload_type,
                "rtx_ssrc": sub.rtx_ssrc if recovery.rtx else None,
                "rtx_payload_type": sub.rtx_payload_type, "fec_ssrc": sub.fec_ssrc,
                "fec_payload_type": sub.fec_payload_type, "fec": recovery.fec,
                "ulpfec_payload_type": sub.ulpfec_payload_type}

    async def _track_unsubscribe(self, params: Params) -> None:
        _check_keys(params, ("room", "participant", "subscription"))
        self.rooms.unsubscribe(_id(params, "room"), _id(params, "participant"),
                               _id(params, "subscription"))
        return None

    async def _stats_get(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant"))
        if "participant" in params and "room" not in params:
            raise BadRequest("field 'participant' needs 'room'")
        if "room" not in params:
            return self.stats.node()
        room = self.rooms.room(_id(params, "room"))
        if "participant" in params:
            p = self.rooms.participant(room.room_id, _id(params, "participant"))
            return self.stats.participant(p)
        return self.stats.room(room)


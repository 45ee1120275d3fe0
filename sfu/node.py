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
from sfu.errors import BadRequest, NotFound
from sfu.events import EventBus
from sfu.recovery_loop import RecoveryController
from sfu.rooms import FEC_MODES, KINDS, ROLES, Layer, RecoveryRequest, RoomManager
from sfu.simulcast import Preferences
from sfu.simulcast_loop import SimulcastController
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
        self.simulcast: SimulcastController | None = None
        self._simulcast_timer: asyncio.TimerHandle | None = None
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
            "track.set_preferences": self._track_set_preferences,
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
        self.simulcast = SimulcastController(self.engine, self._rooms)
        self.udp.handlers = {_native.EV_LAYER: self.simulcast.on_layer,
                             _native.EV_BWE: self.simulcast.on_bwe,
                             _native.EV_RID: self.simulcast.on_rid,
                             _native.EV_RR: lambda did, _a, _b: self._on_rr(did)}
        self.udp.start(self._rooms)
        self._simulcast_tick()
        self._stats = StatsView(self.engine, self.udp, self.recovery, self.simulcast)

    def _on_rr(self, did: int) -> None:
        if self.simulcast is not None:
            self.simulcast.on_receiver_report(did)

    def _simulcast_tick(self) -> None:
        if self.simulcast is not None and self.udp is not None:
            self.simulcast.tick()
            self._simulcast_timer = asyncio.get_running_loop().call_later(
                0.5, self._simulcast_tick)

    def close(self) -> None:
        if self._simulcast_timer is not None:
            self._simulcast_timer.cancel()
            self._simulcast_timer = None
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
        _check_keys(params, ("room", "participant", "role", "twcc_ext_id", "rid_ext_id"))
        room, participant = _id(params, "room"), _id(params, "participant")
        role = _enum(params, "role", ROLES)
        twcc = _int(params, "twcc_ext_id", 1, 14, optional=True)
        rid = _int(params, "rid_ext_id", 1, 14, optional=True)
        if twcc is not None and twcc == rid:
            raise BadRequest("fields 'twcc_ext_id' and 'rid_ext_id' must differ")
        p = self.rooms.join(room, participant, role, twcc_ext_id=twcc, rid_ext_id=rid)
        host, port = self.udp_address
        return {"participant": participant, "ice_ufrag": p.ice_ufrag, "ice_pwd": p.ice_pwd,
                "udp": f"{host}:{port}", "token": p.token, "twcc_ext_id": twcc,
                "rid_ext_id": rid}

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
                             "ulpfec_payload_type", "nack", "temporal_layers"))
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
        temporal = _int(params, "temporal_layers", 1, 4, optional=True) or 1
        if kind == "audio" and temporal != 1:
            raise BadRequest("field 'temporal_layers' must be 1 for audio")
        track = self.rooms.publish(room, participant, kind, codec, payload_type, clock_rate,
                                   layers, rtx_pt, fec_pt, ulp_pt, nack=nack,
                                   temporal_layers=temporal, gop_cache=self.config.gop_cache)
        return {"track": track.track_id}

    async def _track_unpublish(self, params: Params) -> None:
        _check_keys(params, ("room", "participant", "track"))
        self.rooms.unpublish(_id(params, "room"), _id(params, "participant"),
                             _id(params, "track"))
        return None

    async def _track_subscribe(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "track", "recovery", "preferences"))
        recovery = _recovery(params)
        room = _id(params, "room")
        track = self.rooms.room(room).tracks.get(_id(params, "track"))
        prefs = None
        if "preferences" in params and track is not None:
            prefs = _prefs(params["preferences"], track.layers)
        sub = self.rooms.subscribe(room, _id(params, "participant"), _id(params, "track"),
                                   recovery, prefs)
        p = self.rooms.participant(room, sub.participant_id)
        if self.simulcast is not None:
            self.simulcast.on_subscribed(sub)
        return {"twcc_ext_id": p.twcc_ext_id,
                "layer": None if track is None or sub.target is None
                or sub.target[0] is None else track.layers[sub.target[0]].rid,
                "subscription": sub.subscription_id, "ssrc": sub.ssrc,
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

    async def _track_set_preferences(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "subscription", "max_layer",
                             "max_height", "max_temporal", "paused"))
        room, participant = _id(params, "room"), _id(params, "participant")
        p = self.rooms.participant(room, participant)
        sub_id = _id(params, "subscription")
        sub = p.subscriptions.get(sub_id)
        if sub is None:
            raise NotFound(f"participant {participant!r} has no subscription {sub_id!r}")
        track = self.rooms.room(room).tracks[sub.track_id]
        fields = {k: v for k, v in params.items() if k not in ("room", "participant",
                                                                "subscription")}
        sub.prefs = _prefs(fields, track.layers, sub.prefs)
        if self.simulcast is not None:
            self.simulcast.allocate(p)
        target = sub.target or (None, 3)
        prefs = sub.prefs
        return {"subscription": sub_id,
                "preferences": {"max_layer": None if prefs.max_layer is None
                                else track.layers[prefs.max_layer].rid,
                                "max_height": prefs.max_height,
                                "max_temporal": prefs.max_temporal, "paused": prefs.paused},
                "target": {"layer": None if target[0] is None else track.layers[target[0]].rid,
                           "temporal": target[1]}}

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


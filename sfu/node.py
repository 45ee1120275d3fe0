"""The node: one Engine, one UDP transport, the rooms and the event bus, and the control
methods of design.md §4 (``Node.call``). Parameters are validated here; state rules live
in sfu/rooms.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from sfu import __version__, _native
from sfu.config import NodeConfig
from sfu.costream import CostreamManager
from sfu.data import DataHub
from sfu.errors import BadRequest, NotFound, SfuError
from sfu.events import EventBus
from sfu.layout import LAYOUTS
from sfu.node_live import LiveMethods
from sfu.params import (
    Params,
    _address,
    _check_keys,
    _enum,
    _id,
    _int,
    _layers,
    _payload_type,
    _prefs,
    _recovery,
    _req_int,
)
from sfu.recovery_loop import RecoveryController
from sfu.rooms import KINDS, ROLES, Participant, RoomManager
from sfu.simulcast_loop import SimulcastController
from sfu.speaker import SpeakerMonitor
from sfu.stats import StatsView
from sfu.transports.quic import QuicTransport
from sfu.transports.udp import UdpTransport

CODECS = ("opus", "VP8", "H264")
log = logging.getLogger("sfu.node")
Handler = Callable[[Params], Awaitable[dict[str, Any] | None]]


STATE_LAYOUT_MAX = 700  # bytes of packed layout carried in STATE (its first part must fit)


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
        self.quic: QuicTransport | None = None
        self.web: Any = None  # sfu.transports.web.WebServer: the viewer page
        self.recovery: RecoveryController | None = None
        self.simulcast: SimulcastController | None = None
        self._simulcast_timer: asyncio.TimerHandle | None = None
        self._live_timers: list[asyncio.TimerHandle] = []
        self.clock = time.monotonic
        self._costream: CostreamManager | None = None
        self._data: DataHub | None = None
        self.speaker: SpeakerMonitor | None = None
        self._state_dirty: set[int] = set()  # peers whose subscription list changed
        self._state_flush: asyncio.Handle | None = None
        self._state_version = 0
        self._layouts: dict[str, tuple[dict[str, Any], int]] = {}  # room -> (compact, size)
        self.live = LiveMethods(self)
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
            **self.live.handlers(),
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
        await self._start_quic()
        self._start_live()
        self._simulcast_tick()
        self._stats = StatsView(self.engine, self.udp, self.recovery, self.simulcast)
        self._stats.quic = self.quic

    async def _start_quic(self) -> None:
        """RTP over QUIC and WebTransport on their own UDP port, and the viewer page."""
        from sfu.transports import cert
        config = self.config
        if config.quic_port is None:
            return
        assert self.udp is not None
        node_cert = (cert.load(config.cert_file, config.key_file)
                     if config.cert_file and config.key_file
                     else cert.self_signed(("localhost", config.public_host)))
        self.quic = QuicTransport(self.engine, node_cert, config.quic_host or config.udp_host,
                                  config.quic_port, max_datagram=config.quic_max_datagram)
        await self.quic.start(self.rooms, self.udp._drain)
        if config.http_port is not None:
            from sfu.transports.web import WebServer
            self.web = WebServer(config.http_host or config.quic_host or config.udp_host,
                                 config.http_port,
                                 self.web_config)
            await self.web.start()

    def web_config(self) -> dict[str, Any]:
        """What the viewer page needs to open its WebTransport session."""
        assert self.quic is not None
        return {"webtransport": f"https://{self.config.public_host}:{self.quic.port}/sfu",
                "cert_sha256": self.quic.cert.sha256.hex()}

    @property
    def cert_sha256(self) -> bytes:
        if self.quic is None:
            raise RuntimeError("QUIC is off (NodeConfig.quic_port)")
        return self.quic.cert.sha256

    def _start_live(self) -> None:
        """Co-streaming, active speaker, data messages and FAQ (issue 5)."""
        assert self.udp is not None and self._rooms is not None
        rooms, simulcast = self._rooms, self.simulcast
        assert simulcast is not None
        self._data = DataHub(self.bus, self.engine.send_datagram, self.node_ssrc,
                             clock=self.clock)
        self._data.on_comment = self.live.on_comment
        self._costream = CostreamManager(
            rooms, clock=self.clock, on_subscribed=simulcast.on_subscribed,
            on_prefs=simulcast.allocate, on_layout=self._push_layout)
        self.speaker = SpeakerMonitor(self.engine, rooms, clock=self.clock,
                                      on_change=self._on_speaker)
        rooms.hooks.append(self._on_room_change)
        self.bus.subscribe(None, self._on_event)
        self.udp.handlers[_native.EV_DATA] = self._on_data
        loop = asyncio.get_running_loop()

        def every(period: float, fn: Callable[[], None]) -> None:
            """Run fn on a fixed grid of absolute times (a rescheduling timer would drift by
            its own run time, and rate shaping per interval would fall short of its caps)."""
            due = loop.time() + period

            def run() -> None:
                nonlocal due
                try:
                    fn()
                finally:
                    due += period
                    if due < loop.time():  # fell behind (a stall): skip, don't burst
                        due = loop.time() + period
                    self._live_timers[index] = loop.call_at(due, run)
            index = len(self._live_timers)
            self._live_timers.append(loop.call_at(due, run))

        every(0.1, self.speaker.tick)
        every(self._data.interval_s, lambda: self.data.tick(self.clock()))
        every(0.5, self.costream.tick)

    @property
    def costream(self) -> CostreamManager:
        if self._costream is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self._costream

    @property
    def data(self) -> DataHub:
        if self._data is None:
            raise RuntimeError("Node.start() has not been awaited")
        return self._data

    @property
    def wallclock_offset(self) -> float:
        return self.udp.wallclock_offset if self.udp is not None else 0.0

    def _on_data(self, pid: int, subtype: int, payload: Any) -> None:
        self.data.on_datagram(pid, subtype, payload, self.clock())

    def _on_speaker(self, room_id: str, participant: str | None) -> None:
        assert self.simulcast is not None
        if participant is None:
            self.simulcast.speakers.pop(room_id, None)
        else:
            self.simulcast.speakers[room_id] = participant

    def _push_layout(self, room_id: str, layout: dict[str, Any]) -> None:
        """The layout to the room's clients as a priority ``system`` message, compact so nine
        slots fit one datagram: [participant, role, seat, room, video, audio, muted, x, y,
        w, h] per slot."""
        slots = [[s["participant"], s["role"], s["seat"], s["room"], s["tracks"].get("video"),
                  s["tracks"].get("audio"), s["muted"], s["x"], s["y"], s["w"], s["h"]]
                 for s in layout["slots"]]
        compact = {"mode": layout["mode"], "version": layout["version"], "slots": slots}
        self._layouts[room_id] = (compact, len(msgpack.packb(compact)))
        try:
            self.data.send(room_id, "system", role="service", priority=True,
                           extra={"layout": compact})
        except SfuError as exc:  # the control event carries it anyway; never break a flow
            log.warning("layout of room %s not sent to clients: %s", room_id, exc)

    def _on_room_change(self, what: str, room_id: str, subject: Any) -> None:
        if what == "bound":  # a new or moved address: it may have missed STATE and layout
            # Only when there is something to tell: third-party RTP stacks (GStreamer, bound
            # with participant.connect) take an APP packet bearing their SSRC as a collision.
            if subject.subscriptions or subject.room_id in self._layouts:
                self._mark_state(subject.pid)
        elif what == "joined":
            self.data.add_member(room_id, subject.pid, subject.participant_id, subject.role)
        elif what == "left":
            self.data.remove_member(room_id, subject.pid)
            if self.speaker is not None:
                self.speaker.forget_participant(room_id, subject.participant_id)
        elif what == "role":
            self.data.set_role(room_id, subject.pid, subject.role)
        elif what == "closed":
            self.data.close_room(room_id)
            self.live.responders.pop(room_id, None)  # a room re-created later starts clean
            self._layouts.pop(room_id, None)
            if self.speaker is not None:
                self.speaker.forget_room(room_id)
            if self.simulcast is not None:
                self.simulcast.speakers.pop(room_id, None)
        elif what == "unpublished" and subject.kind == "audio" and self.speaker is not None:
            self.speaker.forget(subject)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Subscription changes reach the subscriber over its data channel too (STATE), so
        a client with no signalling service learns its SSRCs; batched per loop turn."""
        name = event["event"]
        if name not in ("subscription.created", "subscription.removed"):
            return
        p = self.rooms.rooms.get(event["room"])
        q = p.participants.get(event["data"]["participant"]) if p is not None else None
        if q is not None:
            self._mark_state(q.pid)

    def _mark_state(self, pid: int) -> None:
        self._state_dirty.add(pid)
        if self._state_flush is None:
            self._state_flush = asyncio.get_running_loop().call_soon(self._flush_state)

    def _flush_state(self) -> None:
        self._state_flush = None
        dirty, self._state_dirty = self._state_dirty, set()
        for pid in dirty:
            p = self.rooms.by_pid.get(pid)
            if p is None:
                continue
            try:
                self._send_state(p)
            except SfuError as exc:  # one oversized list must not cost the others theirs
                log.warning("STATE for %s not sent: %s", p.participant_id, exc)

    def _send_state(self, p: Participant) -> None:
        """Its subscriptions, as a client needs them to receive (STATE, docs/data.md)."""
        subs = []
        for sub in p.subscriptions.values():
            track = self.rooms.tracks.get(sub.track_id)
            if track is None:
                continue
            subs.append({"track": track.track_id, "participant": track.participant_id,
                         "room": track.room_id, "kind": track.kind, "codec": track.codec,
                         "subscription": sub.subscription_id, "ssrc": sub.ssrc,
                         "pt": sub.payload_type, "rtx_ssrc": sub.rtx_ssrc,
                         "rtx_pt": sub.rtx_payload_type, "clock_rate": track.clock_rate})
        self._state_version += 1  # one counter for all peers: always increasing
        state: dict[str, Any] = {"subs": subs, "v": self._state_version}
        layout = self._layouts.get(p.room_id)
        if layout is not None and layout[1] <= STATE_LAYOUT_MAX:
            state["layout"] = layout[0]  # a late joiner's first layout (it is sent on change)
        self.data.send_state(p.pid, state)

    def _on_rr(self, did: int) -> None:
        if self.simulcast is not None:
            self.simulcast.on_receiver_report(did)

    def _simulcast_tick(self) -> None:
        if self.simulcast is not None and self.udp is not None:
            try:
                self.simulcast.tick()
            finally:  # one failing tick must not end allocation for good
                self._simulcast_timer = asyncio.get_running_loop().call_later(
                    0.5, self._simulcast_tick)

    def close(self) -> None:
        if self._simulcast_timer is not None:
            self._simulcast_timer.cancel()
            self._simulcast_timer = None
        for timer in self._live_timers:
            timer.cancel()
        self._live_timers.clear()
        if self._state_flush is not None:
            self._state_flush.cancel()
            self._state_flush = None
        if self._rooms is not None:
            for room_id in list(self._rooms.rooms):
                self._rooms.close_room(room_id)
        if self.web is not None:
            self.web.close()
            self.web = None
        if self.quic is not None:
            self.quic.close()
            self.quic = None
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
            "quic": self._quic_address(), "rooms": len(self.rooms.rooms),
            "http": (f"{self.config.public_host}:{self.web.port}"
                     if self.web is not None else None),
            "load": {"participants": self.rooms.participant_count(),
                     "downtracks": live.get("downtracks", 0), "pps": self.stats.pps()},
            "uptime": round(time.time() - self.started, 3),
        }

    async def _room_create(self, params: Params) -> dict[str, Any]:
        # Options may come flat or nested under "options".
        keys = ("max_participants", "max_cohosts", "auto_subscribe", "layout")
        _check_keys(params, ("room", "options", *keys))
        raw_opts = params.get("options") or {}
        if not isinstance(raw_opts, dict):
            raise BadRequest("field 'options' must be a map")
        opts = dict(raw_opts)
        _check_keys(opts, keys, "options")
        for key in keys:
            if key in params:
                opts[key] = params[key]
        room = _id(params, "room")
        max_participants = _int(opts, "max_participants", 1, 1_000_000, optional=True)
        # A viewer's subscription list must fit one STATE (docs/data.md): 64 seats at most.
        max_cohosts = _int(opts, "max_cohosts", 0, 64, optional=True)
        auto = opts.get("auto_subscribe", False)
        if not isinstance(auto, bool):
            raise BadRequest("field 'auto_subscribe' must be true or false")
        mode = _enum(opts, "layout", LAYOUTS) if "layout" in opts else "grid"
        self.rooms.create_room(room, max_participants, max_cohosts, auto_subscribe=auto)
        if mode != "grid":
            self.costream.set_layout(room, mode)
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
                "udp": f"{host}:{port}", "quic": self._quic_address(), "token": p.token,
                "twcc_ext_id": twcc, "rid_ext_id": rid}

    def _quic_address(self) -> str | None:
        return None if self.quic is None else f"{self.config.public_host}:{self.quic.port}"

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
                             "ulpfec_payload_type", "nack", "temporal_layers",
                             "audio_level_ext_id"))
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
        level_ext = _int(params, "audio_level_ext_id", 1, 14, optional=True)
        if level_ext is not None and kind != "audio":
            raise BadRequest("field 'audio_level_ext_id' is for audio tracks (RFC 6464)")
        if kind == "audio" and temporal != 1:
            raise BadRequest("field 'temporal_layers' must be 1 for audio")
        track = self.rooms.publish(room, participant, kind, codec, payload_type, clock_rate,
                                   layers, rtx_pt, fec_pt, ulp_pt, nack=nack,
                                   temporal_layers=temporal, gop_cache=self.config.gop_cache)
        if level_ext is not None and self.speaker is not None:
            self.engine.set_source_audio_level(track.sid, level_ext)
            self.speaker.register(track)
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
        track = self.rooms.tracks.get(_id(params, "track"))
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
        track = self.rooms.track(sub.track_id)
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
            out = self.stats.node()
            out["data"] = self.data.counters()
            out["costream"] = dict(self.costream.counters)
            if self.simulcast is not None:
                out["allocation"] = {"allocations": self.simulcast.allocations,
                                     "skipped_steady": self.simulcast.skipped,
                                     "probes": self.simulcast.probes}
            return out
        room = self.rooms.room(_id(params, "room"))
        if "participant" in params:
            p = self.rooms.participant(room.room_id, _id(params, "participant"))
            return self.stats.participant(p)
        out = self.stats.room(room)
        responder = self.live.responders.get(room.room_id)
        try:
            data: dict[str, Any] | None = self.data.stats(room.room_id)
        except NotFound:  # nobody has joined yet
            data = None
        out["live"] = {
            "data": data,
            "speaker": None if self.speaker is None else {
                "dominant": self.speaker.dominant(room.room_id),
                "levels": self.speaker.levels(room.room_id)},
            "faq": None if responder is None else responder.counters(),
            "costream": {k: v for k, v in self.costream.describe(room.room_id).items()
                         if k in ("host", "seats", "pk", "auto_subscriptions")}}
        return out


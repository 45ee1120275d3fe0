"""Rooms, participants, tracks and subscriptions: string ids ↔ native int handles.

This is the single owner of the mapping between control-plane ids and Engine handles.
Every state change goes through here and emits exactly one event on the EventBus
(design.md §4), in the order a consumer needs to rebuild the state.
Input is assumed validated by sfu/node.py; state conflicts raise typed sfu.errors.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfu import _native
from sfu.errors import Conflict, LimitExceeded, NotFound, Unauthorized
from sfu.events import EventBus
from sfu.simulcast import Preferences

ROLES = ("host", "cohost", "audience")
PUBLISHING_ROLES = ("host", "cohost")
DEFAULT_MAX_COHOSTS = 8
KINDS = {"audio": _native.KIND_AUDIO, "video": _native.KIND_VIDEO}


FEC_MODES = ("auto", "off", "rs", "ulpfec")
DEFAULT_RTX_PT = {"video": 97, "audio": 112}
DEFAULT_FEC_PT = 125  # SFU-RS (docs/fec-burst.md)
DEFAULT_ULPFEC_PT = 116  # RFC 5109, in band (GStreamer rtpulpfecenc/dec, libwebrtc)
ULPFEC_GROUP = 4  # media packets per in-band ULPFEC packet toward a "ulpfec" viewer


@dataclass(slots=True)
class Layer:
    rid: str
    ssrc: int  # 0 = learned from the first packet carrying this rid (RFC 8852)
    rtx_ssrc: int | None
    fec_ssrc: int | None = None  # the publisher's SFU-RS stream for this layer
    width: int | None = None
    height: int | None = None
    max_bitrate: int | None = None  # declared; the allocator prefers the measured rate

    def ssrcs(self) -> list[int]:
        return [s for s in (self.ssrc, self.rtx_ssrc, self.fec_ssrc) if s]

    def describe(self) -> dict[str, Any]:
        return {"rid": self.rid, "ssrc": self.ssrc or None, "rtx_ssrc": self.rtx_ssrc,
                "fec_ssrc": self.fec_ssrc, "width": self.width, "height": self.height,
                "max_bitrate": self.max_bitrate}


@dataclass(slots=True)
class RecoveryRequest:
    """What a viewer negotiated in track.subscribe (loss_spec: `recovery`)."""

    nack: bool = True
    rtx: bool = True
    fec: str = "auto"  # auto | off | rs | ulpfec


@dataclass(slots=True)
class Subscription:
    subscription_id: str
    track_id: str
    participant_id: str  # the subscriber
    did: int  # native downtrack handle
    ssrc: int
    payload_type: int
    rtx_ssrc: int | None
    rtx_payload_type: int = 0
    fec_ssrc: int | None = None
    fec_payload_type: int = DEFAULT_FEC_PT
    recovery: RecoveryRequest = field(default_factory=RecoveryRequest)
    plan: dict[str, Any] = field(default_factory=dict)  # last plan applied (sfu/recovery.py)
    room_id: str = ""

    ulpfec_payload_type: int = DEFAULT_ULPFEC_PT
    prefs: Preferences = field(default_factory=Preferences)
    target: tuple[int | None, int] | None = None  # (layer index or None = paused, temporal)
    layer: int | None = None  # layer the node forwards now (EV_LAYER), None = none yet

    def describe_recovery(self) -> dict[str, Any]:
        return {"nack": self.recovery.nack, "rtx": self.recovery.rtx, "fec": self.recovery.fec,
                "rtx_ssrc": self.rtx_ssrc, "rtx_payload_type": self.rtx_payload_type,
                "fec_ssrc": self.fec_ssrc, "fec_payload_type": self.fec_payload_type,
                "ulpfec_payload_type": self.ulpfec_payload_type, "plan": dict(self.plan)}


@dataclass(slots=True)
class Track:
    track_id: str
    participant_id: str  # the publisher
    kind: str
    codec: str
    payload_type: int
    clock_rate: int
    layers: list[Layer]
    sid: int  # native source handle
    rtx_payload_type: int = 97
    fec_payload_type: int = DEFAULT_FEC_PT
    ulpfec_payload_type: int = DEFAULT_ULPFEC_PT
    nack: bool = True  # the node NACKs this publisher for its lost packets
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    temporal_layers: int = 1
    room_id: str = ""

    @property
    def switchable(self) -> bool:
        """Viewers get one of several layers (simulcast or temporal), chosen per viewer."""
        return self.kind == "video" and (len(self.layers) > 1 or self.temporal_layers > 1)

    def describe(self) -> dict[str, Any]:
        return {
            "track": self.track_id, "participant": self.participant_id, "kind": self.kind,
            "codec": self.codec, "payload_type": self.payload_type,
            "clock_rate": self.clock_rate, "layers": [lay.describe() for lay in self.layers],
            "subscribers": [{"participant": s.participant_id, "subscription": s.subscription_id}
                            for s in self.subscriptions.values()],
        }


@dataclass(slots=True)
class Participant:
    participant_id: str
    room_id: str
    role: str
    pid: int  # native peer handle
    ice_ufrag: str
    ice_pwd: str
    token: str
    address: tuple[str, int] | None = None
    twcc_ext_id: int | None = None  # transport-wide seq extension id on media to it
    rid_ext_id: int | None = None  # RtpStreamId extension id in its simulcast packets
    tracks: dict[str, Track] = field(default_factory=dict)  # published
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # as subscriber

    @property
    def address_str(self) -> str | None:
        return None if self.address is None else f"{self.address[0]}:{self.address[1]}"


@dataclass(slots=True)
class Room:
    room_id: str
    max_participants: int
    max_cohosts: int | None
    participants: dict[str, Participant] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    auto_subscribe: bool = False  # the node keeps stage subscriptions (sfu/costream.py)
    linked: set[str] = field(default_factory=set)  # rooms whose tracks it may subscribe (PK)


class RoomManager:
    """All rooms of one node, on one Engine and one media transport (``tid``)."""

    def __init__(self, engine: _native.Engine, bus: EventBus, tid: int, *,
                 max_rooms: int, max_participants_per_room: int,
                 reserved_ssrcs: tuple[int, ...] = ()) -> None:
        self.engine = engine
        self.bus = bus
        self.tid = tid
        self.max_rooms = max_rooms
        self.max_participants_per_room = max_participants_per_room
        self.rooms: dict[str, Room] = {}
        self.by_ufrag: dict[str, Participant] = {}
        self.by_pid: dict[int, Participant] = {}
        self.by_did: dict[int, Subscription] = {}  # native downtrack -> subscription
        self.tracks: dict[str, Track] = {}  # every track of every room (PK subscribes across)
        # Called as hook(what, room_id, subject) after each state change and its event
        # ("joined", "left", "published", "unpublished", "closed"): sfu/costream.py.
        self.hooks: list[Callable[[str, str, Any], None]] = []
        # Every SSRC in use on the node, in or out, plus the node's own (RTCP sender).
        self._ssrcs: set[int] = set(reserved_ssrcs)

    # -- lookups ---------------------------------------------------------------------------

    def room(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            raise NotFound(f"room {room_id!r} does not exist")
        return room

    def participant(self, room_id: str, participant_id: str) -> Participant:
        p = self.room(room_id).participants.get(participant_id)
        if p is None:
            raise NotFound(f"participant {participant_id!r} is not in room {room_id!r}")
        return p

    def track(self, track_id: str) -> Track:
        track = self.tracks.get(track_id)
        if track is None:
            raise NotFound(f"track {track_id!r} does not exist")
        return track

    def host_of(self, room_id: str) -> Participant | None:
        for p in self.room(room_id).participants.values():
            if p.role == "host":
                return p
        return None

    def set_role(self, p: Participant, role: str) -> None:
        """Seat changes (sfu/costream.py): audience <-> cohost, host handover."""
        if role == p.role:
            return
        previous, p.role = p.role, role
        self._emit(p.room_id, "participant.role_changed", {
            "participant": p.participant_id, "role": role, "previous": previous})
        self._notify("role", p.room_id, p)

    def _notify(self, what: str, room_id: str, subject: Any) -> None:
        for hook in list(self.hooks):
            hook(what, room_id, subject)

    def emit(self, room_id: str, name: str, data: dict[str, Any]) -> None:
        """An event for a state change made outside this class (e.g. recovery plans)."""
        self._emit(room_id, name, data)

    def _emit(self, room_id: str, name: str, data: dict[str, Any]) -> None:
        self.bus.publish(room_id, name, data)

    def _release_ssrcs(self, ssrc: int, rtx_ssrc: int | None) -> None:
        self._ssrcs.discard(ssrc)
        if rtx_ssrc:
            self._ssrcs.discard(rtx_ssrc)

    # -- rooms -----------------------------------------------------------------------------

    def create_room(self, room_id: str, max_participants: int | None,
                    max_cohosts: int | None, *, auto_subscribe: bool = False) -> Room:
        if room_id in self.rooms:
            raise Conflict(f"room {room_id!r} already exists")
        if len(self.rooms) >= self.max_rooms:
            raise LimitExceeded(f"node has reached max_rooms={self.max_rooms}")
        cap = self.max_participants_per_room
        if max_participants is not None and max_participants > cap:
            raise LimitExceeded(f"max_participants {max_participants} exceeds the node "
                                f"limit {cap}")
        if max_cohosts is None:
            max_cohosts = DEFAULT_MAX_COHOSTS
        room = Room(room_id, max_participants or cap, max_cohosts,
                    auto_subscribe=auto_subscribe)
        self.rooms[room_id] = room
        options: dict[str, Any] = {"max_participants": room.max_participants,
                                   "max_cohosts": max_cohosts,
                                   "auto_subscribe": auto_subscribe}
        self._emit(room_id, "room.created", {"room": room_id, "options": options})
        return room

    def close_room(self, room_id: str) -> None:
        room = self.room(room_id)
        # Links to other rooms end first (their events go to those rooms); then one event
        # for the whole teardown: consumers drop everything they hold for the room.
        self._notify("closing", room_id, room)
        for p in list(room.participants.values()):
            self._drop_participant(room, p, emit=False)
        del self.rooms[room_id]
        self._emit(room_id, "room.closed", {"room": room_id})
        self._notify("closed", room_id, room)

    # -- participants ----------------------------------------------------------------------

    def join(self, room_id: str, participant_id: str, role: str, *,
             twcc_ext_id: int | None = None, rid_ext_id: int | None = None) -> Participant:
        room = self.room(room_id)
        if participant_id in room.participants:
            raise Conflict(f"participant {participant_id!r} already joined room {room_id!r}")
        if len(room.participants) >= room.max_participants:
            raise LimitExceeded(f"room {room_id!r} is full ({room.max_participants})")
        if role == "host":
            host = next((q for q in room.participants.values() if q.role == "host"), None)
            if host is not None:
                raise Conflict(f"room {room_id!r} already has host {host.participant_id!r}; "
                               "join as cohost or audience, or hand over with "
                               "costream.handover")
        if role == "cohost" and room.max_cohosts is not None:
            cohosts = sum(1 for p in room.participants.values() if p.role == "cohost")
            if cohosts >= room.max_cohosts:
                raise LimitExceeded(f"room {room_id!r} has max_cohosts={room.max_cohosts}")
        try:
            pid = self.engine.add_peer(self.tid)
        except ValueError as exc:  # engine tables full
            raise LimitExceeded(f"node cannot take more participants: {exc}") from exc
        ufrag = secrets.token_hex(4)
        while ufrag in self.by_ufrag:
            ufrag = secrets.token_hex(4)
        # ice-pwd needs ≥ 22 chars of ice-char (RFC 8839 §5.4); 24 urlsafe chars, minus '-'
        # and '_' which are not ice-chars.
        pwd = secrets.token_urlsafe(24).replace("-", "+").replace("_", "/")
        p = Participant(participant_id, room_id, role, pid, ufrag, pwd, secrets.token_urlsafe(24),
                        twcc_ext_id=twcc_ext_id, rid_ext_id=rid_ext_id)
        if twcc_ext_id or rid_ext_id:
            self.engine.set_peer_transport_cc(pid, twcc_ext_id or 0, rid_ext_id or 0)
        room.participants[participant_id] = p
        self.by_ufrag[ufrag] = p
        self.by_pid[pid] = p
        self._emit(room_id, "participant.joined", {"participant": participant_id, "role": role})
        self._notify("joined", room_id, p)
        return p

    def bind(self, p: Participant, host: str, port: int) -> str:
        """Bind (or move) a participant's media address. Returns "bound" (first address),
        "moved" (new address) or "same". Raises Conflict if another participant holds it."""
        previous = p.address
        try:
            self.engine.bind_peer(p.pid, host, port)
        except ValueError as exc:
            raise Conflict(f"address {host}:{port} is bound to another participant") from exc
        p.address = (host, port)
        if previous is None:
            self._notify("bound", p.room_id, p)
            return "bound"
        if previous == p.address:
            return "same"
        self._notify("bound", p.room_id, p)
        self._emit(p.room_id, "participant.moved", {
            "participant": p.participant_id, "address": p.address_str,
            "previous": f"{previous[0]}:{previous[1]}"})
        return "moved"

    def leave(self, room_id: str, participant_id: str) -> None:
        room = self.room(room_id)
        p = self.participant(room_id, participant_id)
        self._drop_participant(room, p, emit=True)
        self._emit(room_id, "participant.left", {"participant": participant_id})
        self._notify("left", room_id, p)

    def _drop_participant(self, room: Room, p: Participant, *, emit: bool) -> None:
        for sub in list(p.subscriptions.values()):
            self._drop_subscription(room, sub, emit=emit, native=False)
        for track in list(p.tracks.values()):  # the "left" hook follows: no per-track one
            self._drop_track(room, track, emit=emit, native=False, notify=False)
        del room.participants[p.participant_id]
        self.by_ufrag.pop(p.ice_ufrag, None)
        self.by_pid.pop(p.pid, None)
        self._notify("detaching", room.room_id, p)  # transports let go of the peer first
        # The engine frees the peer's sources and every downtrack to or from it.
        self.engine.remove_peer(p.pid)

    # -- tracks ----------------------------------------------------------------------------

    def publish(self, room_id: str, participant_id: str, kind: str, codec: str,
                payload_type: int, clock_rate: int, layers: list[Layer],
                rtx_payload_type: int | None = None,
                fec_payload_type: int | None = None,
                ulpfec_payload_type: int | None = None, *, nack: bool = True,
                temporal_layers: int = 1, gop_cache: bool = True) -> Track:
        room = self.room(room_id)
        p = self.participant(room_id, participant_id)
        if p.role not in PUBLISHING_ROLES:
            raise Unauthorized(f"participant {participant_id!r} has role {p.role!r} and "
                               "may not publish")
        rtx_pt = DEFAULT_RTX_PT[kind] if rtx_payload_type is None else rtx_payload_type
        fec_pt = DEFAULT_FEC_PT if fec_payload_type is None else fec_payload_type
        ulp_pt = DEFAULT_ULPFEC_PT if ulpfec_payload_type is None else ulpfec_payload_type
        if len({payload_type, rtx_pt, fec_pt, ulp_pt}) != 4:
            raise Conflict(f"payload types must differ: media {payload_type}, RTX {rtx_pt}, "
                           f"FEC {fec_pt}, ULPFEC {ulp_pt}")
        if any(not lay.ssrc for lay in layers) and not p.rid_ext_id:
            raise Conflict("a layer without ssrc is learned from its RID: join with "
                           "rid_ext_id first")
        wanted = [s for lay in layers for s in lay.ssrcs()]
        taken = [s for s in wanted if s in self._ssrcs]
        if taken:
            raise Conflict(f"ssrc {taken[0]} is already in use on this node")
        try:
            sid = self.engine.add_source(p.pid, KINDS[kind], clock_rate)
        except ValueError as exc:
            raise LimitExceeded(f"node cannot take more tracks: {exc}") from exc
        try:
            self.engine.set_source_media(sid, codec, temporal_layers, len(layers), gop_cache)
            for index, lay in enumerate(layers):
                if lay.ssrc:
                    self.engine.add_ingress(sid, lay.ssrc, payload_type, lay.rtx_ssrc or 0,
                                            index, rtx_payload_type=rtx_pt,
                                            fec_ssrc=lay.fec_ssrc or 0,
                                            fec_payload_type=fec_pt,
                                            ulpfec_payload_type=ulp_pt)
        except ValueError as exc:
            self.engine.remove_source(sid)
            raise Conflict(f"cannot publish: {exc}") from exc
        self.engine.set_source_recovery(sid, nack=nack)
        self._ssrcs.update(wanted)
        track_id = "TR_" + secrets.token_hex(6)
        track = Track(track_id, participant_id, kind, codec, payload_type, clock_rate,
                      layers, sid, rtx_pt, fec_pt, ulp_pt, nack,
                      temporal_layers=temporal_layers, room_id=room_id)
        p.tracks[track_id] = track
        room.tracks[track_id] = track
        self.tracks[track_id] = track
        self._emit(room_id, "track.published", {
            "track": track_id, "participant": participant_id, "kind": kind, "codec": codec,
            "layers": [lay.describe() for lay in layers], "temporal_layers": temporal_layers})
        self._notify("published", room_id, track)
        return track

    def learn_layer(self, pid: int, ssrc: int, rid: str) -> Track | None:
        """An SSRC seen with an RtpStreamId: bind it to the publisher's layer of that rid
        that has no SSRC yet. Returns the track, or None if nothing matches."""
        p = self.by_pid.get(pid)
        if p is None or ssrc in self._ssrcs:
            return None
        for track in p.tracks.values():
            for index, lay in enumerate(track.layers):
                if lay.rid == rid and not lay.ssrc:
                    try:
                        self.engine.add_ingress(track.sid, ssrc, track.payload_type, 0, index,
                                                fec_payload_type=track.fec_payload_type)
                    except ValueError:
                        return None
                    lay.ssrc = ssrc
                    self._ssrcs.add(ssrc)
                    return track
        return None

    def unpublish(self, room_id: str, participant_id: str, track_id: str) -> None:
        room = self.room(room_id)
        p = self.participant(room_id, participant_id)
        track = p.tracks.get(track_id)
        if track is None:
            raise NotFound(f"participant {participant_id!r} has no track {track_id!r}")
        self._drop_track(room, track, emit=True, native=True)

    def _drop_track(self, room: Room, track: Track, *, emit: bool, native: bool,
                    notify: bool = True) -> None:
        for sub in list(track.subscriptions.values()):
            self._drop_subscription(room, sub, emit=emit, native=False)
        publisher = room.participants[track.participant_id]
        del publisher.tracks[track.track_id]
        del room.tracks[track.track_id]
        self.tracks.pop(track.track_id, None)
        for lay in track.layers:
            self._release_ssrcs(lay.ssrc, lay.rtx_ssrc)
            if lay.fec_ssrc:
                self._ssrcs.discard(lay.fec_ssrc)
        if native:  # remove_source also frees the source's downtracks
            self.engine.remove_source(track.sid)
        if emit:
            self._emit(room.room_id, "track.unpublished", {
                "track": track.track_id, "participant": track.participant_id})
            if notify:
                self._notify("unpublished", room.room_id, track)

    # -- subscriptions ---------------------------------------------------------------------

    def _new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._ssrcs:
                return ssrc

    def subscribe(self, room_id: str, participant_id: str, track_id: str,
                  recovery: RecoveryRequest | None = None,
                  prefs: Preferences | None = None) -> Subscription:
        room = self.room(room_id)
        p = self.participant(room_id, participant_id)
        track = room.tracks.get(track_id)
        if track is None:
            other = self.tracks.get(track_id)
            if other is None or other.room_id not in room.linked:
                raise NotFound(f"track {track_id!r} does not exist in room {room_id!r} or a "
                               "room linked to it")
            track = other
        if any(s.track_id == track_id for s in p.subscriptions.values()):
            raise Conflict(f"participant {participant_id!r} already subscribes to {track_id!r}")
        if recovery is not None and recovery.fec == "ulpfec" and p.twcc_ext_id:
            raise Conflict("recovery.fec 'ulpfec' cannot be combined with twcc_ext_id: the "
                           "transport-wide seq extension changes the bytes ULPFEC protects")
        ssrc = self._new_ssrc()
        try:
            did = self.engine.add_downtrack(track.sid, p.pid, ssrc, track.payload_type)
        except ValueError as exc:
            raise LimitExceeded(f"node cannot take more subscriptions: {exc}") from exc
        self._ssrcs.add(ssrc)
        rec = recovery or RecoveryRequest()
        rtx_ssrc = self._new_ssrc()
        self._ssrcs.add(rtx_ssrc)
        fec_ssrc = self._new_ssrc()
        self._ssrcs.add(fec_ssrc)
        sub = Subscription("SU_" + secrets.token_hex(6), track_id, participant_id, did, ssrc,
                           track.payload_type, rtx_ssrc, track.rtx_payload_type, fec_ssrc,
                           track.fec_payload_type, rec, room_id=room_id,
                           ulpfec_payload_type=track.ulpfec_payload_type,
                           prefs=prefs or Preferences())
        # FEC starts at zero rows; sfu/recovery.py raises it from the viewer's reports.
        self.engine.set_downtrack_recovery(
            did, nack=rec.nack, rtx_ssrc=rtx_ssrc if rec.rtx else 0,
            rtx_payload_type=track.rtx_payload_type, fec_ssrc=fec_ssrc,
            fec_payload_type=track.fec_payload_type,
            ulpfec_k=ULPFEC_GROUP if rec.fec == "ulpfec" else 0,
            ulpfec_payload_type=track.ulpfec_payload_type)
        self.by_did[did] = sub
        p.subscriptions[sub.subscription_id] = sub
        track.subscriptions[sub.subscription_id] = sub
        self._emit(room_id, "subscription.created", {
            "subscription": sub.subscription_id, "participant": participant_id,
            "track": track_id, "ssrc": ssrc})
        return sub

    def unsubscribe(self, room_id: str, participant_id: str, subscription_id: str) -> None:
        room = self.room(room_id)
        p = self.participant(room_id, participant_id)
        sub = p.subscriptions.get(subscription_id)
        if sub is None:
            raise NotFound(f"participant {participant_id!r} has no subscription "
                           f"{subscription_id!r}")
        self._drop_subscription(room, sub, emit=True, native=True)

    def _drop_subscription(self, room: Room, sub: Subscription, *, emit: bool,
                           native: bool) -> None:
        # The subscriber may sit in another room than the track (PK): that room hears of it.
        if sub.room_id != room.room_id and sub.room_id in self.rooms:
            room = self.rooms[sub.room_id]
            emit = True
        subscriber = room.participants.get(sub.participant_id)
        if subscriber is not None:
            subscriber.subscriptions.pop(sub.subscription_id, None)
        track = self.tracks.get(sub.track_id)
        if track is not None:
            track.subscriptions.pop(sub.subscription_id, None)
        self._release_ssrcs(sub.ssrc, sub.rtx_ssrc)
        if sub.fec_ssrc:
            self._ssrcs.discard(sub.fec_ssrc)
        self.by_did.pop(sub.did, None)
        if native:
            self.engine.remove_downtrack(sub.did)
        if emit:
            self._emit(room.room_id, "subscription.removed", {
                "subscription": sub.subscription_id, "participant": sub.participant_id,
                "track": sub.track_id})

    # -- views -----------------------------------------------------------------------------

    def snapshot(self, room_id: str) -> dict[str, Any]:
        room = self.room(room_id)
        return {
            "room": room_id,
            "seq": self.bus.last_seq(room_id),
            "participants": [{"participant": p.participant_id, "role": p.role,
                              "address": p.address_str} for p in room.participants.values()],
            "tracks": [t.describe() for t in room.tracks.values()],
        }

    def participant_count(self) -> int:
        return len(self.by_pid)

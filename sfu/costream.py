"""Co-streaming (连麦) seats and PK links, on top of sfu/rooms.py.

A room's stage is its host (seat 0) and the co-hosts on mic (seats 1..max_cohosts). Seat
requests (a host's invite, an audience member's application) are small state machines:
pending -> accepted | rejected | cancelled | expired; a wrong transition is a ``Conflict``.
A PK link joins two rooms' stages: each host sees the other, and each room's audience the
other host. Every change is an event with the room's seq (``costream.*``, ``pk.*``).

Subscriptions are derived, never patched: ``desired()`` computes the (subscriber, track)
pairs the stage implies and ``reconcile()`` makes the node's subscriptions match, so a
sequence of flows cannot leave one dangling (tests/test_costream_props.py checks exactly
that). With the room option ``auto_subscribe`` the node keeps everyone's stage
subscriptions; without it only the PK host pair is made and the rest is the service's.
Links are between room ids; a room on another node will join through a relay participant
that publishes the far host's tracks locally (a later issue), so nothing here assumes both
hosts share an engine beyond ``RoomManager``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfu import layout
from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, SfuError
from sfu.rooms import Participant, RoomManager, Subscription, Track
from sfu.simulcast import Preferences

log = logging.getLogger("sfu.costream")

MEDIA_KINDS = ("audio", "video")
DEFAULT_REQUEST_TIMEOUT = 30.0
STAGE_MAX_HEIGHT = 360  # stage members see each other as tiles: the low-latency small layers


@dataclass(slots=True)
class SeatRequest:
    request_id: str
    kind: str  # invite | apply
    participant: str  # who would take the seat
    by: str  # who asked (the host for an invite, the participant for an application)
    expires: float

    def describe(self, now: float) -> dict[str, Any]:
        return {"request": self.request_id, "type": self.kind, "participant": self.participant,
                "by": self.by, "expires_in": round(max(0.0, self.expires - now), 3)}


@dataclass(slots=True)
class PkLink:
    link_id: str
    rooms: tuple[str, str]
    ends_at: float | None
    scores: dict[str, int] = field(default_factory=dict)

    def other(self, room_id: str) -> str:
        return self.rooms[1] if room_id == self.rooms[0] else self.rooms[0]

    def describe(self, now: float) -> dict[str, Any]:
        return {"link": self.link_id, "rooms": list(self.rooms), "scores": dict(self.scores),
                "ends_in": None if self.ends_at is None else round(max(0.0, self.ends_at - now),
                                                                   3)}


@dataclass(slots=True)
class Stage:
    room_id: str
    seats: dict[str, int] = field(default_factory=dict)  # co-host -> seat 1..max_cohosts
    requests: dict[str, SeatRequest] = field(default_factory=dict)
    muted: dict[str, set[str]] = field(default_factory=dict)  # participant -> kinds
    layout_mode: str = "grid"
    pk: str | None = None  # link id
    # The subscriptions this module made: subscriber -> track -> (subscription, on stage).
    auto: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    last_layout: dict[str, Any] | None = None
    layout_version: int = 0
    # Layout events start with the first seat, PK link or set_layout (or auto_subscribe):
    # a plain room keeps the Foundation's event stream.
    live: bool = False

    def auto_items(self, only: str | None = None) -> list[tuple[tuple[str, str],
                                                               tuple[str, bool]]]:
        subscribers = self.auto.items() if only is None else \
            [(only, self.auto[only])] if only in self.auto else []
        return [((who, track), v) for who, per in subscribers for track, v in per.items()]

    def auto_get(self, key: tuple[str, str]) -> tuple[str, bool] | None:
        return self.auto.get(key[0], {}).get(key[1])

    def auto_set(self, key: tuple[str, str], value: tuple[str, bool]) -> None:
        self.auto.setdefault(key[0], {})[key[1]] = value

    def auto_del(self, key: tuple[str, str]) -> None:
        per = self.auto.get(key[0])
        if per is not None:
            per.pop(key[1], None)
            if not per:
                del self.auto[key[0]]

    def auto_count(self) -> int:
        return sum(len(per) for per in self.auto.values())


class CostreamManager:
    def __init__(self, rooms: RoomManager, *, clock: Callable[[], float] = time.monotonic,
                 on_subscribed: Callable[[Subscription], None] | None = None,
                 on_prefs: Callable[[Participant], None] | None = None,
                 on_layout: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.rooms = rooms
        self.clock = clock
        self.on_subscribed = on_subscribed  # simulcast: first allocation of a new sub
        self.on_prefs = on_prefs  # simulcast: re-allocate after preference changes
        self.on_layout = on_layout  # data channel: push the layout to the room's clients
        self.stages: dict[str, Stage] = {}
        self.links: dict[str, PkLink] = {}
        self._releasing = False
        self.counters = {"auto_subscribed": 0, "auto_unsubscribed": 0, "auto_failed": 0,
                         "requests_expired": 0}
        rooms.hooks.append(self._on_room_change)

    # -- lookups -----------------------------------------------------------------------------

    def stage(self, room_id: str) -> Stage:
        self.rooms.room(room_id)  # NotFound for unknown rooms
        st = self.stages.get(room_id)
        if st is None:
            st = self.stages[room_id] = Stage(room_id)
        return st

    def _emit(self, room_id: str, name: str, data: dict[str, Any]) -> None:
        self.rooms.emit(room_id, name, data)

    def _request(self, st: Stage, request_id: str) -> SeatRequest:
        req = st.requests.get(request_id)
        if req is None:
            raise NotFound(f"no pending seat request {request_id!r} in room {st.room_id!r}")
        return req

    def _host(self, room_id: str) -> Participant:
        host = self.rooms.host_of(room_id)
        if host is None:
            raise Conflict(f"room {room_id!r} has no host")
        return host

    def _seated(self, st: Stage, participant_id: str) -> Participant:
        p = self.rooms.participant(st.room_id, participant_id)
        if participant_id not in st.seats:
            raise Conflict(f"participant {participant_id!r} is not on mic in room "
                           f"{st.room_id!r} (role {p.role})")
        return p

    def _free_seat(self, st: Stage) -> int:
        cap = self.rooms.room(st.room_id).max_cohosts
        taken = set(st.seats.values())
        for seat in range(1, (cap if cap is not None else 1000) + 1):
            if seat not in taken:
                return seat
        raise LimitExceeded(f"all {cap} co-host seats of room {st.room_id!r} are taken")

    # -- seat requests -----------------------------------------------------------------------

    def _check_candidate(self, st: Stage, participant_id: str) -> None:
        p = self.rooms.participant(st.room_id, participant_id)
        if p.role != "audience":
            raise Conflict(f"participant {participant_id!r} is already on stage ({p.role})")
        for req in st.requests.values():
            if req.participant == participant_id:
                raise Conflict(f"participant {participant_id!r} already has a pending "
                               f"{req.kind} ({req.request_id})")
        self._free_seat(st)

    def _new_request(self, st: Stage, kind: str, participant: str, by: str,
                     timeout: float) -> dict[str, Any]:
        now = self.clock()
        req = SeatRequest("RQ_" + secrets.token_hex(5), kind, participant, by, now + timeout)
        st.requests[req.request_id] = req
        self._emit(st.room_id, "costream.request_created", req.describe(now))
        return req.describe(now)

    def invite(self, room_id: str, participant_id: str,
               timeout: float = DEFAULT_REQUEST_TIMEOUT) -> dict[str, Any]:
        st = self.stage(room_id)
        host = self._host(room_id)
        self._check_candidate(st, participant_id)
        return self._new_request(st, "invite", participant_id, host.participant_id, timeout)

    def apply(self, room_id: str, participant_id: str,
              timeout: float = DEFAULT_REQUEST_TIMEOUT) -> dict[str, Any]:
        st = self.stage(room_id)
        self._host(room_id)
        self._check_candidate(st, participant_id)
        return self._new_request(st, "apply", participant_id, participant_id, timeout)

    def _resolve(self, st: Stage, req: SeatRequest, outcome: str) -> None:
        del st.requests[req.request_id]
        self._emit(st.room_id, "costream.request_resolved", {
            "request": req.request_id, "type": req.kind, "participant": req.participant,
            "outcome": outcome})

    def accept(self, room_id: str, request_id: str) -> dict[str, Any]:
        st = self.stage(room_id)
        req = self._request(st, request_id)
        p = self.rooms.participant(room_id, req.participant)
        seat = self._free_seat(st)  # LimitExceeded leaves the request pending
        self._resolve(st, req, "accepted")
        self._take_seat(st, p, seat)
        return {"participant": p.participant_id, "seat": seat}

    def reject(self, room_id: str, request_id: str) -> None:
        st = self.stage(room_id)
        self._resolve(st, self._request(st, request_id), "rejected")

    def cancel(self, room_id: str, request_id: str) -> None:
        st = self.stage(room_id)
        self._resolve(st, self._request(st, request_id), "cancelled")

    # -- seats -------------------------------------------------------------------------------

    def _take_seat(self, st: Stage, p: Participant, seat: int) -> None:
        st.live = True
        self.rooms.set_role(p, "cohost")
        st.seats[p.participant_id] = seat
        self._emit(st.room_id, "costream.seat_taken", {"participant": p.participant_id,
                                                       "seat": seat})
        self._changed(st.room_id)

    def _release_seat(self, st: Stage, p: Participant, reason: str) -> None:
        """Off mic: unpublish (frees the native sources and every viewer's downtrack),
        back to audience, and the stage subscriptions follow."""
        seat = st.seats.pop(p.participant_id)
        st.muted.pop(p.participant_id, None)
        self._releasing = True  # one reconcile and layout at the end, after the events
        try:
            for track_id in list(p.tracks):
                self.rooms.unpublish(st.room_id, p.participant_id, track_id)
        finally:
            self._releasing = False
        self.rooms.set_role(p, "audience")
        self._emit(st.room_id, "costream.seat_released", {
            "participant": p.participant_id, "seat": seat, "reason": reason})
        self._changed(st.room_id)

    def kick(self, room_id: str, participant_id: str) -> None:
        st = self.stage(room_id)
        self._release_seat(st, self._seated(st, participant_id), "kicked")

    def leave(self, room_id: str, participant_id: str) -> None:
        st = self.stage(room_id)
        self._release_seat(st, self._seated(st, participant_id), "left")

    def handover(self, room_id: str, participant_id: str) -> dict[str, Any]:
        """The host role moves to a co-host on mic; the old host takes that seat."""
        st = self.stage(room_id)
        new = self._seated(st, participant_id)
        old = self._host(room_id)
        seat = st.seats.pop(new.participant_id)
        if st.muted.pop(new.participant_id, None):
            for kind in MEDIA_KINDS:
                self._apply_mute(new, kind, False)
        self.rooms.set_role(old, "cohost")
        st.seats[old.participant_id] = seat
        self.rooms.set_role(new, "host")
        self._emit(room_id, "costream.host_changed", {
            "host": new.participant_id, "previous": old.participant_id, "seat": seat})
        self._changed(room_id)
        if st.pk is not None:
            self._changed(self.links[st.pk].other(room_id))
        return {"host": new.participant_id, "previous": old.participant_id}

    def mute(self, room_id: str, participant_id: str, kinds: tuple[str, ...],
             muted: bool) -> dict[str, Any]:
        st = self.stage(room_id)
        p = self._seated(st, participant_id)
        have = st.muted.setdefault(participant_id, set())
        for kind in kinds:
            if (kind in have) == muted:
                raise Conflict(f"participant {participant_id!r} {kind} is already "
                               f"{'muted' if muted else 'unmuted'}")
        for kind in kinds:
            (have.add if muted else have.discard)(kind)
            self._apply_mute(p, kind, muted)
        if not have:
            st.muted.pop(participant_id, None)
        self._emit(room_id, "costream.muted" if muted else "costream.unmuted", {
            "participant": participant_id, "kinds": list(kinds)})
        self._update_layout(room_id)
        return {"participant": participant_id, "muted": sorted(have)}

    def _apply_mute(self, p: Participant, kind: str, muted: bool) -> None:
        for track in p.tracks.values():
            if track.kind == kind:
                self.rooms.engine.set_source_muted(track.sid, muted, self.clock())

    # -- PK ----------------------------------------------------------------------------------

    def pk_link(self, room_a: str, room_b: str, duration: float | None) -> dict[str, Any]:
        if room_a == room_b:
            raise BadRequest("fields 'room' and 'other_room' must name two different rooms")
        sa, sb = self.stage(room_a), self.stage(room_b)
        for st in (sa, sb):
            if st.pk is not None:
                raise Conflict(f"room {st.room_id!r} is already in PK link {st.pk}")
        hosts = (self._host(room_a), self._host(room_b))
        now = self.clock()
        link = PkLink("PK_" + secrets.token_hex(5), (room_a, room_b),
                      None if duration is None else now + duration,
                      {room_a: 0, room_b: 0})
        self.links[link.link_id] = link
        sa.pk = sb.pk = link.link_id
        sa.live = sb.live = True
        self.rooms.rooms[room_a].linked.add(room_b)
        self.rooms.rooms[room_b].linked.add(room_a)
        data = {**link.describe(now), "hosts": {room_a: hosts[0].participant_id,
                                                room_b: hosts[1].participant_id}}
        for room_id in link.rooms:
            self._emit(room_id, "pk.started", data)
        for room_id in link.rooms:
            self._changed(room_id)
        return link.describe(now)

    def link_of(self, room_id: str) -> PkLink:
        st = self.stage(room_id)
        if st.pk is None:
            raise NotFound(f"room {room_id!r} is not in a PK link")
        return self.links[st.pk]

    def pk_unlink(self, link_id: str, reason: str = "unlinked") -> None:
        link = self.links.pop(link_id, None)
        if link is None:
            raise NotFound(f"no PK link {link_id!r}")
        for room_id in link.rooms:
            if room_id in self.stages:
                self.stages[room_id].pk = None
            room = self.rooms.rooms.get(room_id)
            if room is not None:
                room.linked.discard(link.other(room_id))
        for room_id in link.rooms:
            if room_id not in self.rooms.rooms:
                continue
            self._drop_cross_room(room_id)
            self._emit(room_id, "pk.ended", {"link": link_id, "rooms": list(link.rooms),
                                             "scores": dict(link.scores), "reason": reason})
            self._changed(room_id)

    def pk_score(self, link_id: str, scores: dict[str, int]) -> dict[str, Any]:
        link = self.links.get(link_id)
        if link is None:
            raise NotFound(f"no PK link {link_id!r}")
        for room_id in scores:
            if room_id not in link.rooms:
                raise BadRequest(f"field 'scores' names room {room_id!r}, which is not in "
                                 f"link {link_id} ({', '.join(link.rooms)})")
        link.scores.update(scores)
        for room_id in link.rooms:
            self._emit(room_id, "pk.score_updated", {"link": link_id,
                                                     "scores": dict(link.scores)})
        return link.describe(self.clock())

    def _drop_cross_room(self, room_id: str) -> None:
        """Unlinked: no subscription of this room may point into a room it is not linked
        to, whoever made it."""
        room = self.rooms.rooms[room_id]
        for p in list(room.participants.values()):
            for sub in list(p.subscriptions.values()):
                track = self.rooms.tracks.get(sub.track_id)
                if track is not None and track.room_id != room_id \
                        and track.room_id not in room.linked:
                    self.rooms.unsubscribe(room_id, p.participant_id, sub.subscription_id)
        st = self.stages.get(room_id)
        if st is not None:
            for key, _v in st.auto_items():
                track = self.rooms.tracks.get(key[1])
                if track is None or track.room_id not in (room_id, *room.linked):
                    st.auto_del(key)

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Expire seat requests and timed PK links (the node calls this twice a second)."""
        now = self.clock() if now is None else now
        for st in list(self.stages.values()):
            for req in [r for r in st.requests.values() if r.expires <= now]:
                self.counters["requests_expired"] += 1
                self._resolve(st, req, "expired")
        for link in [lk for lk in self.links.values()
                     if lk.ends_at is not None and lk.ends_at <= now]:
            self.pk_unlink(link.link_id, "timeout")

    # -- the stage and its subscriptions ------------------------------------------------------

    def stage_members(self, room_id: str) -> list[Participant]:
        """Host first, then co-hosts by seat (only participants of this room)."""
        room = self.rooms.rooms[room_id]
        st = self.stage(room_id)
        members = [p for p in room.participants.values() if p.role == "host"]
        for pid, _seat in sorted(st.seats.items(), key=lambda kv: kv[1]):
            p = room.participants.get(pid)
            if p is not None:
                members.append(p)
        return members

    def _partner_host(self, room_id: str) -> Participant | None:
        st = self.stage(room_id)
        if st.pk is None:
            return None
        other = self.links[st.pk].other(room_id)
        return self.rooms.host_of(other) if other in self.rooms.rooms else None

    def desired(self, room_id: str, only: str | None = None) -> dict[tuple[str, str], bool]:
        """(subscriber, track) -> on-stage pair, for every subscription the stage implies
        (only those of subscriber ``only`` if given)."""
        room = self.rooms.rooms[room_id]
        members = self.stage_members(room_id)
        on_stage = {p.participant_id for p in members}
        partner = self._partner_host(room_id)
        out: dict[tuple[str, str], bool] = {}
        partner_tracks = list(partner.tracks.values()) if partner is not None else []
        if room.auto_subscribe:
            stage_tracks = [t for p in members for t in p.tracks.values()]
            viewers = room.participants.values() if only is None else \
                [room.participants[only]] if only in room.participants else []
            for p in viewers:
                me = p.participant_id
                for t in stage_tracks:
                    if t.participant_id != me:
                        out[(me, t.track_id)] = me in on_stage
                for t in partner_tracks:
                    out[(me, t.track_id)] = False
        elif members and members[0].role == "host" and only in (None,
                                                                 members[0].participant_id):
            for t in partner_tracks:
                out[(members[0].participant_id, t.track_id)] = False
        return out

    def reconcile(self, room_id: str, only: str | None = None) -> None:
        """Make the node's subscriptions in the room what the stage implies (only those of
        subscriber ``only`` if given: an audience member joining or leaving)."""
        if room_id not in self.rooms.rooms:
            return
        st = self.stage(room_id)
        room = self.rooms.rooms[room_id]
        want = self.desired(room_id, only)
        for key, (sub_id, _stage) in st.auto_items(only):
            p = room.participants.get(key[0])
            if p is None or sub_id not in p.subscriptions:
                st.auto_del(key)  # already gone with its track or subscriber
            elif key not in want:
                st.auto_del(key)
                self.rooms.unsubscribe(room_id, key[0], sub_id)
                self.counters["auto_unsubscribed"] += 1
        touched: set[str] = set()
        for key, on_stage in want.items():
            have = st.auto_get(key)
            p = room.participants[key[0]]
            if have is None:
                if any(s.track_id == key[1] for s in p.subscriptions.values()):
                    continue  # the service subscribed it itself: leave it alone
                self._subscribe(st, p, self.rooms.tracks[key[1]], on_stage)
            elif have[1] != on_stage:
                sub = p.subscriptions[have[0]]
                sub.prefs = self._prefs(self.rooms.tracks[key[1]], on_stage)
                st.auto_set(key, (have[0], on_stage))
                touched.add(key[0])
        if self.on_prefs is not None:
            for pid in touched:
                self.on_prefs(room.participants[pid])

    @staticmethod
    def _prefs(track: Track, on_stage: bool) -> Preferences:
        if on_stage and track.kind == "video":
            return Preferences(max_height=STAGE_MAX_HEIGHT)
        return Preferences()

    def _subscribe(self, st: Stage, p: Participant, track: Track, on_stage: bool) -> None:
        try:
            sub = self.rooms.subscribe(st.room_id, p.participant_id, track.track_id, None,
                                       self._prefs(track, on_stage))
        except SfuError as exc:  # e.g. engine tables full: count it, keep the others going
            self.counters["auto_failed"] += 1
            log.warning("auto subscription %s -> %s failed: %s", p.participant_id,
                        track.track_id, exc)
            return
        st.auto_set((p.participant_id, track.track_id), (sub.subscription_id, on_stage))
        self.counters["auto_subscribed"] += 1
        if self.on_subscribed is not None:
            self.on_subscribed(sub)

    def _changed(self, room_id: str) -> None:
        self.reconcile(room_id)
        self._update_layout(room_id)

    # -- layout ------------------------------------------------------------------------------

    def set_layout(self, room_id: str, mode: str) -> dict[str, Any]:
        st = self.stage(room_id)
        st.layout_mode = mode
        st.live = True
        self._update_layout(room_id)
        assert st.last_layout is not None
        return st.last_layout

    def layout(self, room_id: str) -> dict[str, Any]:
        st = self.stage(room_id)
        slots = [layout.slot_of(p.participant_id, p.room_id, p.tracks.values(),
                                "host" if p.role == "host" else "cohost",
                                0 if p.role == "host" else st.seats[p.participant_id],
                                st.muted.get(p.participant_id, ()))
                 for p in self.stage_members(room_id)]
        partner = self._partner_host(room_id)
        if partner is not None:
            slots.append(layout.slot_of(partner.participant_id, partner.room_id,
                                        partner.tracks.values(), "pk_host", -1, ()))
        return layout.compute(st.layout_mode, slots)

    def _update_layout(self, room_id: str) -> None:
        if room_id not in self.rooms.rooms:
            return
        st = self.stage(room_id)
        if not (st.live or self.rooms.rooms[room_id].auto_subscribe):
            return
        new = self.layout(room_id)
        if new == st.last_layout:
            return
        st.last_layout = new
        st.layout_version += 1
        data = {**new, "version": st.layout_version}
        self._emit(room_id, "costream.layout_changed", data)
        if self.on_layout is not None:
            self.on_layout(room_id, data)

    # -- RoomManager hooks -------------------------------------------------------------------

    def _on_room_change(self, what: str, room_id: str, subject: Any) -> None:
        if what == "closing":
            st = self.stages.get(room_id)
            if st is not None and st.pk is not None:
                self.pk_unlink(st.pk, "room_closed")
            return
        if what == "closed":
            self.stages.pop(room_id, None)
            return
        if what in ("bound", "detaching"):  # transport matters: nothing on stage changes
            return
        st = self.stage(room_id)
        if what == "joined":
            p: Participant = subject
            if p.role == "audience":  # the stage is unchanged: only the newcomer's view
                self.reconcile(room_id, p.participant_id)
                return
            if p.role == "cohost":  # joined straight onto a seat (Foundation API)
                st.seats[p.participant_id] = self._free_seat(st)
                self._emit(room_id, "costream.seat_taken", {"participant": p.participant_id,
                                                            "seat": st.seats[p.participant_id]})
            self._changed(room_id)
            if p.role == "host" and st.pk is not None:
                self._changed(self.links[st.pk].other(room_id))
        elif what == "left":
            p = subject
            for req in [r for r in st.requests.values()
                        if p.participant_id in (r.participant, r.by)]:
                self._resolve(st, req, "participant_left")
            st.muted.pop(p.participant_id, None)
            seat = st.seats.pop(p.participant_id, None)
            if seat is not None:
                self._emit(room_id, "costream.seat_released", {
                    "participant": p.participant_id, "seat": seat,
                    "reason": "participant_left"})
            if p.role == "host" and st.pk is not None:
                self.pk_unlink(st.pk, "host_left")
            if p.role == "audience":
                st.auto.pop(p.participant_id, None)  # its subscriptions left with it
                return
            self._changed(room_id)
        elif what in ("published", "unpublished"):
            if self._releasing:
                return
            track: Track = subject
            publisher = self.rooms.rooms[room_id].participants.get(track.participant_id)
            if what == "published" and publisher is not None:
                for kind in st.muted.get(track.participant_id, ()):
                    if kind == track.kind:
                        self.rooms.engine.set_source_muted(track.sid, True, self.clock())
            self._changed(room_id)
            if publisher is not None and publisher.role == "host" and st.pk is not None:
                self._changed(self.links[st.pk].other(room_id))

    # -- views -------------------------------------------------------------------------------

    def describe(self, room_id: str) -> dict[str, Any]:
        st = self.stage(room_id)
        now = self.clock()
        host = self.rooms.host_of(room_id)
        return {
            "room": room_id, "seq": self.rooms.bus.last_seq(room_id),
            "host": None if host is None else host.participant_id,
            "max_cohosts": self.rooms.rooms[room_id].max_cohosts,
            "seats": [{"seat": seat, "participant": pid,
                       "muted": sorted(st.muted.get(pid, ()))}
                      for pid, seat in sorted(st.seats.items(), key=lambda kv: kv[1])],
            "requests": [r.describe(now) for r in st.requests.values()],
            "pk": None if st.pk is None else self.links[st.pk].describe(now),
            "layout": st.last_layout or self.layout(room_id),
            "auto_subscribe": self.rooms.rooms[room_id].auto_subscribe,
            "auto_subscriptions": st.auto_count(),
        }

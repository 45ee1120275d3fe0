"""Property test of the seat and PK flows: random sequences of invite / apply / accept /
reject / cancel / expire / kick / leave / handover / mute / publish / join / leave-room /
pk link / unlink, on the real RoomManager and a real Engine. After every step: no
subscription dangles (in Python or in the engine), no seat is double-booked, and the node's
stage subscriptions are exactly what the stage implies."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sfu import _native
from sfu.costream import CostreamManager
from sfu.errors import SfuError
from sfu.events import EventBus
from sfu.rooms import Layer, RoomManager

PEOPLE = [f"p{i}" for i in range(7)]
ROOMS = ("A", "B")
OPS = ("invite", "apply", "accept", "reject", "cancel", "expire", "kick", "leave", "handover",
       "mute", "unmute", "publish", "unpublish", "join", "part", "pk", "unpk", "subscribe")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def world(max_cohosts: int = 3) -> Iterator[tuple[RoomManager, CostreamManager, Clock,
                                                  list[dict[str, Any]]]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    engine = _native.Engine(max_peers=64, max_sources=128, max_downtracks=2048)
    bus = EventBus()
    events: list[dict[str, Any]] = []
    bus.subscribe(None, events.append)
    try:
        tid = engine.add_udp(sock.fileno())
        rooms = RoomManager(engine, bus, tid, max_rooms=4, max_participants_per_room=50)
        clock = Clock()
        costream = CostreamManager(rooms, clock=clock)
        for room in ROOMS:
            rooms.create_room(room, None, max_cohosts, auto_subscribe=room == "A")
        yield rooms, costream, clock, events
    finally:
        engine.remove_transport(tid)
        sock.close()


def check_invariants(rooms: RoomManager, costream: CostreamManager) -> None:
    n_subs = 0
    for room in rooms.rooms.values():
        hosts = [p for p in room.participants.values() if p.role == "host"]
        assert len(hosts) <= 1
        stage = costream.stage(room.room_id)
        seats = list(stage.seats.values())
        assert len(seats) == len(set(seats)), "seat double-booked"
        assert all(1 <= s <= (room.max_cohosts or 0) for s in seats)
        cohosts = {p.participant_id for p in room.participants.values() if p.role == "cohost"}
        assert cohosts == set(stage.seats), "every co-host has exactly one seat"
        for req in stage.requests.values():
            assert room.participants[req.participant].role == "audience"
        for muted in stage.muted:
            assert muted in stage.seats
        for p in room.participants.values():
            assert all(t.participant_id == p.participant_id for t in p.tracks.values())
            for sub in p.subscriptions.values():
                n_subs += 1
                track = rooms.tracks[sub.track_id]  # KeyError = dangling
                assert track.subscriptions[sub.subscription_id] is sub
                assert track.room_id == room.room_id or track.room_id in room.linked
                assert rooms.by_did[sub.did] is sub
        want = costream.desired(room.room_id)
        have = {key for key, _v in stage.auto_items()}
        assert have <= set(want), f"stale stage subscriptions {have - set(want)}"
        for who, track_id in want:
            subs = room.participants[who].subscriptions.values()
            assert any(s.track_id == track_id for s in subs), f"missing {who} -> {track_id}"
    for track in rooms.tracks.values():
        for sub in track.subscriptions.values():
            assert sub.subscription_id in rooms.rooms[sub.room_id].participants[
                sub.participant_id].subscriptions
    assert len(rooms.by_did) == n_subs
    assert rooms.engine.live()["downtracks"] == n_subs, "native downtracks leaked"


def step(rooms: RoomManager, costream: CostreamManager, clock: Clock, op: str, room: str,
         who: str, arg: int) -> None:
    r = rooms.rooms[room]
    requests = list(costream.stage(room).requests)
    request = requests[arg % len(requests)] if requests else "RQ_none"
    if op == "join":
        role = ("host", "cohost", "audience")[arg % 3]
        rooms.join(room, who, role)
    elif op == "part":
        rooms.leave(room, who)
    elif op == "invite":
        costream.invite(room, who, 5.0)
    elif op == "apply":
        costream.apply(room, who, 5.0)
    elif op == "accept":
        costream.accept(room, request)
    elif op == "reject":
        costream.reject(room, request)
    elif op == "cancel":
        costream.cancel(room, request)
    elif op == "expire":
        clock.now += 6.0
        costream.tick()
    elif op == "kick":
        costream.kick(room, who)
    elif op == "leave":
        costream.leave(room, who)
    elif op == "handover":
        costream.handover(room, who)
    elif op in ("mute", "unmute"):
        costream.mute(room, who, (("audio",), ("video",), ("audio", "video"))[arg % 3],
                      op == "mute")
    elif op == "publish":
        kind = ("audio", "video")[arg % 2]
        ssrc = 10_000 + arg * 7 + len(rooms.tracks) * 1000
        rooms.publish(room, who, kind, "opus" if kind == "audio" else "VP8",
                      111 if kind == "audio" else 96, 48000 if kind == "audio" else 90000,
                      [Layer("", ssrc, None)])
    elif op == "unpublish":
        p = rooms.participant(room, who)
        if p.tracks:
            rooms.unpublish(room, who, sorted(p.tracks)[arg % len(p.tracks)])
    elif op == "pk":
        costream.pk_link(room, ROOMS[1] if room == ROOMS[0] else ROOMS[0], None)
    elif op == "unpk":
        costream.pk_unlink(costream.link_of(room).link_id)
    elif op == "subscribe":
        visible = [t for t in rooms.tracks.values()
                   if t.room_id == room or t.room_id in r.linked]
        if visible:
            rooms.subscribe(room, who, visible[arg % len(visible)].track_id)


Step = tuple[str, str, str, int]
steps = st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(ROOMS),
                           st.sampled_from(PEOPLE), st.integers(0, 11)),
                 min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_random_flows_keep_the_stage_consistent(ops: list[Step]) -> None:
    with world() as (rooms, costream, clock, _events):
        outcomes = {"ok": 0, "error": 0}
        for op, room, who, arg in ops:
            try:
                step(rooms, costream, clock, op, room, who, arg)
                outcomes["ok"] += 1
            except SfuError:
                outcomes["error"] += 1  # typed refusal of an invalid transition: fine
            check_invariants(rooms, costream)


def test_a_scripted_co_stream_reaches_every_state() -> None:
    """A fixed sequence through every flow, so the property test's generator is known to
    reach the interesting states (seats full, PK with co-hosts, handover while linked)."""
    script: list[Step] = [
        ("join", "A", "p0", 0), ("join", "B", "p1", 0), ("publish", "A", "p0", 1),
        ("publish", "B", "p1", 1), ("join", "A", "p2", 2), ("join", "A", "p3", 2),
        ("join", "A", "p4", 2), ("join", "A", "p5", 2), ("invite", "A", "p2", 0),
        ("accept", "A", "p2", 0), ("apply", "A", "p3", 0), ("accept", "A", "p3", 0),
        ("publish", "A", "p2", 0), ("publish", "A", "p3", 1), ("pk", "A", "p0", 0),
        ("apply", "A", "p5", 0), ("reject", "A", "p5", 0), ("invite", "A", "p4", 0),
        ("accept", "A", "p4", 0),
        ("mute", "A", "p2", 2), ("handover", "A", "p3", 0), ("kick", "A", "p2", 0),
        ("unpk", "A", "p0", 0), ("leave", "A", "p4", 0), ("part", "A", "p3", 0),
    ]
    with world() as (rooms, costream, clock, events):
        for op, room, who, arg in script:
            step(rooms, costream, clock, op, room, who, arg)
            check_invariants(rooms, costream)
        names = [e["event"] for e in events]
        for name in ("costream.request_created", "costream.request_resolved",
                     "costream.seat_taken", "costream.seat_released", "costream.muted",
                     "costream.host_changed", "costream.layout_changed", "pk.started",
                     "pk.ended", "participant.role_changed"):
            assert name in names, name
        seqs: dict[str, list[int]] = {}
        for e in events:
            seqs.setdefault(e["room"], []).append(e["seq"])
        for room_seqs in seqs.values():
            assert room_seqs == list(range(1, len(room_seqs) + 1))

"""Co-streaming seats, PK links and layout through Node.call on a real node (real engine,
real UDP socket; no media here: tests/test_costream_e2e.py sends media)."""

from __future__ import annotations

from typing import Any

import pytest
from node_helpers import call, expect, with_node

from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, SfuError
from sfu.server import RunningNode

AUDIO = {"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000}
VIDEO = {"kind": "video", "codec": "VP8", "payload_type": 96, "clock_rate": 90000}
_ssrc = [5000]


async def publish(running: RunningNode, room: str, who: str, layers: int = 1) -> list[str]:
    out = []
    for spec in (AUDIO, VIDEO):
        n = 1 if spec is AUDIO else layers
        lays = []
        for i in range(n):
            _ssrc[0] += 1
            lays.append({"rid": "qhf"[i] if n > 1 else "", "ssrc": _ssrc[0]})
        res = await call(running, "track.publish", room=room, participant=who, layers=lays,
                         **spec)
        out.append(res["track"])
    return out


def subs_of(running: RunningNode, room: str, who: str) -> dict[str, Any]:
    p = running.node.rooms.participant(room, who)
    return {s.track_id: s for s in p.subscriptions.values()}


def native_downtracks(running: RunningNode) -> int:
    return int(running.node.engine.live()["downtracks"])


def total_subs(running: RunningNode) -> int:
    return len(running.node.rooms.by_did)




BAD = [
    ("costream.invite", {"room": "r1"}, BadRequest, "missing field 'participant'"),
    ("costream.invite", {"room": "r1", "participant": "a1", "timeout_s": 0}, BadRequest,
     "timeout_s"),
    ("costream.mute", {"room": "r1", "participant": "a1", "kind": "smell"}, BadRequest,
     "field 'kind' must be one of audio, video, all"),
    ("costream.accept", {"room": "r1", "request": "RQ_nope"}, NotFound, "RQ_nope"),
    ("costream.kick", {"room": "r1", "participant": "a1"}, Conflict, "is not on mic"),
    ("costream.handover", {"room": "r1", "participant": "a1"}, Conflict, "is not on mic"),
    ("costream.set_layout", {"room": "r1", "mode": "mosaic"}, BadRequest, "grid, pip"),
    ("costream.invite", {"room": "r1", "participant": "h"}, Conflict, "already on stage"),
    ("costream.state", {"room": "nope"}, NotFound, "room 'nope' does not exist"),
    ("pk.link", {"room": "r1", "other_room": "r1"}, BadRequest, "two different rooms"),
    ("pk.link", {"room": "r1", "other_room": "r2"}, Conflict, "room 'r2' has no host"),
    ("pk.unlink", {"room": "r1"}, NotFound, "not in a PK link"),
    ("pk.unlink", {}, BadRequest, "exactly one of 'link' or 'room'"),
    ("pk.score", {"link": "PK_x", "scores": {"r1": -1}}, BadRequest, "field 'scores'"),
    ("pk.score", {"link": "PK_x", "scores": {"r1": 3}}, NotFound, "no PK link 'PK_x'"),
    ("data.send", {"room": "r1", "kind": "telepathy"}, BadRequest, "field 'kind'"),
    ("data.send", {"room": "r1", "kind": "comment", "sync": True}, BadRequest,
     "field 'sync' is for kinds product, link_live"),
    ("data.send", {"room": "r1", "kind": "product", "sync": True}, Conflict,
     "has no host video track"),
    ("data.configure", {"room": "r1", "comment_cap": 1000}, BadRequest, "comment_cap"),
    ("faq.load", {"room": "r1", "entries": "nope"}, BadRequest, "faq"),
    ("faq.clear", {"room": "r1"}, NotFound, "has no FAQ"),
    ("room.create", {"room": "r9", "auto_subscribe": "yes"}, BadRequest, "auto_subscribe"),
    ("participant.join", {"room": "r1", "participant": "h2", "role": "host"}, Conflict,
     "already has host 'h'"),
    ("room.create", {"room": "r9", "options": {1: 2, "x": 3}}, BadRequest,
     "field names in options must be strings"),
    ("room.create", {"room": "r9", "max_cohosts": 65}, BadRequest, "max_cohosts"),
    ("data.send", {"room": "r1", "kind": "order", "text": 5}, BadRequest, "text"),
]


@pytest.mark.parametrize(("method", "params", "exc", "match"), BAD,
                         ids=[f"{m}:{i}" for i, (m, *_r) in enumerate(BAD)])
def test_bad_input_gets_a_typed_error(method: str, params: dict[str, Any],
                                      exc: type[SfuError], match: str) -> None:
    async def scenario(running: RunningNode, _events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1")
        await call(running, "room.create", room="r2")
        await call(running, "participant.join", room="r1", participant="h", role="host")
        await call(running, "participant.join", room="r1", participant="a1", role="audience")
        with expect(exc, match):
            await call(running, method, **params)
    with_node(scenario)


def test_on_mic_and_off_mic_follow_the_stage() -> None:
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1", auto_subscribe=True, max_cohosts=2)
        await call(running, "participant.join", room="r1", participant="h", role="host")
        host_tracks = await publish(running, "r1", "h", layers=3)
        for who in ("a1", "a2", "a3"):
            await call(running, "participant.join", room="r1", participant=who,
                       role="audience")
        # The audience watches the host as soon as it joins.
        assert set(subs_of(running, "r1", "a1")) == set(host_tracks)
        inv = await call(running, "costream.invite", room="r1", participant="a1")
        with expect(Conflict, "already has a pending invite"):
            await call(running, "costream.apply", room="r1", participant="a1")
        res = await call(running, "costream.accept", room="r1", request=inv["request"])
        assert res == {"participant": "a1", "seat": 1}
        app = await call(running, "costream.apply", room="r1", participant="a2")
        await call(running, "costream.accept", room="r1", request=app["request"])
        with expect(LimitExceeded, "all 2 co-host seats"):
            await call(running, "costream.invite", room="r1", participant="a3")
        a1_tracks = await publish(running, "r1", "a1")
        # Host, the other co-host and the audience now receive a1; a1 receives the host
        # at the stage's small layers.
        for who in ("h", "a2", "a3"):
            assert set(a1_tracks) <= set(subs_of(running, "r1", who)), who
        a1_subs = subs_of(running, "r1", "a1")
        assert a1_subs[host_tracks[1]].prefs.max_height == 360
        assert subs_of(running, "r1", "a3")[host_tracks[1]].prefs.max_height is None
        state = await call(running, "costream.state", room="r1")
        assert [s["participant"] for s in state["seats"]] == ["a1", "a2"]
        layout = state["layout"]
        assert [s["participant"] for s in layout["slots"]] == ["h", "a1", "a2"]
        assert layout["mode"] == "grid"
        before = total_subs(running)
        assert native_downtracks(running) == before
        await call(running, "costream.mute", room="r1", participant="a1", kind="audio")
        with expect(Conflict, "audio is already muted"):
            await call(running, "costream.mute", room="r1", participant="a1", kind="all")
        await call(running, "costream.kick", room="r1", participant="a1")
        # Off mic: a1's tracks and every subscription to them are gone, natively too.
        assert not running.node.rooms.participant("r1", "a1").tracks
        for who in ("h", "a2", "a3"):
            assert not set(a1_tracks) & set(subs_of(running, "r1", who))
        assert total_subs(running) == before - 3 * 2
        assert native_downtracks(running) == total_subs(running)
        assert subs_of(running, "r1", "a1")[host_tracks[1]].prefs.max_height is None
        names = [e["event"] for e in events if e["room"] == "r1"]
        for name in ("costream.request_created", "costream.request_resolved",
                     "costream.seat_taken", "costream.muted", "costream.seat_released",
                     "costream.layout_changed", "participant.role_changed"):
            assert name in names
        released = next(e for e in events if e["event"] == "costream.seat_released")
        assert released["data"] == {"participant": "a1", "seat": 1, "reason": "kicked"}
        # Off mic: the role and seat events come before the layout that follows from them.
        after = [e["event"] for e in events if e["seq"] > released["seq"] - 2
                 and e["room"] == "r1"]
        assert after.index("participant.role_changed") < after.index("costream.layout_changed")
    with_node(scenario)


def test_handover_and_request_expiry() -> None:
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1", auto_subscribe=True)
        await call(running, "participant.join", room="r1", participant="h", role="host")
        await call(running, "participant.join", room="r1", participant="c", role="cohost")
        await call(running, "participant.join", room="r1", participant="a", role="audience")
        res = await call(running, "costream.handover", room="r1", participant="c")
        assert res == {"host": "c", "previous": "h"}
        state = await call(running, "costream.state", room="r1")
        assert state["host"] == "c"
        assert state["seats"] == [{"seat": 1, "participant": "h", "muted": []}]
        await call(running, "costream.apply", room="r1", participant="a", timeout_s=1)
        running.node.costream.tick(running.node.clock() + 1.5)
        resolved = [e["data"] for e in events if e["event"] == "costream.request_resolved"]
        assert resolved[-1]["outcome"] == "expired"
        assert (await call(running, "costream.state", room="r1"))["requests"] == []
    with_node(scenario)


def test_pk_links_two_rooms_and_unlinks_cleanly() -> None:
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        tracks = {}
        for room, host in (("r1", "h1"), ("r2", "h2")):
            await call(running, "room.create", room=room, auto_subscribe=room == "r1")
            await call(running, "participant.join", room=room, participant=host, role="host")
            tracks[room] = await publish(running, room, host, layers=3)
            await call(running, "participant.join", room=room, participant=f"{room}a",
                       role="audience")
        link = await call(running, "pk.link", room="r1", other_room="r2", duration_s=600)
        with expect(Conflict, "already in PK link"):
            await call(running, "pk.link", room="r2", other_room="r1")
        # Hosts see each other in both rooms; r1's audience (auto) sees both hosts with all
        # layers; r2 (not auto) may subscribe the other host itself while linked.
        assert set(tracks["r2"]) <= set(subs_of(running, "r1", "h1"))
        assert set(tracks["r1"]) <= set(subs_of(running, "r2", "h2"))
        r1a = subs_of(running, "r1", "r1a")
        assert set(tracks["r1"]) | set(tracks["r2"]) == set(r1a)
        assert r1a[tracks["r2"][1]].prefs.max_height is None
        await call(running, "track.subscribe", room="r2", participant="r2a",
                   track=tracks["r1"][1])
        scored = await call(running, "pk.score", link=link["link"], scores={"r1": 5, "r2": 7})
        assert scored["scores"] == {"r1": 5, "r2": 7}
        layout = (await call(running, "costream.state", room="r1"))["layout"]
        assert layout["mode"] == "pk"
        assert [s["participant"] for s in layout["slots"]] == ["h1", "h2"]
        await call(running, "pk.unlink", link=link["link"])
        for room, who in (("r1", "h1"), ("r1", "r1a"), ("r2", "h2"), ("r2", "r2a")):
            other = "r2" if room == "r1" else "r1"
            assert not set(tracks[other]) & set(subs_of(running, room, who)), who
        assert native_downtracks(running) == total_subs(running)
        for room in ("r1", "r2"):
            names = [e["event"] for e in events if e["room"] == room]
            assert {"pk.started", "pk.score_updated", "pk.ended"} <= set(names), room
        ended = [e for e in events if e["event"] == "pk.ended"]
        assert {e["room"] for e in ended} == {"r1", "r2"}
        assert ended[0]["data"]["scores"] == {"r1": 5, "r2": 7}
    with_node(scenario)


def test_closing_a_linked_room_ends_pk_in_the_other() -> None:
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        for room, host in (("r1", "h1"), ("r2", "h2")):
            await call(running, "room.create", room=room, auto_subscribe=True)
            await call(running, "participant.join", room=room, participant=host, role="host")
            await publish(running, room, host)
        await call(running, "pk.link", room="r1", other_room="r2")
        assert total_subs(running) == 4
        await call(running, "room.close", room="r1")
        ended = [e for e in events if e["event"] == "pk.ended"]
        assert [e["room"] for e in ended][-1] == "r2"
        assert ended[-1]["data"]["reason"] == "room_closed"
        assert subs_of(running, "r2", "h2") == {}
        assert native_downtracks(running) == total_subs(running) == 0
    with_node(scenario)


def test_closing_a_room_forgets_its_faq() -> None:
    async def scenario(running: RunningNode, _events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1")
        await call(running, "faq.load", room="r1",
                   entries=[{"patterns": ["包邮吗"], "answer": "包邮"}])
        await call(running, "room.close", room="r1")
        await call(running, "room.create", room="r1")
        with expect(NotFound, "has no FAQ"):
            await call(running, "faq.clear", room="r1")
    with_node(scenario)


def test_data_interval_below_the_node_tick_is_refused() -> None:
    async def scenario(running: RunningNode, _events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1")
        with expect(BadRequest, "interval_ms"):
            await call(running, "data.configure", room="r1", interval_ms=50)
        res = await call(running, "data.configure", room="r1", interval_ms=400,
                         comment_cap=3)
        assert res == {"interval_ms": 400, "comment_cap": 3}
    with_node(scenario)

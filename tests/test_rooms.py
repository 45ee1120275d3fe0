"""Control-method validation and room state rules, through Node.call on a real engine
(no control socket: these are unit-level checks of sfu/node.py + sfu/rooms.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from node_helpers import call, expect, with_node

from sfu.config import NodeConfig
from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, Unauthorized
from sfu.server import RunningNode

VIDEO = {"kind": "video", "codec": "VP8", "payload_type": 96, "clock_rate": 90000}


async def room_with_host(running: RunningNode) -> str:
    await call(running, "room.create", room="r1")
    await call(running, "participant.join", room="r1", participant="h", role="host")
    result = await call(running, "track.publish", room="r1", participant="h",
                        layers=[{"rid": "f", "ssrc": 1000}], **VIDEO)
    return str(result["track"])


# -- parameter validation ----------------------------------------------------------------------

BAD_PARAMS: list[tuple[str, str, dict[str, Any], str]] = [
    ("unknown_method", "room.explode", {}, "unknown method 'room.explode'"),
    ("unknown_field", "room.create", {"room": "r", "colour": 1}, "'colour'"),
    ("missing_room", "room.create", {}, "missing field 'room'"),
    ("room_not_str", "room.create", {"room": 5}, "field 'room'"),
    ("room_empty", "room.create", {"room": ""}, "field 'room'"),
    ("room_too_long", "room.create", {"room": "x" * 129}, "field 'room'"),
    ("room_bad_chars", "room.create", {"room": "a b"}, "field 'room'"),
    ("options_not_map", "room.create", {"room": "r", "options": [1]}, "'options'"),
    ("options_unknown", "room.create", {"room": "r", "options": {"x": 1}}, "'x' in options"),
    ("max_participants_zero", "room.create", {"room": "r", "max_participants": 0},
     "field 'max_participants'"),
    ("max_participants_bool", "room.create", {"room": "r", "max_participants": True},
     "field 'max_participants'"),
    ("max_cohosts_negative", "room.create", {"room": "r", "options": {"max_cohosts": -1}},
     "field 'max_cohosts'"),
    ("role_bad", "participant.join", {"room": "r1", "participant": "p", "role": "admin"},
     "field 'role' must be one of host, cohost, audience"),
    ("role_missing", "participant.join", {"room": "r1", "participant": "p"},
     "missing field 'role'"),
    ("remote_no_port", "participant.connect", {"room": "r1", "participant": "h",
                                               "remote": "127.0.0.1"}, "field 'remote'"),
    ("remote_ipv6", "participant.connect", {"room": "r1", "participant": "h",
                                            "remote": "[::1]:5000"}, "field 'remote'"),
    ("remote_port_zero", "participant.connect", {"room": "r1", "participant": "h",
                                                 "remote": "127.0.0.1:0"}, "field 'remote'"),
    ("kind_bad", "track.publish", {**VIDEO, "kind": "data", "room": "r1", "participant": "h",
                                   "layers": [{"ssrc": 1}]}, "field 'kind'"),
    ("codec_bad", "track.publish", {**VIDEO, "codec": "AV1", "room": "r1", "participant": "h",
                                    "layers": [{"ssrc": 1}]}, "field 'codec'"),
    ("codec_kind_mismatch", "track.publish", {**VIDEO, "codec": "opus", "room": "r1",
                                              "participant": "h", "layers": [{"ssrc": 1}]},
     "does not fit kind"),
    ("pt_range", "track.publish", {**VIDEO, "payload_type": 128, "room": "r1",
                                   "participant": "h", "layers": [{"ssrc": 1}]},
     "field 'payload_type' must be an integer in 0..127"),
    ("pt_rtcp_range", "track.publish", {**VIDEO, "payload_type": 72, "room": "r1",
                                        "participant": "h", "layers": [{"ssrc": 1}]},
     "RTCP-reserved"),
    ("clock_rate_str", "track.publish", {**VIDEO, "clock_rate": "90000", "room": "r1",
                                         "participant": "h", "layers": [{"ssrc": 1}]},
     "field 'clock_rate'"),
    ("layers_missing", "track.publish", {**VIDEO, "room": "r1", "participant": "h"},
     "field 'layers'"),
    ("layers_empty", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                       "layers": []}, "field 'layers'"),
    ("layers_too_many", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                          "layers": [{"rid": str(i), "ssrc": i + 1}
                                                     for i in range(5)]}, "field 'layers'"),
    ("layer_not_map", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                        "layers": [5]}, "field 'layers[0]'"),
    ("layer_unknown_key", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                            "layers": [{"ssrc": 1, "mid": "0"}]},
     "'mid' in layers[0]"),
    ("layer_ssrc_zero", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                          "layers": [{"ssrc": 0}]}, "layers[0]: field 'ssrc'"),
    ("layer_ssrc_big", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                         "layers": [{"ssrc": 1 << 32}]},
     "layers[0]: field 'ssrc'"),
    ("layer_rtx_bad", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                        "layers": [{"ssrc": 1, "rtx_ssrc": -1}]},
     "layers[0]: field 'rtx_ssrc'"),
    ("layer_dup_ssrc", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                         "layers": [{"rid": "a", "ssrc": 1},
                                                    {"rid": "b", "ssrc": 1}]},
     "repeats ssrc 1"),
    ("layer_rtx_equals_ssrc", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                                "layers": [{"ssrc": 1, "rtx_ssrc": 1}]},
     "repeats ssrc 1"),
    ("layer_dup_rid", "track.publish", {**VIDEO, "room": "r1", "participant": "h",
                                        "layers": [{"rid": "a", "ssrc": 1},
                                                   {"rid": "a", "ssrc": 2}]}, "repeats rid"),
    ("audio_two_layers", "track.publish", {"kind": "audio", "codec": "opus",
                                           "payload_type": 111, "clock_rate": 48000,
                                           "room": "r1", "participant": "h",
                                           "layers": [{"rid": "a", "ssrc": 1},
                                                      {"rid": "b", "ssrc": 2}]},
     "exactly one layer"),
    ("subscribe_no_track", "track.subscribe", {"room": "r1", "participant": "h"},
     "missing field 'track'"),
    ("stats_participant_without_room", "stats.get", {"participant": "h"}, "needs 'room'"),
    ("node_info_params", "node.info", {"verbose": True}, "'verbose'"),
]


@pytest.mark.parametrize(("method", "params", "message"), [c[1:] for c in BAD_PARAMS],
                         ids=[c[0] for c in BAD_PARAMS])
def test_bad_params_rejected_with_field_named(method, params, message):
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1")
        await call(running, "participant.join", room="r1", participant="h", role="host")
        before = (dict(running.node.engine.live()), len(events))
        with expect(BadRequest, message):
            await running.node.call(method, params)
        # A rejected request changes nothing.
        assert (dict(running.node.engine.live()), len(events)) == before
    with_node(scenario)


def test_params_must_be_a_map():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        with expect(BadRequest, "params must be a map"):
            await running.node.call("room.list", [1, 2])  # type: ignore[arg-type]
        assert await running.node.call("room.list", None) == {"rooms": []}
    with_node(scenario)


# -- state rules ------------------------------------------------------------------------------


def test_not_found_and_conflict_rules():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        track = await room_with_host(running)
        with expect(NotFound, "room 'nope' does not exist"):
            await call(running, "participant.join", room="nope", participant="p",
                       role="host")
        with expect(NotFound, "participant 'ghost'"):
            await call(running, "participant.leave", room="r1", participant="ghost")
        with expect(NotFound, "track 'TR_missing'"):
            await call(running, "track.subscribe", room="r1", participant="h",
                       track="TR_missing")
        with expect(NotFound, "subscription 'SU_missing'"):
            await call(running, "track.unsubscribe", room="r1", participant="h",
                       subscription="SU_missing")
        with expect(NotFound, "no track 'TR_missing'"):
            await call(running, "track.unpublish", room="r1", participant="h",
                       track="TR_missing")
        with expect(Conflict, "room 'r1' already exists"):
            await call(running, "room.create", room="r1")
        with expect(Conflict, "participant 'h' already joined"):
            await call(running, "participant.join", room="r1", participant="h", role="host")
        await call(running, "participant.join", room="r1", participant="c", role="cohost")
        live = dict(running.node.engine.live())
        with expect(Conflict, "ssrc 1000 is already in use"):
            await call(running, "track.publish", room="r1", participant="c",
                       layers=[{"ssrc": 1000}], **VIDEO)
        assert dict(running.node.engine.live()) == live  # nothing leaked natively
        await call(running, "participant.join", room="r1", participant="v", role="audience")
        await call(running, "track.subscribe", room="r1", participant="v", track=track)
        with expect(Conflict, "already subscribes"):
            await call(running, "track.subscribe", room="r1", participant="v", track=track)
        with expect(Unauthorized, "role 'audience' and may not publish"):
            await call(running, "track.publish", room="r1", participant="v",
                       layers=[{"ssrc": 5}], **VIDEO)
    with_node(scenario)


def test_limits():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="a", max_participants=2,
                   options={"max_cohosts": 1})
        with expect(LimitExceeded, "exceeds the node limit 3"):
            await call(running, "room.create", room="x", max_participants=4)
        await call(running, "room.create", room="b")
        with expect(LimitExceeded, "max_rooms=2"):
            await call(running, "room.create", room="c")
        await call(running, "participant.join", room="a", participant="c1", role="cohost")
        with expect(LimitExceeded, "max_cohosts=1"):
            await call(running, "participant.join", room="a", participant="c2", role="cohost")
        await call(running, "participant.join", room="a", participant="h", role="host")
        with expect(LimitExceeded, "room 'a' is full (2)"):
            await call(running, "participant.join", room="a", participant="v", role="audience")
        assert running.node.engine.live()["peers"] == 2
    with_node(scenario, max_rooms=2, max_participants_per_room=3)


def test_join_credentials_are_random_and_valid():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r1")
        joins = [await call(running, "participant.join", room="r1", participant=f"p{i}",
                            role="audience") for i in range(20)]
        for key in ("ice_ufrag", "ice_pwd", "token"):
            assert len({j[key] for j in joins}) == 20
        for j in joins:
            assert re.fullmatch(r"[A-Za-z0-9+/]{22,256}", j["ice_pwd"])  # RFC 8839 ice-pwd
            assert re.fullmatch(r"[A-Za-z0-9+/]{4,256}", j["ice_ufrag"])
            assert j["udp"] == running.udp
    with_node(scenario)


def test_events_and_snapshot_track_every_change():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        track = await room_with_host(running)
        await call(running, "participant.join", room="r1", participant="v", role="audience")
        sub = await call(running, "track.subscribe", room="r1", participant="v", track=track)
        assert sub["ssrc"] not in (0, 1000) and sub["rtx_ssrc"] not in (0, sub["ssrc"])
        assert sub["payload_type"] == 96
        snap = await call(running, "room.snapshot", room="r1")
        assert snap["seq"] == events[-1]["seq"] == 5
        assert snap["participants"] == [
            {"participant": "h", "role": "host", "address": None},
            {"participant": "v", "role": "audience", "address": None}]
        assert snap["tracks"] == [{
            "track": track, "participant": "h", "kind": "video", "codec": "VP8",
            "payload_type": 96, "clock_rate": 90000,
            "layers": [{"rid": "f", "ssrc": 1000, "rtx_ssrc": None, "fec_ssrc": None,
                        "width": None, "height": None, "max_bitrate": None}],
            "subscribers": [{"participant": "v", "subscription": sub["subscription"]}]}]
        assert running.node.engine.live()["downtracks"] == 1
        await call(running, "track.unsubscribe", room="r1", participant="v",
                   subscription=sub["subscription"])
        assert running.node.engine.live()["downtracks"] == 0
        sub2 = await call(running, "track.subscribe", room="r1", participant="v", track=track)
        await call(running, "track.unpublish", room="r1", participant="h", track=track)
        live = running.node.engine.live()
        assert live["sources"] == 0 and live["downtracks"] == 0 and live["ssrcs"] == 0
        # The SSRC is free again once unpublished.
        await call(running, "track.publish", room="r1", participant="h",
                   layers=[{"ssrc": 1000}], **VIDEO)
        await call(running, "room.create", room="other")
        assert [(e["event"], e["room"], e["seq"]) for e in events] == [
            ("room.created", "r1", 1), ("participant.joined", "r1", 2),
            ("track.published", "r1", 3), ("participant.joined", "r1", 4),
            ("subscription.created", "r1", 5), ("subscription.removed", "r1", 6),
            ("subscription.created", "r1", 7), ("subscription.removed", "r1", 8),
            ("track.unpublished", "r1", 9), ("track.published", "r1", 10),
            ("room.created", "other", 1)]
        assert events[7]["data"] == {"subscription": sub2["subscription"], "participant": "v",
                                     "track": track}
        assert events[0]["data"] == {"room": "r1", "options": {
            "max_participants": 10000, "max_cohosts": 8, "auto_subscribe": False}}
        assert (await call(running, "room.list"))["rooms"] == ["r1", "other"]
        await call(running, "room.close", room="r1")
        assert events[-1] == {"event": "room.closed", "room": "r1", "seq": 11,
                              "data": {"room": "r1"}}
        assert (await call(running, "room.list"))["rooms"] == ["other"]
        assert all(v == 0 for v in running.node.engine.live().values())
    with_node(scenario)


def test_node_info_and_stats_shapes():
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        info = await call(running, "node.info")
        assert info["node_id"] == "test-node" and info["quic"] is None
        assert info["udp"] == running.udp and info["rooms"] == 0
        assert set(info["load"]) >= {"participants", "downtracks", "pps"}
        track = await room_with_host(running)
        stats = await call(running, "stats.get")
        assert stats["counters"]["rx_datagrams"] == 0 and "stun_rejected" in stats["counters"]
        room_stats = await call(running, "stats.get", room="r1")
        assert room_stats["tracks"][0]["track"] == track
        assert room_stats["tracks"][0]["source"]["packets"] == 0
        p_stats = await call(running, "stats.get", room="r1", participant="h")
        assert p_stats["peer"]["rx_packets"] == 0 and p_stats["address"] is None
        with expect(NotFound, "room 'zz'"):
            await call(running, "stats.get", room="zz")
    with_node(scenario, node_id="test-node")


# -- config -----------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    config = NodeConfig()
    assert (config.udp_host, config.udp_port, config.control_path) == (
        "0.0.0.0", 5004, "./run/sfu.sock")
    assert config.public_host == "127.0.0.1"
    assert NodeConfig(udp_host="10.1.2.3").public_host == "10.1.2.3"
    assert NodeConfig(advertised_host="203.0.113.9").public_host == "203.0.113.9"
    assert NodeConfig().node_id != NodeConfig().node_id
    with expect(BadRequest, "udp_port"):
        NodeConfig(udp_port=70000)
    with expect(BadRequest, "log_level"):
        NodeConfig(log_level="chatty")
    with expect(BadRequest, "control_tcp needs a secret"):
        NodeConfig(control_tcp=("127.0.0.1", 7000))

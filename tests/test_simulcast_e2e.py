"""Simulcast end to end: real VP8 simulcast (three PyAV encoders, L1T3) through the node to a
decoding viewer with transport-wide congestion control. Layer switches by preference, temporal
filtering, the GOP-cache start of a late joiner, events, stats and control-input errors.
Small resolutions keep the encoders cheap; the speed figures live in bench/simulcast.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from node_helpers import RunningNode, start_node

from sfu.client.simulcast_pub import LayerSpec, SimulcastPublisher
from sfu.client.simulcast_view import SimulcastViewer
from sfu.config import NodeConfig
from sfu.errors import BadRequest, Conflict, NotFound

LAYERS = (LayerSpec("q", 192, 108, 120_000), LayerSpec("h", 384, 216, 300_000),
          LayerSpec("f", 768, 432, 900_000))
WIDTH = {"q": 192, "h": 384, "f": 768}


class Ctl:
    """The node's control methods with keyword params (the client library's shape)."""

    def __init__(self, running: RunningNode) -> None:
        self.running = running

    async def call(self, method: str, **params: Any) -> Any:
        return await self.running.node.call(method, params)


async def until(pred: Callable[[], bool], timeout: float = 8.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def join_viewer(ctl: Ctl, running: RunningNode, name: str, track: str,
                      prefs: dict[str, Any] | None = None
                      ) -> tuple[SimulcastViewer, dict[str, Any]]:
    j = await ctl.call("participant.join", room="r1", participant=name, role="audience",
                       twcc_ext_id=SimulcastViewer.TWCC_EXT_ID)
    v = SimulcastViewer(running.udp_address, j["ice_ufrag"], j["ice_pwd"])
    await v.start()
    extra = {"preferences": prefs} if prefs else {}
    res = await ctl.call("track.subscribe", room="r1", participant=name, track=track, **extra)
    v.apply_subscription(res)
    return v, res


def run(scenario: Callable[[RunningNode, Ctl, list[dict[str, Any]]], Any], **cfg: Any) -> None:
    async def main() -> None:
        running = await start_node(NodeConfig(udp_host="127.0.0.1", udp_port=0,
                                              control_path=None, **cfg))
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(None, events.append)
        try:
            await asyncio.wait_for(scenario(running, Ctl(running), events), 60)
        finally:
            await running.close()
    uvloop.run(main())


def widths(v: SimulcastViewer, since: int = 0) -> list[int]:
    return [f.width for f in v.frames[since:]]


def test_switches_by_preference_with_one_continuous_stream() -> None:
    async def scenario(running: RunningNode, ctl: Ctl, events: list[dict[str, Any]]) -> None:
        await ctl.call("room.create", room="r1")
        pub = await SimulcastPublisher.join(ctl, "r1", "host", layers=LAYERS,
                                            via=running.udp_address)
        v, res = await join_viewer(ctl, running, "v", pub.track, {"max_layer": "q"})
        assert res["twcc_ext_id"] == SimulcastViewer.TWCC_EXT_ID and res["layer"] == "q"
        try:
            await pub.start()
            assert await until(lambda: widths(v).count(192) >= 15)
            mark = len(v.frames)
            reply = await ctl.call("track.set_preferences", room="r1", participant="v",
                                   subscription=res["subscription"], max_layer="h")
            # The estimate tracks what the viewer used (q): the node probes, then goes up.
            assert reply["preferences"]["max_layer"] == "h"
            assert await until(lambda: widths(v, mark).count(384) >= 15)
            after = widths(v, mark)
            first_h = after.index(384)
            assert set(after[:first_h]) <= {192} and set(after[first_h:]) == {384}
            # Temporal: TL0 only from the next frame, then back up at a TL0 frame.
            mark = len(v.frames)
            await ctl.call("track.set_preferences", room="r1", participant="v",
                           subscription=res["subscription"], max_temporal=0)
            assert await until(lambda: [f.tid for f in v.frames[mark:]].count(0) >= 6)
            tids = [f.tid for f in v.frames[mark:]]
            assert set(tids[2:]) == {0}, tids      # within a frame (one may be in flight)
            stats = v.stats()
            assert v.decoder_errors == 0
            assert stats["seq_discontinuities"] == 0, stats
            assert stats["picture_id_discontinuities"] == 0, stats
            assert stats["ts_backwards"] == 0, stats
            assert stats["twcc_feedbacks"] > 0
            node_stats = await ctl.call("stats.get", room="r1", participant="v")
            layer = node_stats["subscriptions"][0]["layer"]
            assert layer["current"] == "h" and layer["switches"] >= 2
            assert node_stats["bandwidth"]["source"] == "twcc"
            assert node_stats["bandwidth"]["feedbacks"] > 0
        finally:
            pub.close()
            v.close()
        names = [e["event"] for e in events]
        changed = [e["data"] for e in events if e["event"] == "subscription.layer_changed"]
        assert [c["layer"] for c in changed][:2] == ["q", "h"]
        assert "subscription.target_changed" in names and "track.layers_changed" in names
        watched = [e["data"] for e in events if e["event"] == "track.layers_changed"]
        assert watched[0]["unused"] == ["h", "f"]
    run(scenario)


@pytest.mark.parametrize("gop_cache", [True, False])
def test_late_joiner_starts_from_the_gop_cache(gop_cache: bool) -> None:
    async def scenario(running: RunningNode, ctl: Ctl, events: list[dict[str, Any]]) -> None:
        await ctl.call("room.create", room="r1")
        pub = await SimulcastPublisher.join(ctl, "r1", "host", layers=LAYERS,
                                            via=running.udp_address)
        first, _ = await join_viewer(ctl, running, "v1", pub.track, {"max_layer": "q"})
        late: SimulcastViewer | None = None
        try:
            await pub.start()
            assert await until(lambda: len(first.frames) >= 10)
            plis_before = pub.stats()["h"].plis
            late, _ = await join_viewer(ctl, running, "v2", pub.track, {"max_layer": "h"})
            assert await until(lambda: len(late.frames) >= 3)
            assert late.frames[0].keyframe and late.frames[0].width == 384
            assert late.decoder_errors == 0
            node_stats = await ctl.call("stats.get", room="r1", participant="v2")
            gop = node_stats["subscriptions"][0]["layer"]["gop_packets"]
            if gop_cache:
                # The held keyframe and what followed went out at once: no PLI was needed.
                assert gop > 0 and pub.stats()["h"].plis == plis_before
            else:
                assert gop == 0 and pub.stats()["h"].plis > plis_before
        finally:
            pub.close()
            first.close()
            if late is not None:
                late.close()
    run(scenario, gop_cache=gop_cache)


def test_control_errors_are_typed() -> None:
    async def scenario(running: RunningNode, ctl: Ctl, events: list[dict[str, Any]]) -> None:
        await ctl.call("room.create", room="r1")
        await ctl.call("participant.join", room="r1", participant="h", role="host")
        layers = [{"rid": "q", "ssrc": 11, "width": 320, "height": 180},
                  {"rid": "f", "ssrc": 12, "width": 1280, "height": 720}]
        track = (await ctl.call("track.publish", room="r1", participant="h", kind="video",
                                codec="VP8", payload_type=96, clock_rate=90000,
                                layers=layers, temporal_layers=3))["track"]
        j = await ctl.call("participant.join", room="r1", participant="v", role="audience",
                           twcc_ext_id=3)
        assert j["twcc_ext_id"] == 3
        sub = await ctl.call("track.subscribe", room="r1", participant="v", track=track)
        cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
            ("track.set_preferences", {"max_layer": "x"}, BadRequest, "rids q, f"),
            ("track.set_preferences", {"max_temporal": 4}, BadRequest, "max_temporal"),
            ("track.set_preferences", {"paused": "yes"}, BadRequest, "paused"),
            ("track.set_preferences", {"bogus": 1}, BadRequest, "unknown field"),
        ]
        for method, params, exc, text in cases:
            with pytest.raises(exc, match=text):
                await ctl.call(method, room="r1", participant="v",
                               subscription=sub["subscription"], **params)
        with pytest.raises(NotFound):
            await ctl.call("track.set_preferences", room="r1", participant="v",
                           subscription="SU_nope", paused=True)
        with pytest.raises(BadRequest, match="twcc_ext_id"):
            await ctl.call("participant.join", room="r1", participant="w", role="audience",
                           twcc_ext_id=15)
        with pytest.raises(BadRequest, match="temporal_layers"):
            await ctl.call("track.publish", room="r1", participant="h", kind="video",
                           codec="VP8", payload_type=96, clock_rate=90000,
                           layers=[{"rid": "a", "ssrc": 21}], temporal_layers=5)
        with pytest.raises(Conflict, match="rid_ext_id"):
            await ctl.call("track.publish", room="r1", participant="h", kind="video",
                           codec="VP8", payload_type=96, clock_rate=90000,
                           layers=[{"rid": "a"}])
        await ctl.call("participant.join", room="r1", participant="w2", role="audience",
                       twcc_ext_id=4)
        with pytest.raises(Conflict, match="ulpfec"):
            await ctl.call("track.subscribe", room="r1", participant="w2", track=track,
                           recovery={"fec": "ulpfec"})
        paused = await ctl.call("track.set_preferences", room="r1", participant="v",
                                subscription=sub["subscription"], paused=True)
        assert paused["target"]["layer"] is None and paused["preferences"]["paused"] is True
    run(scenario)


def test_rid_layers_are_learned_from_the_rtp_stream_id_extension() -> None:
    async def scenario(running: RunningNode, ctl: Ctl, events: list[dict[str, Any]]) -> None:
        import socket

        from sfu import _native
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            await ctl.call("room.create", room="r1")
            await ctl.call("participant.join", room="r1", participant="h", role="host",
                           rid_ext_id=10)
            host, port = sock.getsockname()
            await ctl.call("participant.connect", room="r1", participant="h",
                           remote=f"{host}:{port}")
            track = (await ctl.call("track.publish", room="r1", participant="h",
                                    kind="video", codec="VP8", payload_type=96,
                                    clock_rate=90000, layers=[{"rid": "lo"}, {"rid": "hi"}]))
            for seq in range(5):
                for ssrc, rid in ((7001, b"lo"), (7002, b"hi")):
                    sock.sendto(_native.build_rtp(96, seq, seq * 3000, ssrc, b"\x10\x00\x00",
                                                  extensions={10: rid}), running.udp_address)
                await asyncio.sleep(0.01)
            assert await until(lambda: len([e for e in events
                                            if e["event"] == "track.layer_learned"]) == 2)
            learned = {e["data"]["rid"]: e["data"]["ssrc"] for e in events
                       if e["event"] == "track.layer_learned"}
            assert learned == {"lo": 7001, "hi": 7002}
            snap = await ctl.call("room.snapshot", room="r1")
            assert [lay["ssrc"] for lay in snap["tracks"][0]["layers"]] == [7001, 7002]
            assert track["track"] == snap["tracks"][0]["track"]
            c = running.node.stats.counters()
            assert c["rx_rtp"] > 0 and c["drop_unknown_ssrc"] >= 2
        finally:
            sock.close()
    run(scenario)


def test_viewer_without_twcc_is_allocated_from_remb_and_receiver_reports() -> None:
    async def scenario(running: RunningNode, ctl: Ctl, events: list[dict[str, Any]]) -> None:
        import socket

        from sfu import _native
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        try:
            await ctl.call("room.create", room="r1")
            await ctl.call("participant.join", room="r1", participant="h", role="host")
            layers = [{"rid": r, "ssrc": s, "max_bitrate": b} for r, s, b in
                      (("q", 31, 150_000), ("h", 32, 500_000), ("f", 33, 2_500_000))]
            track = (await ctl.call("track.publish", room="r1", participant="h",
                                    kind="video", codec="VP8", payload_type=96,
                                    clock_rate=90000, layers=layers))["track"]
            await ctl.call("participant.join", room="r1", participant="v", role="audience")
            host, port = sock.getsockname()
            await ctl.call("participant.connect", room="r1", participant="v",
                           remote=f"{host}:{port}")
            sub = await ctl.call("track.subscribe", room="r1", participant="v", track=track)
            assert sub["layer"] == "h"          # 1 Mbit/s before any feedback: h fits, f not
            remb = _native.build_remb(0xB0B, 200_000, [sub["ssrc"]])
            rr = _native.build_rr(0xB0B, [{"ssrc": sub["ssrc"], "fraction_lost": 0,
                                            "packets_lost": 0, "highest_seq": 0,
                                            "jitter": 0, "lsr": 0, "dlsr": 0}])
            sock.sendto(remb + rr, running.udp_address)

            def targets() -> list[str | None]:
                return [e["data"]["layer"] for e in events
                        if e["event"] == "subscription.target_changed"]
            assert await until(lambda: targets()[-1:] == ["q"])
            bw = [e["data"] for e in events if e["event"] == "participant.bandwidth"]
            assert {k: bw[-1][k] for k in ("participant", "estimate_bps", "source")} == {
                "participant": "v", "estimate_bps": 200_000, "source": "remb"}
            stats = await ctl.call("stats.get", room="r1", participant="v")
            assert stats["bandwidth"]["source"] == "remb"
            assert stats["subscriptions"][0]["layer"]["target"] == "q"
        finally:
            sock.close()
    run(scenario)

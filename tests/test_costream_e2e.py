"""A co-stream with real VP8 end to end: the audience learns its automatic subscriptions
over the data channel (STATE), decodes the host, then the guest who came on mic through
apply/accept; the layout reaches the clients; kicking the guest takes it all back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvloop
from node_helpers import node_with_room

from sfu.client.data import DataChannel
from sfu.client.media import Vp8Encoder
from sfu.client.publisher import Publisher, parse_hostport
from sfu.client.subscriber import Subscriber
from sfu.control import Client
from sfu.server import RunningNode

ROOM = "live"


@asynccontextmanager
async def live_node() -> AsyncIterator[tuple[RunningNode, Client]]:
    async with node_with_room("lobby") as (running, client):
        await client.call("room.create", room=ROOM, auto_subscribe=True)
        yield running, client


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def audience(client: Client, name: str) -> tuple[Subscriber, DataChannel]:
    """A viewer that subscribes to nothing itself: the node does it, STATE tells it."""
    joined = await client.call("participant.join", room=ROOM, participant=name,
                               role="audience")
    sub = Subscriber(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"])
    await sub.open()
    channel = DataChannel(sub)
    await sub.bind()
    sub.start_reports(0.5)
    return sub, channel


def watch(sub: Subscriber, channel: DataChannel, participant: str) -> None:
    """Point the subscriber at ``participant``'s video from the channel's STATE."""
    for s in (channel.state or {}).get("subs", []):
        if s["participant"] == participant and s["kind"] == "video":
            sub.apply_subscription({"subscription": s["subscription"], "ssrc": s["ssrc"],
                                    "payload_type": s["pt"], "rtx_ssrc": s["rtx_ssrc"],
                                    "rtx_payload_type": s["rtx_pt"]})
            return
    raise AssertionError(f"no video of {participant} in STATE {channel.state}")


def state_has(channel: DataChannel, participant: str) -> bool:
    return any(s["participant"] == participant and s["kind"] == "video"
               for s in (channel.state or {}).get("subs", []))


def layouts(channel: DataChannel) -> list[list[str]]:
    return [[slot[0] for slot in m["x"]["layout"]["slots"]] for m in channel.priority
            if m.get("k") == "system" and "layout" in (m.get("x") or {})]


async def go_on_mic(client: Client, name: str) -> Publisher:
    """An audience member applies, the host accepts, then it publishes real VP8."""
    joined = await client.call("participant.join", room=ROOM, participant=name,
                               role="audience")
    app = await client.call("costream.apply", room=ROOM, participant=name)
    seat = await client.call("costream.accept", room=ROOM, request=app["request"])
    assert seat == {"participant": name, "seat": 1}
    pub = Publisher(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"],
                    Vp8Encoder(320, 180, 30, 300_000, 30))
    res = await pub.open_bind_call(client, 5.0, "track.publish", room=ROOM, participant=name,
                                   kind="video", codec="VP8", payload_type=pub.payload_type,
                                   clock_rate=90000, layers=[pub.layer()])
    pub.track = res["track"]
    pub.room, pub.participant = ROOM, name
    return pub


def test_audience_follows_the_stage_over_the_data_channel() -> None:
    async def main() -> None:
        async with live_node() as (running, client):
            host = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                        bitrate=300_000, keyframe_interval=30)
            a_sub, a_chan = await audience(client, "a")
            b_sub, b_chan = await audience(client, "b")
            tasks = [asyncio.create_task(host.run(seconds=8.0))]
            try:
                await wait_until(lambda: state_has(a_chan, "host"), 3, "a's STATE")
                watch(a_sub, a_chan, "host")
                await wait_until(lambda: a_sub.stats.frames_decoded >= 10, 5,
                                 "a decodes the host")
                guest = await go_on_mic(client, "g")
                tasks.append(asyncio.create_task(guest.run(seconds=5.0)))
                await wait_until(lambda: state_has(b_chan, "g"), 3, "b's STATE lists g")
                watch(b_sub, b_chan, "g")
                await wait_until(lambda: b_sub.stats.frames_decoded >= 10, 5,
                                 "b decodes the guest")
                assert ["host", "g"] in layouts(b_chan)
                # The host also receives the guest (stage members see each other).
                g = running.node.rooms.participant(ROOM, "g")
                h = running.node.rooms.participant(ROOM, "host")
                assert {s.track_id for s in h.subscriptions.values()} == {guest.track}
                assert {s.track_id for s in g.subscriptions.values()} == {host.track}
                await client.call("costream.kick", room=ROOM, participant="g")
                await wait_until(lambda: not state_has(b_chan, "g"), 3, "g leaves b's STATE")
                await wait_until(lambda: layouts(b_chan)[-1:] == [["host"]], 3,
                                 "the layout without g")
                assert not h.subscriptions
                live = running.node.engine.live()
                assert live["downtracks"] == len(running.node.rooms.by_did) == 3  # a, b, g
                assert a_sub.stats.decode_errors == b_sub.stats.decode_errors == 0
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for ep in (a_sub, b_sub):
                    ep.close()
    uvloop.run(asyncio.wait_for(main(), 40))

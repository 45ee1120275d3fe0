"""End to end: real VP8 from PyAV, RFC 7741 packetization, a real node, decoding viewers."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sfu import _native
from sfu.client.media import Vp8Encoder
from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber
from sfu.config import NodeConfig
from sfu.control import Client
from sfu.server import start_node

ROOM = "e2e"


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 25.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


@asynccontextmanager
async def node_and_client() -> AsyncIterator[Client]:
    with tempfile.TemporaryDirectory(prefix="sfu-e2e-") as tmp:
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0,
                            control_path=os.path.join(tmp, "sfu.sock"))
        running = await start_node(config)
        try:
            assert running.control_path is not None
            client = await Client.connect_unix(running.control_path)
            try:
                await client.call("room.create", room=ROOM)
                yield client
            finally:
                await client.close()
        finally:
            await running.close()


async def wait_until(cond: Callable[[], bool], timeout: float,
                     what: str | Callable[[], str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            detail = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out waiting for {detail}")
        await asyncio.sleep(0.02)


def rel_timestamps(stamps: list[int]) -> list[int]:
    """RTP timestamps relative to the first (the node rewrites the base, not the steps)."""
    return [(t - stamps[0]) & 0xFFFF_FFFF for t in stamps]


def test_vp8_frames_reach_every_viewer_bit_exact() -> None:
    frames, viewers = 60, 5

    async def main() -> None:
        async with node_and_client() as client:
            pub = await Publisher.join(client, ROOM, "host", width=640, height=360, fps=30,
                                       bitrate=800_000, record=True)
            subs: list[Subscriber] = []
            try:
                assert pub.track is not None
                for i in range(viewers):
                    subs.append(await Subscriber.join(client, ROOM, f"v{i}", pub.track,
                                                      keep_frames=True))
                await pub.run(frames=frames)
                try:
                    await wait_until(
                        lambda: all(s.stats.frames_complete + s.stats.frames_dropped >= frames
                                    for s in subs), 8.0, "all frames at all viewers")
                except AssertionError as exc:
                    node = await client.call("stats.get", room=ROOM)
                    raise AssertionError(f"{exc}: publisher {pub.stats}, viewers "
                                         f"{[s.stats for s in subs]}, node {node}") from None
                sent = pub.sent
                assert len(sent) == frames
                assert sum(f.packets for f in sent) > frames  # frames span several packets
                assert sent[0].keyframe
                for s in subs:
                    got = s.frames
                    assert [f.data for f in got] == [f.data for f in sent]
                    assert [f.keyframe for f in got] == [f.keyframe for f in sent]
                    assert rel_timestamps([f.timestamp for f in got]) == rel_timestamps(
                        [f.timestamp for f in sent])
                    st = s.stats
                    assert st.frames_decoded == frames
                    assert st.decode_errors == st.frames_dropped == st.frames_skipped == 0
                    assert st.lost == 0 and st.malformed == 0
                    assert st.packets == pub.stats.packets
                    assert s.last_size == (640, 360)
                    assert s.media_ssrc != pub.ssrc  # the node rewrote the SSRC
            finally:
                for s in subs:
                    s.close()
                pub.close()

    run(main)


def test_viewer_pli_makes_publisher_send_keyframe() -> None:
    async def main() -> None:
        async with node_and_client() as client:
            pub = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                       bitrate=300_000, keyframe_interval=10_000, record=True)
            assert pub.track is not None
            sub = await Subscriber.join(client, ROOM, "viewer", pub.track, keep_frames=True,
                                        report_interval=0.2)
            try:
                await pub.run(frames=10)
                await wait_until(lambda: sub.stats.frames_decoded == 10, 5.0, "10 frames")
                assert [f.keyframe for f in pub.sent] == [True] + [False] * 9
                pub.keyframe_requested.clear()
                before = pub.stats.pli_received

                assert sub.request_keyframe(force=True)
                await asyncio.wait_for(pub.keyframe_requested.wait(), 5.0)
                assert pub.stats.pli_received == before + 1
                await pub.run(frames=1)
                assert pub.sent[-1].keyframe
                await wait_until(lambda: sub.stats.frames_decoded == 11, 5.0, "keyframe")
                assert sub.frames[-1].keyframe
                assert sub.frames[-1].data == pub.sent[-1].data

                # The viewer's receiver reports reach the node's per-downtrack stats.
                async def rr_count() -> int:
                    stats = await client.call("stats.get", room=ROOM)
                    (track,) = stats["tracks"]
                    (subscription,) = track["subscriptions"]
                    assert subscription["downtrack"]["rr_cumulative_lost"] == 0
                    return int(subscription["downtrack"]["rr_count"])

                await wait_until(lambda: sub.stats.rr_sent >= 2, 3.0, "receiver reports")
                assert await rr_count() >= 1
            finally:
                sub.close()
                pub.close()

    run(main)


def test_late_viewer_recovers_with_pli() -> None:
    """A viewer joining mid-stream cannot decode deltas; its PLI brings a key frame."""

    async def main() -> None:
        async with node_and_client() as client:
            pub = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                       bitrate=300_000, keyframe_interval=10_000)
            assert pub.track is not None
            sending = asyncio.create_task(pub.run(seconds=4.0))
            late: Subscriber | None = None
            try:
                await wait_until(lambda: pub.stats.frames >= 10, 3.0, "publisher running")
                late = await Subscriber.join(client, ROOM, "late", pub.track)
                await wait_until(lambda: late is not None and late.stats.frames_decoded >= 5,
                                 3.0, "late viewer decoding")
                st = late.stats
                assert pub.stats.pli_received >= 1
                assert pub.stats.keyframes >= 2  # the first one plus the requested one
                assert st.keyframes >= 1 and st.decode_errors == 0
                # Deltas that reached it before the key frame were skipped, never decoded,
                # and each such skip asked for a key frame.
                assert st.frames_skipped == 0 or st.pli_sent >= 1
            finally:
                sending.cancel()
                if late is not None:
                    late.close()
                pub.close()

    run(main)


class LossySubscriber(Subscriber):
    """Drops chosen incoming RTP packets (by arrival index) before processing: loss injection."""

    drop: frozenset[int] = frozenset()
    arrivals = 0

    def on_rtp(self, data: bytes) -> None:
        self.arrivals += 1
        if self.arrivals not in self.drop:
            super().on_rtp(data)


def test_lost_packet_drops_frame_and_pli_restores_decoding() -> None:
    async def main() -> None:
        async with node_and_client() as client:
            pub = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                       bitrate=300_000, keyframe_interval=10_000)
            assert pub.track is not None
            LossySubscriber.drop = frozenset({40})
            # Recovery off: this test is about what a loss does without it (PLI, keyframe).
            sub = await LossySubscriber.join(client, ROOM, "lossy", pub.track, nack=False,
                                             fec="off")
            assert isinstance(sub, LossySubscriber)
            try:
                await pub.run(frames=60)
                await wait_until(
                    lambda: sub.stats.frames_complete + sub.stats.frames_dropped >= 60, 5.0,
                    "all frames")
                st = sub.stats
                assert st.lost == 1
                assert st.frames_dropped == 1  # the frame that lost a packet
                assert st.pli_sent >= 1 and pub.stats.pli_received >= 1
                assert pub.stats.keyframes >= 2  # the PLI brought a key frame
                # Every complete frame was either decoded or skipped until that key frame.
                assert st.frames_decoded + st.frames_skipped == st.frames_complete
                # Frames between the loss and the key frame are skipped: one PLI round trip
                # (a few frames; more on a loaded machine), never the rest of the stream.
                assert st.frames_decoded >= 30 and st.decode_errors == 0
            finally:
                sub.close()
                pub.close()

    run(main)


def test_clients_survive_garbage_datagrams() -> None:
    """Bad input on the client sockets is counted, never raised (no socket needed)."""
    rng = random.Random(9)
    sub = Subscriber(("127.0.0.1", 9), "ufrag", "pwd")
    sub.media_ssrc, sub.payload_type = 0x1234, 96
    pub = Publisher(("127.0.0.1", 9), "ufrag", "pwd", Vp8Encoder(160, 96))
    good = _native.build_rtp(96, 1, 0, 0x1234, b"\x10" + bytes(20), marker=True)
    samples = [rng.randbytes(rng.randint(0, 300)) for _ in range(2000)]
    samples += [good[:n] for n in range(len(good))]
    samples += [bytes([0x80, 0xC8]) + rng.randbytes(rng.randint(0, 60)) for _ in range(300)]
    samples += [_native.build_rtp(96, 2 + i, 0, 0x1234, b"\x90\x80", marker=True)
                for i in range(5)]  # truncated VP8 descriptors
    for data in samples:
        sub.datagram_received(data, ("127.0.0.1", 9))
        pub.datagram_received(data, ("127.0.0.1", 9))
    st = sub.stats
    assert st.malformed >= 5 and sub.garbage > 0
    assert st.rtcp_errors > 0 and pub.stats.rtcp_errors > 0
    assert st.frames_decoded == 0  # nothing decodable was in there

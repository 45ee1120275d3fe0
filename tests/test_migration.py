"""A host's network changes mid-stream (its socket rebinds to a new port): over UDP the STUN
binding from the new address moves it, over QUIC connection migration does. Either way no
frame is lost after recovery and the viewers never freeze for 200 ms."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber
from tests.test_quic_transport import ROOM, counter, quic_node, run, wait_until

FPS = 30
FRAMES = 90  # 3 s; the move happens at 1.5 s


@pytest.mark.parametrize("transport", ["udp", "quic"])
def test_publisher_moves_without_losing_frames(transport: str) -> None:
    async def main() -> None:
        async with quic_node() as (running, client):
            events: list[dict[str, object]] = []
            running.node.bus.subscribe(None, events.append)
            pub = await Publisher.join(client, ROOM, "host", width=320, height=240, fps=FPS,
                                       bitrate=400_000, record=True, transport=transport)
            subs: list[Subscriber] = []
            try:
                assert pub.track is not None
                for i, viewer_transport in enumerate((transport, "udp")):
                    subs.append(await Subscriber.join(client, ROOM, f"v{i}", pub.track,
                                                      transport=viewer_transport))
                before = pub.local_address
                sending = asyncio.create_task(pub.run(frames=FRAMES))
                await asyncio.sleep(FRAMES / FPS / 2)
                await pub.rebind()
                after = pub.local_address
                await sending
                await wait_until(
                    lambda: all(s.stats.frames_decoded >= FRAMES for s in subs), 8.0,
                    lambda: f"viewers {[s.stats for s in subs]}")
                assert before != after
                moved = [e for e in events if e["event"] == "participant.moved"]
                assert moved and moved[-1]["data"]["address"] == f"{after[0]}:{after[1]}"
                # The test shares one loop (and a busy machine) with the publisher's encoder:
                # a loop stall shows as a gap in sending too, and is not the move's doing.
                send_stall_ms = 1000 * max(b.at - a.at for a, b in pairwise(pub.sent))
                for s in subs:
                    st = s.stats
                    assert st.frames_decoded == FRAMES, st
                    assert st.lost_after_recovery == 0, st
                    # A freeze is a gap between decoded frames beyond the sender's own.
                    assert st.longest_freeze_ms - max(0.0, send_stall_ms - 1000 / FPS) < 200, \
                        (st, send_stall_ms)
                if transport == "quic":
                    assert counter(running, "quic_moved") == 1
            finally:
                for s in subs:
                    s.close()
                pub.close()

    run(main)

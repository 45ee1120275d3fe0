"""Loss recovery over RTP over QUIC behaves as over UDP: the same engine NACKs the host and
retransmits (RTX) to the viewer, through real lossy links on both legs (10 % each)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber
from tests.test_quic_transport import ROOM, counter, quic_node, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from lossy_link import LinkProfile, LossyLink  # noqa: E402


async def quic_vp8_run(recover: bool) -> tuple[Any, Any, LossyLink, int]:
    async with quic_node() as (running, client):
        assert running.node.quic is not None
        addr = ("127.0.0.1", running.node.quic.port)
        up = await LossyLink.start(addr, up=LinkProfile.iid(0.1, delay_ms=15),
                                   down=LinkProfile(delay_ms=15), seed=2)
        down = await LossyLink.start(addr, up=LinkProfile(delay_ms=15),
                                     down=LinkProfile.iid(0.1, delay_ms=15), seed=6)
        pub = await Publisher.join(client, ROOM, "host", width=320, height=180, fps=30,
                                   bitrate=400_000, keyframe_interval=10_000, via=up.address,
                                   transport="quic")
        assert pub.track is not None
        opts: dict[str, Any] = {} if recover else {"nack": False, "rtx": False, "fec": "off"}
        sub = await Subscriber.join(client, ROOM, "viewer", pub.track, via=down.address,
                                    transport="quic", **opts)
        try:
            await pub.run(seconds=2.0)
            await asyncio.sleep(0.6)
            return pub, sub, down, counter(running, "quic_sealed")
        finally:
            sub.close()
            pub.close()
            await up.close()
            await down.close()


def test_quic_vp8_with_loss_on_both_legs_is_repaired() -> None:
    async def main() -> None:
        pub, sub, down, sealed = await quic_vp8_run(recover=True)
        st = sub.stats
        assert sealed > 0 and down.down.dropped_loss > 10
        assert pub.stats.nacks_received > 0 and pub.stats.rtx_sent > 0  # uplink repaired
        assert st.nacks_sent > 0 and st.recovered_rtx > 0.5 * st.lost, st
        assert st.frames_expected >= 55 and st.decode_errors == 0
        assert st.frames_decoded >= 0.7 * st.frames_expected, st
        assert st.lost_after_recovery <= 0.25 * st.lost, st
        _, bare, _, _ = await quic_vp8_run(recover=False)
        b = bare.stats
        assert b.nacks_sent == 0 and b.recovered_rtx == 0
        assert b.frames_decoded < st.frames_decoded, (b, st)

    run(main, timeout=30.0)

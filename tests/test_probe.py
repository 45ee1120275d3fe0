"""Packet probes through the real node, directly and through lossy loopback links: the API
bench/loss.py relies on, on-time accounting, NACK/RTX recovery on each leg."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from node_helpers import node_with_room

from sfu.client.probe import ProbePublisher, ProbeSubscriber

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from lossy_link import LinkProfile, LossyLink  # noqa: E402

ROOM = "probe"
RESULT_KEYS = {"expected", "on_time", "direct", "recovered_rtx", "recovered_fec", "late",
               "never", "residual", "media_bytes", "rtx_bytes", "fec_bytes", "fec_overhead",
               "nacks_sent", "rtt_ms"}
PUB_KEYS = {"sent", "sent_bytes", "rtx_sent", "rtx_bytes", "fec_sent", "fec_bytes", "nacks_in"}


def run(fn: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(fn(), timeout)

    asyncio.run(bounded())


def node() -> Any:
    return node_with_room(ROOM)


async def probe_run(up: LinkProfile | None, down: LinkProfile | None, seconds: float,
                    **sub_kw: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                            list[LossyLink]]:
    """One publisher and one viewer, each behind its own lossy link (None: no link)."""
    async with node() as (running, client):
        addr = running.udp_address
        links: list[LossyLink] = []
        pub_addr, sub_addr = addr, addr
        if up is not None:
            links.append(await LossyLink.start(addr, up=up, seed=3))
            pub_addr = links[-1].address
        if down is not None:
            links.append(await LossyLink.start(addr, down=down, seed=4))
            sub_addr = links[-1].address
        pub = ProbePublisher(pub_addr, rate_pps=200, size=500)
        sub = ProbeSubscriber(sub_addr, **sub_kw)
        try:
            track = await pub.join(client, ROOM, "host")
            await sub.join(client, ROOM, "viewer", track)
            sub.start()
            await pub.run(seconds)
            await asyncio.sleep(0.5)  # the last retransmissions
            stats = await client.call("stats.get", room=ROOM)
            return pub.stats(), sub.result(pub.stats()["sent"]), stats, links
        finally:
            sub.close()
            pub.close()
            for link in links:
                await link.close()


def test_clean_path_every_packet_direct_and_on_time() -> None:
    async def main() -> None:
        ps, res, _, _ = await probe_run(None, None, 1.0)
        assert PUB_KEYS <= set(ps) and RESULT_KEYS <= set(res)
        sent = ps["sent"]
        assert sent == 200 and ps["sent_bytes"] == sent * 512
        assert res["expected"] == res["on_time"] == res["direct"] == sent
        assert res["residual"] == 0.0 and res["never"] == res["late"] == 0
        assert res["media_bytes"] == ps["sent_bytes"] and res["fec_overhead"] == 0.0
        assert res["nacks_sent"] == 0 and ps["nacks_in"] == 0 and ps["rtx_sent"] == 0

    run(main)


def test_downlink_ten_percent_loss_recovered_by_nack() -> None:
    async def main() -> None:
        down = LinkProfile.iid(0.10, delay_ms=25)
        ps, res, stats, (link,) = await probe_run(None, down, 2.0)
        sent = ps["sent"]
        assert link.down.dropped_loss >= 0.05 * sent  # the link really lost (seeded: ~10 %)
        assert res["residual"] < 0.01, res
        assert res["recovered_rtx"] > 0.05 * sent and res["nacks_sent"] > 0
        assert res["direct"] + res["recovered_rtx"] + res["recovered_fec"] - res["late"] \
            == res["on_time"]
        assert 25 <= res["base_delay_ms"] < 200  # the link delays the downlink by 25 ms
        (track,) = stats["tracks"]
        (subscription,) = track["subscriptions"]
        dt = subscription["downtrack"]
        assert dt["nack_in"] > 0 and dt["rtx_sent"] > 0
        # the viewer's receiver reports show the raw link loss, not the repaired stream
        assert dt["rr_cumulative_lost"] >= 0.5 * link.down.dropped_loss

    run(main)


def test_uplink_ten_percent_loss_recovered_from_publisher() -> None:
    async def main() -> None:
        up = LinkProfile.iid(0.10, delay_ms=25)
        ps, res, stats, (link,) = await probe_run(up, None, 2.0)
        assert link.up.dropped_loss > 0.05 * ps["sent"]
        assert ps["nacks_in"] > 0 and ps["rtx_sent"] >= 0.5 * link.up.dropped_loss
        assert res["residual"] < 0.01, (res, ps)

    run(main)


@pytest.mark.parametrize("fec", ["rs", "ulpfec"])
def test_downlink_fec_rebuilds_packets(fec: str) -> None:
    async def main() -> None:
        down = LinkProfile.iid(0.20, delay_ms=25)
        ps, res, stats, (link,) = await probe_run(None, down, 1.5, fec=fec)
        assert link.down.dropped_loss > 0.1 * ps["sent"]
        assert res["fec_scheme"] == fec and res["recovered_fec"] > 0.1 * link.down.dropped_loss
        assert res["fec_bytes"] > 0 and 0.02 < res["fec_overhead"] < 1.5
        assert res["residual"] < 0.02, res

    run(main)


def test_without_recovery_the_downlink_loss_shows() -> None:
    async def main() -> None:
        down = LinkProfile.iid(0.10, delay_ms=25)
        ps, res, stats, (link,) = await probe_run(None, down, 1.5, nack=False, rtx=False,
                                                  fec="off")
        lost = link.down.dropped_loss
        assert lost > 0.05 * ps["sent"]
        assert res["never"] >= 0.9 * lost and res["residual"] > 0.05
        assert res["nacks_sent"] == 0 and res["recovered_rtx"] == res["recovered_fec"] == 0
        assert res["fec_bytes"] == 0

    run(main)


@pytest.mark.parametrize("fec", ["bogus"])
def test_bad_recovery_mode_is_refused(fec: str) -> None:
    with pytest.raises(ValueError):
        ProbeSubscriber(("127.0.0.1", 9), fec=fec)
    with pytest.raises(ValueError):
        ProbePublisher(("127.0.0.1", 9), kind="data")


def test_stun_binds_over_a_link_slower_than_the_retry_interval() -> None:
    async def main() -> None:
        async with node() as (running, client):
            slow = LinkProfile(delay_ms=150)  # RTT 300 ms > the first 100 ms retry
            link = await LossyLink.start(running.udp_address, up=slow, down=slow, seed=1)
            pub = ProbePublisher(link.address)
            try:
                assert await pub.join(client, ROOM, "host")
                assert pub.mapped is not None and link.up.sent >= 2  # it did retransmit
            finally:
                pub.close()
                await link.close()

    run(main)

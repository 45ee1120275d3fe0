"""Smoke run of bench/costream_media.py with tiny numbers (host + 2 co-hosts, 5 viewers,
1 s windows): both nodes, the stage's lossy links and receivers, the audience sinks, and the
result's contract. Loose quality floors only (no speed assertions)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import costream_media  # noqa: E402


def test_costream_media_smoke() -> None:
    plan = costream_media.Plan(cohosts=2, viewers=5, warm_s=1.5, window_s=1.0, windows=2)
    res = asyncio.run(costream_media.run_media(True, lambda _msg: None, plan, rt=0))
    members = 3
    # Every stage member received every other member's audio and video.
    assert res["cohost_pairs"] == res["cohost_pairs_expected"] == members * 2 * 2
    assert res["cohost_packets_due"] > 500
    assert res["cohost_rx_totals"]["recovered_rtx"] > 0  # 10 % loss was repaired by RTX
    assert res["cohost_residual_loss"] is not None
    assert res["cohost_residual_loss"] < 0.05  # raw loss 10 %; the limit itself is 0.001
    assert min(res["cohost_link_loss_down"]) > 0.03  # the links did lose
    # Audience: auto-subscribed to every stage track, capped at "q", traffic reached them.
    assert res["downtracks"] == 5 * members * 2 + members * (members - 1) * 2
    assert all(w["audience_received_pps"] > 0 for w in res["costream_windows"])
    assert res["audience_drops"] == 0
    # Both CPU figures exist and the ratio is theirs.
    assert res["cpu_us_per_pkt"] > 0 and res["foundation_cpu_us_per_pkt"] > 0
    assert abs(res["cpu_ratio"] - res["cpu_us_per_pkt"] / res["foundation_cpu_us_per_pkt"]) \
        < 1e-9
    assert len(res["foundation_windows"]) == 2 and len(res["costream_windows"]) == 2
    assert res["forwarded_pps"] > 0 and res["foundation_forwarded_pps"] > 0

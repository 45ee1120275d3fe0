"""Real video through a lossy path, with and without loss recovery (issue 3, "Real video").

A host publishes VP8 from PyAV (~1 Mbit/s, 640x360, 30 fps, one keyframe per 10 s) to a node
running in its own process (`python -m sfu serve`); one viewer subscribes and decodes. Both
legs go through bench/lossy_link.py proxies with the same i.i.d. loss in both directions of
each leg (media one way, NACK/RR/SR the other), seeded. Two runs over the same links:

- recovered: the node NACKs the host (RTX answers), the host adds SFU-RS parity when the node
  reports uplink loss (fec="auto"), the viewer NACKs the node (RTX) and gets the FEC rate the
  node's policy picks from its reports; 200 ms playout budget;
- bare: no NACK either way, no RTX, no FEC: the damage loss does without recovery.

Reported per run: frames the host sent, frames the viewer decoded (and the share), the
longest freeze (largest gap between two decoded frames), decoder errors, packets lost on the
links and repaired. Usage: python bench/loss_video.py [--seconds 30] [--loss 0.2]
[--rtt-ms 50] [--quick]. Progress on stderr; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _children import served_node  # noqa: E402
from lossy_link import LinkProfile, LossyLink  # noqa: E402

from sfu.client import Publisher, Subscriber  # noqa: E402
from sfu.control import Client  # noqa: E402

ROOM = "video-loss"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def node_process() -> AsyncIterator[tuple[tuple[str, int], Client]]:
    """`sfu serve` in its own process (its own core), and a control client to it."""
    async with served_node(prefix="sfu-video-") as (addr, sock, _proc):
        client = await Client.connect_unix(sock)
        try:
            yield addr, client
        finally:
            await client.close()


async def one_run(recover: bool, args: argparse.Namespace) -> dict[str, Any]:
    half = args.rtt_ms / 2
    up_loss = args.loss if args.uplink_loss is None else args.uplink_loss
    down_loss = args.loss if args.downlink_loss is None else args.downlink_loss
    up_leg = LinkProfile.iid(up_loss, delay_ms=half)
    down_leg = LinkProfile.iid(down_loss, delay_ms=half)
    async with node_process() as (addr, control):
        await control.call("room.create", room=ROOM)
        up = await LossyLink.start(addr, up=up_leg, down=up_leg, seed=args.seed)
        down = await LossyLink.start(addr, up=down_leg, down=down_leg, seed=args.seed + 1)
        pub = sub = None
        try:
            pub = await Publisher.join(control, ROOM, "host", width=args.width,
                                       height=args.height, fps=args.fps, bitrate=args.bitrate,
                                       keyframe_interval=args.fps * 10, via=up.address,
                                       rtx=recover, fec="auto" if recover else None,
                                       nack=recover)
            assert pub.track is not None
            sub = await Subscriber.join(control, ROOM, "viewer", pub.track, via=down.address,
                                        nack=recover, rtx=recover, budget_s=args.budget_ms / 1e3,
                                        fec="auto" if recover else "off")
            started = time.monotonic()
            runner = asyncio.ensure_future(pub.run(seconds=args.seconds))
            while not runner.done():
                await asyncio.sleep(min(5.0, args.seconds))
                st = sub.stats
                log(f"  [{'recovered' if recover else 'bare'}] "
                    f"{time.monotonic() - started:5.1f}s sent {pub.stats.frames} frames, "
                    f"decoded {st.frames_decoded}, longest freeze {st.longest_freeze_ms:.0f} ms")
            await runner
            await asyncio.sleep(1.0)  # the last frames' playout and repairs
            st, ps = sub.stats, pub.stats
            stats = await control.call("stats.get", room=ROOM)
            source = stats["tracks"][0]["source"]
            sent = ps.frames
            return {
                "recovery": recover, "frames_sent": sent, "frames_decoded": st.frames_decoded,
                "decoded_share": round(st.frames_decoded / sent, 4) if sent else 0.0,
                "longest_freeze_ms": round(st.longest_freeze_ms, 1),
                "decode_errors": st.decode_errors, "frames_dropped": st.frames_dropped,
                "frames_skipped": st.frames_skipped, "keyframes": ps.keyframes,
                "uplink_dropped": up.up.dropped_loss, "downlink_dropped": down.down.dropped_loss,
                "uplink_recovered_rtx": source["recovered_rtx"],
                "uplink_recovered_fec": source["recovered_fec"],
                "uplink_unrecovered": source["unrecovered"],
                "viewer_lost": st.lost, "viewer_recovered_rtx": st.recovered_rtx,
                "viewer_recovered_fec": st.recovered_fec,
                "viewer_lost_after_recovery": st.lost_after_recovery,
                "publisher_rtx_sent": ps.rtx_sent, "pli_sent": st.pli_sent,
            }
        finally:
            if sub is not None:
                sub.close()
            if pub is not None:
                pub.close()
            await up.close()
            await down.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": args.seconds, "loss_each_way_each_leg": args.loss,
                           "budget_ms": args.budget_ms,
                           "rtt_ms_per_leg": args.rtt_ms, "bitrate": args.bitrate,
                           "size": f"{args.width}x{args.height}@{args.fps}"}
    for recover in (True, False) if not args.no_bare else (True,):
        log(f"run: {'with' if recover else 'without'} recovery, {args.seconds:.0f} s, "
            f"{args.loss:.0%} loss each way on both legs")
        out["recovered" if recover else "bare"] = await one_run(recover, args)
    return out


def print_table(res: dict[str, Any]) -> None:
    rows = [("frames sent", "frames_sent"), ("frames decoded", "frames_decoded"),
            ("decoded share", "decoded_share"), ("longest freeze ms", "longest_freeze_ms"),
            ("decoder errors", "decode_errors"), ("uplink packets dropped", "uplink_dropped"),
            ("  repaired by the node (RTX / FEC)", None),
            ("downlink packets dropped", "downlink_dropped"),
            ("  repaired at the viewer (RTX / FEC)", None),
            ("lost after recovery (viewer)", "viewer_lost_after_recovery")]
    r, b = res["recovered"], res["bare"]
    print(f"{'':38} {'recovered':>12} {'bare':>12}")
    for label, key in rows:
        if key is None:
            pre = "uplink" if "node" in label else "viewer"
            rv = f"{r[pre + '_recovered_rtx']} / {r[pre + '_recovered_fec']}"
            bv = f"{b[pre + '_recovered_rtx']} / {b[pre + '_recovered_fec']}"
        else:
            rv, bv = str(r[key]), str(b[key])
        print(f"{label:38} {rv:>12} {bv:>12}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="10 s runs")
    ap.add_argument("--loss", type=float, default=0.2, help="i.i.d. loss, each way, each leg")
    ap.add_argument("--uplink-loss", type=float, help="override --loss on the host's leg")
    ap.add_argument("--downlink-loss", type=float, help="override --loss on the viewer's leg")
    ap.add_argument("--no-bare", action="store_true", help="skip the run without recovery")
    ap.add_argument("--rtt-ms", type=float, default=50.0, help="RTT of each leg")
    ap.add_argument("--budget-ms", type=float, default=200.0,
                    help="viewer playout delay (a late frame may add 150 ms of freeze)")
    ap.add_argument("--bitrate", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ns = ap.parse_args()
    if ns.quick:
        ns.seconds = 10.0
    if not 0 <= ns.loss < 1:
        ap.error("--loss must be in [0, 1)")
    result = asyncio.run(main(ns))
    if "bare" in result:
        print_table(result)
    print(json.dumps(result))

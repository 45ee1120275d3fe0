"""`sfu demo`: an in-process node, one host publishing real VP8, N viewers decoding it.

Everything runs on one event loop: the node, the PyAV encoder, the viewers' PyAV
decoders. A live progress line goes to stderr; a summary table follows. The exit code
is non-zero if any viewer decoded fewer than 95% of the frames the host sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from typing import TextIO

from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber

__all__ = ["run_demo"]

PASS_RATIO = 0.95
ROOM = "demo"


def _loss_pct(sub: Subscriber) -> float:
    total = sub.stats.packets + sub.stats.lost
    return 100.0 * sub.stats.lost / total if total else 0.0


def _progress(out: TextIO, elapsed: float, pub: Publisher, subs: list[Subscriber]) -> None:
    decoded = [s.stats.frames_decoded for s in subs]
    rate = pub.stats.bytes * 8 / elapsed / 1000 if elapsed > 0 else 0.0
    line = (
        f"\r{elapsed:5.1f}s | host {rate:6.0f} kbit/s, {pub.stats.frames} frames sent | "
        f"decoded/viewer min {min(decoded)} avg {sum(decoded) / len(decoded):.1f} | "
        f"worst loss {max(_loss_pct(s) for s in subs):.2f}%"
    )
    out.write(line.ljust(100))
    out.flush()


def _summary(out: TextIO, elapsed: float, pub: Publisher, subs: list[Subscriber]) -> None:
    sent = pub.stats.frames
    out.write(
        f"\nhost: {sent} frames ({pub.stats.keyframes} key), {pub.stats.packets} packets, "
        f"{pub.stats.bytes * 8 / max(elapsed, 1e-9) / 1000:.0f} kbit/s, "
        f"PLI received {pub.stats.pli_received}\n"
    )
    head = ("viewer", "packets", "lost", "loss%", "complete", "dropped", "decoded", "skipped",
            "errors", "PLI", "kbit/s", "size")
    out.write("".join(f"{h:>9}" for h in head) + "\n")
    for i, s in enumerate(subs):
        st = s.stats
        size = f"{s.last_size[0]}x{s.last_size[1]}" if s.last_size else "-"
        kbps = st.bytes * 8 / max(elapsed, 1e-9) / 1000
        row = (f"v{i}", st.packets, st.lost, f"{_loss_pct(s):.2f}", st.frames_complete,
               st.frames_dropped, st.frames_decoded, st.frames_skipped, st.decode_errors,
               st.pli_sent, f"{kbps:.0f}", size)
        out.write("".join(f"{c!s:>9}" for c in row) + "\n")


async def _demo(viewers: int, seconds: float, out: TextIO, transport: str = "udp") -> int:
    # Imported here: the node pulls in the native engine and the control server, which
    # the client library itself does not need.
    from sfu.config import NodeConfig
    from sfu.control import Client
    from sfu.server import start_node

    with tempfile.TemporaryDirectory(prefix="sfu-demo-") as tmp:
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0,
                            quic_port=0 if transport == "quic" else None,
                            control_path=os.path.join(tmp, "sfu.sock"), log_level="warning")
        running = await start_node(config)
        subs: list[Subscriber] = []
        pub: Publisher | None = None
        client: Client | None = None
        try:
            assert running.control_path is not None
            client = await Client.connect_unix(running.control_path)
            await client.call("room.create", room=ROOM)
            pub = await Publisher.join(client, ROOM, "host", width=640, height=360, fps=30,
                                       bitrate=800_000, transport=transport)
            assert pub.track is not None
            for i in range(viewers):
                subs.append(await Subscriber.join(client, ROOM, f"viewer-{i}", pub.track,
                                                  transport=transport))
            where = (f"quic {running.node._quic_address()} (RTP over QUIC)"
                     if transport == "quic" else f"udp {running.udp}")
            out.write(f"sfu demo: node {where}, 1 host -> {viewers} viewers, "
                      f"VP8 640x360@30 ~800 kbit/s, {seconds:g}s\n")
            start = time.monotonic()
            sending = asyncio.create_task(pub.run(seconds=seconds))
            while not sending.done():
                await asyncio.wait({sending}, timeout=0.5)
                _progress(out, time.monotonic() - start, pub, subs)
            await sending
            elapsed = time.monotonic() - start
            # Let the last frames drain through the node and the decoders.
            target = pub.stats.frames
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and any(
                s.stats.frames_complete + s.stats.frames_dropped < target for s in subs
            ):
                await asyncio.sleep(0.05)
            _progress(out, elapsed, pub, subs)
            _summary(out, elapsed, pub, subs)
            worst = min(s.stats.frames_decoded for s in subs)
            ok = worst >= PASS_RATIO * target
            out.write(f"{'PASS' if ok else 'FAIL'}: worst viewer decoded {worst}/{target} "
                      f"frames ({100.0 * worst / max(target, 1):.1f}%, need "
                      f"{PASS_RATIO:.0%})\n")
            return 0 if ok else 1
        finally:
            for s in subs:
                s.close()
            if pub is not None:
                pub.close()
            if client is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await client.close()
            await running.close()


def run_demo(viewers: int = 10, seconds: float = 10.0, transport: str = "udp") -> int:
    """Run the demo; returns the process exit code."""
    if transport not in ("udp", "quic"):
        sys.stderr.write(f"sfu demo: --transport must be udp or quic, not {transport!r}\n")
        return 2
    if viewers < 1:
        sys.stderr.write("sfu demo: --viewers must be at least 1\n")
        return 2
    if seconds <= 0:
        sys.stderr.write("sfu demo: --seconds must be positive\n")
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(_demo(viewers, seconds, sys.stderr, transport))
    except KeyboardInterrupt:
        sys.stderr.write("\nsfu demo: interrupted\n")
        return 130

"""SimulcastViewer (sfu/client/simulcast_view.py) on real loopback sockets, driven by a small
stand-in for the node: it answers the viewer's STUN binding, sends VP8 (L1T3, encoded with
PyAV) with the RFC 7741 descriptor and a transport-wide seq on every packet, answers NACKs
with RTX and records the viewer's RTCP (TWCC feedback, NACK, PLI, RR)."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import tempfile
import time
from collections.abc import Callable, Coroutine
from fractions import Fraction
from typing import Any

import av

from sfu import _native, stun
from sfu.client.loss import build_rtx
from sfu.client.media import TestPattern, vp8_encoder_name
from sfu.client.publisher import Publisher, parse_hostport
from sfu.client.simulcast_view import DecodedFrame, SimulcastViewer
from sfu.client.twcc import decode_feedback
from sfu.client.vp8 import build_descriptor
from sfu.config import NodeConfig
from sfu.control import Client
from sfu.errors import SfuError
from sfu.server import start_node

UFRAG, PWD = "viewufrag", "viewpassword-0123456789"
MEDIA_SSRC, RTX_SSRC = 0x0A0B0C0D, 0x0A0B0C0E
PT, RTX_PT, EXT = 96, 97, SimulcastViewer.TWCC_EXT_ID
TIDS = (0, 2, 1, 2)  # L1T3, period 4


@functools.lru_cache(maxsize=8)
def encode_l1t3(width: int, height: int, frames: int, seed: int = 7) -> tuple[bytes, ...]:
    """``frames`` VP8 frames of the test pattern, libvpx temporal layering mode 3 (0,2,1,2);
    the first is a key frame."""
    ctx = av.CodecContext.create(vp8_encoder_name(), "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base, ctx.framerate, ctx.bit_rate = Fraction(1, 30), Fraction(30), 300_000
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                   "error-resilient": "1",
                   "ts-parameters": "ts_number_layers=3:ts_target_bitrate=90,180,300:"
                   "ts_rate_decimator=4,2,1:ts_periodicity=4:ts_layer_id=0,2,1,2:"
                   "ts_layering_mode=3"}
    pattern = TestPattern(width, height, seed)
    out = []
    for i in range(frames):
        pic = av.VideoFrame.from_ndarray(pattern.picture(i), format="yuv420p")
        pic.pts = i
        out.extend(bytes(p) for p in ctx.encode(pic))
    assert len(out) == frames
    return tuple(out)


class FakeNode(asyncio.DatagramProtocol):
    """The node's side of one viewer: STUN, RTP out (media/RTX/padding), RTCP in."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None
        self.rtcp: list[dict[str, Any]] = []
        self.seq, self.ts, self.tw, self.rtx_seq = 65500, 0xFFFF_0000, 65000, 100
        self.pid, self.tl0 = 32760, 250
        self.sent: dict[int, bytes] = {}  # media seq -> packet (without the TWCC stamp)
        self.tw_delivered: dict[int, bool] = {}
        self.tw_sent_at: dict[int, float] = {}
        self.answer_nacks = True
        self.rtx_sent = 0
        self.drop: Callable[[bytes], bool] = lambda pkt: False  # media packets only

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if stun.is_stun(data):
            msg = stun.parse(data)
            assert msg.username() == UFRAG
            assert stun.verify_integrity(data, PWD.encode())
            self.peer = addr
            self.transport.sendto(stun.binding_success(msg, addr[0], addr[1], PWD), addr)
            return
        assert 192 <= data[1] <= 223, "the viewer sends only RTCP"
        for pkt in _native.parse_rtcp(data):
            self.rtcp.append(pkt)
            if pkt["type"] == "nack" and self.answer_nacks:
                for s in pkt["lost"]:
                    if s in self.sent:
                        rtx = build_rtx(self.sent[s], RTX_SSRC, RTX_PT, self.rtx_seq)
                        assert rtx is not None
                        self.rtx_seq += 1
                        self.rtx_sent += 1
                        self.transmit(rtx)

    def transmit(self, packet: bytes, deliver: bool = True) -> None:
        """Stamp the next transport-wide seq (RFC 8285 one-byte form) and send."""
        assert self.transport is not None and self.peer is not None
        f = _native.parse_rtp(packet)
        tw = self.tw & 0xFFFF
        self.tw += 1
        stamped = _native.build_rtp(f["payload_type"], f["sequence_number"], f["timestamp"],
                                    f["ssrc"], f["payload"], marker=f["marker"],
                                    extensions={EXT: tw.to_bytes(2, "big")},
                                    padding=f["padding_size"])
        self.tw_delivered[tw] = deliver
        self.tw_sent_at[tw] = time.monotonic()
        if deliver:
            self.transport.sendto(stamped, self.peer)

    def frame_packets(self, frame: bytes, *, key: bool, tid: int, chunk: int = 700,
                      ts_step: int = 3000, pid_step: int = 1) -> list[bytes]:
        """Packetize one frame with X/I/L/T; keyframes (and TID 0) start a new TL0PICIDX."""
        self.pid = (self.pid + pid_step) % 32768
        if tid == 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.ts = (self.ts + ts_step) & 0xFFFF_FFFF
        parts = [frame[i : i + chunk] for i in range(0, len(frame), chunk)]
        out = []
        for i, part in enumerate(parts):
            desc = build_descriptor(i == 0, picture_id=self.pid, tl0picidx=self.tl0, tid=tid,
                                    layer_sync=key)
            pkt = _native.build_rtp(PT, self.seq, self.ts, MEDIA_SSRC, desc + part,
                                    marker=i == len(parts) - 1)
            self.sent[self.seq] = pkt
            self.seq = (self.seq + 1) & 0xFFFF
            out.append(pkt)
        return out

    def padding(self) -> None:
        pkt = _native.build_rtp(RTX_PT, self.rtx_seq, self.ts, RTX_SSRC, b"", padding=200)
        self.rtx_seq += 1
        self.transmit(pkt)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.rtcp if p["type"] == kind]

    def twcc_status(self) -> dict[int, float | None]:
        """Per transport-wide seq: the arrival reported (seconds since the viewer's epoch),
        None when every report said "not received"."""
        final: dict[int, float | None] = {}
        for fb in self.of_type("twcc"):
            assert fb["media_ssrc"] == MEDIA_SSRC
            for s, t in decode_feedback(fb).items():
                if t is not None or s not in final:
                    final[s] = t
        return final


def run(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))
    return wrapper


async def setup(*, nack: bool = True, subscribe: bool = True) -> tuple[FakeNode, SimulcastViewer]:
    loop = asyncio.get_running_loop()
    _, node = await loop.create_datagram_endpoint(FakeNode, local_addr=("127.0.0.1", 0))
    viewer = SimulcastViewer(node.address, UFRAG, PWD, nack=nack)
    await viewer.start()
    assert node.peer == viewer.local_address
    if subscribe:
        viewer.apply_subscription(subscribe_result())
    return node, viewer


def subscribe_result() -> dict[str, Any]:
    return {"subscription": "s1", "ssrc": MEDIA_SSRC, "payload_type": PT,
            "rtx_ssrc": RTX_SSRC, "layer": None, "twcc_ext_id": EXT}


async def wait_until(pred: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def send_frames(node: FakeNode, frames: tuple[bytes, ...], *, first_index: int = 0,
                      shuffle: bool = False, **kw: Any) -> None:
    for i, frame in enumerate(frames):
        idx = first_index + i
        pkts = node.frame_packets(frame, key=idx == 0, tid=TIDS[idx % 4], **kw)
        if shuffle and len(pkts) > 1 and idx:
            pkts[0], pkts[1] = pkts[1], pkts[0]  # reorder within the frame
        for pkt in pkts:
            node.transmit(pkt, deliver=not node.drop(pkt))
        await asyncio.sleep(0.004)


def check_frames(frames: list[DecodedFrame], width: int, height: int, count: int) -> None:
    assert len(frames) == count
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    assert all((f.width, f.height) == (width, height) for f in frames)
    assert all(f.ssrc == MEDIA_SSRC for f in frames)
    assert [f.tid for f in frames] == [TIDS[i % 4] for i in range(count)]
    pids = [f.picture_id for f in frames]
    assert all(b == (a + 1) % 32768 for a, b in zip(pids, pids[1:], strict=False))
    assert all(f.t >= frames[0].t for f in frames)


@run
async def test_clean_stream_decodes_and_feeds_back() -> None:
    node, viewer = await setup(subscribe=False)
    frames = encode_l1t3(320, 180, 40)
    try:
        # The node may forward before the subscribe result arrives: stashed, then replayed.
        await send_frames(node, frames[:2])
        await asyncio.sleep(0.05)
        assert not viewer.frames
        viewer.apply_subscription(subscribe_result())
        for i in range(2, 40):
            await send_frames(node, frames[i : i + 1], first_index=i)
            if i % 5 == 0:
                node.padding()  # probes on the RTX SSRC: counted for TWCC, else ignored
        await wait_until(lambda: len(viewer.frames) == 40)
        check_frames(viewer.frames, 320, 180, 40)
        assert viewer.first_frame_at == viewer.frames[0].t
        await wait_until(lambda: bool(node.of_type("rr")) and len(node.twcc_status())
                         == len(node.tw_delivered))
        st = viewer.stats()
        assert st["padding"] == 7 and st["lost"] == 0 and st["nacks"] == 0
        assert st["rx_packets"] == len(node.tw_delivered)
        assert st["seq_discontinuities"] == st["picture_id_discontinuities"] == 0
        assert st["ts_backwards"] == 0 and viewer.decoder_errors == 0
        assert st["twcc_feedbacks"] == len(node.of_type("twcc")) > 0
        # Every transport-wide seq reported received, at its arrival (epoch = first one).
        status = node.twcc_status()
        epoch = viewer.twcc.epoch
        assert epoch is not None
        sent0 = node.tw_sent_at[min(node.tw_sent_at)]
        for tw, at in status.items():
            assert at is not None
            sent_rel = node.tw_sent_at[tw] - sent0
            assert -0.001 <= (at + epoch) - node.tw_sent_at[tw] < 0.5, (tw, at, sent_rel)
        fbs = node.of_type("twcc")
        assert [fb["fb_count"] for fb in fbs] == [i % 256 for i in range(len(fbs))]
        rr = node.of_type("rr")[-1]
        assert rr["ssrc"] == viewer.ssrc and rr["reports"][0]["ssrc"] == MEDIA_SSRC
        assert rr["reports"][0]["fraction_lost"] == 0
    finally:
        viewer.close()
        assert node.transport is not None
        node.transport.close()


@run
async def test_reordering_loss_and_rtx_recovery() -> None:
    node, viewer = await setup()
    frames = encode_l1t3(320, 180, 48)
    counter = iter(range(10**6))
    dropped: list[int] = []

    def drop(pkt: bytes) -> bool:
        n = next(counter)
        if n in (3, 11, 12, 30, 47, 60):  # single and back-to-back losses
            dropped.append(n)
            return True
        return False

    node.drop = drop
    try:
        await send_frames(node, frames, shuffle=True)
        await wait_until(lambda: len(viewer.frames) == 48)
        check_frames(viewer.frames, 320, 180, 48)
        st = viewer.stats()
        assert st["nacks"] > 0 and node.rtx_sent >= len(dropped) == 6
        assert st["rtx_packets"] >= 6 and st["lost"] == 6 and st["unrecovered"] == 0
        assert st["seq_discontinuities"] == st["picture_id_discontinuities"] == 0
        assert st["ts_backwards"] == 0 and st["frames_skipped"] == 0
        nacked = {s for p in node.of_type("nack") for s in p["lost"]}
        assert nacked and nacked <= set(node.sent)
        assert all(p["media_ssrc"] == MEDIA_SSRC for p in node.of_type("nack"))
        assert not node.of_type("pli")
        # TWCC: the lost transmissions are reported not received, everything else received
        await wait_until(lambda: len(node.twcc_status()) == len(node.tw_delivered))
        status = node.twcc_status()
        lost_tw = {tw for tw, ok in node.tw_delivered.items() if not ok}
        assert len(lost_tw) == 6
        assert {tw for tw, at in status.items() if at is None} == lost_tw
    finally:
        viewer.close()
        assert node.transport is not None
        node.transport.close()


@run
async def test_losses_without_nack_use_temporal_layers_then_pli() -> None:
    node, viewer = await setup(nack=False)
    frames = encode_l1t3(320, 180, 24)
    drop_frames = {5}  # a TID 2 frame: later TID 0 frames still decode, no PLI
    frame_of: dict[int, int] = {}
    try:
        for i, frame in enumerate(frames[:12]):
            for pkt in node.frame_packets(frame, key=i == 0, tid=TIDS[i % 4]):
                frame_of[node.seq - 1] = i
                node.transmit(pkt, deliver=i not in drop_frames)
            await asyncio.sleep(0.01)
        await wait_until(lambda: len(viewer.frames) >= 9)
        await asyncio.sleep(0.1)
        got = [f.picture_id for f in viewer.frames]
        base = viewer.frames[0].picture_id
        assert base is not None
        # frame 5 lost; 6 (TID 1) and 7 (TID 2) may use what 5's loss hides: skipped;
        # 8 (TID 0, next TL0PICIDX) decodes again.
        assert got == [(base + i) % 32768 for i in (0, 1, 2, 3, 4, 8, 9, 10, 11)]
        assert not node.of_type("pli") and not node.of_type("nack")
        st = viewer.stats()
        assert st["frames_skipped"] == 2 and st["picture_id_discontinuities"] == 0
        # Now a TID 0 frame (12) is lost: nothing decodes until a key frame; PLI.
        for i, frame in enumerate(frames[12:18], start=12):
            for pkt in node.frame_packets(frame, key=False, tid=TIDS[i % 4]):
                node.transmit(pkt, deliver=i != 12)
            await asyncio.sleep(0.01)
        await wait_until(lambda: bool(node.of_type("pli")))
        assert node.of_type("pli")[0]["media_ssrc"] == MEDIA_SSRC
        assert len(viewer.frames) == 9
        fresh = encode_l1t3(320, 180, 8, seed=3)  # the publisher's answer: a key frame
        await send_frames(node, fresh)
        await wait_until(lambda: len(viewer.frames) == 17)
        assert viewer.frames[9].keyframe and viewer.stats()["picture_id_discontinuities"] == 0
        assert viewer.decoder_errors == 0
    finally:
        viewer.close()
        assert node.transport is not None
        node.transport.close()


@run
async def test_broken_rewrite_raises_continuity_counters() -> None:
    node, viewer = await setup()
    frames = encode_l1t3(320, 180, 32)
    try:
        await send_frames(node, frames[:8])
        await wait_until(lambda: len(viewer.frames) == 8)
        assert viewer.stats()["picture_id_discontinuities"] == 0
        # PictureID jumps by 5 with contiguous seqs: a broken PictureID rewrite.
        await send_frames(node, frames[8:9], first_index=8, pid_step=5)
        # The RTP timestamp steps back by one frame: a broken timestamp rewrite.
        await send_frames(node, frames[9:10], first_index=9, ts_step=-3000)
        await send_frames(node, frames[10:16], first_index=10, ts_step=6000)
        await wait_until(lambda: len(viewer.frames) == 16)
        st = viewer.stats()
        assert st["picture_id_discontinuities"] == 1 and st["ts_backwards"] == 1
        assert st["seq_discontinuities"] == 0
        # The seq jumps by 500: counted; the viewer then waits for a key frame.
        node.seq = (node.seq + 500) & 0xFFFF
        await send_frames(node, frames[16:20], first_index=16)
        await wait_until(lambda: viewer.stats()["seq_discontinuities"] == 1)
        await wait_until(lambda: bool(node.of_type("pli")))
        assert len(viewer.frames) == 16 and not node.of_type("nack")
        # ... and backwards by 300: counted again.
        node.seq = (node.seq - 300) & 0xFFFF
        await send_frames(node, encode_l1t3(320, 180, 4, seed=3))
        await wait_until(lambda: len(viewer.frames) == 20)
        st = viewer.stats()
        assert st["seq_discontinuities"] == 2 and st["picture_id_discontinuities"] == 1
        assert st["ts_backwards"] == 1
    finally:
        viewer.close()
        assert node.transport is not None
        node.transport.close()


@run
async def test_resolution_switch_and_bad_input() -> None:
    node, viewer = await setup()
    small, large = encode_l1t3(320, 180, 8), encode_l1t3(640, 360, 8)
    assert node.transport is not None and node.peer is not None
    try:
        await send_frames(node, small)
        # Garbage of every kind: never raises, counted.
        for junk in (b"", b"\x80", b"\x80\x60" + b"\x00" * 8, b"\xff" * 40,
                     _native.build_rtp(PT, 1, 1, 0x999, b"\x90\x80\x00payload"),
                     _native.build_rtp(RTX_PT, 5, 1, RTX_SSRC, b"\x01")):
            node.transport.sendto(junk, node.peer)
        node.transport.sendto(b"\x80\xc9\x00\x07junk", node.peer)  # malformed RTCP
        # A layer switch: the node keeps seq/PictureID/TL0PICIDX contiguous, new size.
        await send_frames(node, large)
        # A "key frame" whose VP8 data is garbage: a decoder error, counted, not raised.
        bogus = b"\x10\x02\x00\x9d\x01\x2a" + b"\x07" * 300
        await send_frames(node, (bogus,))
        await wait_until(lambda: viewer.decoder_errors == 1)
        await wait_until(lambda: bool(node.of_type("pli")))
        assert [(f.width, f.height) for f in viewer.frames] == [(320, 180)] * 8 + [(640, 360)] * 8
        pids = [f.picture_id for f in viewer.frames]
        assert all(b == (a + 1) % 32768 for a, b in zip(pids, pids[1:], strict=False))
        st = viewer.stats()
        assert st["foreign"] == 1 and st["malformed"] == 2 and st["rtcp_errors"] == 1
        assert viewer.garbage == 2 and st["padding"] == 0
        assert st["picture_id_discontinuities"] == 0 and st["seq_discontinuities"] == 0
    finally:
        viewer.close()
        node.transport.close()


def test_real_node_forwards_to_the_viewer() -> None:
    """Publisher → real node → SimulcastViewer: decoded, continuous, reports reach the node.
    The viewer asks for TWCC; a node without it (before issue 4's engine side) refuses the
    parameter, and the viewer then joins without it."""
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="sfu-view-") as tmp:
            running = await start_node(NodeConfig(
                udp_host="127.0.0.1", udp_port=0, control_path=os.path.join(tmp, "s.sock")))
            assert running.control_path is not None
            client = await Client.connect_unix(running.control_path)
            viewer: SimulcastViewer | None = None
            pub: Publisher | None = None
            try:
                await client.call("room.create", room="r")
                pub = await Publisher.join(client, "r", "host", width=320, height=180,
                                           fps=30, bitrate=300_000)
                twcc = True
                try:
                    joined = await client.call("participant.join", room="r",
                                               participant="v", role="audience",
                                               twcc_ext_id=SimulcastViewer.TWCC_EXT_ID)
                except SfuError:
                    twcc = False
                    joined = await client.call("participant.join", room="r",
                                               participant="v", role="audience")
                viewer = SimulcastViewer(parse_hostport(joined["udp"]), joined["ice_ufrag"],
                                         joined["ice_pwd"], twcc=twcc)
                await viewer.start()
                sending = asyncio.create_task(pub.run(frames=75))
                res = await client.call("track.subscribe", room="r", participant="v",
                                        track=pub.track)
                viewer.apply_subscription(res)
                await sending
                v = viewer
                await wait_until(lambda: len(v.frames) >= 45 and v.stats()["rr_sent"] > 0)
                frames = viewer.frames
                assert frames[0].keyframe
                assert all((f.width, f.height) == (320, 180) for f in frames)
                pids = [f.picture_id for f in frames]
                assert all(b == (a + 1) % 32768 for a, b in zip(pids, pids[1:], strict=False))
                st = viewer.stats()
                assert st["seq_discontinuities"] == st["picture_id_discontinuities"] == 0
                assert st["ts_backwards"] == 0 and viewer.decoder_errors == 0
                assert st["foreign"] == 0 and st["malformed"] == 0
                if twcc:  # the node stamps every packet it sends us
                    assert st["twcc_recorded"] == st["rx_packets"]
                    assert st["twcc_feedbacks"] > 0
            finally:
                if viewer is not None:
                    viewer.close()
                if pub is not None:
                    pub.close()
                await client.close()
                await running.close()

    asyncio.run(asyncio.wait_for(main(), 30))


@run
async def test_mutated_packets_never_raise() -> None:
    """Seeded fuzz: bit flips and truncations of a real stream fed to the viewer's datagram
    handler (and its timer) are counted, never raised."""
    viewer = SimulcastViewer(("127.0.0.1", 9), UFRAG, PWD)
    viewer.apply_subscription(subscribe_result())
    node = FakeNode()
    frames = encode_l1t3(320, 180, 12)
    pkts = [p for i, f in enumerate(frames)
            for p in node.frame_packets(f, key=i == 0, tid=TIDS[i % 4])]
    rng = random.Random(11)
    empty = 0
    for _ in range(40):
        for p in pkts:
            b = bytearray(p)
            for _ in range(rng.randint(0, 3)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            if rng.random() < 0.1:
                b = b[: rng.randrange(len(b))]
            empty += not b
            viewer.datagram_received(bytes(b), ("127.0.0.1", 9))
        viewer._poll()
    st = viewer.stats()
    # RTP-looking datagrams are counted as RTP; the rest (STUN-, RTCP-looking) elsewhere
    assert 0.8 * 40 * len(pkts) < st["rx_packets"] + viewer.garbage <= 40 * len(pkts) - empty
    assert st["malformed"] > 0 and st["seq_discontinuities"] > 0 and st["lost"] >= 0
    viewer.close()

"""H.264 client side (sfu/client/h264.py): RFC 6184 packetization round trip through a real
decoder, FU-A boundaries and malformed payloads, and a PLI through a real node making the
publisher send an IDR."""

from __future__ import annotations

import asyncio
from typing import Any

import av
import numpy as np
import pytest
from node_helpers import call, join_bound, wait_until, with_node

from sfu import _native
from sfu.client.h264 import (
    NAL_FU_A,
    NAL_IDR,
    H264Depacketizer,
    H264Encoder,
    H264Packetizer,
    H264Publisher,
    annexb,
    is_keyframe,
    split_annexb,
)
from sfu.client.publisher import parse_hostport
from sfu.server import RunningNode


def depacketize_all(payloads: list[bytes]) -> bytes:
    d = H264Depacketizer()
    nals: list[bytes] = []
    for seq, p in enumerate(payloads):
        nals.extend(d.push(p, seq))
    assert d.dropped == 0
    return annexb(nals)


def test_round_trip_decodes_every_frame_with_pyav() -> None:
    enc = H264Encoder(320, 180, 30, 400_000, keyframe_interval=15)
    pack = H264Packetizer(max_payload=400)  # small: most slices become FU-A
    dec = av.CodecContext.create("h264", "r")
    decoded, fragmented = [], 0
    sources = []
    for _ in range(30):
        for frame in enc.encode_next():
            payloads = pack.packetize(frame.data)
            assert all(len(p) <= 400 for p in payloads)
            fragmented += sum(p[0] & 0x1F == NAL_FU_A for p in payloads)
            au = depacketize_all(payloads)
            # The start codes may change (3 → 4 bytes); the NAL units may not.
            assert split_annexb(au) == split_annexb(frame.data)
            assert is_keyframe(au) == frame.keyframe
            sources.append(enc.pattern.picture(frame.pts))
            decoded.extend(dec.decode(av.Packet(au)))
    decoded.extend(dec.decode(None))
    assert fragmented > 30
    assert len(decoded) == 30
    assert (decoded[0].width, decoded[0].height) == (320, 180)
    # The picture is the one encoded (lossy: luma within a few levels on average).
    luma = decoded[-1].to_ndarray(format="yuv420p")[:180].astype(np.int16)
    assert np.abs(luma - sources[-1][:180].astype(np.int16)).mean() < 12


def test_fu_a_boundaries_and_header_bits() -> None:
    pack = H264Packetizer(max_payload=100)
    nal_fits = bytes((0x65,)) + bytes(range(99))  # IDR, NRI 3, exactly max_payload
    assert pack.packetize(b"\x00\x00\x01" + nal_fits) == [nal_fits]
    nal = bytes((0x41,)) + bytes(i & 0xFF for i in range(250))  # non-IDR, NRI 2, 251 bytes
    frags = pack.packetize(b"\x00\x00\x00\x01" + nal)
    assert len(frags) == 3 and all(len(f) <= 100 for f in frags)
    assert [f[0] for f in frags] == [0x40 | NAL_FU_A] * 3  # F=0, NRI kept, type 28
    assert [f[1] for f in frags] == [0x80 | 1, 1, 0x40 | 1]  # S, -, E; type 1
    assert sum(len(f) - 2 for f in frags) == len(nal) - 1
    d = H264Depacketizer()
    assert d.push(frags[0], 10) == [] and d.push(frags[1], 11) == []
    assert d.push(frags[2], 12) == [nal]
    # A lost middle fragment loses the NAL; the orphan end is not delivered.
    assert d.push(frags[0], 20) == [] and d.push(frags[2], 22) == []
    assert d.dropped == 1
    assert d.push(frags[2], 23) == [] and d.dropped == 2
    # Several NALs in one access unit: each its own packets, in order.
    sps, pps = bytes((0x67, 1, 2, 3)), bytes((0x68, 4))
    au = annexb([sps, pps, nal_fits, nal])
    payloads = pack.packetize(au)
    assert payloads[:3] == [sps, pps, nal_fits] and len(payloads) == 6
    assert depacketize_all(payloads) == au


def test_stap_a_and_malformed_payloads() -> None:
    d = H264Depacketizer()
    sps, pps = bytes((0x67, 0x42, 0xE0, 0x1F)), bytes((0x68, 0xCE, 0x3C, 0x80))
    stap = bytes((0x78,)) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert d.push(stap) == [sps, pps]
    for bad in (b"", stap[:-1], bytes((0x78, 0, 9, 1)), bytes((0x78,)), bytes((0x7C,)),
                bytes((0x79, 0, 0)), bytes((0x7D, 0x81, 0))):
        with pytest.raises(ValueError):
            d.push(bad)
    assert split_annexb(b"") == [] and H264Depacketizer().push(bytes((0x7C, 0x85, 1))) == []


def test_pli_through_the_node_makes_the_publisher_send_an_idr() -> None:
    async def scenario(running: RunningNode, events: list[dict[str, Any]]) -> None:
        await call(running, "room.create", room="r")

        class Ctl:
            async def call(self, method: str, **params: Any) -> Any:
                return await running.node.call(method, params)

        pub = await H264Publisher.join_h264(Ctl(), "r", "h", role="host", width=160,
                                            height=96, fps=30, bitrate=200_000,
                                            keyframe_interval=1000)
        assert parse_hostport(running.udp) == pub.node
        viewer = await join_bound(running, "r", "v", "audience")
        sub = await call(running, "track.subscribe", room="r", participant="v",
                         track=pub.track)
        task = asyncio.create_task(pub.run(seconds=6.0))
        try:
            assert await wait_until(lambda: len(viewer.rtp()) > 20, 4)
            viewer.rx.clear()
            before = pub.stats.keyframes
            viewer.send(_native.build_pli(0x5EED, sub["ssrc"]), running.udp_address)
            assert await wait_until(lambda: pub.stats.pli_received >= 1, 3)
            assert await wait_until(lambda: pub.stats.keyframes > before, 2)
            assert pub.encoder.forced_keyframes >= 1  # type: ignore[attr-defined]
            assert await wait_until(lambda: idr_packets(viewer.rx, sub["ssrc"]) > 0, 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pub.close()
            viewer.close()
    with_node(scenario, gop_cache=False)


def idr_packets(datagrams: list[bytes], ssrc: int) -> int:
    """RTP packets of ``ssrc`` carrying an IDR slice (whole, or the FU-A start of one)."""
    n = 0
    for d in datagrams:
        if len(d) < 14 or not 128 <= d[0] < 192 or 192 <= d[1] <= 223:
            continue
        p = _native.parse_rtp(d)
        if p["ssrc"] != ssrc:
            continue
        body = d[int(p["header_size"]):]  # type: ignore[call-overload]
        kind = body[0] & 0x1F
        n += kind == NAL_IDR or (kind == NAL_FU_A and body[1] & 0x80 != 0
                                 and body[1] & 0x1F == NAL_IDR)
    return n

"""Third-party check of the wire format: tshark decodes a loopback capture of a real node's
STUN, RTP and RTCP with no malformed packets and no unexplained bad checksums.

A node runs in-process (start_node); tshark captures its UDP port on ``lo``; a host and two
viewers drive it through the control client and plain UDP sockets. Everything the node sends
is then read back by tshark and compared with what the node says it sent (its counters).

UDP checksums: the kernel leaves them to the device (checksum offload) and ``lo`` never
completes them (tx-checksum-ip-generic is "on [fixed]"), so tshark reports every loopback
datagram as a bad checksum. A bad UDP checksum is accepted only if it is exactly that
offload value; anything else fails (tests/wire_helpers.py wire_problems).
Set SFU_WIRE_KEEP=<dir> to keep the capture for a look in Wireshark.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from sfu import _native, stun
from sfu.config import NodeConfig
from sfu.control import Client
from sfu.server import start_node
from tests.wire_helpers import (
    TSHARK_MISSING,
    Capture,
    UdpPeer,
    decode_as_rtp,
    dissect,
    heuristics,
    num,
    one,
    open_peer,
    payload,
    tshark_path,
    wire_problems,
)

ROOM = "wire"
HOST_SSRC = 0x5EED0001
PT = 96
N_RTP = 12
HOST_SR_NTP = (3_900_000_000 << 32) | 0x12345678
REPORT_WAIT = 1.3  # > the engine's ~1 s RTCP interval, so its own SR/RR timer fires

# RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1) and the PLI format (RFC 4585 §6.3.1).
SR, RR, SDES, APP, PSFB = 200, 201, 202, 204, 206
FMT_PLI = 1
STUN_BINDING_REQUEST, STUN_BINDING_SUCCESS = 0x0001, 0x0101
ATTR_XOR_MAPPED, ATTR_INTEGRITY, ATTR_FINGERPRINT = 0x0020, 0x0008, 0x8028


def host_rtp(i: int) -> bytes:
    """Host packet i: CSRCs on every third, one-byte extensions on odd, a two-byte extension
    (element > 16 bytes) on every fourth, padding on i % 4 == 1."""
    extensions: dict[int, bytes] | None = None
    if i % 4 == 0:
        extensions = {2: bytes(range(20))}
    elif i % 2:
        extensions = {1: b"\x01\x02", 3: b"abc"}
    return _native.build_rtp(PT, 1000 + i, 90000 + 3000 * i, HOST_SSRC,
                             b"\x10\x00\x9d\x01\x2a" + bytes([i]) * (40 + i),
                             marker=i % 3 == 2, csrcs=[0xC0, 0xC1] if i % 3 == 0 else None,
                             extensions=extensions, padding=4 if i % 4 == 1 else 0)


def kind(data: bytes) -> str:
    if stun.is_stun(data):
        return "stun"
    return "rtcp" if len(data) >= 2 and 192 <= data[1] <= 223 else "rtp"


async def wait_for(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        await asyncio.sleep(0.01)


def rtcp_types(data: bytes) -> list[str]:
    """Our own parse, only to know when to stop waiting; tshark judges the bytes."""
    try:
        return [str(p["type"]) for p in _native.parse_rtcp(data)]
    except ValueError:
        return []


def top_protocol(frame: dict[str, list[str]]) -> str:
    return one(frame, "frame.protocols").split(":")[-1]


def ints(frame: dict[str, list[str]], name: str) -> list[int]:
    return [num(v) for v in frame.get(name, [])]


async def drive(tshark: str, path: str) -> tuple[int, dict[str, Any]]:
    """Run the scenario under capture into ``path``; returns (node port, facts)."""
    config = NodeConfig(udp_host="127.0.0.1", udp_port=0,
                        control_path=os.path.join(os.path.dirname(path), "sfu.sock"))
    running = await start_node(config)
    capture: Capture | None = None
    peers: dict[str, UdpPeer] = {}
    try:
        node_addr = running.udp_address
        port = node_addr[1]
        capture = await Capture.start(tshark, port)
        assert config.control_path is not None
        async with await Client.connect_unix(config.control_path) as ctl:
            await ctl.room_create(ROOM)
            creds: dict[str, dict[str, Any]] = {}
            for name, role in (("host", "host"), ("v0", "audience"), ("v1", "audience")):
                creds[name] = await ctl.participant_join(ROOM, name, role)
                peers[name] = await open_peer()

            def binding(name: str) -> None:
                c = creds[name]
                peers[name].send(stun.binding_request(c["ice_ufrag"] + ":client",
                                                      c["ice_pwd"]), node_addr)

            for name in peers:
                binding(name)
            await wait_for(lambda: all(len(p.rx) == 1 for p in peers.values()),
                           "STUN responses")
            for name, peer in peers.items():
                assert stun.parse(peer.rx[0]).msg_type == stun.BINDING_SUCCESS, name
                peer.rx.clear()

            track = (await ctl.track_publish(ROOM, "host", "video", "VP8", PT, 90000,
                                             [{"rid": "f", "ssrc": HOST_SSRC}]))["track"]
            subs = {v: await ctl.track_subscribe(ROOM, v, track) for v in ("v0", "v1")}
            viewers = [peers["v0"], peers["v1"]]
            started = time.monotonic()
            for i in range(N_RTP):
                peers["host"].send(host_rtp(i), node_addr)
                await asyncio.sleep(0.002)
            await wait_for(lambda: all(sum(kind(d) == "rtp" for d in v.rx) == N_RTP
                                       for v in viewers), "forwarded RTP")
            host_rx_before_sr = len(peers["host"].rx)
            # The host's own report, compound SR + SDES (RFC 3550 §6.1).
            peers["host"].send(_native.build_sr(HOST_SSRC, HOST_SR_NTP, 90000, N_RTP, 600) +
                               _native.build_sdes(HOST_SSRC, "host@wire"), node_addr)
            # Viewers: RR + SDES + PLI in one compound each (RFC 4585 §3.1).
            for k, v in enumerate(("v0", "v1")):
                ssrc = subs[v]["ssrc"]
                report = {"ssrc": ssrc, "fraction_lost": 0, "packets_lost": 0,
                          "highest_seq": 0, "jitter": 3}
                peers[v].send(_native.build_rr(0xA0 + k, [report]) +
                              _native.build_sdes(0xA0 + k, f"{v}@wire") +
                              _native.build_pli(0xA0 + k, ssrc), node_addr)
            await wait_for(lambda: any(kind(d) == "rtcp" for d in peers["host"].rx),
                           "the node's PLI to the host")
            # A consent refresh after media: STUN on a 5-tuple that already carries RTP.
            binding("host")
            await wait_for(lambda: any(kind(d) == "stun" for d in peers["host"].rx),
                           "the refresh STUN response")
            # The node's own reports: SR+SDES to each viewer, SR+SDES (with report blocks)
            # to the host.
            await asyncio.sleep(max(0.0, REPORT_WAIT - (time.monotonic() - started)))
            await wait_for(lambda: all(any(kind(d) == "rtcp" for d in v.rx) for v in viewers),
                           "the node's SR to the viewers")

            def host_rr_after_sr() -> bool:
                return any(kind(d) == "rtcp" and rtcp_types(d)[:1] == ["sr"]
                           for d in peers["host"].rx[host_rx_before_sr:])

            await wait_for(host_rr_after_sr, "the node's RR to the host after the host's SR")
            stats = await ctl.stats_get(ROOM)
            assert stats["tracks"][0]["source"]["packets"] == N_RTP
        await running.close()  # nothing leaves the node after this: counters are final
        names = _native.COUNTER_NAMES
        counters = {n: int(running.node.engine.counters[i]) for i, n in enumerate(names)}
        await capture.stop(path)
        return port, {"peers": {n: p.port for n, p in peers.items()}, "subs": subs,
                      "counters": counters}
    finally:
        for peer in peers.values():
            peer.close()
        if capture is not None:
            await capture.abort()
        await running.close()


@pytest.mark.timeout(30)
def test_tshark_decodes_node_stun_rtp_rtcp() -> None:
    tshark = tshark_path()
    if tshark is None:
        pytest.fail(TSHARK_MISSING)
    with tempfile.TemporaryDirectory(prefix="sfu-wire-") as workdir:
        path = os.path.join(os.environ.get("SFU_WIRE_KEEP") or workdir, "sfu-wire.pcapng")
        port, facts = uvloop.run(asyncio.wait_for(drive(tshark, path), 20))
        frames = dissect(tshark, path, port, heuristics())
        # The other way to tell tshark what the port carries must agree frame by frame.
        forced = dissect(tshark, path, port, decode_as_rtp(port))
    check_frames(port, facts, frames)
    assert wire_problems(forced) == []
    assert [top_protocol(f) for f in forced] == [top_protocol(f) for f in frames]


def check_frames(port: int, facts: dict[str, Any], frames: list[dict[str, Any]]) -> None:
    peers: dict[str, int] = facts["peers"]
    by_port = {p: name for name, p in peers.items()}
    subs: dict[str, dict[str, Any]] = facts["subs"]
    counters: dict[str, int] = facts["counters"]
    assert frames, "tshark dissected no frames on the node's port"
    assert wire_problems(frames) == []

    # Every frame is STUN, RTP or RTCP, the same as RFC 7983 demux of its bytes says.
    inbound: list[tuple[str, dict[str, Any]]] = []
    outbound: list[tuple[str, dict[str, Any]]] = []
    for f in frames:
        top = top_protocol(f)
        assert top == kind(payload(f)), f"frame {one(f, 'frame.number')}: tshark says {top}"
        src, dst = num(one(f, "udp.srcport")), num(one(f, "udp.dstport"))
        if src == port:
            outbound.append((by_port[dst], f))
        else:
            assert dst == port
            inbound.append((by_port[src], f))

    # What the clients sent, all captured and all understood (the capture is complete).
    assert Counter((who, top_protocol(f)) for who, f in inbound) == {
        ("host", "stun"): 2, ("host", "rtp"): N_RTP, ("host", "rtcp"): 1,
        ("v0", "stun"): 1, ("v0", "rtcp"): 1, ("v1", "stun"): 1, ("v1", "rtcp"): 1}
    assert len(inbound) == counters["rx_datagrams"]
    # ... and everything the node says it sent is on the wire, nothing more.
    assert len(outbound) == counters["tx_datagrams"]

    # STUN: one Binding Success per request, same transaction, XOR-MAPPED-ADDRESS = sender.
    requests = {(who, one(f, "stun.id")) for who, f in inbound if top_protocol(f) == "stun"}
    responses = [(who, f) for who, f in outbound if top_protocol(f) == "stun"]
    assert {(who, one(f, "stun.id")) for who, f in responses} == requests
    assert len(responses) == len(requests) == 4
    for who, f in responses:
        assert num(one(f, "stun.type")) == STUN_BINDING_SUCCESS
        assert [num(t) for t in f["stun.att.type"]] == [ATTR_XOR_MAPPED, ATTR_INTEGRITY,
                                                          ATTR_FINGERPRINT]
        assert (one(f, "stun.att.ipv4"), num(one(f, "stun.att.port"))) == (
            "127.0.0.1", peers[who])
    for who, f in inbound:
        if top_protocol(f) == "stun":
            assert num(one(f, "stun.type")) == STUN_BINDING_REQUEST
        elif top_protocol(f) == "rtcp":
            assert ints(f, "rtcp.pt") == ([SR, SDES] if who == "host" else [RR, SDES, PSFB])

    # RTP: each viewer gets every host packet with its own SSRC and contiguous numbering;
    # CSRCs, header extensions (one- and two-byte), padding and marker survive as sent.
    sent = [f for who, f in inbound if top_protocol(f) == "rtp"]
    assert [num(one(f, "rtp.seq")) for f in sent] == [1000 + i for i in range(N_RTP)]
    assert {num(one(f, "rtp.ssrc")) for f in sent} == {HOST_SSRC}
    for viewer in ("v0", "v1"):
        got = [f for who, f in outbound if who == viewer and top_protocol(f) == "rtp"]
        assert len(got) == N_RTP, viewer
        assert {num(one(f, "rtp.ssrc")) for f in got} == {subs[viewer]["ssrc"]}
        assert {num(one(f, "rtp.p_type")) for f in got} == {subs[viewer]["payload_type"]}
        seqs = [num(one(f, "rtp.seq")) for f in got]
        assert [(s - seqs[0]) & 0xFFFF for s in seqs] == list(range(N_RTP))
        stamps = [num(one(f, "rtp.timestamp")) for f in got]
        assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [3000 * i
                                                                  for i in range(N_RTP)]
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            for name in ("rtp.marker", "rtp.padding", "rtp.padding.count", "rtp.ext",
                         "rtp.ext.profile", "rtp.ext.rfc5285.id", "rtp.cc", "rtp.csrc.item"):
                assert a.get(name) == b.get(name), (viewer, i, name, a.get(name), b.get(name))
    assert [f.get("rtp.padding.count") for f in sent[:2]] == [None, ["4"]]
    assert ints(sent[0], "rtp.csrc.item") == [0xC0, 0xC1]
    assert ints(sent[0], "rtp.ext.profile") == [0x1000]  # two-byte form (RFC 8285 §4.3)
    assert ints(sent[1], "rtp.ext.profile") == [0xBEDE]  # one-byte form (RFC 8285 §4.2)
    assert 2 * N_RTP == counters["forwarded"]

    # RTCP from the node: PLI to the host for its SSRC; compound SR+SDES(CNAME) from the
    # node SSRC (no media: packet count 0) to the host, reporting on its SSRC; compound
    # SR+SDES(CNAME) to each viewer from its SSRC.
    # Data messages (docs/data.md) are RTCP APP packets named SFUD: each viewer's STATE
    # (its subscriptions), first send and resends; tshark must decode them cleanly too.
    rtcp = [(who, f) for who, f in outbound if top_protocol(f) == "rtcp"]
    data = [(who, f) for who, f in rtcp if ints(f, "rtcp.pt") == [APP]]
    assert data and len(data) == counters["data_out"]
    for who, f in data:
        assert who in ("v0", "v1")
        assert f["rtcp.app.name"] == ["SFUD"] and ints(f, "rtcp.app.subtype") == [4]
    rtcp = [(who, f) for who, f in rtcp if ints(f, "rtcp.pt") != [APP]]
    assert len(rtcp) == counters["rtcp_sent"]
    plis = [(who, f) for who, f in rtcp if ints(f, "rtcp.pt") == [PSFB]]
    # Both viewers' PLIs arrive in one loop turn: the engine coalesces them (300 ms window).
    assert len(plis) == counters["pli_sent"] == 1
    for who, f in plis:
        assert who == "host"
        assert ints(f, "rtcp.psfb.fmt") == [FMT_PLI]
        assert ints(f, "rtcp.mediassrc") == [HOST_SSRC]
    reports = [(who, f) for who, f in rtcp if ints(f, "rtcp.pt") != [PSFB]]
    host_sr_frame = next(num(one(f, "frame.number")) for who, f in inbound
                         if who == "host" and top_protocol(f) == "rtcp")
    seen: Counter[str] = Counter()
    for who, f in reports:
        seen[who] += 1
        assert 1 in ints(f, "rtcp.sdes.type"), "every compound carries a CNAME"
        if who == "host":
            assert ints(f, "rtcp.pt") == [SR, SDES]
            node_ssrc = ints(f, "rtcp.senderssrc")[0]
            assert ints(f, "rtcp.ssrc.identifier") == [HOST_SSRC, node_ssrc]
            if num(one(f, "frame.number")) > host_sr_frame:
                # LSR echoes the middle 32 bits of the host's SR NTP time (RFC 3550 §6.4.1).
                assert ints(f, "rtcp.ssrc.lsr") == [(HOST_SR_NTP >> 16) & 0xFFFFFFFF]
        else:
            ssrc = subs[who]["ssrc"]
            assert ints(f, "rtcp.pt") == [SR, SDES]
            assert ints(f, "rtcp.senderssrc") == [ssrc]
            assert ints(f, "rtcp.ssrc.identifier") == [ssrc]
    assert seen["host"] >= 1 and seen["v0"] >= 1 and seen["v1"] >= 1, seen
    assert any(num(one(f, "frame.number")) > host_sr_frame for who, f in reports
               if who == "host")


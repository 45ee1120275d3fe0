"""Parser micro-benchmarks: sfu._native next to aiortc's pure-Python parsers, same packets.

Run: .venv/bin/pytest bench/bench_parsers.py --benchmark-enable
(add ``-p no:cacheprovider --benchmark-columns=min,median,ops`` for a compact table).

``parse_rtp``/``parse_rtcp`` build Python dicts (they are test/client helpers, not the
data path); ``rtp_extension`` is the lazy by-id lookup, closest to what the engine does
per packet. aiortc decodes eagerly into objects. Each group puts the two side by side so
the ratio, not the absolute figure, is what to read on this shared machine.
"""

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtcpPacket, RtpPacket

from sfu import _native

MID, ABS_SEND_TIME, TWCC_SEQ = 1, 3, 5

# A typical simulcast video packet: mid, abs-send-time, transport-wide seq; 1100 B payload.
RTP_VIDEO = _native.build_rtp(
    96, 4242, 123456789, 0x1234ABCD, bytes(range(256)) * 4 + bytes(76), marker=True,
    extensions={MID: b"0", ABS_SEND_TIME: b"\x12\x34\x56", TWCC_SEQ: struct.pack("!H", 77)})
# An Opus packet: no extensions, small payload.
RTP_AUDIO = _native.build_rtp(111, 1, 960, 0xA0D10, bytes(60))

RTCP_SR_SDES = (
    _native.build_sr(0x1234ABCD, 0xE81B8C7D80000000, 123456, 1000, 1_200_000,
                     [{"ssrc": 0x55, "fraction_lost": 3, "packets_lost": 7, "highest_seq": 70000,
                       "jitter": 12, "lsr": 0x8C7D8000, "dlsr": 0x10000}])
    + _native.build_sdes(0x1234ABCD, "sfu-bench-cname")
)
RTCP_RR_REMB_PLI = (
    _native.build_rr(0x77, [{"ssrc": 0x1234ABCD, "fraction_lost": 0, "packets_lost": 0,
                             "highest_seq": 4242, "jitter": 3, "lsr": 0, "dlsr": 0}])
    + _native.build_remb(0x77, 2_500_000, [0x1234ABCD])
    + _native.build_pli(0x77, 0x1234ABCD)
)
RTCP_TWCC = _native.build_twcc(0x77, 0x1234ABCD, 1000, 42, 7,
                               [(i * 7) % 200 if i % 10 else None for i in range(100)])
RTCP_NACK = _native.build_nack(0x77, 0x1234ABCD, [100, 101, 103, 120, 200])

RTP_PACKETS = {"video-ext": RTP_VIDEO, "audio": RTP_AUDIO}
RTCP_PACKETS = {"sr-sdes": RTCP_SR_SDES, "rr-remb-pli": RTCP_RR_REMB_PLI, "twcc-100": RTCP_TWCC,
                "nack": RTCP_NACK}


def aiortc_ext_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=MID, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(
            id=ABS_SEND_TIME, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(
            id=TWCC_SEQ,
            uri="http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
    ]))
    return m


EXT_MAP = aiortc_ext_map()


def test_same_packets_parse_in_both():
    # Guard: both sides must understand the benchmark packets identically.
    for data in RTP_PACKETS.values():
        ours, theirs = _native.parse_rtp(data), RtpPacket.parse(data, EXT_MAP)
        assert ours["sequence_number"] == theirs.sequence_number
        assert ours["payload"] == theirs.payload
    assert RtpPacket.parse(RTP_VIDEO, EXT_MAP).extensions.transport_sequence_number == 77
    for data in RTCP_PACKETS.values():
        assert len(_native.parse_rtcp(data)) == len(RtcpPacket.parse(data))


@pytest.mark.parametrize("name", list(RTP_PACKETS))
def test_rtp_native_parse(benchmark, name):
    benchmark.group = f"rtp-{name}"
    benchmark(_native.parse_rtp, RTP_PACKETS[name])


@pytest.mark.parametrize("name", list(RTP_PACKETS))
def test_rtp_aiortc_parse(benchmark, name):
    benchmark.group = f"rtp-{name}"
    benchmark(RtpPacket.parse, RTP_PACKETS[name], EXT_MAP)


def test_rtp_native_extension_lookup(benchmark):
    benchmark.group = "rtp-video-ext"
    assert _native.rtp_extension(RTP_VIDEO, TWCC_SEQ) == b"\x00\x4d"
    benchmark(_native.rtp_extension, RTP_VIDEO, TWCC_SEQ)


def test_rtp_call_floor(benchmark):
    # Baseline: the cost of calling any C function on the packet from Python.
    benchmark.group = "rtp-video-ext"
    benchmark(len, RTP_VIDEO)


def test_rtp_aiortc_extension_lookup(benchmark):
    # aiortc has no lazy lookup: getting one extension means parsing the packet.
    benchmark.group = "rtp-video-ext"
    benchmark(lambda: RtpPacket.parse(RTP_VIDEO, EXT_MAP).extensions.transport_sequence_number)


@pytest.mark.parametrize("name", list(RTCP_PACKETS))
def test_rtcp_native_parse(benchmark, name):
    benchmark.group = f"rtcp-{name}"
    benchmark(_native.parse_rtcp, RTCP_PACKETS[name])


@pytest.mark.parametrize("name", list(RTCP_PACKETS))
def test_rtcp_aiortc_parse(benchmark, name):
    benchmark.group = f"rtcp-{name}"
    benchmark(RtcpPacket.parse, RTCP_PACKETS[name])

"""Native RTCP parsing and builders (sfu._native.parse_rtcp / build_*) against the
annotated vectors in tests/vectors/rtcp.hex and the pure-Python oracle."""

import random
from collections.abc import Callable

import pytest
from oracle import Vector, load_vectors, lookup
from oracle import rtcp as ref
from parse_helpers import check_mutations, check_truncations, check_vector

from sfu import _native

VECTORS = load_vectors("rtcp.hex")
VALID = [v for v in VECTORS if v.valid]


def test_vector_names_cover_the_brief():
    names = {v.name for v in VECTORS}
    for required in ("rtcp-length-overrun", "twcc-chunk-overrun", "twcc-delta-overrun",
                     "rtcp-padding-zero", "rtcp-sr-rc-overrun", "remb-ssrc-overrun"):
        assert required in names
    kinds = {lookup(ref.parse(v.data), "0.type") for v in VALID}
    assert kinds >= {"sr", "rr", "sdes", "bye", "app", "nack", "pli", "fir", "remb", "twcc",
                     "unknown"}


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_oracle_vector(vec: Vector):
    check_vector(ref.parse, vec)


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_native_vector(vec: Vector):
    check_vector(_native.parse_rtcp, vec, oracle=ref.parse)


@pytest.mark.parametrize("vec", VALID, ids=[v.name for v in VALID])
def test_native_truncations(vec: Vector):
    check_truncations(_native.parse_rtcp, ref.parse, vec.data)


# ------------------------------------------------------------ random packets


def rand_report(rng: random.Random) -> dict[str, int]:
    return {"ssrc": rng.getrandbits(32), "fraction_lost": rng.getrandbits(8),
            "packets_lost": rng.randint(-(1 << 23), (1 << 23) - 1),
            "highest_seq": rng.getrandbits(32), "jitter": rng.getrandbits(32),
            "lsr": rng.getrandbits(32), "dlsr": rng.getrandbits(32)}


def rand_deltas(rng: random.Random) -> list[int | None]:
    n = rng.choice((1, 2, 7, 14, 15, 40, 300))
    style = rng.choice(("small", "mixed", "lossy", "runs"))
    out: list[int | None] = []
    while len(out) < n:
        if style == "runs":
            value = rng.choice((None, rng.randint(0, 255), rng.randint(-32768, 32767)))
            out.extend([value] * rng.randint(1, 20))
        elif style == "small":
            out.append(rng.randint(0, 255))
        elif style == "lossy":
            out.append(None if rng.random() < 0.5 else rng.randint(0, 255))
        else:
            out.append(rng.choice((None, rng.randint(0, 255), rng.randint(-32768, 32767))))
    return out[:n]


def rand_packet(rng: random.Random) -> tuple[bytes, dict[str, object]]:
    """One oracle-built packet and the fields its parse must have."""
    kind = rng.choice(("sr", "rr", "sdes", "bye", "app", "nack", "pli", "fir", "remb", "twcc"))
    s1, s2 = rng.getrandbits(32), rng.getrandbits(32)
    if kind == "sr":
        reports = [rand_report(rng) for _ in range(rng.choice((0, 1, 3)))]
        ntp, ts, pk, oc = rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(32), 7
        return ref.build_sr(s1, ntp, ts, pk, oc, reports), {
            "type": "sr", "ssrc": s1, "ntp": ntp, "rtp_ts": ts, "packets": pk, "octets": oc,
            "reports": reports}
    if kind == "rr":
        reports = [rand_report(rng) for _ in range(rng.choice((0, 1, 31)))]
        return ref.build_rr(s1, reports), {"type": "rr", "ssrc": s1, "reports": reports}
    if kind == "sdes":
        cname = "".join(rng.choice("abcxyz-.@0") for _ in range(rng.randint(0, 40)))
        return ref.build_sdes(s1, cname), {
            "type": "sdes", "chunks": [{"ssrc": s1, "items": {1: cname.encode()}}]}
    if kind == "bye":
        ssrcs = [rng.getrandbits(32) for _ in range(rng.randint(0, 5))]
        reason = rng.choice(("", "bye", "x" * 200))
        return ref.build_bye(ssrcs, reason), {"type": "bye", "ssrcs": ssrcs, "reason": reason}
    if kind == "app":
        sub, data = rng.randint(0, 31), rng.randbytes(4 * rng.randint(0, 4))
        return ref.build_app(sub, s1, b"abcd", data), {
            "type": "app", "subtype": sub, "ssrc": s1, "name": b"abcd", "data": data}
    if kind == "nack":
        start = rng.getrandbits(16)
        lost = sorted({(start + rng.randint(0, 100)) & 0xFFFF for _ in range(rng.randint(1, 30))},
                      key=lambda s: (s - start) & 0xFFFF)
        return ref.build_nack(s1, s2, lost), {
            "type": "nack", "sender_ssrc": s1, "media_ssrc": s2, "lost": lost}
    if kind == "pli":
        return ref.build_pli(s1, s2), {"type": "pli", "sender_ssrc": s1, "media_ssrc": s2}
    if kind == "fir":
        nr = rng.getrandbits(8)
        return ref.build_fir(s1, s2, nr), {
            "type": "fir", "sender_ssrc": s1, "entries": [{"ssrc": s2, "seq_nr": nr}]}
    if kind == "remb":
        exp, mantissa = rng.randint(0, 40), rng.getrandbits(18)
        ssrcs = [rng.getrandbits(32) for _ in range(rng.randint(0, 4))]
        return ref.build_remb(s1, mantissa << exp, ssrcs), {
            "type": "remb", "sender_ssrc": s1, "bitrate": mantissa << exp, "ssrcs": ssrcs}
    deltas = rand_deltas(rng)
    base, ref_time, fb = rng.getrandbits(16), rng.randint(-(1 << 23), (1 << 23) - 1), 9
    mode = rng.choice(("auto", "run", "vec1", "vec2"))
    return ref.build_twcc(s1, s2, base, ref_time, fb, deltas, mode), {
        "type": "twcc", "sender_ssrc": s1, "media_ssrc": s2, "base_seq": base,
        "status_count": len(deltas), "ref_time": ref_time, "fb_count": fb,
        "packets": ref.twcc_packets(base, deltas)}


def test_random_compounds_match_oracle():
    rng = random.Random(4585)
    for _ in range(600):
        parts = [rand_packet(rng) for _ in range(rng.randint(1, 4))]
        data = b"".join(p for p, _ in parts)
        expected = [e for _, e in parts]
        assert ref.parse(data) == expected  # the oracle's builders and parser agree
        assert _native.parse_rtcp(data) == expected


def test_twcc_chunk_modes_agree():
    # The same feedback in every chunk encoding parses identically.
    rng = random.Random(15)
    for _ in range(200):
        deltas = rand_deltas(rng)
        want = ref.twcc_packets(100, deltas)
        for mode in ("auto", "run", "vec1", "vec2"):
            data = ref.build_twcc(1, 2, 100, 5, 0, deltas, mode)
            assert lookup(_native.parse_rtcp(data), "0.packets") == want, mode


# ------------------------------------------------------------ native builders

BUILDERS: list[tuple[str, Callable[[random.Random], tuple[bytes, dict[str, object]]]]] = [
    ("sr", lambda r: (lambda a: (_native.build_sr(*a[:5], a[5]), {
        "type": "sr", "ssrc": a[0], "ntp": a[1], "rtp_ts": a[2], "packets": a[3],
        "octets": a[4], "reports": a[5]}))(
        (r.getrandbits(32), r.getrandbits(64), r.getrandbits(32), r.getrandbits(32),
         r.getrandbits(32), [rand_report(r) for _ in range(r.randint(0, 3))]))),
    ("rr", lambda r: (lambda s, rep: (_native.build_rr(s, rep), {
        "type": "rr", "ssrc": s, "reports": rep}))(
        r.getrandbits(32), [rand_report(r) for _ in range(r.randint(0, 31))])),
    ("sdes", lambda r: (lambda s, c: (_native.build_sdes(s, c), {
        "type": "sdes", "chunks": [{"ssrc": s, "items": {1: c.encode()}}]}))(
        r.getrandbits(32), "".join(r.choice("ab-é") for _ in range(r.randint(0, 60))))),
    ("bye", lambda r: (lambda ss, why: (_native.build_bye(ss, why), {
        "type": "bye", "ssrcs": ss, "reason": why}))(
        [r.getrandbits(32) for _ in range(r.randint(0, 31))], r.choice(("", "gone", "z" * 255)))),
    ("pli", lambda r: (lambda a, b: (_native.build_pli(a, b), {
        "type": "pli", "sender_ssrc": a, "media_ssrc": b}))(r.getrandbits(32), r.getrandbits(32))),
    ("fir", lambda r: (lambda a, b, n: (_native.build_fir(a, b, n), {
        "type": "fir", "sender_ssrc": a, "entries": [{"ssrc": b, "seq_nr": n}]}))(
        r.getrandbits(32), r.getrandbits(32), r.getrandbits(8))),
    ("remb", lambda r: (lambda a, m, e, ss: (_native.build_remb(a, m << e, ss), {
        "type": "remb", "sender_ssrc": a, "bitrate": m << e, "ssrcs": ss}))(
        r.getrandbits(32), r.getrandbits(18), r.randint(0, 45),
        [r.getrandbits(32) for _ in range(r.randint(0, 20))])),
    ("twcc", lambda r: (lambda a, b, base, t, fb, d: (_native.build_twcc(a, b, base, t, fb, d), {
        "type": "twcc", "sender_ssrc": a, "media_ssrc": b, "base_seq": base,
        "status_count": len(d), "ref_time": t, "fb_count": fb,
        "packets": ref.twcc_packets(base, d)}))(
        r.getrandbits(32), r.getrandbits(32), r.getrandbits(16),
        r.randint(-(1 << 23), (1 << 23) - 1), r.getrandbits(8), rand_deltas(r))),
]


@pytest.mark.parametrize("build", [b for _, b in BUILDERS], ids=[n for n, _ in BUILDERS])
def test_native_builder_parses_in_oracle(build: Callable[[random.Random],
                                                         tuple[bytes, dict[str, object]]]):
    rng = random.Random(5104)
    for _ in range(300):
        data, expected = build(rng)
        assert ref.parse(data) == [expected]
        assert _native.parse_rtcp(data) == [expected]


def test_native_nack_builder_covers_lost_set():
    rng = random.Random(4)
    for _ in range(300):
        start = rng.getrandbits(16)
        lost = [(start + rng.randint(0, 200)) & 0xFFFF for _ in range(rng.randint(1, 40))]
        (parsed,) = ref.parse(_native.build_nack(7, 8, lost))
        assert parsed["sender_ssrc"] == 7 and parsed["media_ssrc"] == 8
        got = parsed["lost"]
        assert isinstance(got, list)
        assert sorted(got) == sorted(set(lost))  # each lost seq exactly once


def test_native_nack_builder_packs_across_wrap():
    # 65534..1 is one run: a single FCI entry (PID 65534, BLP bits 0-2) suffices.
    data = _native.build_nack(1, 2, [65534, 65535, 0, 1])
    assert len(data) == 16, data.hex()


def test_sr_with_padding_and_profile_extension():
    body = ref.build_sr(1, 2, 3, 4, 5, [rand_report(random.Random(1))])[4:] + b"\xaa" * 8
    data = ref.header(1, ref.PT_SR, body, padding=4)
    assert _native.parse_rtcp(data) == ref.parse(data)


def test_mutations_agree_with_oracle():
    rng = random.Random(3550)
    seeds = [v.data for v in VALID] + [rand_packet(rng)[0] for _ in range(60)]
    check_mutations(_native.parse_rtcp, ref.parse, rng, seeds)


def test_oracle_agrees_with_aiortc():
    # aiortc reads SR/RR/BYE/NACK independently; its view must match the oracle's.
    from aiortc.rtp import RtcpByePacket, RtcpPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket

    rng = random.Random(2001)
    checked = 0
    for _ in range(400):
        data, expected = rand_packet(rng)
        if expected["type"] not in ("sr", "rr", "bye", "nack"):
            continue
        (theirs,) = RtcpPacket.parse(data)
        (ours,) = ref.parse(data)
        if isinstance(theirs, RtcpSrPacket | RtcpRrPacket):
            info = theirs.sender_info if isinstance(theirs, RtcpSrPacket) else None
            if info is not None:
                assert (ours["ntp"], ours["rtp_ts"], ours["packets"], ours["octets"]) == (
                    info.ntp_timestamp, info.rtp_timestamp, info.packet_count,
                    info.octet_count)
            assert ours["ssrc"] == theirs.ssrc
            assert ours["reports"] == [
                {"ssrc": r.ssrc, "fraction_lost": r.fraction_lost, "packets_lost": r.packets_lost,
                 "highest_seq": r.highest_sequence, "jitter": r.jitter, "lsr": r.lsr,
                 "dlsr": r.dlsr} for r in theirs.reports]
        elif isinstance(theirs, RtcpByePacket):
            assert ours["ssrcs"] == theirs.sources
        else:
            assert isinstance(theirs, RtcpRtpfbPacket)
            assert ours["lost"] == theirs.lost and ours["media_ssrc"] == theirs.media_ssrc
        checked += 1
    assert checked > 100

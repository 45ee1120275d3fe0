"""Native ULPFEC (RFC 5109 level 0): hand-built vectors, seeded round trips with every
packet dropped in turn, refusal cases, named malformed inputs and a seeded fuzz."""

import random
import struct

import pytest

from sfu import _native
from sfu._native import UlpfecEncoder, parse_rtp, ulpfec_encode, ulpfec_parse, ulpfec_recover


def rtp(seq: int, ts: int, ssrc: int = 0x0A0B0C0D, pt: int = 96, marker: bool = False,
        payload: bytes = b"", csrcs: tuple[int, ...] = (), ext: bytes | None = None,
        padding: int = 0) -> bytes:
    """Builds an RTP packet; ext is the extension element bytes (multiple of 4)."""
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def oracle_payload(packets: list[bytes]) -> tuple[int, int, int, int, bytes]:
    """Pure-Python RFC 5109 section 8.2 sums: (byte0, byte1, ts, length) recovery and XOR."""
    b0 = b1 = ts = ln = 0
    prot = max(len(p) - 12 for p in packets)
    acc = bytearray(prot)
    for p in packets:
        b0 ^= p[0]
        b1 ^= p[1]
        ts ^= struct.unpack("!I", p[4:8])[0]
        ln ^= len(p) - 12
        for i, c in enumerate(p[12:]):
            acc[i] ^= c
    return b0, b1, ts, ln, bytes(acc)


def fixed_header_ok(p: bytes) -> bool:
    """The checks of native rtp_parse: version, CSRCs, extension length, padding."""
    if len(p) < 12 or p[0] >> 6 != 2:
        return False
    off = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if off + 4 > len(p):
            return False
        off += 4 + 4 * struct.unpack("!H", p[off + 2:off + 4])[0]
    if off > len(p):
        return False
    return not p[0] & 0x20 or 0 < p[-1] <= len(p) - off


# ---- hand-built vectors ----------------------------------------------------------------

P1 = rtp(8, 0x11223344, pt=96, payload=b"\xaa\xbb\xcc")
P2 = rtp(10, 0x01020304, pt=97, marker=True, csrcs=(0xDEADBEEF,), payload=b"\x01")

# Every field of RFC 5109 figures 2 (RTP), 3 (FEC header) and 4 (level-0 header):
FEC_VECTOR = bytes.fromhex(
    "80 75 0007 00000064 01020304"   # RTP: V=2, PT=117, seq 7, ts 100, ssrc 0x01020304
    "01"        # E=0 L=0 P^=0 X^=0 CC^=1 (0x80^0x81; version bits replaced by E,L)
    "81"        # M^=1 (0^1), PT^=1 (96^97)
    "0008"      # SN base: lowest protected seq
    "10203040"  # TS recovery: 0x11223344 ^ 0x01020304
    "0006"      # length recovery: 3 ^ 5 (bytes after the fixed 12-byte header)
    "0005"      # protection length: longest packet minus 12
    "a000"      # mask: MSB = seq 8, third bit = seq 10
    "7416 72ef 01"  # aabbcc0000 ^ deadbeef01
)


def test_hand_vector_encode_parse_recover():
    assert ulpfec_encode([P1, P2], 117, 7, 100, 0x01020304) == FEC_VECTOR
    assert ulpfec_encode([P2, P1], 117, 7, 100, 0x01020304) == FEC_VECTOR   # order-free
    f = ulpfec_parse(FEC_VECTOR)
    assert (f["payload_type"], f["sequence_number"], f["timestamp"], f["ssrc"]) == \
        (117, 7, 100, 0x01020304)
    assert f["e"] is False and f["l"] is False
    assert (f["p_recovery"], f["x_recovery"], f["cc_recovery"]) == (False, False, 1)
    assert (f["m_recovery"], f["pt_recovery"]) == (True, 1)
    assert (f["sn_base"], f["ts_recovery"], f["length_recovery"]) == (8, 0x10203040, 6)
    assert f["protection_length"] == 5
    assert f["protected"] == [8, 10] and f["mask"] == 0b101
    assert f["payload"] == bytes.fromhex("741672ef01")
    ssrc = 0x0A0B0C0D
    assert ulpfec_recover(FEC_VECTOR, {10: P2}, media_ssrc=ssrc) == P1
    assert ulpfec_recover(FEC_VECTOR, {8: P1}, media_ssrc=ssrc) == P2
    # default SSRC is the FEC packet's own (ULPFEC sharing the media stream)
    assert ulpfec_recover(FEC_VECTOR, {8: P1})[8:12] == bytes.fromhex("01020304")


def test_long_mask_vector():
    a = rtp(100, 1, payload=b"\x0f")
    b = rtp(140, 1, payload=b"\xf0\x01")
    fec = ulpfec_encode([a, b], 100, 0, 0, 0)
    body = fec[12:]
    assert body[0] == 0x40                       # L=1, recovery bits 0
    assert body[2:4] == b"\x00\x64"              # SN base 100
    assert body[10:12] == b"\x00\x02"            # protection length
    assert body[12:18] == bytes.fromhex("800000000080")   # offsets 0 and 40 of 48 bits
    assert body[18:] == b"\xff\x01"
    assert ulpfec_parse(fec)["protected"] == [100, 140]
    assert ulpfec_recover(fec, {140: b}, media_ssrc=0x0A0B0C0D) == a


def test_mask_across_wraparound_and_span_16_boundary():
    pk = [rtp(s, 5, payload=b"x") for s in (65530, 65535, 0, 9)]   # span 16: short mask
    f = ulpfec_parse(ulpfec_encode(pk, 100, 0, 0, 0))
    assert f["l"] is False and f["sn_base"] == 65530
    assert f["protected"] == [65530, 65535, 0, 9]
    f = ulpfec_parse(ulpfec_encode(pk + [rtp(10, 5)], 100, 0, 0, 0))  # span 17: long
    assert f["l"] is True and f["protected"] == [65530, 65535, 0, 9, 10]


# ---- seeded round trips ----------------------------------------------------------------

def random_packet(rng: random.Random, seq: int, ssrc: int) -> bytes:
    total = rng.choice([12, 13, 20, rng.randint(12, 1200), rng.randint(900, 1200)])
    csrcs = tuple(rng.getrandbits(32) for _ in range(rng.choice([0, 0, 1, 15])))
    # one-byte-header elements (RFC 8285): id 1..14, 1..4 data bytes, zero padded
    ext = None
    if rng.random() < 0.3:
        n = rng.randint(1, 4)
        elem = bytes([(rng.randint(1, 14) << 4) | (n - 1)]) + rng.randbytes(n)
        ext = elem + bytes(-len(elem) % 4)
    padding = rng.choice([0, 0, 0, 1, 4, 255])
    head = 12 + 4 * len(csrcs) + (4 + len(ext) if ext is not None else 0) + padding
    body = bytes(rng.getrandbits(8) for _ in range(max(0, total - head)))
    return rtp(seq, rng.getrandbits(32), ssrc, pt=rng.randint(0, 127),
               marker=rng.random() < 0.5, payload=body, csrcs=csrcs, ext=ext,
               padding=padding)


def random_group(rng: random.Random, ssrc: int) -> list[bytes]:
    size = rng.choice([1, 2, rng.randint(1, 48), 48])
    span = rng.randint(size, 48)
    offsets = sorted(rng.sample(range(span), size))
    base = rng.choice([65535 - rng.randint(0, 47), rng.randint(0, 65535)])
    return [random_packet(rng, (base + o) & 0xFFFF, ssrc) for o in offsets]


def test_round_trip_drop_each_packet():
    rng = random.Random(5109)
    recovered = 0
    for _ in range(40):
        ssrc = rng.getrandbits(32)
        group = random_group(rng, ssrc)
        order = group[:]
        rng.shuffle(order)
        fec = ulpfec_encode(order, 127, rng.getrandbits(16), rng.getrandbits(32), ssrc)
        info = ulpfec_parse(fec)
        seqs = [struct.unpack("!H", p[2:4])[0] for p in group]
        assert info["protected"] == seqs and info["sn_base"] == seqs[0]
        assert info["l"] == (((seqs[-1] - seqs[0]) & 0xFFFF) >= 16)
        b0, b1, ts, ln, xor = oracle_payload(group)
        assert (info["cc_recovery"], info["p_recovery"], info["x_recovery"]) == \
            (b0 & 0x0F, bool(b0 & 0x20), bool(b0 & 0x10))
        assert (info["m_recovery"], info["pt_recovery"]) == (bool(b1 & 0x80), b1 & 0x7F)
        assert (info["ts_recovery"], info["length_recovery"]) == (ts, ln)
        assert info["payload"] == xor and info["protection_length"] == len(xor)
        by_seq = dict(zip(seqs, group, strict=True))
        for s, pkt in by_seq.items():
            others = {k: v for k, v in by_seq.items() if k != s}
            got = ulpfec_recover(fec, others)
            assert got == pkt, f"seq {s} of {seqs}"
            parse_rtp(got)
            recovered += 1
    assert recovered > 300


def test_refuses_unless_exactly_one_missing():
    rng = random.Random(7)
    group = [random_packet(rng, s, 9) for s in range(20, 30)]
    fec = ulpfec_encode(group, 100, 0, 0, 9)
    full = {20 + i: p for i, p in enumerate(group)}
    assert ulpfec_recover(fec, full) is None                      # nothing missing
    two = {k: v for k, v in full.items() if k not in (21, 27)}
    assert ulpfec_recover(fec, two) is None
    assert ulpfec_recover(fec, {}) is None
    # unrelated packets in `received` are ignored
    one = {k: v for k, v in full.items() if k != 25} | {500: rtp(500, 0)}
    assert ulpfec_recover(fec, one) == group[5]


def test_encoder_groups_and_recovers():
    enc = UlpfecEncoder(117, 0x55, max_group=10, seq=65535)
    media = [rtp((65530 + i) & 0xFFFF, 1000 * i, ssrc=0x55, payload=bytes([i]) * (i * 40))
             for i in range(25)]
    fecs = []
    for p in media:
        fecs += enc.add(p)
    assert len(fecs) == 2
    fecs += enc.flush()
    assert len(fecs) == 3 and enc.flush() == []
    for n, (fec, grp) in enumerate(zip(fecs, [media[0:10], media[10:20], media[20:]],
                                       strict=True)):
        info = ulpfec_parse(fec)
        assert info["sequence_number"] == (65535 + n) & 0xFFFF
        assert info["payload_type"] == 117 and info["ssrc"] == 0x55
        assert info["timestamp"] == struct.unpack("!I", grp[-1][4:8])[0]
        by_seq = {struct.unpack("!H", p[2:4])[0]: p for p in grp}
        assert info["protected"] == list(by_seq)
        lost = list(by_seq)[len(grp) // 2]
        assert ulpfec_recover(fec, {k: v for k, v in by_seq.items() if k != lost}) == \
            by_seq[lost]
    assert enc.next_seq == 2


def test_encoder_closes_group_on_gap_or_reorder():
    enc = UlpfecEncoder(117, 1, max_group=10)
    assert enc.add(rtp(1, 0)) == [] and enc.add(rtp(2, 0)) == []
    out = enc.add(rtp(60, 0))                  # gap > 48 closes {1, 2}
    assert [ulpfec_parse(f)["protected"] for f in out] == [[1, 2]]
    out = enc.add(rtp(59, 0))                  # reorder closes {60}
    assert [ulpfec_parse(f)["protected"] for f in out] == [[60]]
    assert [ulpfec_parse(f)["protected"] for f in enc.flush()] == [[59]]
    one = UlpfecEncoder(117, 1, max_group=1)
    assert len(one.add(rtp(3, 0))) == 1


# ---- errors ------------------------------------------------------------------------------

ENCODE_ERRORS = {
    "empty-group": ([], {}),
    "49-packets": ([rtp(i, 0) for i in range(49)], {}),
    "span-over-48": ([rtp(0, 0), rtp(48, 0)], {}),
    "duplicate-seq": ([rtp(3, 0), rtp(3, 1)], {}),
    "short-media": ([rtp(3, 0)[:11]], {}),
    "media-version-1": ([b"\x40" + rtp(3, 0)[1:]], {}),
    "fec-pt-128": ([rtp(3, 0)], {"fec_pt": 128}),
    "seq-65536": ([rtp(3, 0)], {"seq": 65536}),
    "ssrc-negative": ([rtp(3, 0)], {"ssrc": -1}),
}


@pytest.mark.parametrize("name", list(ENCODE_ERRORS))
def test_encode_rejects(name: str):
    packets, over = ENCODE_ERRORS[name]
    args = {"fec_pt": 100, "seq": 0, "ts": 0, "ssrc": 0} | over
    with pytest.raises(ValueError):
        ulpfec_encode(packets, **args)


def _with_body(body: bytes) -> bytes:
    return FEC_VECTOR[:12] + body


BODY = FEC_VECTOR[12:]
MALFORMED = {
    "empty": b"",
    "rtp-version-1": b"\x40" + FEC_VECTOR[1:],
    "rtp-header-only": FEC_VECTOR[:12],
    "fec-header-truncated": FEC_VECTOR[:12 + 13],
    "e-bit-set": _with_body(bytes([BODY[0] | 0x80]) + BODY[1:]),
    "l-bit-without-long-mask": _with_body(bytes([BODY[0] | 0x40]) + BODY[1:14]),
    "mask-empty": _with_body(BODY[:12] + b"\x00\x00" + BODY[14:]),
    "protection-length-overrun": _with_body(BODY[:10] + b"\x00\x06" + BODY[12:]),
    "payload-truncated": FEC_VECTOR[:-1],
    "rtp-padding-eats-fec": b"\xa0" + FEC_VECTOR[1:-1] + b"\x0e",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_fec_raises(name: str):
    with pytest.raises(ValueError):
        ulpfec_parse(MALFORMED[name])
    with pytest.raises(ValueError):
        ulpfec_recover(MALFORMED[name], {10: P2})


def test_bad_recovery_inputs_raise():
    body = bytearray(BODY)
    body[8:10] = b"\x00\x0d"            # 13 ^ 5 = 8 > protection length 5
    with pytest.raises(ValueError, match="recovered length"):
        ulpfec_recover(_with_body(bytes(body)), {10: P2})
    body = bytearray(BODY)
    body[0] = 0x0F ^ 0x01               # recovered CC = 15 overruns a 15-byte packet
    with pytest.raises(ValueError, match="not valid RTP"):
        ulpfec_recover(_with_body(bytes(body)), {10: P2})
    with pytest.raises(ValueError, match="longer than the protection"):
        ulpfec_recover(FEC_VECTOR, {10: P2 + b"\x00"})
    with pytest.raises(ValueError, match="sequence number"):
        ulpfec_recover(FEC_VECTOR, {10: P1})
    with pytest.raises(ValueError, match="sequence number"):
        ulpfec_recover(FEC_VECTOR, {10: b"\x80"})
    with pytest.raises(ValueError):
        ulpfec_recover(FEC_VECTOR, {10: P2}, media_ssrc=1 << 32)
    with pytest.raises(ValueError):
        UlpfecEncoder(117, 1, max_group=49)
    with pytest.raises(ValueError):
        UlpfecEncoder(117, 1).add(b"\x80\x00")


def test_fuzz_raises_only_value_error():
    rng = random.Random(1234)
    seeds = []
    for _ in range(6):
        group = random_group(rng, 77)
        group = [p[:300] if len(p) > 300 and not p[0] & 0x20 else p for p in group]
        seeds.append((ulpfec_encode(group, 100, 1, 2, 77),
                      {struct.unpack("!H", p[2:4])[0]: p for p in group[1:]}))
    outcomes = {"ok": 0, "none": 0, "error": 0}
    for _ in range(5000):
        fec, received = rng.choice(seeds)
        data = bytearray(fec)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.6 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        try:
            ulpfec_parse(bytes(data))
            got = ulpfec_recover(bytes(data), received)
        except ValueError:
            outcomes["error"] += 1
            continue
        if got is None:
            outcomes["none"] += 1
        else:
            assert fixed_header_ok(got), got.hex()   # never hands back broken RTP
            outcomes["ok"] += 1
    assert all(outcomes.values()), outcomes


def test_native_exports():
    for name in ("ulpfec_encode", "ulpfec_parse", "ulpfec_recover", "UlpfecEncoder"):
        assert hasattr(_native, name)

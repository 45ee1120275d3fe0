"""Native SFU-RS burst FEC (docs/fec-burst.md): GF(2^8) tables against a slow reference,
wire bytes against a pure-Python encoder, recovery from every pattern of up to m losses,
the C-level entry points, RsEncoder block rules, RsDecoder streams, malformed input, fuzz."""

import itertools
import random
import struct
import tracemalloc

import pytest
from test_fec import fixed_header_ok  # the same RTP validity oracle

from sfu import _native
from sfu._native import RsDecoder, RsEncoder, rs_decode, rs_encode, rs_parse

MEDIA_PT, FEC_PT, SSRC, FEC_SSRC = 96, 125, 0x0A0B0C0D, 0xFEC0FEC0


# ---- pure-Python reference ---------------------------------------------------------------

def gf_mul_slow(a: int, b: int) -> int:
    """Shift-and-add multiplication modulo x^8+x^4+x^3+x^2+1."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
    return r


def gf_inv_slow(a: int) -> int:
    return next(x for x in range(1, 256) if gf_mul_slow(a, x) == 1)


REF_MUL = [bytes(gf_mul_slow(c, x) for x in range(256)) for c in range(256)]
REF_INV = [0] + [gf_inv_slow(a) for a in range(1, 256)]


def cauchy(j: int, i: int) -> int:
    return REF_INV[(128 + j) ^ i]


def xor_bytes(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def ts_of(p: bytes) -> int:
    return struct.unpack("!I", p[4:8])[0]


def seq_of(p: bytes) -> int:
    return struct.unpack("!H", p[2:4])[0]


def ref_image(p: bytes, base_ts: int, L: int) -> bytes:
    img = bytes([p[0], p[1] & 0x80]) + struct.pack("!HI", len(p) - 12,
                                                    (ts_of(p) - base_ts) & 0xFFFFFFFF) + p[12:]
    return img + bytes(max(0, L - len(img)))


def ref_encode(slots: list, k: int, m: int, base_seq: int, fec_seq: int) -> list[bytes]:
    """The spec's FEC packets, written from the text of docs/fec-burst.md."""
    present = [(i, p) for i, p in enumerate(slots) if p is not None]
    base_ts, media_ssrc = ts_of(present[0][1]), struct.unpack("!I", present[0][1][8:12])[0]
    L = max(len(p) - 4 for _, p in present)
    wire_mask = sum(1 << (63 - i) for i, _ in present)
    out = []
    for j in range(m):
        parity = bytes(L)
        for i, p in present:
            parity = xor_bytes(parity, ref_image(p, base_ts, L).translate(REF_MUL[cauchy(j, i)]))
        rtp_hdr = struct.pack("!BBHII", 0x80, FEC_PT, (fec_seq + j) & 0xFFFF, base_ts, FEC_SSRC)
        rs_hdr = struct.pack("!BBBBHHIIQ", 0x40, k, m, j, base_seq, L, base_ts, media_ssrc,
                             wire_mask)
        out.append(rtp_hdr + rs_hdr + parity)
    return out


# ---- packet generation ---------------------------------------------------------------------

def rtp(seq: int, ts: int, ssrc: int = SSRC, marker: bool = False, payload: bytes = b"",
        csrcs: tuple[int, ...] = (), ext: bytes | None = None, padding: int = 0) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | MEDIA_PT, seq & 0xFFFF,
                      ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def random_packet(rng: random.Random, seq: int, ts: int, ssrc: int = SSRC,
                  max_len: int = 1200) -> bytes:
    """Lengths 12..max_len, CSRCs, one-byte extensions, padding, both marker values."""
    total = rng.choice([12, 13, 20, rng.randint(12, max_len), rng.randint(max_len // 2, max_len)])
    csrcs = tuple(rng.getrandbits(32) for _ in range(rng.choice([0, 0, 1, 15])))
    ext = None
    if rng.random() < 0.3:
        n = rng.randint(1, 4)
        elem = bytes([(rng.randint(1, 14) << 4) | (n - 1)]) + rng.randbytes(n)
        ext = elem + bytes(-len(elem) % 4)
    padding = rng.choice([0, 0, 0, 1, 4, 255])
    head = 12 + 4 * len(csrcs) + (4 + len(ext) if ext is not None else 0) + padding
    return rtp(seq, ts, ssrc, marker=rng.random() < 0.5,
               payload=rng.randbytes(max(0, total - head)), csrcs=csrcs, ext=ext,
               padding=padding)


def random_block(rng: random.Random, k: int, absent: float = 0.0,
                 max_len: int = 1200) -> tuple[int, list]:
    """(base_seq, slots): seqs often across 65535 -> 0, timestamps across 2^32 and out of
    order; slots[i] is None for absent packets (at least one present)."""
    base = rng.choice([65536 - rng.randint(1, k), rng.getrandbits(16)])
    ts0 = rng.choice([0xFFFFFFFF - rng.randint(0, 3000), rng.getrandbits(32)])
    slots: list = [random_packet(rng, base + i, ts0 + rng.randint(-900, 9000), max_len=max_len)
                   if rng.random() >= absent else None for i in range(k)]
    if all(s is None for s in slots):
        i = rng.randrange(k)
        slots[i] = random_packet(rng, base + i, ts0, max_len=max_len)
    return base, slots


@pytest.fixture(params=["simd", "table"])
def kernel(request):
    """Runs a test with the AVX2 kernel (where the CPU has it) and with the table kernel."""
    before = _native._rs_simd()
    _native._rs_simd(request.param == "simd")
    yield request.param
    _native._rs_simd(before)


# ---- GF(2^8) -------------------------------------------------------------------------------

def test_gf_tables_match_slow_reference():
    mul, inv, exp, log, cau = _native._rs_gf_tables()
    assert mul == b"".join(REF_MUL)
    assert inv == bytes(REF_INV)
    assert all(gf_mul_slow(a, inv[a]) == 1 for a in range(1, 256))
    x = 1
    for i in range(510):               # exp is doubled so log a + log b needs no modulo
        assert exp[i] == x, i
        if i < 255:
            assert log[x] == i
        x = gf_mul_slow(x, 2)
    assert len(set(exp[:255])) == 255   # 2 generates the multiplicative group
    assert cau == bytes(cauchy(j, i) for j in range(16) for i in range(64))
    assert 0 not in cau
    rng = random.Random(8)
    for _ in range(2000):
        a, b, c = (rng.randrange(256) for _ in range(3))
        ab_c = mul[mul[a * 256 + b] * 256 + c]
        assert ab_c == mul[a * 256 + mul[b * 256 + c]]                     # associative
        assert mul[a * 256 + (b ^ c)] == mul[a * 256 + b] ^ mul[a * 256 + c]   # distributive
        assert mul[a * 256 + b] == mul[b * 256 + a]


# ---- wire format ----------------------------------------------------------------------------

def test_hand_vector():
    p0 = rtp(65535, 0xFFFFFFF0, marker=True, payload=b"\x01\x02\x03")
    p2 = rtp(1, 0x00000010, payload=b"\xff")
    fec = rs_encode([p0, None, p2], 3, 2, 65535, FEC_PT, 9, FEC_SSRC)
    images = {0: bytes.fromhex("80 80 0003 00000000 010203"),   # V/P/X/CC, M, len, ts offset
              2: bytes.fromhex("80 00 0001 00000020 ff 0000")}  # ts wraps: +0x20, padded to L
    for j, f in enumerate(fec):
        parity = xor_bytes(images[0].translate(REF_MUL[cauchy(j, 0)]),
                           images[2].translate(REF_MUL[cauchy(j, 2)]))
        assert f == bytes.fromhex(
            "80 7d" + f"{9 + j:04x}" + "fffffff0 fec0fec0"   # RTP: PT 125, own seq/SSRC, base ts
            "40" "03" "02" + f"{j:02x}"                       # version 1, k 3, m 2, row j
            "ffff" "000b"                                      # base_seq 65535, L = 15 - 4
            "fffffff0" "0a0b0c0d"                              # base_ts, media SSRC
            "a000000000000000") + parity                       # mask: seq 65535 and 1 present
    info = rs_parse(fec[1])
    assert info == {"k": 3, "m": 2, "index": 1, "base_seq": 65535, "base_ts": 0xFFFFFFF0,
                    "length": 11, "media_ssrc": SSRC, "mask": 0xA000000000000000,
                    "protected": [65535, 1],
                    "fec_seq": 10, "fec_ssrc": FEC_SSRC}
    assert rs_decode(fec[1:], {1: p2}, MEDIA_PT) == [p0]


def test_encode_matches_reference_encoder(kernel):
    rng = random.Random(2)
    for _ in range(25):
        k, m = rng.randint(1, 12), rng.randint(1, 4)
        base, slots = random_block(rng, k, absent=rng.choice([0.0, 0.3]), max_len=300)
        fec_seq = rng.getrandbits(16)
        got = rs_encode(slots, k, m, base & 0xFFFF, FEC_PT, fec_seq, FEC_SSRC)
        assert got == ref_encode(slots, k, m, base & 0xFFFF, fec_seq)
        rows = rng.randint(1, m)
        assert rs_encode(slots, k, m, base & 0xFFFF, FEC_PT, fec_seq, FEC_SSRC,
                         rows=rows) == got[:rows]
    # a short list leaves the tail absent
    p = rtp(7, 1)
    assert rs_encode([p], 4, 1, 7, FEC_PT, 0, FEC_SSRC) == \
        rs_encode([p, None, None, None], 4, 1, 7, FEC_PT, 0, FEC_SSRC)


# ---- recovery -------------------------------------------------------------------------------

def check_drops(slots: list, fec: list, base: int, drop: tuple[int, ...], k: int) -> None:
    """Drops packets `drop` (indexes into media + parity) and checks byte-exact recovery."""
    received = {(base + i) & 0xFFFF: p for i, p in enumerate(slots)
                if p is not None and i not in drop}
    rows = [f for j, f in enumerate(fec) if k + j not in drop]
    want = [p for i, p in enumerate(slots) if p is not None and i in drop]
    assert rs_decode(rows, received, MEDIA_PT) == want, (k, len(fec), drop)


def test_recover_any_m_losses_exhaustive_small(kernel):
    rng = random.Random(11)
    cases = 0
    for k in (1, 2, 3, 5, 6, 8):
        for m in (1, 2, 3):
            base, slots = random_block(rng, k, absent=0.2 if k > 2 else 0.0, max_len=400)
            fec = rs_encode(slots, k, m, base & 0xFFFF, FEC_PT, 0, FEC_SSRC)
            for e in range(m + 1):
                for drop in itertools.combinations(range(k + m), e):
                    check_drops(slots, fec, base, drop, k)
                    cases += 1
    assert cases == 731


def test_recover_random_large_blocks(kernel):
    rng = random.Random(12)
    for k, m in [(64, 16), (64, 1), (40, 9), (20, 4), (10, 3), (8, 2), (17, 16)]:
        base, slots = random_block(rng, k, absent=rng.choice([0.0, 0.1]))
        fec = rs_encode(slots, k, m, base & 0xFFFF, FEC_PT, 0, FEC_SSRC)
        for _ in range(4):
            e = rng.choice([m, rng.randint(0, m)])
            check_drops(slots, fec, base, tuple(sorted(rng.sample(range(k + m), e))), k)
        # the burst case: the first m media packets in a row
        check_drops(slots, fec, base, tuple(range(min(m, k))), k)


def test_absent_packets_are_never_waited_for():
    p = [rtp(100 + i, 5000, payload=bytes([i]) * i) for i in range(6)]
    slots = [p[0], None, p[2], None, p[4], p[5]]
    fec = rs_encode(slots, 6, 2, 100, FEC_PT, 0, FEC_SSRC)
    assert rs_parse(fec[0])["protected"] == [100, 102, 104, 105]
    assert rs_parse(fec[0])["mask"] == (1 << 63) | (1 << 61) | (1 << 59) | (1 << 58)
    # two present packets lost: recovered although 101 and 103 never arrive
    assert rs_decode(fec, {100: p[0], 105: p[5]}, MEDIA_PT) == [p[2], p[4]]
    dec = RsDecoder(MEDIA_PT, SSRC)
    assert dec.add_media(p[0]) == [] and dec.add_media(p[5]) == []
    assert dec.add_fec(fec[0]) == []
    assert dec.add_fec(fec[1]) == [p[2], p[4]]
    assert dec.stats()["recovered"] == 2 and dec.stats()["unrecoverable"] == 0


def test_more_than_m_lost_recovers_nothing():
    rng = random.Random(13)
    base, slots = random_block(rng, 10)
    fec = rs_encode(slots, 10, 3, base & 0xFFFF, FEC_PT, 0, FEC_SSRC)
    received = {(base + i) & 0xFFFF: p for i, p in enumerate(slots) if i >= 4}
    assert rs_decode(fec, received, MEDIA_PT) == []
    assert rs_decode(fec[:2], {(base + i) & 0xFFFF: p for i, p in enumerate(slots) if i != 0
                               and i != 1 and i != 2}, MEDIA_PT) == []
    dec = RsDecoder(MEDIA_PT, SSRC)
    for p in received.values():
        assert dec.add_media(p) == []
    for f in fec:
        assert dec.add_fec(f) == []
    assert dec.stats()["unrecoverable"] == 1 and dec.stats()["recovered"] == 0
    # a late media packet brings the block back within reach
    assert dec.add_media(slots[0]) == slots[1:4]
    assert dec.stats()["unrecoverable"] == 0 and dec.stats()["recovered"] == 3


# ---- C level ---------------------------------------------------------------------------------

def test_c_parity_rows_and_recover(kernel):
    rng = random.Random(14)
    base, slots = random_block(rng, 12, absent=0.2, max_len=500)
    fec = rs_encode(slots, 12, 5, base & 0xFFFF, FEC_PT, 0, FEC_SSRC)
    info = rs_parse(fec[0])
    L, mask, bts = info["length"], info["mask"], info["base_ts"]
    prefixes = b"".join(ref_image(p, bts, 8)[:8] if p else bytes(8) for p in slots)
    bodies = [p[12:] if p else None for p in slots]
    par = _native._rs_parity_rows(prefixes, bodies, mask, 12, 1, 3, L)
    assert par == b"".join(f[36:] for f in fec[1:4])
    assert _native._rs_parity_rows(prefixes, bodies, mask, 12, 0, 0, L) == b""
    assert _native._rs_parity_rows(prefixes, bodies, mask, 12, 14, 3, L) is None   # row 16
    assert _native._rs_parity_rows(prefixes, bodies, mask | 1 << 51, 12, 0, 1, L) is None
    assert _native._rs_parity_rows(prefixes, bodies, mask, 12, 0, 1, 7) is None     # L < 8
    short = max(len(b) for b in bodies if b) + 7                                       # L - 1
    assert _native._rs_parity_rows(prefixes, bodies, mask, 12, 0, 1, short) is None

    imgs = [ref_image(p, bts, L) if p else None for p in slots]
    present = [i for i in range(12) if slots[i] is not None]
    assert len(present) >= 4
    lost = present[:4]
    held = [None if i in lost else img for i, img in enumerate(imgs)]
    parity = [f[36:] for f in fec]
    got = _native._rs_recover(12, mask, held, [4, 4, 2, 0, 1], [parity[4], parity[4],
                                                               parity[2], parity[0],
                                                               parity[1]], L)
    assert got == {i: imgs[i] for i in lost}                 # duplicate row 4 used once
    assert _native._rs_recover(12, mask, held, [4, 4, 2, 0], [parity[4]] * 2 + parity[2:3]
                               + parity[0:1], L) is None      # 3 distinct rows for 4 losses
    assert _native._rs_recover(12, mask, held, [20, 2, 0, 1], [parity[4], parity[2],
                                                              parity[0], parity[1]], L) is None
    assert _native._rs_recover(12, mask, imgs, [], [], L) == {}                 # none missing


# ---- RsEncoder -------------------------------------------------------------------------------

def blocks(fecs: list[bytes]) -> list[tuple[int, int, list[int]]]:
    """(k, m, protected) per block, from its row-0 packets."""
    out = []
    for f in fecs:
        info = rs_parse(f)
        if info["index"] == 0:
            out.append((info["k"], info["m"], info["protected"]))
    return out


def test_encoder_closing_rules():
    enc = RsEncoder(FEC_PT, FEC_SSRC, 4, 2, seq=65535)
    out = [enc.add(rtp(s, 0)) for s in (65534, 65535, 0)]
    assert out == [[], [], []]
    fec = enc.add(rtp(1, 0))                    # last sequence number closes the block
    assert blocks(fec) == [(4, 2, [65534, 65535, 0, 1])]
    assert [rs_parse(f)["fec_seq"] for f in fec] == [65535, 0] and enc.next_seq == 1
    assert enc.add(rtp(0, 0)) == []             # late: its block is gone
    assert enc.add(rtp(2, 0)) == []
    fec = enc.add(rtp(5, 0))                    # a gap: the last slot arrives, 3 and 4 absent
    assert blocks(fec) == [(4, 2, [2, 5])]
    assert enc.add(rtp(4, 0)) == []             # late
    assert enc.add(rtp(7, 0)) == []             # next block keeps its place: 6 .. 9
    fec = enc.add(rtp(12, 0))                   # beyond 6..9: closes it, 12 opens 10..13
    assert blocks(fec) == [(4, 2, [7])]
    enc.set_rate(2, 1)                          # applies from the next block
    assert blocks(enc.add(rtp(13, 0))) == [(4, 2, [12, 13])]
    assert blocks(enc.add(rtp(15, 0))) == [(2, 1, [15])]
    assert enc.add(rtp(5000, 0)) == []          # a jump starts a block at the new seq
    assert blocks(enc.flush()) == [(1, 1, [5000])]
    assert enc.flush() == []
    assert blocks(enc.add(rtp(5001, 0)) + enc.flush()) == [(1, 1, [5001])]
    enc.set_rate(3, 1)
    assert enc.add(rtp(6000, 0)) == []
    fec = enc.add(rtp(6001, 0, ssrc=SSRC + 1))  # a new SSRC closes the open block
    assert blocks(fec) == [(3, 1, [6000])] and rs_parse(fec[0])["media_ssrc"] == SSRC
    assert blocks(enc.add(rtp(6003, 0, ssrc=SSRC + 1))) == [(3, 1, [6001, 6003])]
    assert enc.add(rtp(4000, 0, ssrc=SSRC + 1)) == []     # far back: a restart, not late
    assert blocks(enc.add(rtp(4002, 0, ssrc=SSRC + 1))) == [(3, 1, [4000, 4002])]
    assert enc.add(rtp(1000, 0, ssrc=SSRC + 1)) == []
    assert enc.add(rtp(900, 0, ssrc=SSRC + 1)) == []      # 100 back: late, ignored
    assert blocks(enc.flush()) == [(1, 1, [1000])]


def test_encoder_flush_shortens_block():
    enc = RsEncoder(FEC_PT, FEC_SSRC, 10, 3)
    assert enc.add(rtp(40, 0)) == [] and enc.add(rtp(42, 0)) == []
    fec = enc.flush()
    assert blocks(fec) == [(3, 3, [40, 42])] and enc.next_seq == 3
    assert enc.add(rtp(43, 0)) == []            # the next block starts right after
    assert blocks(enc.flush()) == [(1, 3, [43])]


@pytest.mark.parametrize("args", [(128, 1, 4, 2), (FEC_PT, -1, 4, 2), (FEC_PT, 1, 0, 2),
                                  (FEC_PT, 1, 65, 2), (FEC_PT, 1, 4, 0), (FEC_PT, 1, 4, 17)])
def test_encoder_rejects_bad_arguments(args: tuple):
    with pytest.raises(ValueError):
        RsEncoder(*args)


def test_encode_rejects():
    p = rtp(10, 0)
    bad = [([p], dict(k=0)), ([p], dict(k=65)), ([p], dict(m=17)), ([p], dict(rows=3)),
           ([p], dict(rows=0)), ([p], dict(base_seq=65536)), ([p], dict(fec_pt=128)),
           ([None, None], {}), ([p, p], {}), ([p, rtp(11, 0, ssrc=1)], {}), ([p] * 5, {}),
           ([p[:11]], {}), ([b"\x40" + p[1:]], {}), ([b"\xa0" + p[1:]], {}),
           ([p + bytes(65535)], {}), ("nope", {})]
    for packets, over in bad:
        args = dict(k=4, m=2, base_seq=10, fec_pt=FEC_PT, fec_seq=0, fec_ssrc=1) | over
        with pytest.raises(ValueError):
            rs_encode(packets, **args)
    enc = RsEncoder(FEC_PT, 1, 4, 2)
    with pytest.raises(ValueError):
        enc.add(b"\x80\x00")
    with pytest.raises(ValueError):
        enc.set_rate(4, 0)


# ---- RsDecoder -------------------------------------------------------------------------------

def lossy_stream(rng: random.Random, nblocks: int, k: int, m: int, max_len: int = 300):
    """(media by seq, delivery list, dropped media seqs): RsEncoder output with at most m of
    each block's k + m packets dropped, locally reordered, some duplicated."""
    enc = RsEncoder(FEC_PT, FEC_SSRC, k, m, seq=65530)
    media, deliveries, dropped = {}, [], set()
    seq0, ts = 65536 - 3 * k, 0xFFFFF000
    for b in range(nblocks):
        block = []
        for i in range(k):
            s = (seq0 + b * k + i) & 0xFFFF
            ts += rng.choice([0, 0, 3000])
            p = random_packet(rng, s, ts, max_len=max_len)
            media[s] = p
            block += [("m", p)] + [("f", f) for f in enc.add(p)]
        for i in rng.sample(range(k + m), rng.randint(0, m)):
            kind, p = block[i]
            block[i] = None
            if kind == "m":
                dropped.add(seq_of(p))
        deliveries += [x for x in block if x is not None]
    for _ in range(len(deliveries) // 3):      # reorder by up to 6 places, and duplicate
        i = rng.randrange(len(deliveries) - 6)
        j = i + rng.randint(1, 6)
        deliveries[i], deliveries[j] = deliveries[j], deliveries[i]
    for _ in range(len(deliveries) // 10):
        deliveries.insert(rng.randrange(len(deliveries)), rng.choice(deliveries))
    return media, deliveries, dropped


def test_decoder_interleaved_duplicated_late():
    rng = random.Random(15)
    for k, m in [(10, 3), (8, 2), (4, 4)]:
        media, deliveries, dropped = lossy_stream(rng, 40, k, m)
        dec = RsDecoder(MEDIA_PT, SSRC)
        got: dict[int, bytes] = {}
        for kind, p in deliveries:
            for r in dec.add_media(p) if kind == "m" else dec.add_fec(p):
                assert seq_of(r) not in got, "recovered twice"
                got[seq_of(r)] = r
        assert dropped and dropped <= set(got), (k, m)
        assert all(media[s] == r for s, r in got.items())
        st = dec.stats()
        assert st["recovered"] == len(got) and st["malformed"] == 0
        assert st["unrecoverable"] == 0 and 30 <= st["blocks"] <= 40 and st["duplicate"] > 0


def test_decoder_memory_is_bounded():
    rng = random.Random(16)
    dec = RsDecoder(MEDIA_PT, SSRC, window=4)
    enc = RsEncoder(FEC_PT, FEC_SSRC, 10, 2)
    first_fec: list[bytes] = []
    tracemalloc.start()
    try:
        for n in range(12000):
            p = rtp(n, n * 90, payload=rng.randbytes(200))
            fecs = enc.add(p)
            first_fec = first_fec or fecs
            if n % 10 != 3:                     # one loss per block, always recovered
                dec.add_media(p)
            if fecs:
                got = [r for f in fecs for r in dec.add_fec(f)]
                assert [seq_of(r) for r in got] == [n - 6]
            if n == 2000:
                mid = tracemalloc.get_traced_memory()[0]
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert end - mid < 64 * 1024, (mid, end)
    assert dec.add_fec(first_fec[0]) == [] and dec.stats()["late"] == 1   # media long gone
    assert dec.stats()["recovered"] == 1200


def test_decoder_ignores_other_streams():
    p = [rtp(i, 0) for i in range(3)]
    fec = rs_encode(p, 3, 1, 0, FEC_PT, 0, FEC_SSRC)
    dec = RsDecoder(MEDIA_PT, SSRC + 1)
    assert dec.add_media(p[0]) == [] and dec.add_fec(fec[0]) == []
    assert dec.stats()["ignored"] == 2 and dec.stats()["blocks"] == 0
    with pytest.raises(ValueError):
        RsDecoder(128, 1)
    with pytest.raises(ValueError):
        RsDecoder(MEDIA_PT, 1, window=0)


# ---- malformed input ---------------------------------------------------------------------

GOOD = rs_encode([rtp(20, 7, payload=b"abcd"), rtp(21, 9, payload=b"xy")], 2, 2, 20,
                 FEC_PT, 3, FEC_SSRC)[1]


def with_rs(hdr_patch: dict[int, int], tail: bytes | None = None) -> bytes:
    d = bytearray(GOOD)
    for off, val in hdr_patch.items():
        d[12 + off] = val
    return bytes(d) if tail is None else bytes(d[:36]) + tail


MALFORMED = {
    "empty": b"",
    "rtp-version-1": b"\x40" + GOOD[1:],
    "rtp-header-only": GOOD[:12],
    "truncated-rs-header": GOOD[:12 + 23],
    "bad-version-0": with_rs({0: 0x00}),
    "bad-version-2": with_rs({0: 0x80}),
    "k=0": with_rs({1: 0}),
    "k>64": with_rs({1: 65}),
    "m=0": with_rs({2: 0}),
    "m>16": with_rs({2: 17}),
    "index>=m": with_rs({3: 2}),
    "mask-empty": with_rs({16: 0, 17: 0}),
    "mask-beyond-k": with_rs({16: 0xE0}),
    "L-below-8": with_rs({6: 0, 7: 7}, tail=bytes(7)),
    "L-mismatch-short": GOOD[:-1],
    "L-mismatch-long": GOOD + b"\x00",
    "rtp-padding-eats-parity": b"\xa0" + GOOD[1:-1] + b"\x04",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_fec(name: str):
    with pytest.raises(ValueError):
        rs_parse(MALFORMED[name])
    with pytest.raises(ValueError):
        rs_decode([MALFORMED[name]], {}, MEDIA_PT)
    dec = RsDecoder(MEDIA_PT, SSRC)
    assert dec.add_fec(MALFORMED[name]) == []
    assert dec.stats()["malformed"] == 1


def test_reserved_bits_are_ignored():
    assert rs_parse(with_rs({0: 0x7F})) == rs_parse(GOOD)


def test_corrupt_parity_never_yields_bad_rtp():
    # k = 1: parity = C[0][0] * image, so a chosen image can be planted
    for image in (bytes.fromhex("80 00 ffff 00000000") + bytes(4),     # length beyond L
                  bytes.fromhex("8f 00 0004 00000000") + bytes(4)):    # 15 CSRCs in 4 bytes
        f = bytearray(rs_encode([rtp(5, 0, payload=bytes(4))], 1, 1, 5, FEC_PT, 0, FEC_SSRC)[0])
        f[36:] = image.translate(REF_MUL[cauchy(0, 0)])
        with pytest.raises(ValueError, match="not valid RTP"):
            rs_decode([bytes(f)], {}, MEDIA_PT)
        dec = RsDecoder(MEDIA_PT, SSRC)
        assert dec.add_fec(bytes(f)) == [] and dec.stats()["malformed"] == 1
    with pytest.raises(ValueError, match="sequence number"):
        rs_decode([GOOD], {20: rtp(21, 0)}, MEDIA_PT)
    with pytest.raises(ValueError, match="longer"):
        rs_decode([GOOD], {20: rtp(20, 0, payload=bytes(100))}, MEDIA_PT)
    dec = RsDecoder(MEDIA_PT, SSRC)
    assert dec.add_media(rtp(20, 0, payload=bytes(100))) == [] and dec.add_fec(GOOD) == []
    assert dec.stats()["malformed"] == 1
    assert dec.add_media(b"\x80") == [] and dec.add_media(12) == [] and dec.add_fec(None) == []
    assert dec.stats()["malformed"] == 4


def test_fuzz_raises_only_value_error():
    rng = random.Random(1234)
    seeds = []
    for _ in range(6):
        k, m = rng.randint(1, 10), rng.randint(1, 4)
        base, slots = random_block(rng, k, absent=0.2, max_len=200)
        fec = rs_encode(slots, k, m, base & 0xFFFF, FEC_PT, 0, FEC_SSRC)
        received = {(base + i) & 0xFFFF: p for i, p in enumerate(slots) if p and i % 3}
        seeds.append((fec, received))
    outcomes = {"ok": 0, "empty": 0, "error": 0}
    dec = RsDecoder(MEDIA_PT, SSRC, window=8)
    for n in range(5000):
        fec, received = rng.choice(seeds)
        data = bytearray(rng.choice(fec))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.6 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += rng.randbytes(rng.randint(1, 8))
        out = []
        if n % 2:
            out += dec.add_fec(bytes(data))
        else:
            out += dec.add_media(bytes(data))
            out += dec.add_media(rng.choice(list(received.values()) or [b""]))
        try:
            rs_parse(bytes(data))
            got = rs_decode([bytes(data)] + fec[1:], received, MEDIA_PT)
        except ValueError:
            outcomes["error"] += 1
            got = []
        else:
            outcomes["ok" if got else "empty"] += 1
        for p in got + out:
            assert fixed_header_ok(p), p.hex()          # never hands back broken RTP
            assert p[1] & 0x7F == MEDIA_PT
    assert all(outcomes.values()), outcomes
    assert dec.stats()["malformed"] > 0


def test_native_exports():
    for name in ("rs_encode", "rs_parse", "rs_decode", "RsEncoder", "RsDecoder"):
        assert hasattr(_native, name)

"""FEC throughput: native ULPFEC encode+recover next to SFU-RS encode+decode, 1100-byte
packets, blocks of k=10 m=3 and k=8 m=2 (the issue asks >= 1 Gbit/s per core).

Run: .venv/bin/pytest bench/bench_fec.py --benchmark-enable -q -s
(add ``-p no:cacheprovider --benchmark-columns=min,median,ops`` for a compact table).

One round = encode the block's m parity packets, then rebuild m lost media packets
(ULPFEC: m interleaved groups, one loss each; SFU-RS: the first m packets, a burst).
Gbit/s counts the k media packets once (k * 1100 * 8 bits per round). The "api" cases go
through the Python wrappers (per-call object overhead included); "kernel" is the C-level
rs_parity_rows + rs_recover the engine calls, on prebuilt images, with the AVX2 kernel
(picked at import when the CPU has it) and with the portable table kernel.
"""

import random
import struct

import pytest

from sfu import _native

SIZE, MEDIA_PT, FEC_PT, SSRC, FEC_SSRC = 1100, 96, 125, 0x1234ABCD, 0xFEC0
SHAPES = [(10, 3), (8, 2)]


def media_block(k: int, base: int = 65530) -> list[bytes]:
    rng = random.Random(k)
    return [_native.build_rtp(MEDIA_PT, (base + i) & 0xFFFF, 90_000 + 3000 * (i // 4), SSRC,
                              rng.randbytes(SIZE - 12), marker=i % 4 == 3) for i in range(k)]


def report(benchmark, name: str, k: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:                       # --benchmark-disable: one unmeasured round
        return
    mean = stats.stats.mean
    print(f"\n{name} k={k}: {mean * 1e6:.1f} us/block, "
          f"{k * SIZE * 8 / mean / 1e9:.2f} Gbit/s")


@pytest.mark.parametrize(("k", "m"), SHAPES)
def test_ulpfec_encode_recover(benchmark, k: int, m: int):
    benchmark.group = f"fec-k{k}-m{m}"
    media = media_block(k)
    groups = [media[g::m] for g in range(m)]
    # each group loses its first packet; the rest is what arrived
    received = [{struct.unpack("!H", p[2:4])[0]: p for p in grp[1:]} for grp in groups]

    def round_trip() -> list[bytes | None]:
        fecs = [_native.ulpfec_encode(grp, 116, g, 0, FEC_SSRC) for g, grp in enumerate(groups)]
        return [_native.ulpfec_recover(f, r, SSRC) for f, r in zip(fecs, received, strict=True)]

    assert round_trip() == [grp[0] for grp in groups]
    benchmark(round_trip)
    report(benchmark, "ULPFEC encode+recover", k)


@pytest.mark.parametrize(("k", "m"), SHAPES)
def test_rs_encode_decode(benchmark, k: int, m: int):
    benchmark.group = f"fec-k{k}-m{m}"
    media = media_block(k)
    received = {struct.unpack("!H", p[2:4])[0]: p for p in media[m:]}   # burst of m lost

    def round_trip() -> list[bytes]:
        fecs = _native.rs_encode(media, k, m, 65530, FEC_PT, 0, FEC_SSRC)
        return _native.rs_decode(fecs, received, MEDIA_PT)

    assert round_trip() == media[:m]
    benchmark(round_trip)
    report(benchmark, "SFU-RS encode+decode (api)", k)


@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "table"])
@pytest.mark.parametrize(("k", "m"), SHAPES)
def test_rs_kernel(benchmark, k: int, m: int, simd: bool):
    benchmark.group = f"fec-k{k}-m{m}"
    was = _native._rs_simd()
    if simd and not _native._rs_simd(True):
        simd = False      # no AVX2 on this CPU: this row measures the table kernel too
    media = media_block(k)
    base_ts = struct.unpack("!I", media[0][4:8])[0]
    L = SIZE - 4
    prefixes = b"".join(bytes([p[0], p[1] & 0x80]) + struct.pack(
        "!HI", len(p) - 12, (struct.unpack("!I", p[4:8])[0] - base_ts) & 0xFFFFFFFF)
        for p in media)
    images = [prefixes[8 * i:8 * i + 8] + p[12:] for i, p in enumerate(media)]
    bodies = [p[12:] for p in media]
    mask = ((1 << k) - 1) << (64 - k)  # wire convention: bit 63 - i = packet i
    held = [None] * m + images[m:]

    def round_trip() -> dict[int, bytes] | None:
        par = _native._rs_parity_rows(prefixes, bodies, mask, k, 0, m, L)
        rows = [par[j * L:(j + 1) * L] for j in range(m)]
        return _native._rs_recover(k, mask, held, list(range(m)), rows, L)

    try:
        _native._rs_simd(simd)
        assert round_trip() == {i: images[i] for i in range(m)}
        benchmark(round_trip)
    finally:
        _native._rs_simd(was)
    report(benchmark, f"SFU-RS encode+decode (kernel, {'avx2' if simd else 'table'})", k)

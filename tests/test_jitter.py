"""Native jitter buffer: reorder, duplicates, wraparound, frame assembly (VP8, H.264 FU-A,
Opus), loss and keyframe accounting, FEC-recovered packets, NACK holes, adaptive delay and
malformed input. Fake clock, seeded randomness."""

import random
import struct

import pytest

from sfu._native import ACCEPTED, DUPLICATE, LATE, MALFORMED, JitterBuffer

VP8_KEY = bytes([0x10, 0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A]) + b"k" * 20  # S=1, P=0
VP8_DELTA = bytes([0x10, 0x01]) + b"d" * 20  # S=1, P=1
VP8_CONT = bytes([0x00]) + b"c" * 20  # S=0


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False, pt: int = 96) -> bytes:
    return (
        struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234
        )
        + payload
    )


def vp8_frame(seq: int, ts: int, n: int, key: bool) -> list[bytes]:
    """n packets: the first starts the frame, the last carries the marker."""
    first = VP8_KEY if key else VP8_DELTA
    return [
        rtp(seq + i, ts, (first if i == 0 else VP8_CONT) + bytes([i]), marker=i == n - 1)
        for i in range(n)
    ]


def test_in_order_frames_held_for_target_delay() -> None:
    jb = JitterBuffer(90000, "vp8", min_delay=0.05)
    pkts = vp8_frame(100, 3000, 3, True)
    for p in pkts:
        assert jb.insert(p, 0.0) == ACCEPTED
    assert jb.pop(0.01) == []  # complete but not yet due
    out = jb.pop(0.06)
    assert len(out) == 1
    ts, key, payloads, complete = out[0]
    assert (ts, key, complete) == (3000, True, True)
    assert payloads == [p[12:] for p in pkts]
    s = jb.stats()
    assert s["frames_emitted"] == 1 and s["received"] == 3 and s["packets_lost"] == 0


def test_reordered_and_duplicated_input() -> None:
    rng = random.Random(7)
    jb = JitterBuffer(90000, "vp8", min_delay=0.05)
    frames = [vp8_frame(1000 + 4 * i, 3000 * i, 4, i == 0) for i in range(10)]
    pkts = [p for f in frames for p in f]
    shuffled = pkts[:]
    rng.shuffle(shuffled)
    dups = rng.sample(pkts, 5)
    for p in shuffled:
        assert jb.insert(p, 0.0) == ACCEPTED
    for p in dups:
        assert jb.insert(p, 0.001) == DUPLICATE
    out = jb.pop(1.0)
    assert [f[0] for f in out] == [3000 * i for i in range(10)]
    assert all(f[3] for f in out)
    assert [f[2] for f in out] == [[p[12:] for p in f] for f in frames]
    s = jb.stats()
    assert s["duplicates"] == 5 and s["frames_emitted"] == 10 and s["frames_lost"] == 0
    assert jb.insert(pkts[3], 1.1) == LATE and jb.stats()["late"] == 1


def test_sequence_wraparound() -> None:
    jb = JitterBuffer(48000, "opus")
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]
    order = list(range(12))
    order[5], order[6] = order[6], order[5]  # reorder across 65535 -> 0
    for i in order:
        ts = (0xFFFFF000 + 960 * i) & 0xFFFFFFFF  # timestamps wrap too
        assert jb.insert(rtp(seqs[i], ts, b"o" + bytes([i]), marker=True), 0.0) == ACCEPTED
    out = jb.pop(1.0)
    assert [f[0] for f in out] == [(0xFFFFF000 + 960 * i) & 0xFFFFFFFF for i in range(12)]
    assert [f[2] for f in out] == [[b"o" + bytes([i])] for i in range(12)]
    assert jb.stats()["frames_emitted"] == 12 and jb.missing(1.0) == []


def test_recovered_packet_fills_hole_before_deadline() -> None:
    jb = JitterBuffer(90000, "vp8", min_delay=0.1)
    pkts = vp8_frame(10, 0, 3, True)
    jb.insert(pkts[0], 0.0)
    jb.insert(pkts[2], 0.0)
    assert jb.missing(0.01) == [11]
    assert jb.pop(0.05) == []
    assert jb.insert(pkts[1], 0.06, recovered=True) == ACCEPTED
    out = jb.pop(0.2)
    assert len(out) == 1 and out[0][3] is True and len(out[0][2]) == 3
    s = jb.stats()
    assert s["recovered"] == 1 and s["frames_lost"] == 0 and s["packets_lost"] == 0
    assert not jb.keyframe_needed


def test_unfilled_hole_loses_frame_and_requests_keyframe() -> None:
    jb = JitterBuffer(90000, "vp8", min_delay=0.05, max_delay=0.05)
    f0 = vp8_frame(0, 0, 3, True)
    f1 = vp8_frame(3, 3000, 3, False)
    f2 = vp8_frame(6, 6000, 2, False)
    f3 = vp8_frame(8, 9000, 2, True)
    for p in f0 + [f1[0], f1[2]] + f2:
        jb.insert(p, 0.0)
    out = jb.pop(0.1)
    assert [(f[0], f[3]) for f in out] == [(0, True), (3000, False), (6000, True)]
    s = jb.stats()
    assert s["frames_lost"] == 1 and s["packets_lost"] == 1 and s["keyframe_requests"] == 1
    assert jb.keyframe_needed
    assert jb.insert(f1[1], 0.11) == LATE
    for p in f3:
        jb.insert(p, 0.2)
    out = jb.pop(0.3)
    assert out[0][1] is True and out[0][3] is True
    assert not jb.keyframe_needed
    assert jb.stats()["keyframe_requests"] == 1


def test_missing_lists_exactly_the_holes() -> None:
    jb = JitterBuffer(90000, "vp8", min_delay=0.1)
    pkts = [p for i in range(5) for p in vp8_frame(65530 + 3 * i, 3000 * i, 3, i == 0)]
    holes = {2, 5, 6, 11}
    for i, p in enumerate(pkts):
        if i not in holes:
            jb.insert(p, 0.0)
    assert jb.missing(0.0) == [(65530 + i) & 0xFFFF for i in sorted(holes)]
    jb.pop(0.2)  # frames 0..3 are due; holes before the playout point are no longer listed
    assert jb.missing(0.2) == []


def test_adaptive_delay_grows_and_shrinks_within_bounds() -> None:
    rng = random.Random(3)
    jb = JitterBuffer(90000, "vp8", min_delay=0.02, max_delay=0.3)
    assert jb.target_delay == pytest.approx(0.02)
    seq, t = 0, 0.0
    for i in range(100):  # steady: floor holds
        jb.insert(rtp(seq, 3000 * i, VP8_KEY, marker=True), t)
        seq, t = seq + 1, t + 1 / 30
    assert jb.target_delay == pytest.approx(0.02)
    for i in range(100, 200):  # up to 150 ms of jitter
        jb.insert(rtp(seq, 3000 * i, VP8_DELTA, marker=True), t + rng.uniform(0, 0.15))
        seq, t = seq + 1, t + 1 / 30
    grown = jb.target_delay
    assert 0.08 < grown <= 0.3
    for i in range(200, 300):  # huge jitter: ceiling holds
        jb.insert(rtp(seq, 3000 * i, VP8_DELTA, marker=True), t + rng.uniform(0, 1.0))
        seq, t = seq + 1, t + 1 / 30
    assert jb.target_delay == pytest.approx(0.3)
    t += 1.0
    for i in range(300, 500):  # calm again: back to the floor
        jb.insert(rtp(seq, 3000 * i + 90000, VP8_DELTA, marker=True), t)
        seq, t = seq + 1, t + 1 / 30
    assert jb.target_delay == pytest.approx(0.02)


def test_opus_every_packet_is_a_frame_and_losses_need_no_keyframe() -> None:
    jb = JitterBuffer(48000, "opus", min_delay=0.02, max_delay=0.02)
    for i in (0, 1, 3):
        jb.insert(rtp(500 + i, 960 * i, bytes([0xFC, i])), 0.0)
    out = jb.pop(0.05)
    assert [(f[0], f[2], f[3]) for f in out] == [
        (0, [bytes([0xFC, 0])], True),
        (960, [bytes([0xFC, 1])], True),
        (2880, [bytes([0xFC, 3])], True),
    ]
    s = jb.stats()
    assert s["packets_lost"] == 1 and s["keyframe_requests"] == 0 and not jb.keyframe_needed


def test_h264_fu_a_frame_assembled() -> None:
    jb = JitterBuffer(90000, "h264", min_delay=0.02)
    sps = bytes([0x67, 0x42, 0x00, 0x1F])
    pps = bytes([0x68, 0xCE, 0x3C, 0x80])
    stap = bytes([0x78]) + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    fu = [
        bytes([0x7C, 0x85]) + b"a" * 30,
        bytes([0x7C, 0x05]) + b"b" * 30,
        bytes([0x7C, 0x45]) + b"c" * 30,
    ]
    pkts = [rtp(7, 1000, stap)] + [rtp(8 + i, 1000, f, marker=i == 2) for i, f in enumerate(fu)]
    for p in reversed(pkts):
        assert jb.insert(p, 0.0) == ACCEPTED
    out = jb.pop(0.1)
    assert out == [(1000, True, [stap] + fu, True)]
    # a delta frame (NAL 1) whose middle fragment is lost: incomplete, keyframe needed
    delta = [bytes([0x5C, 0x81]) + b"x", bytes([0x5C, 0x01]) + b"y", bytes([0x5C, 0x41]) + b"z"]
    jb.insert(rtp(11, 4000, delta[0]), 0.2)
    jb.insert(rtp(13, 4000, delta[2], marker=True), 0.2)
    out = jb.pop(0.5)
    assert [(f[1], f[3]) for f in out] == [(False, False)] and jb.keyframe_needed


def test_malformed_inputs_of_many_lengths_never_raise() -> None:
    rng = random.Random(11)
    for codec in ("vp8", "h264", "opus"):
        jb = JitterBuffer(90000, codec)
        bad = 0
        for n in range(0, 40):
            assert jb.insert(bytes(n), 0.0) == MALFORMED  # version 0 / short
            bad += 1
        assert jb.insert(rtp(1, 0, b""), 0.0) == MALFORMED  # empty payload
        assert jb.insert(rtp(1, 0, b"x" * 3000), 0.0) == MALFORMED  # over the slot size
        assert jb.insert("not bytes", 0.0) == MALFORMED
        bad += 3
        if codec == "vp8":
            assert jb.insert(rtp(1, 0, bytes([0x90, 0x80])), 0.0) == MALFORMED  # I, no PID
            bad += 1
        if codec == "h264":
            for p in (bytes([0x7C]), bytes([0x78, 0x00, 0x09, 0x67]), bytes([0x80])):
                assert jb.insert(rtp(1, 0, p), 0.0) == MALFORMED
                bad += 1
        assert jb.stats()["malformed"] == bad
        for _ in range(2000):  # random junk
            b = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
            assert jb.insert(b, rng.uniform(0, 5)) in (ACCEPTED, DUPLICATE, LATE, MALFORMED)
            jb.pop(rng.uniform(0, 5))
            jb.missing(0.0)


def test_capacity_overflow_is_counted_and_recovers() -> None:
    jb = JitterBuffer(90000, "vp8", capacity=64, min_delay=0.02)
    for p in vp8_frame(0, 0, 3, True):
        jb.insert(p, 0.0)
    jb.insert(rtp(3, 3000, VP8_DELTA), 0.0)  # frame left open
    assert jb.insert(vp8_frame(1000, 9000, 1, True)[0], 0.1) == ACCEPTED  # jump > capacity
    s = jb.stats()
    assert s["overflows"] == 1 and jb.keyframe_needed
    assert len(jb.missing(0.1)) == 0
    for p in vp8_frame(1001, 12000, 2, False):
        jb.insert(p, 0.1)
    out = jb.pop(0.5)
    assert [(f[0], f[3]) for f in out] == [(9000, True), (12000, True)]
    assert not jb.keyframe_needed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 1000},
        {"capacity": 8},
        {"codec": "av1"},
        {"clock_rate": 0},
        {"min_delay": 0.5, "max_delay": 0.1},
        {"percentile": 0.0},
    ],
)
def test_bad_construction_raises_value_error(kwargs: dict) -> None:
    args = {"clock_rate": 90000, "codec": "vp8"} | kwargs
    with pytest.raises(ValueError):
        JitterBuffer(**args)


def test_frame_missing_its_first_packet_is_incomplete() -> None:
    jb = JitterBuffer(90000, "vp8", min_delay=0.05, max_delay=0.05)
    f0 = vp8_frame(0, 0, 2, True)
    f1 = vp8_frame(2, 3000, 3, False)
    for p in f0 + f1[1:]:  # f1's S=1 packet never arrives; the rest is contiguous with M
        jb.insert(p, 0.0)
    assert jb.missing(0.0) == [2]
    out = jb.pop(0.1)
    assert [(f[0], f[3]) for f in out] == [(0, True), (3000, False)]
    assert out[1][2] == [p[12:] for p in f1[1:]]
    s = jb.stats()
    assert s["frames_lost"] == 1 and s["packets_lost"] == 1 and jb.keyframe_needed

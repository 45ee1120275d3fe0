"""TwccFeedback (sfu/client/twcc.py): feedback built from recorded arrivals round-trips
through the native RTCP parser with every arrival within 250 µs and lost seqs as None."""

from __future__ import annotations

import random

import pytest

from sfu import _native
from sfu.client.twcc import MAX_STATUSES, TwccFeedback, decode_feedback

SENDER, MEDIA = 0x5EED0001, 0xC0FFEE01


def parse(packets: list[bytes]) -> list[dict[str, object]]:
    out = []
    for raw in packets:
        fbs = _native.parse_rtcp(raw)
        assert len(fbs) == 1 and fbs[0]["type"] == "twcc"
        assert fbs[0]["sender_ssrc"] == SENDER and fbs[0]["media_ssrc"] == MEDIA
        out.append(fbs[0])
    return out


def reported(tw: TwccFeedback, packets: list[bytes]) -> list[tuple[int, float | None]]:
    """(seq, arrival since the feedback's epoch or None) in report order."""
    out: list[tuple[int, float | None]] = []
    for fb in parse(packets):
        out.extend(decode_feedback(fb).items())
    return out


def check_times(got: list[tuple[int, float | None]], truth: dict[int, float],
                epoch: float) -> None:
    for seq, t in got:
        if seq in truth:
            assert t is not None, f"seq {seq} arrived but reported lost"
            assert abs(t - (truth[seq] - epoch)) <= 0.00025, (seq, t, truth[seq] - epoch)
        else:
            assert t is None, f"seq {seq} never arrived but reported received"


def test_round_trip_with_losses() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    t0 = 1000.0123
    truth = {}
    for i in range(40):
        if i in (3, 4, 17):
            continue
        truth[100 + i] = t0 + i * 0.0031
        tw.record(100 + i, truth[100 + i])
    got = reported(tw, tw.build(t0 + 0.2))
    assert [s for s, _ in got] == list(range(100, 140))
    assert tw.epoch == t0
    check_times(got, truth, t0)
    assert tw.build(t0 + 0.3) == []  # nothing new


def test_fb_count_and_base_follow_on() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    seen = []
    for round_ in range(300):  # fb_count wraps at 256
        tw.record(round_, 5.0 + round_ * 0.05)
        seen.extend(parse(tw.build(5.0 + round_ * 0.05 + 0.01)))
    assert [fb["fb_count"] for fb in seen] == [i % 256 for i in range(300)]
    assert [fb["base_seq"] for fb in seen] == list(range(300))


def test_wrap_at_65535() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    truth = {}
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]
    for i, s in enumerate(seqs):
        if i == 7:
            continue  # seq 1 lost
        truth[s] = 3.0 + i * 0.001
        tw.record(s, truth[s])
    packets = tw.build(3.1)
    fb = parse(packets)[0]
    assert fb["base_seq"] == 65530 and fb["status_count"] == 12
    got = reported(tw, packets)
    assert [s for s, _ in got] == seqs
    check_times(got, truth, 3.0)
    # the next feedback continues after the wrap
    tw.record(6, 3.2)
    fb2 = parse(tw.build(3.3))[0]
    assert fb2["base_seq"] == 6 and fb2["status_count"] == 1


def test_reordering_places_each_arrival_right() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    order = [10, 12, 11, 15, 13, 14, 17, 16]
    truth = {}
    for i, s in enumerate(order):
        truth[s] = 7.0 + i * 0.002
        tw.record(s, truth[s])
    got = reported(tw, tw.build(7.1))
    assert [s for s, _ in got] == list(range(10, 18))
    check_times(got, truth, 7.0)  # later seqs that came earlier have negative deltas


def test_reordered_before_first_packet() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    tw.record(500, 1.0)
    tw.record(498, 1.001)
    tw.record(499, 1.002)
    got = reported(tw, tw.build(1.1))
    assert [s for s, _ in got] == [498, 499, 500]
    check_times(got, {500: 1.0, 498: 1.001, 499: 1.002}, 1.0)


def test_duplicates_keep_first_arrival() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    tw.record(1, 2.0)
    tw.record(2, 2.010)
    tw.record(2, 2.020)  # duplicate
    tw.record(3, 2.030)
    got = reported(tw, tw.build(2.1))
    check_times(got, {1: 2.0, 2: 2.010, 3: 2.030}, 2.0)
    assert tw.duplicates == 1
    tw.record(3, 2.2)  # duplicate of an already reported seq: not reported again
    assert tw.build(2.3) == []


def test_late_packet_reported_again_as_received() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    for s in (1, 2, 4, 5):
        tw.record(s, 1.0 + s * 0.01)
    first = reported(tw, tw.build(1.1))
    assert dict(first)[3] is None
    tw.record(3, 1.12)  # late: already reported lost
    tw.record(6, 1.13)
    got = reported(tw, tw.build(1.15))
    assert [s for s, _ in got] == [3, 4, 5, 6]
    check_times(got, {3: 1.12, 4: 1.04, 5: 1.05, 6: 1.13}, 1.01)


def test_split_when_too_many_statuses() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    truth = {}
    n = 2 * MAX_STATUSES + 321
    for i in range(n):
        if i % 9 == 4:
            continue
        truth[i] = 10.0 + i * 0.0004
        tw.record(i, truth[i])
    packets = tw.build(12.0)
    assert len(packets) >= 3
    fbs = parse(packets)
    assert all(int(fb["status_count"]) <= MAX_STATUSES for fb in fbs)  # type: ignore[call-overload]
    assert all(len(p) <= 1500 for p in packets)
    assert [fb["fb_count"] for fb in fbs] == list(range(len(fbs)))
    got = reported(tw, packets)
    assert [s for s, _ in got] == list(range(n))
    check_times(got, truth, 10.0)


def test_split_when_delta_out_of_int16_range() -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    truth = {1: 4.0, 2: 4.001, 3: 14.0, 4: 14.5}  # 10 s jump: not representable in 250 µs
    for s, t in truth.items():
        tw.record(s, t)
    packets = tw.build(15.0)
    assert len(packets) == 2
    got = reported(tw, packets)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    check_times(got, truth, 4.0)


def test_due_every_interval() -> None:
    tw = TwccFeedback(SENDER, MEDIA, interval=0.05)
    assert tw.due(100.0)
    tw.build(100.0)
    assert not tw.due(100.049)
    assert tw.due(100.05)


def test_three_seconds_300pps_5pct_loss() -> None:
    rng = random.Random(4)
    tw = TwccFeedback(SENDER, MEDIA)
    truth: dict[int, float] = {}
    reports: list[tuple[int, float | None]] = []
    t, seq, next_fb = 50.0, 65000, 50.05
    lost_late: list[tuple[float, int]] = []
    for _ in range(900):
        t += 1 / 300 + rng.uniform(-0.0005, 0.0005)
        s = seq & 0xFFFF
        seq += 1
        r = rng.random()
        if r < 0.05:
            pass  # lost for good
        elif r < 0.07:
            lost_late.append((t + 0.02, s))  # reordered by 20 ms
        else:
            truth[s] = t
            tw.record(s, t)
        for item in [x for x in lost_late if x[0] <= t]:
            lost_late.remove(item)
            truth[item[1]] = item[0]
            tw.record(item[1], item[0])
        if t >= next_fb:
            reports.extend(reported(tw, tw.build(t)))
            next_fb = t + 0.05
    reports.extend(reported(tw, tw.build(t + 1)))
    final: dict[int, float | None] = {}
    for s, at in reports:
        if at is not None or s not in final:
            final[s] = at
    assert set(final) == {(65000 + i) & 0xFFFF for i in range(900)}
    epoch = tw.epoch
    assert epoch is not None
    for s, at in final.items():
        if s in truth:
            assert at is not None and abs(at - (truth[s] - epoch)) <= 0.00025
        else:
            assert at is None
    lost = sum(1 for v in final.values() if v is None)
    assert 20 <= lost <= 80  # ~5 % of 900


@pytest.mark.parametrize("seq", [0, 1, 0x7FFF, 0x8000, 0xFFFF])
def test_any_start_seq(seq: int) -> None:
    tw = TwccFeedback(SENDER, MEDIA)
    tw.record(seq, 0.5)
    tw.record((seq + 2) & 0xFFFF, 0.51)
    got = reported(tw, tw.build(0.6))
    assert got[0] == (seq, 0.0) and got[1][1] is None

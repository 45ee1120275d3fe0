"""Native GCC bandwidth estimator (native/bwe.pxi) through its test wrapper GccEstimator:
transport-cc FCI decoding (every chunk kind, delta sizes, wraps), malformed feedback, and the
estimator's behaviour on a deterministic simulated bottleneck (fake clock, drop-tail queue
drained at capacity, 20 ms propagation, feedback every 50 ms)."""

import heapq
import random
import struct
from dataclasses import dataclass, field

import pytest

from sfu import _native
from sfu._native import GccEstimator

PKT = 1200
WRAP_S = (1 << 24) * 0.064          # the reference time wraps after 2^24 x 64 ms


# ---- FCI helpers -----------------------------------------------------------------------------

def fci_of(rtcp: bytes) -> bytes:
    """The FCI of a transport-cc packet built by _native.build_twcc (padding stripped)."""
    if rtcp[0] & 0x20:
        rtcp = rtcp[:-rtcp[-1]]
    return rtcp[12:]


def twcc(base: int, ref: int, deltas: list[int | None], fb_count: int = 0) -> bytes:
    return fci_of(_native.build_twcc(1, 2, base & 0xFFFF, ref & 0xFFFFFF, fb_count, deltas))


def hand_fci(base: int, count: int, ref: int, chunks: list[int], delta_bytes: bytes) -> bytes:
    return (struct.pack(">HHI", base & 0xFFFF, count, ((ref & 0xFFFFFF) << 8) | 7)
            + b"".join(struct.pack(">H", c) for c in chunks) + delta_bytes)


def run_chunk(symbol: int, run: int) -> int:
    return (symbol << 13) | run


def one_bit_chunk(bits: list[int]) -> int:
    word = 0x8000
    for j, s in enumerate(bits):
        word |= s << (13 - j)
    return word


def two_bit_chunk(symbols: list[int]) -> int:
    word = 0xC000
    for j, s in enumerate(symbols):
        word |= s << (12 - 2 * j)
    return word


def reference_arrivals(fci: bytes) -> list[tuple[int, float | None]]:
    """Decode through parse_rtcp (the Python reference): [(seq, arrival seconds or None)]."""
    body = struct.pack(">BBHII", 0x80 | 15, 205, 0, 1, 2) + fci
    body += b"\x00" * (-len(body) % 4)
    body = body[:2] + struct.pack(">H", len(body) // 4 - 1) + body[4:]
    (fb,) = _native.parse_rtcp(body)
    ref = fb["ref_time"] & 0xFFFFFF
    ticks, out = 0, []
    for seq, status, delta in fb["packets"]:
        if status == 0:
            out.append((seq, None))
        else:
            ticks += delta
            out.append((seq, ref * 0.064 + ticks * 0.00025))
    return out


def expected_acked_bps(acked: list[tuple[float, int]]) -> float:
    """The acked-rate definition: arrivals of the last 250 ms (by the newest arrival, oldest
    pushed first dropped); bytes after the oldest over the span, the span being at least 80 %
    of the history (capped at 250 ms); unknown (0) below 3 packets or 20 ms."""
    window: list[tuple[float, int]] = []
    first, newest, rate = acked[0][0], acked[0][0], 0.0
    for arr, size in acked:
        window.append((arr, size))
        newest = max(newest, arr)
        while len(window) > 1 and window[0][0] < newest - 0.25:
            window.pop(0)
    if len(window) >= 3:
        denom = max(newest - window[0][0], 0.8 * min(newest - first, 0.25))
        if denom >= 0.02:
            rate = (sum(s for _, s in window) - window[0][1]) * 8 / denom
    return rate


def sizes_for(n: int) -> list[int]:
    return [500 + 37 * i for i in range(n)]


def fresh(n_sent: int, start_bps: float = 1e6) -> tuple[GccEstimator, list[int]]:
    est = GccEstimator(start_bps)
    sizes = sizes_for(n_sent)
    seqs = [est.sent(s, 0.001 * i) for i, s in enumerate(sizes)]
    assert seqs == list(range(n_sent))
    return est, sizes


# ---- decoding vectors ------------------------------------------------------------------------

DECODE_VECTORS = {
    # name: (fci, number of packets sent before it)
    "run_small": (hand_fci(0, 20, 100, [run_chunk(1, 20)], bytes([40] * 20)), 20),
    "run_large": (hand_fci(0, 6, 100, [run_chunk(2, 6)],
                           b"".join(struct.pack(">h", d) for d in (0, 400, 300, 500, 200, 100))),
                  6),
    "run_lost_then_small": (hand_fci(0, 12, 5, [run_chunk(0, 4), run_chunk(1, 8)],
                                     bytes([20, 30, 40, 50, 60, 70, 80, 90])), 12),
    "one_bit": (hand_fci(0, 14, 9, [one_bit_chunk([1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1])],
                         bytes([30, 40, 50, 60, 70, 80, 90, 20, 25, 35])), 14),
    "one_bit_partial": (hand_fci(0, 9, 9, [one_bit_chunk([1] * 9)], bytes([40] * 9)), 9),
    "two_bit_mixed": (hand_fci(0, 7, 3, [two_bit_chunk([1, 2, 0, 2, 1, 1, 0])],
                               bytes([10]) + struct.pack(">h", 600) + struct.pack(">h", -200)
                               + bytes([200, 255])), 7),
    "built_small": (twcc(0, 1000, [4 * i + 40 for i in range(30)]), 30),
    "built_mixed": (twcc(0, 1000, [40, None, 300, 2, None, 1000, 0, 255, 256, 12, None, 80]), 12),
    "built_negative": (twcc(0, 50, [800, 100, -60, 300, 200, -4, 400, 100]), 8),
    "mixed_chunk_kinds": (hand_fci(0, 30, 77,
                                   [run_chunk(1, 10), one_bit_chunk([1, 0] * 7),
                                    two_bit_chunk([2, 1, 0, 2, 1, 0, 0])],
                                   bytes([50] * 10) + bytes([60] * 7)
                                   + struct.pack(">h", 900) + bytes([30])
                                   + struct.pack(">h", 400) + bytes([30])), 30),
}


@pytest.mark.parametrize("name", list(DECODE_VECTORS))
def test_decode_vectors(name):
    fci, n_sent = DECODE_VECTORS[name]
    est, sizes = fresh(n_sent)
    ref = reference_arrivals(fci)
    assert est.feedback(fci, 1.0)
    acked = [(arr, sizes[seq]) for seq, arr in ref if arr is not None]
    assert est.packets_acked == len(acked)
    assert est.packets_lost == len(ref) - len(acked)
    assert est.malformed == 0 and est.feedbacks == 1
    # the arrival times reach the acked-rate window: it matches the reference decoding
    assert est.acked_bps == pytest.approx(expected_acked_bps(acked), rel=1e-9)


def test_padding_after_deltas_is_ignored():
    fci, n_sent = DECODE_VECTORS["built_mixed"]
    est, _ = fresh(n_sent)
    assert est.feedback(fci + b"\x00\x00\x03", 1.0)
    assert est.packets_acked == 9


# ---- malformed feedback ----------------------------------------------------------------------

GOOD = hand_fci(0, 7, 3, [two_bit_chunk([1, 2, 0, 2, 1, 1, 0])],
                bytes([10]) + struct.pack(">h", 600) + struct.pack(">h", -200) + bytes([20, 25]))

MALFORMED = {
    "empty": b"",
    "short_header": GOOD[:7],
    "zero_count": hand_fci(0, 0, 3, [], b""),
    "no_chunk": GOOD[:8],
    "half_chunk": GOOD[:9],
    "deltas_truncated": GOOD[:-1],
    "deltas_missing": GOOD[:10],
    "count_overruns_chunks": hand_fci(0, 20, 3, [run_chunk(1, 10)], b""),
    "count_overruns_deltas": hand_fci(0, 20, 3, [run_chunk(1, 10), run_chunk(2, 10)],
                                      bytes(10 + 19)),
    "huge_count": hand_fci(0, 65535, 3, [run_chunk(0, 8191)] * 3, b""),
    "huge_count_one_bit": hand_fci(0, 65535, 3, [one_bit_chunk([0] * 14)], b""),
    "reserved_two_bit": hand_fci(0, 7, 3, [two_bit_chunk([1, 3, 1, 1, 1, 1, 1])], bytes([10] * 6)),
    "reserved_run": hand_fci(0, 5, 3, [run_chunk(3, 5)], b""),
    "large_deltas_short": hand_fci(0, 4, 3, [run_chunk(2, 4)], bytes(7)),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_changes_nothing(name):
    est, _ = fresh(7)
    before = (est.estimate, est.acked_bps, est.packets_acked, est.packets_lost, est.feedbacks)
    assert est.feedback(MALFORMED[name], 1.0) is False
    assert est.malformed == 1
    assert (est.estimate, est.acked_bps, est.packets_acked, est.packets_lost,
            est.feedbacks) == before
    # the same packets are still pending: a good feedback after it acks them all
    assert est.feedback(GOOD, 1.05)
    assert (est.packets_acked, est.packets_lost, est.malformed) == (5, 2, 1)


def test_random_bytes_never_crash():
    rng = random.Random(4)
    est, _ = fresh(300)
    bad = 0
    for i in range(3000):
        blob = rng.randbytes(rng.randrange(0, 80))
        if rng.random() < 0.5 and len(blob) >= 4:
            blob = blob[:2] + struct.pack(">H", rng.randrange(1, 40)) + blob[4:]
        bad += not est.feedback(blob, 1.0 + i * 0.001)
    assert bad == est.malformed > 0
    assert est.packets_acked + est.packets_lost <= 300
    assert 5e4 <= est.estimate <= 5e7


def test_reserved_symbol_past_count_is_padding():
    # the unused symbols of the last two-bit chunk are padding: not validated
    est, _ = fresh(2)
    assert est.feedback(hand_fci(0, 2, 3, [two_bit_chunk([1, 1, 3, 3, 3, 3, 3])],
                                 bytes([5, 5])), 1.0)
    assert est.packets_acked == 2


# ---- sequence bookkeeping --------------------------------------------------------------------

def test_seq_wraps_and_feedback_base_unwraps():
    est = GccEstimator()
    for i in range(65534):
        est.sent(PKT, i * 1e-5)
    seqs = [est.sent(PKT, 1.0 + 0.002 * i) for i in range(6)]
    assert seqs == [65534, 65535, 0, 1, 2, 3]
    assert est.feedback(twcc(65534, 100, [40] * 6), 1.1)
    assert (est.packets_acked, est.packets_lost) == (6, 0)
    assert est.acked_bps == pytest.approx(5 * PKT * 8 / (5 * 40 * 0.00025))


def test_reference_time_wrap_keeps_arrivals_continuous():
    est = GccEstimator()
    for i in range(8):
        est.sent(PKT, 0.01 * i)
    # 4 packets 10 ms apart just before the wrap, 4 after: the window spans both feedbacks
    assert est.feedback(twcc(0, 0xFFFFFF, [0, 40, 40, 40]), 0.1)
    assert est.feedback(twcc(4, 0, [16, 40, 40, 40]), 0.15)
    # one 64 ms unit (256 ticks) later: ticks 0, 40, 80, 120, 272, 312, 352, 392
    assert est.acked_bps == pytest.approx(7 * PKT * 8 / (392 * 0.00025))
    assert est.packets_acked == 8


@pytest.mark.parametrize("case", ["never_sent", "too_old", "before_first"])
def test_feedback_for_unknown_packets_is_ignored(case):
    est = GccEstimator()
    n = {"never_sent": 10, "too_old": 3000, "before_first": 10}[case]
    for i in range(n):
        est.sent(PKT, i * 1e-4)
    base = {"never_sent": 10, "too_old": 0, "before_first": 65530}[case]
    assert est.feedback(twcc(base, 5, [None, 4, 4, 4, None]), 1.0)
    assert (est.packets_acked, est.packets_lost, est.malformed) == (0, 0, 0)


def test_overlapping_feedback_acks_once_and_late_arrival_undoes_loss():
    est = GccEstimator()
    for i in range(15):
        est.sent(PKT, 0.002 * i)
    assert est.feedback(twcc(0, 10, [8] * 3 + [None] + [8] * 6), 0.1)
    assert (est.packets_acked, est.packets_lost) == (9, 1)
    # overlaps 5..9 again (acked already) and brings seq 3 late
    assert est.feedback(twcc(3, 10, [100] + [8] * 11), 0.15)
    assert (est.packets_acked, est.packets_lost) == (15, 0)
    assert est.feedback(twcc(0, 10, [8] * 15), 0.2)           # full duplicate
    assert (est.packets_acked, est.packets_lost, est.feedbacks) == (15, 0, 3)


def test_probe_ids_and_untagged_clusters():
    est = GccEstimator()
    ids = [est.new_probe(0.0) for _ in range(3)]
    assert ids == [0, 1, 2]
    est.sent(PKT, 0.0, probe=77)       # unknown cluster: sent untagged, no crash
    assert est.probes == 0


# ---- simulated bottleneck --------------------------------------------------------------------

@dataclass
class Link:
    capacity: list[tuple[float, float]]          # (from time, bit/s), ascending
    delay: float = 0.020
    queue_s: float = 0.4                         # drop-tail when the queue exceeds this
    loss: float = 0.0
    seed: int = 7
    free_at: float = 0.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def rate(self, t: float) -> float:
        return [c for start, c in self.capacity if start <= t][-1]

    def arrival(self, t: float, size: int) -> float | None:
        start = max(t, self.free_at)
        if start - t > self.queue_s:
            return None                           # queue full
        self.free_at = start + size * 8 / self.rate(start)
        if self.loss and self.rng.random() < self.loss:
            return None                           # lost after the bottleneck
        return self.free_at + self.delay


class Sim:
    """Sender pacing 1200 B packets at the estimate through a Link; a receiver that sends
    transport-cc feedback every 50 ms; feedback takes `delay` back. All on a fake clock."""

    def __init__(self, link: Link, start_bps: float = 1e6, remote_offset: float = 1000.0,
                 min_bps: float = 5e4, max_bps: float = 5e7, send_bps: float | None = None,
                 pre_sent: int = 0):
        self.link = link
        self.est = GccEstimator(start_bps, min_bps, max_bps)
        for _ in range(pre_sent):                 # moves the transport-wide seq (never acked)
            self.est.sent(PKT, 0.0)
        self.seq_base = pre_sent
        self.remote_offset = remote_offset
        self.send_bps = send_bps                  # fixed media rate instead of the estimate
        self.now = 0.0
        self.next_send = 0.0
        self.next_fb = 0.05
        self.seq = 0                              # unwrapped
        self.sent_at: dict[int, float] = {}
        self.flight: list[tuple[float, int]] = []  # (arrival, seq), a heap
        self.received: dict[int, float] = {}
        self.fb_from = 0
        self.fb_count = 0
        self.replies: list[tuple[float, bytes, float]] = []
        self.trace: list[tuple[float, float]] = []
        self.states: list[tuple[float, int, float]] = []
        self.probe_queue: list[tuple[float, int]] = []   # (send time, cluster)

    def _send(self, t: float, probe: int = -1) -> None:
        self.est.sent(PKT, t, probe)
        self.sent_at[self.seq] = t
        arr = self.link.arrival(t, PKT)
        if arr is not None:
            heapq.heappush(self.flight, (arr, self.seq))
        self.seq += 1

    def probe(self, rate: float, packets: int = 10) -> int:
        """Queue a probe cluster of `packets` at `rate` starting now (media waits)."""
        cid = self.est.new_probe(self.now)
        gap = PKT * 8 / rate
        self.probe_queue = [(self.now + i * gap, cid) for i in range(packets)]
        self.next_send = max(self.next_send, self.now + packets * gap)
        return cid

    def _feedback(self, t: float) -> None:
        while self.flight and self.flight[0][0] <= t:
            arr, seq = heapq.heappop(self.flight)
            self.received[seq] = arr
        if not self.received:
            return
        last = max(self.received)
        if last < self.fb_from:
            return
        seqs = range(self.fb_from, last + 1)
        ticks = {s: round((self.received[s] + self.remote_offset) * 4000)
                 for s in seqs if s in self.received}
        first = ticks[min(ticks)]
        ref = first // 256
        prev, deltas = ref * 256, []
        for s in seqs:
            if s in ticks:
                deltas.append(ticks[s] - prev)
                prev = ticks[s]
            else:
                deltas.append(None)
        fci = twcc(self.seq_base + self.fb_from, ref, deltas, self.fb_count)
        rtt = 2 * self.link.delay + (self.received[last] - self.link.delay - self.sent_at[last])
        self.replies.append((t + self.link.delay, fci, rtt))
        self.fb_count += 1
        self.fb_from = last + 1
        self.received = {s: a for s, a in self.received.items() if s > last}

    def run(self, until: float) -> None:
        while True:
            t_probe = self.probe_queue[0][0] if self.probe_queue else float("inf")
            t_reply = self.replies[0][0] if self.replies else float("inf")
            t = min(self.next_send, self.next_fb, t_probe, t_reply)
            if t > until:
                self.now = until
                return
            self.now = t
            if t == t_reply:
                _, fci, rtt = self.replies.pop(0)
                assert self.est.feedback(fci, t, rtt)
                self.trace.append((t, self.est.estimate))
                self.states.append((t, self.est.state, self.est.slope))
            elif t == t_probe:
                _, cid = self.probe_queue.pop(0)
                self._send(t, cid)
            elif t == self.next_fb:
                self._feedback(t)
                self.next_fb += 0.05
            else:
                self._send(t)
                rate = self.send_bps or self.est.estimate
                self.next_send = t + PKT * 8 / rate

    def window(self, t0: float, t1: float) -> list[float]:
        return [e for t, e in self.trace if t0 <= t <= t1]


def test_start_and_clamps():
    assert GccEstimator(1e6).estimate == 1e6
    assert GccEstimator(9e7, 5e4, 5e7).estimate == 5e7
    assert GccEstimator(1e3, 5e4, 5e7).estimate == 5e4
    with pytest.raises(ValueError):
        GccEstimator(1e6, 5e6, 1e6)


@pytest.mark.parametrize("rate", [200e3, 2e6, 40e6])   # 40 Mbit/s overflows the 1024-entry window
def test_acked_rate_follows_the_delivered_rate(rate):
    sim = Sim(Link([(0.0, 100e6)]), start_bps=rate, send_bps=rate)
    sim.run(1.5)
    assert sim.est.acked_bps == pytest.approx(rate, rel=0.03)


def test_idle_sender_does_not_inflate():
    sim = Sim(Link([(0.0, 50e6)]), start_bps=1e6, send_bps=200e3)
    sim.run(8.0)
    assert sim.est.acked_bps == pytest.approx(200e3, rel=0.05)
    assert max(e for _, e in sim.trace) <= 1e6 * 1.01


def probe_policy(sim: Sim, until: float) -> None:
    """What the engine does at start: probe at 2x the estimate, again while probes succeed."""
    sim.run(0.1)
    sim.probe(2 * sim.est.estimate)
    while sim.now < until:
        before = sim.est.estimate
        sim.run(sim.now + 0.5)
        if sim.est.estimate > 1.3 * before:
            sim.probe(2 * sim.est.estimate)
        else:
            break


CONVERGENCE = {
    # name: (start_bps, initial probing, receiver clock offset, seqs used before)
    "probing_from_1M": (1e6, True, 1000.0, 0),
    "probing_from_300k_wraps": (3e5, True, WRAP_S - 3.0, 65536 - 2000),
    "no_probe_from_2M": (2e6, False, 1000.0, 0),
}


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_converges_under_3mbit_bottleneck(name):
    start, probing, offset, pre = CONVERGENCE[name]
    cap = 3e6
    sim = Sim(Link([(0.0, cap)]), start_bps=start, remote_offset=offset, pre_sent=pre)
    assert sim.est.estimate == start
    if probing:
        probe_policy(sim, 3.0)
    sim.run(20.0)
    settled = sim.window(10.0, 20.0)
    # the GCC sawtooth: overuse -> 0.85 x acked (the acked rate is the capacity), then a slow
    # additive climb back over the capacity
    assert 0.84 * cap <= min(settled) and max(settled) <= 1.10 * cap
    assert 0.88 * cap <= sum(settled) / len(settled) <= 1.0 * cap
    assert sim.est.acked_bps == pytest.approx(sim.est.estimate, rel=0.15)
    assert any(s == 1 for _, s, _ in sim.states)              # it found the capacity by delay
    if probing:
        assert sim.est.probes >= 2
        # with probing it is there within 3 s
        assert min(sim.window(3.0, 20.0)) >= 0.84 * cap


def test_capacity_drop_is_followed_within_a_second():
    sim = Sim(Link([(0.0, 3e6), (8.0, 0.8e6)]), start_bps=2.5e6)
    sim.run(8.0)
    assert sim.est.estimate >= 2.5e6
    sim.run(9.0)
    assert sim.est.estimate <= 0.9e6
    drop = [(t, s, slope) for t, s, slope in sim.states if 8.0 <= t <= 9.0]
    first_over = next(t for t, s, _ in drop if s == 1)
    assert first_over < 8.3 and all(slope > 0 for t, s, slope in drop if s == 1)
    sim.run(20.0)
    # recovers to the new capacity's sawtooth, never far above it
    assert 0.6e6 <= min(sim.window(12.0, 20.0)) and max(sim.window(9.0, 20.0)) <= 0.9e6
    assert any(s == 2 for t, s, _ in sim.states if t > 8.0)    # the queue drained


LOSS = {
    # loss rate: (estimate bound after 6 s relative to start, loss read-out range)
    0.20: ("below", 0.5, (0.15, 0.25)),
    0.01: ("above", 1.0, (0.0, 0.03)),
}


@pytest.mark.parametrize("loss", list(LOSS))
def test_random_loss_without_delay_growth(loss):
    direction, factor, (lo, hi) = LOSS[loss]
    start = 2e6
    sim = Sim(Link([(0.0, 50e6)], loss=loss, seed=11), start_bps=start)
    sim.run(6.0)
    assert lo <= sim.est.loss <= hi
    assert all(s == 0 for _, s, _ in sim.states)               # no delay signal at all
    if direction == "below":
        assert sim.est.estimate < factor * start
        assert sim.est.delay_bps > start                         # the loss bound did it
    else:
        assert sim.est.estimate > factor * start


def test_probe_through_uncapped_link_raises_to_probe_rate():
    sim = Sim(Link([(0.0, 50e6)]), start_bps=1e6)
    sim.run(2.0)
    e0 = sim.est.estimate
    sim.probe(2 * e0)
    sim.run(2.2)
    assert sim.est.probes == 1
    assert sim.est.probe_bps == pytest.approx(2 * e0, rel=0.05)
    assert sim.est.estimate == pytest.approx(2 * e0, rel=0.1)


def test_probe_through_capped_link_sets_capacity():
    cap = 3e6
    sim = Sim(Link([(0.0, cap)]), start_bps=2e6)
    sim.run(1.0)
    e0 = sim.est.estimate
    assert 2 * e0 > 1.2 * cap
    sim.probe(2 * e0)
    sim.run(1.2)
    assert sim.est.probes == 1
    assert sim.est.probe_bps == pytest.approx(0.95 * cap, rel=0.05)
    assert 0.85 * cap <= sim.est.estimate <= 1.0 * cap
    sim.run(4.0)
    assert 0.84 * cap <= min(sim.window(1.2, 4.0)) and max(sim.window(1.2, 4.0)) <= 1.1 * cap


def test_max_bps_caps_the_estimate():
    sim = Sim(Link([(0.0, 50e6)]), start_bps=2e6, max_bps=3e6)
    sim.run(8.0)
    assert max(e for _, e in sim.trace) == 3e6

"""Residual-loss models for NACK and erasure codes (see sfu/recovery.py for the policy).

Pure functions, no state. Residuals are fractions of media packets not available by the
playout deadline; see the formulas in sfu/recovery.py's docstring.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

RS_MAX_K = 64
RS_MAX_M = 16
ULPFEC_MAX_K = 16  # level-0 short mask (RFC 5109 §7.4)
RS_EXTRA_BYTES = 32  # FEC packet = media size + 12 RTP + 24 SFU-RS header - 4 (image vs RTP hdr)
ULPFEC_EXTRA_BYTES = 14  # 12 RTP + 10 FEC header + 4 level-0 header - 12 protected RTP header
CLEAN_LOSS = 0.005  # below this a link gets no FEC
NACK_RETRY_FACTOR = 1.2  # the client/node NACK generators retry every max(1.2 RTT, 10 ms)
NACK_MIN_RETRY_S = 0.010
NACK_MAX_ROUNDS = 10
REORDER_WAIT_S = 0.005  # a hole is NACKed after max(5 ms, 1.5 packet intervals)


def check_prob(name: str, p: float, hi_open: bool = True) -> float:
    if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 <= p <= 1.0) \
            or (hi_open and p >= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1{')' if hi_open else ']'}, "
                         f"got {p!r}")
    return float(p)


def erasure_bound(p: float) -> float:
    """Least redundancy (parity/media) an ideal erasure code needs at loss p."""
    p = check_prob("p", p)
    return p / (1.0 - p)


def nack_residual(p_fwd: float, p_back: float, rounds: int, copies: int = 1) -> float:
    """Residual loss with ``rounds`` NACK rounds: original lost and every round failed.
    ``copies``: each NACK and each retransmission sent that many times (spaced apart, so
    their losses are independent); a round then fails if every NACK or every copy is lost."""
    p_fwd, p_back = check_prob("p_fwd", p_fwd, False), check_prob("p_back", p_back, False)
    if rounds < 0 or copies < 1:
        raise ValueError(f"rounds must be >= 0 and copies >= 1, got {rounds}, {copies}")
    q = 1.0 - (1.0 - p_fwd ** copies) * (1.0 - p_back ** copies)
    return p_fwd * q ** rounds


def nack_rounds(budget_s: float, rtt_s: float, detect_s: float,
                retry_factor: float = NACK_RETRY_FACTOR, min_retry_s: float = NACK_MIN_RETRY_S,
                max_rounds: int = NACK_MAX_ROUNDS) -> int:
    """NACK rounds whose answer lands within ``budget_s`` of the packet's due arrival time.

    The hole is NACKed ``detect_s`` after the packet should have arrived; round i's NACK goes
    out at detect + (i-1)·retry and its retransmission lands one RTT later."""
    rtt = max(0.0, rtt_s)
    retry = max(retry_factor * rtt, min_retry_s)
    t = detect_s + rtt
    n = 0
    while n < max_rounds and t <= budget_s + 1e-9:
        n += 1
        t += retry
    return n


def rs_block_residual(p: float, k: int, m: int) -> float:
    """Exact residual of an (k+m, k) MDS code under i.i.d. loss p: a media packet stays lost
    iff it is lost and at least m of the other k+m-1 packets of the block are lost too."""
    p = check_prob("p", p, False)
    check_km(k, m, RS_MAX_K, RS_MAX_M, allow_zero_m=True)
    n1 = k + m - 1
    fail = sum(math.comb(n1, j) * p ** j * (1.0 - p) ** (n1 - j) for j in range(m, n1 + 1))
    return p * min(1.0, fail)


def ge_params(avg: float, mean_burst: float) -> tuple[float, float]:
    """(p_gb, p_bg) of the Gilbert channel (Bad loses all, Good none) with this mean loss and
    mean loss-run length; same parametrisation as bench/lossy_link.py."""
    a = check_prob("avg", avg)
    if not (math.isfinite(mean_burst) and mean_burst >= 1.0):
        raise ValueError(f"mean_burst must be >= 1, got {mean_burst!r}")
    p_bg = 1.0 / mean_burst
    p_gb = p_bg * a / (1.0 - a)
    if p_gb > 1.0 + 1e-12:
        raise ValueError(f"avg {a} is unreachable with mean_burst {mean_burst}")
    return min(p_gb, 1.0), p_bg


@lru_cache(maxsize=4096)  # ~7 KB per table; the policy revisits a few hundred links
def ge_table(p_gb: float, p_bg: float, kmax: int, mmax: int, keep: float = 1.0) -> np.ndarray:
    """table[k, m] = residual after RS decoding of a block of k media + m parity packets,
    for every 1 ≤ k ≤ kmax, 0 ≤ m ≤ mmax, on a Gilbert channel; exact, by a forward DP over
    (channel state, packets missing so far, capped at mmax+1) carrying both the probability
    and the expected number of missing media packets. All block sizes run at once (axis 0 =
    k). ``keep``: chance that a lost media packet is still missing when the decoder needs it
    (its NACK rounds all failed); retransmitted packets feed the decoder, parity is never
    retransmitted."""
    ks = np.arange(1, kmax + 1)
    T = mmax + 2  # missing 0..mmax, and "more than mmax"
    pi_b = p_gb / (p_gb + p_bg) if p_gb + p_bg > 0 else 0.0
    # P[k, s, t]: probability; W[k, s, t]: E[missing media · 1{state}] (s: 0 = Good, 1 = Bad)
    P = np.zeros((kmax, 2, T))
    W = np.zeros((kmax, 2, T))
    P[:, 0, 0] = 1.0 - pi_b
    P[:, 1, 0] = pi_b
    out = np.zeros((kmax + 1, mmax + 1))
    stay = np.array([[1.0 - p_gb, p_gb], [p_bg, 1.0 - p_bg]])  # stay[s_from, s_to]
    for j in range(kmax + mmax):
        media = (j < ks)[:, None]  # position j is a media packet of block k
        miss = np.where(media, keep, 1.0)  # a packet lost in Bad stays missing
        active = (j < ks + mmax)[:, None, None]
        # draw with the current state (Good never loses, Bad always: Gilbert), then move
        pb, wb = P[:, 1, :], W[:, 1, :]
        gain = np.where(media, pb, 0.0)  # one more missing media packet
        nP = np.empty_like(P)
        nW = np.empty_like(W)
        nP[:, 0, :] = P[:, 0, :]
        nW[:, 0, :] = W[:, 0, :]
        nP[:, 1, :] = pb * (1.0 - miss)
        nW[:, 1, :] = wb * (1.0 - miss)
        nP[:, 1, 1:] += pb[:, :-1] * miss
        nP[:, 1, -1] += pb[:, -1] * miss[:, 0]
        nW[:, 1, 1:] += (wb[:, :-1] + gain[:, :-1]) * miss
        nW[:, 1, -1] += (wb[:, -1] + gain[:, -1]) * miss[:, 0]
        P = np.where(active, np.einsum("kst,su->kut", nP, stay), P)
        W = np.where(active, np.einsum("kst,su->kut", nW, stay), W)
        # block k ends after its media and m = j+1-k parity packets: residual for that m
        for k in range(max(1, j + 1 - mmax), min(kmax, j + 1) + 1):
            m = j + 1 - k
            if 0 <= m <= mmax:
                out[k, m] = W[k - 1].sum(axis=0)[m + 1:].sum() / k
    return out


def rs_residual_ge(avg: float, mean_burst: float, k: int, m: int) -> float:
    """Exact residual after SFU-RS decoding on a Gilbert–Elliott channel (loss in Bad = 1,
    in Good = 0) with mean loss ``avg`` and mean loss-run ``mean_burst`` (Markov-chain DP)."""
    check_km(k, m, RS_MAX_K, RS_MAX_M, allow_zero_m=True)
    if avg == 0.0:
        return 0.0
    p_gb, p_bg = ge_params(avg, mean_burst)
    return float(ge_table(p_gb, p_bg, k, m)[k, m])


def check_km(k: int, m: int, kmax: int, mmax: int, allow_zero_m: bool = False) -> None:
    if not (isinstance(k, int) and 1 <= k <= kmax):
        raise ValueError(f"k must be in 1..{kmax}, got {k!r}")
    lo = 0 if allow_zero_m else 1
    if not (isinstance(m, int) and lo <= m <= mmax):
        raise ValueError(f"m must be in {lo}..{mmax}, got {m!r}")

"""Loss-recovery policy: models of residual loss and the per-viewer plan (NACK, FEC rate).

Pure: no I/O, no clock (time is passed in), no engine. The node feeds a ``LinkEstimate`` per
downtrack from the viewer's feedback (RR loss fraction and RTT, NACKed sequence runs, packet
counters) and asks a ``RecoveryPolicy`` for the ``Plan`` to apply; ``BlockSizer`` sizes the
SFU-RS block of each source (k is per source, m per viewer).

Models (all residuals are fractions of media packets not available by the playout deadline):

- ``erasure_bound(p) = p / (1 - p)``: the least redundancy any erasure code needs at loss p.
- NACK: a packet is lost after recovery if the original and every round fail; a round fails if
  the NACK (viewer → node, ``p_back``) or the retransmission (node → viewer, ``p_fwd``) is lost:
  ``p_fwd * (1 - (1 - p_fwd)(1 - p_back)) ** rounds``. Rounds are the retries that land inside
  the playout budget: the i-th NACK goes out at ``detect + (i-1) * retry`` and its answer lands
  one RTT later (retry = max(1.2 RTT, 10 ms), the client's NACK generator timing).
- SFU-RS (MDS, k media + m parity, sent media first): a media packet is lost after decoding iff
  it is lost and more than m of the k+m packets of its block are lost. Exact for i.i.d. loss
  (binomial) and for Gilbert–Elliott loss (a dynamic program over the block's Markov chain).
  A Gilbert channel with mean loss-run length 1/(1-p) *is* i.i.d. loss, so one DP serves both.
- FEC with NACK, jointly (``residual``): holes are NACKed as soon as they are seen and
  retransmissions feed the decoder, so a media packet stays lost iff its NACK rounds failed
  and more than m packets of its block are still missing. (Treating them in sequence, FEC
  first and NACK on what it left, overstated it by an order of magnitude in bench/loss.py.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from sfu.loss_models import (
    CLEAN_LOSS,
    NACK_MIN_RETRY_S,
    NACK_RETRY_FACTOR,
    REORDER_WAIT_S,
    RS_EXTRA_BYTES,
    RS_MAX_K,
    RS_MAX_M,
    ULPFEC_EXTRA_BYTES,
    ULPFEC_MAX_K,
    check_km,
    check_prob,
    erasure_bound,
    ge_params,
    ge_table,
    nack_residual,
    nack_rounds,
    rs_block_residual,
    rs_residual_ge,
)

FecScheme = Literal["off", "rs", "ulpfec"]
FecRequest = Literal["auto", "off", "rs", "ulpfec"]



# ---- plan and link -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Plan:
    """What a downtrack does about loss: NACK answering, and FEC scheme with k media + m
    parity per block (k = m = 0 when fec is "off")."""

    nack: bool = True
    fec: FecScheme = "off"
    k: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.fec == "off":
            if self.k or self.m:
                raise ValueError("fec 'off' takes k = m = 0")
        elif self.fec == "rs":
            check_km(self.k, self.m, RS_MAX_K, RS_MAX_M)
        elif self.fec == "ulpfec":
            check_km(self.k, self.m, ULPFEC_MAX_K, 1)
        else:
            raise ValueError(f"fec must be 'off', 'rs' or 'ulpfec', got {self.fec!r}")

    @property
    def rate(self) -> float:
        """Parity packets per media packet (m/k)."""
        return self.m / self.k if self.k else 0.0


@dataclass(frozen=True, slots=True)
class Link:
    """A snapshot of one direction toward a viewer (what the models need)."""

    loss: float  # node → viewer packet loss, long-run fraction (before recovery)
    rtt_s: float = 0.1
    mean_burst: float | None = None  # mean run of consecutive losses; None = i.i.d.
    back_loss: float | None = None  # viewer → node (NACKs); None = same as loss
    pps: float = 200.0  # media packets per second on the downtrack
    packet_bytes: float = 1000.0  # mean media RTP packet size
    loss_sd: float = 0.0  # standard error of ``loss`` (estimator noise)

    def __post_init__(self) -> None:
        check_prob("loss", self.loss)
        if self.back_loss is not None:
            check_prob("back_loss", self.back_loss)
        check_prob("loss_sd", self.loss_sd)
        for name, v, lo in (("rtt_s", self.rtt_s, 0.0), ("pps", self.pps, 1e-9),
                            ("packet_bytes", self.packet_bytes, 1.0)):
            if not (math.isfinite(v) and v >= lo):
                raise ValueError(f"{name} must be >= {lo}, got {v!r}")
        if self.mean_burst is not None and not (math.isfinite(self.mean_burst)
                                                and self.mean_burst >= 1.0):
            raise ValueError(f"mean_burst must be >= 1, got {self.mean_burst!r}")

    @property
    def burst(self) -> float:
        """Mean loss run used by the models: never below i.i.d.'s 1/(1-p)."""
        iid = 1.0 / (1.0 - self.loss)
        return iid if self.mean_burst is None else max(self.mean_burst, iid)

    @property
    def p_back(self) -> float:
        return self.loss if self.back_loss is None else self.back_loss

    def detect_s(self) -> float:
        """From a burst's first packet being due to its NACK: the burst, then the reorder wait."""
        return self.burst / self.pps + max(REORDER_WAIT_S, 1.5 / self.pps)


def overhead(plan: Plan, link: Link) -> float:
    """FEC bytes per media byte of this plan on this link (parity carries a header too)."""
    if plan.fec == "off":
        return 0.0
    extra = RS_EXTRA_BYTES if plan.fec == "rs" else ULPFEC_EXTRA_BYTES
    return plan.rate * (link.packet_bytes + extra) / link.packet_bytes


def fec_residual(plan: Plan, link: Link) -> float:
    """Residual after FEC alone (no NACK)."""
    return _fec_table(plan, link, 1.0)


def _fec_table(plan: Plan, link: Link, keep: float) -> float:
    if plan.fec == "off" or link.loss == 0.0:
        return link.loss * keep
    p_gb, p_bg = ge_params(link.loss, link.burst)
    kmax, mmax = (RS_MAX_K, RS_MAX_M) if plan.fec == "rs" else (ULPFEC_MAX_K, 1)
    # Rows up to the next power of two of k only: the table's cost grows with its rows
    # (64 rows: ~14 ms, 8: ~1 ms), its values do not depend on how many there are, and a
    # source's block length is a few packets.
    kmax = min(kmax, 1 << max(2, (plan.k - 1).bit_length()))
    return float(ge_table(_q(p_gb), _q(p_bg), kmax, mmax, _q(keep))[plan.k, plan.m])


def _q(x: float) -> float:
    # cache key stability: estimates jitter in the last bits
    return round(x, 6)


def _nack_keep(plan: Plan, link: Link, budget_s: float) -> float:
    """Chance that a lost media packet is still missing at its deadline after NACK alone."""
    if not plan.nack:
        return 1.0
    q = 1.0 - (1.0 - link.loss) * (1.0 - link.p_back)
    return q ** nack_rounds(budget_s, link.rtt_s, link.detect_s())


def residual(plan: Plan, link: Link, budget_s: float = 0.2) -> float:
    """Modelled residual loss of ``plan`` on ``link`` within ``budget_s``.

    NACK and FEC work together, as the client does it: a hole is NACKed when seen (FEC or
    not), retransmissions feed the decoder, and a block decodes once at most m of its
    packets are still missing. So a media packet stays lost iff its NACK rounds all failed
    and more than m packets of its block are missing (media whose rounds failed, parity
    lost). Media whose block completes after their deadline get no help from the code."""
    keep = _nack_keep(plan, link, budget_s)
    if plan.fec == "off":
        return link.loss * keep
    r = _fec_table(plan, link, keep)
    # packet i of a block waits (k-1-i+m)/pps for the parity; late ones rely on NACK alone
    slack = budget_s - link.detect_s()
    late = sum(1 for i in range(plan.k) if (plan.k - 1 - i + plan.m) / link.pps > slack)
    return r + late / plan.k * (link.loss * keep - r)


def two_leg_residual(up: Link, up_plan: Plan, down: Link, down_plan: Plan,
                     budget_s: float = 0.2) -> float:
    """Residual at the viewer with loss on both legs. The node recovers the uplink first;
    an uplink packet recovered by NACK round i reaches the node later and leaves the downlink
    that much less budget. Uplink FEC is counted without its (small) block delay."""
    r_up = residual(up_plan, up, budget_s)
    q_up = 1.0 - (1.0 - up.loss) * (1.0 - up.p_back)
    total = r_up
    # P(arrives directly at the node) → full budget for the downlink
    direct = 1.0 - fec_residual(up_plan, up) if up_plan.fec != "off" else 1.0 - up.loss
    total += direct * residual(down_plan, down, budget_s)
    if up_plan.nack:
        rounds = nack_rounds(budget_s, up.rtt_s, up.detect_s())
        p_unfixed = fec_residual(up_plan, up)
        retry = max(NACK_RETRY_FACTOR * up.rtt_s, NACK_MIN_RETRY_S)
        for i in range(1, rounds + 1):
            p_i = p_unfixed * q_up ** (i - 1) * (1.0 - q_up)  # recovered by round i
            late = up.detect_s() + up.rtt_s + (i - 1) * retry
            total += p_i * residual(down_plan, down, budget_s - late)
    return min(1.0, total)


# ---- choosing a plan ---------------------------------------------------------------------

# Hysteresis: keep the current plan unless its modelled residual moved clearly above the
# target, its overhead went clearly over the cap, or another plan saves meaningful overhead.
RESIDUAL_SLACK = 2.0  # the current plan may model up to 2 × target before we upgrade
RESIDUAL_GAIN = 0.7  # an upgrade must cut the modelled residual by ≥ 30 %
OVERHEAD_SLACK = 1.2  # the current plan may exceed the overhead cap by 20 % before we cut
OVERHEAD_SAVING_ABS = 0.02  # a cheaper plan must save ≥ 2 points of overhead ...
OVERHEAD_SAVING_REL = 0.2  # ... and ≥ 20 % of the current overhead


def block_length(pps: float, max_block_s: float = 0.04, scheme: FecScheme = "rs") -> int:
    """Media packets per FEC block so that a block spans at most ``max_block_s`` (≥ 1)."""
    kmax = RS_MAX_K if scheme == "rs" else ULPFEC_MAX_K
    return max(1, min(kmax, int(max_block_s * pps + 1e-9)))


def _candidates(link: Link, scheme: FecScheme, nack: bool, max_block_s: float,
                cap: float, fixed_k: int | None) -> list[Plan]:
    mmax = RS_MAX_M if scheme == "rs" else 1
    if fixed_k is not None:
        ks = [min(fixed_k, RS_MAX_K if scheme == "rs" else ULPFEC_MAX_K)]
    else:
        ks = list(range(1, block_length(link.pps, max_block_s, scheme) + 1))
    out = []
    for k in ks:
        for m in range(1, mmax + 1):
            plan = Plan(nack, scheme, k, m)
            if overhead(plan, link) > cap:
                break
            out.append(plan)
    return out


def choose_plan(link: Link | LinkEstimate, budget_s: float = 0.2, target: float = 0.002,
                max_overhead_factor: float = 1.4, current: Plan | None = None, *,
                nack: bool = True, scheme: FecScheme = "rs",
                max_block_s: float = 0.04, k: int | None = None) -> Plan:
    """The cheapest plan whose modelled residual meets ``target`` within ``budget_s``.

    NACK alone when its rounds suffice; else the FEC code (``scheme``, blocks spanning at most
    ``max_block_s`` of media) with the least overhead meeting the target, never above
    ``max_overhead_factor`` × p/(1-p) (if none meets the target, the lowest residual within
    that cap). Loss under 0.5 % gets no FEC. With ``current``, changes only when the residual
    or overhead moves meaningfully (see RESIDUAL_* / OVERHEAD_*). ``k`` fixes the block length
    (the engine computes SFU-RS parity once per source block, so k is the source's and only
    m is per viewer; see ``block_length``)."""
    if isinstance(link, LinkEstimate):
        link = link.link()
    link = _quantized(link)
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    best = _best_plan(link, budget_s, target, max_overhead_factor, nack, scheme, max_block_s, k)
    if current is None or best == current:
        return best
    if current.nack != nack or current.fec not in ("off", scheme) \
            or (k is not None and current.fec != "off" and current.k != k):
        return best  # the viewer's options or the source's block length changed
    cap = _overhead_cap(link, max_overhead_factor)
    r_cur, o_cur = residual(current, link, budget_s), overhead(current, link)
    r_best, o_best = residual(best, link, budget_s), overhead(best, link)
    if current.fec != "off" and (o_cur > cap * OVERHEAD_SLACK or link.loss < CLEAN_LOSS):
        return best  # paying more than the link justifies
    if r_cur > target * RESIDUAL_SLACK and r_best < r_cur * RESIDUAL_GAIN:
        return best  # clearly losing more than we may, and the change helps clearly
    if r_best <= target and o_cur - o_best >= max(OVERHEAD_SAVING_ABS,
                                                 OVERHEAD_SAVING_REL * o_cur):
        return best  # same protection for clearly less bandwidth
    return current


def _overhead_cap(link: Link, factor: float) -> float:
    """FEC overhead allowed: ``factor`` × the erasure bound of the loss less one standard
    error, so that estimator noise does not lift FEC over the cap of the true loss."""
    return factor * erasure_bound(max(0.0, link.loss - link.loss_sd))


def _quantized(link: Link) -> Link:
    """The policy's view of a link: loss on a 0.25 % grid, burst on a 0.05 grid, RTT to 1 ms,
    packet rate to two significant digits, size to 10 bytes. The models are smooth at that
    scale, and the grid lets whole decisions be cached: a node re-plans every stage member's
    every subscription on each receiver report, and their estimates differ in the last
    digits only."""
    loss = min(round(link.loss / 0.0025) * 0.0025, 0.95)
    burst = None if link.mean_burst is None else max(1.0, round(link.mean_burst / 0.05) * 0.05)
    back = None if link.back_loss is None else min(round(link.back_loss / 0.0025) * 0.0025,
                                                   0.95)
    digits = 1 - math.floor(math.log10(link.pps)) if link.pps >= 1 else 3
    return replace(link, loss=loss, mean_burst=burst, rtt_s=round(link.rtt_s, 3),
                   back_loss=back, pps=max(1e-3, round(link.pps, digits)),
                   packet_bytes=max(1.0, round(link.packet_bytes, -1)),
                   loss_sd=min(round(link.loss_sd / 0.0025) * 0.0025, 1.0))


@lru_cache(maxsize=8192)
def _best_plan(link: Link, budget_s: float, target: float, max_overhead_factor: float,
               nack: bool, scheme: FecScheme, max_block_s: float,
               fixed_k: int | None) -> Plan:
    base = Plan(nack, "off")
    if scheme == "off" or link.loss < CLEAN_LOSS:
        return base
    r_base = residual(base, link, budget_s)
    if r_base <= target:
        return base
    cap = _overhead_cap(link, max_overhead_factor)
    cands = _candidates(link, scheme, nack, max_block_s, cap, fixed_k)
    scored = [(residual(p, link, budget_s), overhead(p, link), p.k, p) for p in cands]
    meeting = [s for s in scored if s[0] <= target]
    if meeting:  # least overhead, then shorter blocks (latency), then lower residual
        return min(meeting, key=lambda s: (round(s[1], 9), s[2], s[0]))[3]
    if not scored:
        return base
    r, _, _, plan = min(scored, key=lambda s: (s[0], s[1], s[2]))
    return plan if r < r_base else base


def _near(link: Link, ref: Link) -> bool:
    """Every input the plan depends on within a quarter of the last decision's (or a small
    absolute floor): loss both ways, RTT, burstiness."""
    def close(a: float, b: float, floor: float) -> bool:
        return abs(a - b) <= max(floor, 0.25 * abs(b))
    return (close(link.loss, ref.loss, 0.005) and close(link.p_back, ref.p_back, 0.005)
            and close(link.rtt_s, ref.rtt_s, 0.01) and close(link.burst, ref.burst, 0.25))


# ---- estimating the link -----------------------------------------------------------------

class LinkEstimate:
    """One downtrack's link, estimated from viewer feedback. Time is passed in (seconds).

    - loss: EWMA (time constant ``tau_s``) of each RR interval's loss; the first report is
      taken as is. With the RR's extended highest seq and cumulative lost and the node's sent
      counter (``on_counters``), the interval loss is 1 − Δreceived / Δsent by the node, so
      holes the node never filled on the uplink do not count against the downlink; otherwise
      the RR fraction_lost. An interval in which nothing was sent or received is skipped.
    - mean burst: Δ NACKed seqs / Δ NACKed runs (engine counters), EWMA weighted by the runs
      seen; None (i.i.d.) until 3 runs were seen.
    - RTT: EWMA of the RR-derived samples (LSR/DLSR); packet rate and size from counters."""

    def __init__(self, *, tau_s: float = 2.0, rtt_s: float = 0.1, pps: float = 200.0,
                 packet_bytes: float = 1000.0, back_loss: float | None = None) -> None:
        self.tau_s = tau_s
        self.loss = 0.0
        self.mean_burst: float | None = None
        self.rtt_s = rtt_s
        self.pps = pps
        self.packet_bytes = packet_bytes
        self.back_loss = back_loss
        self.loss_sd = 0.0  # standard error of the loss estimate
        self._var = 0.0
        self.reports = 0  # RR samples taken
        self.rtt_samples = 0
        self._runs_seen = 0  # NACK runs/seqs seen before the burst estimate starts
        self._seqs_seen = 0
        self._last_report: float | None = None
        self._counters: tuple[float, int, int, int, int | None] | None = None
        self._rr_mark: tuple[int, int, int] | None = None  # RR highest, lost; node sent
        self._sent_at_report: int | None = None

    def on_report(self, now: float, fraction_lost: float, rtt_s: float | None = None, *,
                  highest_seq: int | None = None, cumulative_lost: int | None = None) -> None:
        """An RR block about this downtrack: fraction_lost in [0, 1] (byte/256), RTT if known,
        and the block's extended highest seq and cumulative lost when available."""
        if rtt_s is not None and math.isfinite(rtt_s) and 0.0 < rtt_s < 10.0:
            self.rtt_s = rtt_s if self.rtt_samples == 0 else 0.75 * self.rtt_s + 0.25 * rtt_s
            self.rtt_samples += 1
        f = self._interval_loss(fraction_lost, highest_seq, cumulative_lost)
        if f is None:
            return
        if self._last_report is None:
            self.loss = f
        else:
            dt = min(max(now - self._last_report, 0.0), 5.0 * self.tau_s)
            a = 1.0 - math.exp(-dt / self.tau_s) if dt > 0 else 0.2
            d = f - self.loss
            self.loss += a * d
            # exponentially weighted variance of the samples; the EWMA's own standard error
            # is sqrt(var · a / (2 - a)) for a steady sample rate
            self._var = (1.0 - a) * (self._var + a * d * d)
            self.loss_sd = math.sqrt(self._var * a / (2.0 - a))
        self._last_report = now
        self.reports += 1

    def _interval_loss(self, fraction_lost: float, highest: int | None,
                       lost: int | None) -> float | None:
        sent = self._counters[1] if self._counters is not None else None
        prev_sent, self._sent_at_report = self._sent_at_report, sent
        mark, self._rr_mark = self._rr_mark, None
        if highest is not None and lost is not None and sent is not None:
            self._rr_mark = (highest, lost, sent)
            if mark is not None:
                d_high = (highest - mark[0]) & 0xFFFF_FFFF
                d_sent = sent - mark[2]
                if d_high >= 0x8000_0000 or d_sent < 0:
                    return None  # reordered report or counter reset
                if d_high == 0:
                    # nothing new arrived: an outage if the node sent plenty, else no news
                    return 1.0 if d_sent >= 50 else None
                if d_sent >= 10:
                    received = d_high - (lost - mark[1])
                    return min(1.0, max(0.0, 1.0 - received / d_sent))
        if not math.isfinite(fraction_lost):
            return None
        if sent is not None and sent == prev_sent:
            return None  # the interval carried nothing: fraction 0 says nothing
        return min(1.0, max(0.0, fraction_lost))

    def on_counters(self, now: float, packets: int, nack_seqs: int, nack_runs: int,
                    octets: int | None = None) -> None:
        """Cumulative downtrack counters: media packets sent, seqs and runs in the viewer's
        NACKs, media bytes sent. Call before ``on_report`` for the same moment."""
        prev, self._counters = self._counters, (now, packets, nack_seqs, nack_runs, octets)
        if prev is None:
            return
        t0, p0, s0, r0, o0 = prev
        dp, ds, dr = packets - p0, nack_seqs - s0, nack_runs - r0
        if dp < 0 or ds < 0 or dr < 0:
            self._rr_mark = None
            return  # counters reset: start over from this sample
        dt = now - t0
        if dt > 0 and dp > 0:
            a = 1.0 - math.exp(-dt / self.tau_s)
            self.pps += a * (dp / dt - self.pps)
            if octets is not None and o0 is not None and octets >= o0:
                self.packet_bytes += a * ((octets - o0) / dp - self.packet_bytes)
        if dr > 0 and ds >= dr:
            if self.mean_burst is None:
                self._runs_seen += dr
                self._seqs_seen += ds
                if self._runs_seen >= 3:
                    self.mean_burst = self._seqs_seen / self._runs_seen
            else:
                self.mean_burst += (1.0 - math.exp(-dr / 20.0)) * (ds / dr - self.mean_burst)

    def link(self) -> Link:
        return Link(loss=min(self.loss, 0.95), loss_sd=min(self.loss_sd, 0.5), rtt_s=self.rtt_s,
                    mean_burst=None if self.mean_burst is None else max(1.0, self.mean_burst),
                    back_loss=self.back_loss, pps=max(self.pps, 1.0),
                    packet_bytes=max(self.packet_bytes, 1.0))


class BlockSizer:
    """SFU-RS block length k of one source (the engine computes parity once per source
    block; viewers differ only in m): k = ``block_length`` of the source's EWMA packet rate,
    changed only when it moves by more than 25 % and at most every ``min_interval_s``."""

    def __init__(self, max_block_s: float = 0.04, tau_s: float = 2.0,
                 min_interval_s: float = 2.0) -> None:
        self.max_block_s = max_block_s
        self.tau_s = tau_s
        self.min_interval_s = min_interval_s
        self.k = 0  # 0 until the rate is known (≥ 1 s of packets)
        self.pps = 0.0
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None
        self._changed_at = -math.inf

    def update(self, now: float, packets: int) -> int | None:
        """Feed the source's cumulative packet counter; returns the new k when it changes."""
        if self._first is None or self._last is None or packets < self._last[1]:
            self._first = self._last = (now, packets)
            return None
        t0, p0 = self._last
        if now - t0 <= 0:
            return None
        self._last = (now, packets)
        if self.pps == 0.0:
            if now - self._first[0] < 1.0:
                return None
            self.pps = (packets - self._first[1]) / (now - self._first[0])
        else:
            a = 1.0 - math.exp(-(now - t0) / self.tau_s)
            self.pps += a * ((packets - p0) / (now - t0) - self.pps)
        k = block_length(self.pps, self.max_block_s) if self.pps > 0 else 0
        if k == self.k or (self.k and abs(k - self.k) <= 0.25 * self.k) \
                or now - self._changed_at < self.min_interval_s:
            return None
        self.k = k
        self._changed_at = now
        return k


class RecoveryPolicy:
    """Per-downtrack plan over time: the first change is made as soon as a report calls for
    it, later ones at most every ``min_interval_s`` and only when ``choose_plan``'s
    hysteresis agrees.
    ``fec`` is the viewer's request: "auto" (SFU-RS when needed), "off", or a fixed scheme
    whose rate the policy still picks."""

    def __init__(self, *, nack: bool = True, fec: FecRequest = "auto", budget_s: float = 0.2,
                 target: float = 0.002, max_overhead_factor: float = 1.4,
                 min_interval_s: float = 2.0, max_block_s: float = 0.04,
                 eval_interval_s: float = 0.0) -> None:
        """``eval_interval_s``: re-decide at most this often while the loss estimate stays
        within a quarter of the last decision's (a node with many viewers re-plans each on
        every receiver report otherwise)."""
        if fec not in ("auto", "off", "rs", "ulpfec"):
            raise ValueError(f"fec must be 'auto', 'off', 'rs' or 'ulpfec', got {fec!r}")
        self.nack = nack
        self.scheme: FecScheme = "rs" if fec == "auto" else fec
        self.budget_s = budget_s
        self.target = target
        self.max_overhead_factor = max_overhead_factor
        self.min_interval_s = min_interval_s
        self.max_block_s = max_block_s
        self.eval_interval_s = eval_interval_s
        self._evaluated: tuple[float, Link] | None = None  # (when, link) of the last decision
        self.plan = Plan(nack, "off")
        self.changed_at: float | None = None  # None until the first change
        self.changes = 0
        self._last_seen: tuple[Link, int | None] | None = None  # inputs of the last decision

    def update(self, link: Link | LinkEstimate, now: float,
               k: int | None = None) -> Plan | None:
        """The new plan if it changes now, else None. ``k``: the source's block length."""
        if isinstance(link, LinkEstimate):
            if link.reports == 0:
                return None  # nothing measured yet
            link = link.link()
        if self.changed_at is not None and now - self.changed_at < self.min_interval_s:
            return None
        seen = (_quantized(link), k)
        if seen == self._last_seen:
            return None  # same view of the link as last time: same decision
        if self._evaluated is not None and k == (self._last_seen or (None, k))[1]:
            when, ref = self._evaluated
            if now - when < self.eval_interval_s and _near(link, ref):
                return None
        self._last_seen = seen
        self._evaluated = (now, link)
        new = choose_plan(link, self.budget_s, self.target, self.max_overhead_factor,
                          None if self.changed_at is None else self.plan, nack=self.nack,
                          scheme=self.scheme, max_block_s=self.max_block_s, k=k)
        if new == self.plan:
            return None  # no hold starts: until the first change every report may decide
        self.plan = new
        self.changed_at = now
        self.changes += 1
        return new

    def model(self, link: Link | LinkEstimate) -> dict[str, float]:
        """Modelled residual and overhead of the current plan (for stats)."""
        if isinstance(link, LinkEstimate):
            link = link.link()
        return {"residual": residual(self.plan, link, self.budget_s),
                "overhead": overhead(self.plan, link),
                "bound": erasure_bound(link.loss)}


__all__ = ["CLEAN_LOSS", "BlockSizer", "FecRequest", "FecScheme", "Link", "LinkEstimate",
           "Plan", "RecoveryPolicy", "block_length", "choose_plan", "erasure_bound",
           "fec_residual", "ge_params", "nack_residual", "nack_rounds", "overhead", "residual",
           "rs_block_residual", "rs_residual_ge", "two_leg_residual"]

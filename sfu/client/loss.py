"""Client-side loss recovery, receiving half: NACK generator and recovering receiver (the
sending half, send history and RTX helpers, is sfu/client/rtx.py, re-exported here).

Time is injected (``now``, seconds, monotonic) so unit tests drive a fake clock. Wire
formats: NACK is RFC 4585 §6.2.1 generic NACK, RTX is RFC 4588 (own SSRC and seq space,
payload = 2-byte original seq + original payload), ULPFEC is RFC 5109 level 0 and SFU-RS is
the Reed–Solomon burst code of docs/loss_spec (used only through :func:`rs_decoder` /
:func:`rs_encoder`, so the rest works before the native codec exists).
Bad network input never raises: it is counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sfu import _native

__all__ = [
    "NackGenerator",
    "ReceptionStats",
    "RecoveringReceiver",
    "RecoveryStats",
    "SendHistory",
    "SendHistoryStats",
    "Frame",
    "SeqCounter",
    "build_rtx",
    "rs_available",
    "rs_decoder",
    "rs_encoder",
    "unwrap_rtx",
]

from sfu.client.rtx import (  # noqa: F401  (re-exported: the client's one import point)
    RS_FEC_PT,
    RTX_PT,
    ULPFEC_PT,
    SendHistory,
    SendHistoryStats,
    SeqCounter,
    build_rtx,
    rs_available,
    rs_decoder,
    rs_encoder,
    rtp_bounds,
    rtp_seq,
    rtp_ssrc,
    unwrap_rtx,
)

# NackGenerator.on_packet results
Frame = tuple[int, bool, list[bytes], bool]  # JitterBuffer.pop: ts, key, payloads, complete

NEW = 0  # beyond the highest seq seen (or the first packet)
FILLED = 1  # filled a hole before any NACK went out for it (reordering, FEC)
FILLED_NACKED = 2  # filled a hole that was NACKed: the retransmission came
DUPLICATE = 3
LATE = 4  # a hole already given up, or older than the receive log


# -- receiver side --------------------------------------------------------------------------

@dataclass(slots=True)
class _Hole:
    detected: float
    deadline: float
    next_due: float
    retries: int = 0
    sent_at: float = 0.0
    repeat_at: float = float("inf")


class NackGenerator:
    """Receive log and NACK scheduling for one media SSRC.

    Holes are NACKed after a reorder wait (1.5 × packet interval within 5..10 ms), then every
    max(1.2 × RTT, 10 ms), at most ``max_retries`` times, and given up (reported lost) when
    older than the playout deadline (``deadline_s`` after the hole was seen). RTT comes from
    :meth:`update_rtt` (RTCP) or from NACK → RTX round trips (first NACK only: Karn).
    From retry ``repeat_from`` on (and for the last round that fits), each NACK is sent
    twice, ``repeat_gap`` apart (0 disables).
    """

    RTT_MAX = 0.5  # the backoff stops here (seconds)

    def __init__(self, *, max_retries: int = 10, deadline_s: float = 0.2, rtt: float = 0.05,
                 reorder_min: float = 0.005, reorder_max: float = 0.01,
                 retry_min: float = 0.01, log_size: int = 2048, enabled: bool = True,
                 repeat_from: int = 2, repeat_gap: float = 0.004) -> None:
        if log_size < 1024:
            raise ValueError("log_size must be at least 1024")
        self.max_retries = max_retries
        self.deadline_s = deadline_s
        self.reorder_min = reorder_min
        self.reorder_max = reorder_max
        self.repeat_from = repeat_from
        self.repeat_gap = repeat_gap
        self.retry_min = retry_min
        self.enabled = enabled
        self.log_size = log_size
        self._log = [-1] * log_size  # slot ext % size holds ext (received) or -ext-2 (given up)
        self._holes: dict[int, _Hole] = {}
        self._highest = -1
        self._started = False
        self._last_new_at = 0.0
        self.interval = 0.02  # EWMA of the packet interval, seconds
        self.rtt = rtt
        self._rtt_samples = 0
        self._rtt_window: deque[float] = deque(maxlen=16)
        self._last_sample_at = -1e18
        self._now = 0.0
        self._last_backoff_at = -1e18
        self.lost: list[int] = []  # 16-bit seqs given up since the last take_lost()
        self.nacks_sent = 0  # NACK rounds (one RTCP packet each)
        self.nack_seqs = 0  # seqs requested, retries included
        self.given_up = 0
        self.late = 0
        self.duplicates = 0
        self.filled_after_nack = 0

    @property
    def pending(self) -> int:
        return len(self._holes)

    @property
    def rtt_samples(self) -> int:
        return self._rtt_samples

    def update_rtt(self, sample: float, now: float | None = None) -> None:
        """One RTT sample. The estimate is the minimum of the recent samples: delays only
        add (a stalled loop, an answer the node itself had to recover upstream first)."""
        if not 0.0 < sample < 10.0:
            return
        self._rtt_samples += 1
        self._rtt_window.append(sample)
        self.rtt = min(self._rtt_window)
        self._last_sample_at = self._now if now is None else now

    def _backoff(self, now: float) -> None:
        """An RTX answered a hole NACKed more than once. Karn's rule takes no sample from
        it, so an RTT estimate below the real one (the default, or a path that got slower)
        retries every hole before its answer and never learns: when such answers come and
        no clean sample did lately, double the estimate (once per RTT)."""
        if (now - self._last_sample_at > max(1.0, 10 * self.rtt)
                and now - self._last_backoff_at > self.rtt):
            self._last_backoff_at = now
            self._rtt_window.clear()
            self.rtt = min(2 * self.rtt, self.RTT_MAX)

    def unwrap(self, seq: int) -> int:
        if not self._started:
            return seq + (1 << 16)  # room below for reordered packets before the first
        h = self._highest
        return h + ((seq - h + 0x8000) & 0xFFFF) - 0x8000

    def on_packet(self, seq: int, now: float, kind: str = "media") -> int:
        """Log one arrival (``kind``: media, rtx or fec); returns NEW, FILLED, FILLED_NACKED,
        DUPLICATE or LATE."""
        self._now = now
        ext = self.unwrap(seq & 0xFFFF)
        size = self.log_size
        if not self._started:
            self._started = True
            self._highest = ext
            self._last_new_at = now
            self._log[ext % size] = ext
            return NEW
        if ext > self._highest:
            gap = ext - self._highest
            if gap > size // 2:  # a jump (stream restart): forget the old holes
                self._holes.clear()
            else:
                wait = self.reorder_wait()
                for s in range(self._highest + 1, ext):
                    self._holes[s] = _Hole(now, now + self.deadline_s, now + wait)
                    self._log[s % size] = -1
            if kind == "media" and gap <= 64:
                self.interval += ((now - self._last_new_at) / gap - self.interval) / 8
            if kind == "media":
                self._last_new_at = now
            self._highest = ext
            self._log[ext % size] = ext
            self._trim()
            return NEW
        if self._highest - ext >= size:
            self.late += 1
            return LATE
        slot = self._log[ext % size]
        if slot == ext:
            self.duplicates += 1
            return DUPLICATE
        if slot == -ext - 2:
            self._log[ext % size] = ext
            self.late += 1
            return LATE
        self._log[ext % size] = ext
        hole = self._holes.pop(ext, None)
        if hole is None or hole.retries == 0:
            return FILLED
        self.filled_after_nack += 1
        if kind == "rtx" and hole.retries == 1:  # one NACK out: the answer is unambiguous
            self.update_rtt(now - hole.sent_at, now)
        elif kind == "rtx":
            self._backoff(now)
        return FILLED_NACKED

    def reorder_wait(self) -> float:
        """How long a hole may be reordering rather than loss: 1.5 packet intervals, at
        least ``reorder_min``; at most ``reorder_max`` because video comes in bursts whose
        mean interval (a frame period over a few packets) says little about reordering."""
        return min(max(self.reorder_min, 1.5 * self.interval), self.reorder_max)

    def add_holes_before(self, seq: int, count: int, now: float) -> None:
        """Declare the ``count`` packets before ``seq`` missing (a sender's index shows the
        stream started earlier than the first packet that arrived)."""
        if not self._started or count <= 0:
            return
        ext = self.unwrap(seq & 0xFFFF)
        wait = self.reorder_wait()
        for s in range(ext - min(count, self.log_size // 2), ext):
            if self._log[s % self.log_size] != s and s not in self._holes:
                self._holes[s] = _Hole(now, now + self.deadline_s, now + wait)

    def _trim(self) -> None:
        floor = self._highest - self.log_size // 2
        for s in [s for s in self._holes if s < floor]:
            self._give_up(s)

    def _give_up(self, ext: int) -> None:
        del self._holes[ext]
        self._log[ext % self.log_size] = -ext - 2
        self.lost.append(ext & 0xFFFF)
        self.given_up += 1

    def give_up_except(self, keep: set[int]) -> None:
        """Give up every hole whose 16-bit seq is not in ``keep`` (the playout point has
        passed it: the jitter buffer no longer waits for it)."""
        for s in [s for s in self._holes if s & 0xFFFF not in keep]:
            self._give_up(s)

    def poll(self, now: float) -> list[int]:
        """The 16-bit seqs to NACK now (empty when none); expired holes are given up."""
        out: list[int] = []
        retry = max(1.2 * self.rtt, self.retry_min)
        for s, h in list(self._holes.items()):
            if now >= h.deadline or (h.retries >= self.max_retries and now >= h.next_due):
                self._give_up(s)
            elif self.enabled and now >= h.next_due and h.retries < self.max_retries:
                h.retries += 1
                h.sent_at = now
                h.next_due = now + retry
                out.append(s & 0xFFFF)
                # A lost NACK costs a whole round. Late rounds, and the last round that can
                # still beat the deadline, go out twice (a few ms apart, so one loss event
                # does not take both): rare, so the duplicate answers cost little.
                last = now + retry + self.rtt > h.deadline
                if self.repeat_from and (h.retries >= self.repeat_from or last):
                    h.repeat_at = now + self.repeat_gap
            elif self.enabled and now >= h.repeat_at:
                h.repeat_at = float("inf")
                out.append(s & 0xFFFF)
        if out:
            self.nacks_sent += 1
            self.nack_seqs += len(out)
        return out

    def next_due(self) -> float | None:
        if not self._holes:
            return None
        return min(min(h.next_due, h.deadline, h.repeat_at) for h in self._holes.values())

    def take_lost(self) -> list[int]:
        out, self.lost = self.lost, []
        return out


class ReceptionStats:
    """RFC 3550 A.1/A.3/A.8 reception state of one SSRC, for receiver report blocks."""

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.base: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.jitter = 0.0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self.lsr = 0
        self.lsr_at = 0.0

    def update(self, seq: int, ts: int, now: float) -> None:
        if self.base is None:
            self.base = self.max_seq = seq
        elif 0 < ((seq - self.max_seq) & 0xFFFF) < 0x8000:
            if seq < self.max_seq:
                self.cycles += 1 << 16
            self.max_seq = seq
        self.received += 1
        transit = (int(now * self.clock_rate) - ts) & 0xFFFF_FFFF
        if self._transit is not None:
            d = abs(((transit - self._transit + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000)
            self.jitter += (d - self.jitter) / 16
        self._transit = transit

    def on_sr(self, ntp: int, now: float) -> None:
        self.lsr = (ntp >> 16) & 0xFFFF_FFFF  # middle 32 bits
        self.lsr_at = now

    @property
    def lost(self) -> int:
        if self.base is None:
            return 0
        return self.cycles + self.max_seq - self.base + 1 - self.received

    def report_block(self, ssrc: int, now: float) -> dict[str, int]:
        if self.base is None:
            return {"ssrc": ssrc}
        ext_max = self.cycles + self.max_seq
        expected = ext_max - self.base + 1
        lost = expected - self.received
        exp_int = expected - self._expected_prior
        lost_int = exp_int - (self.received - self._received_prior)
        self._expected_prior, self._received_prior = expected, self.received
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        dlsr = int((now - self.lsr_at) * 65536) if self.lsr else 0
        return {
            "ssrc": ssrc,
            "fraction_lost": fraction,
            "packets_lost": max(-(1 << 23), min(lost, (1 << 23) - 1)) & 0xFFFFFF,
            "highest_seq": ext_max & 0xFFFF_FFFF,
            "jitter": int(self.jitter),
            "lsr": self.lsr,
            "dlsr": dlsr & 0xFFFF_FFFF,
        }


@dataclass(slots=True)
class RecoveryStats:
    received: int = 0  # media packets that arrived directly on the media SSRC (new ones)
    received_bytes: int = 0  # their RTP payload octets
    recovered_rtx: int = 0  # filled by RTX or by a plain resend after our NACK
    recovered_fec: int = 0  # rebuilt by SFU-RS or ULPFEC
    lost_after_recovery: int = 0  # given up: neither arrived nor recovered in time
    late: int = 0  # arrived after being given up / after their frame was played
    nacks_sent: int = 0
    nack_seqs: int = 0
    duplicates: int = 0
    malformed: int = 0
    foreign: int = 0  # unknown SSRC / payload type
    rtx_packets: int = 0
    rtx_bytes: int = 0  # whole RTX datagrams
    fec_packets: int = 0
    fec_bytes: int = 0  # whole FEC datagrams (SFU-RS and ULPFEC)
    fec_scheme: str = ""  # the last FEC scheme seen: "rs" or "ulpfec"
    frames_expected: int = 0  # frames played, plus those lost whole (timestamp steps)
    extra: dict[str, int] = field(default_factory=dict)


class RecoveringReceiver:
    """Receives one media SSRC with its RTX and FEC streams: NACKs holes, rebuilds packets
    from RTX, SFU-RS and ULPFEC, and (with ``codec``) assembles frames in a jitter buffer
    whose target delay is clamped to ``budget_s``.

    ``feed`` returns the media packets that became available (RTP bytes, how: "direct",
    "rtx" or "fec"); ``poll`` returns (frames, NACK RTCP or None, keyframe_needed).
    Receiver reports (:attr:`reception`) count only direct arrivals: they describe the link.
    """

    MAX_ULPFEC_PENDING = 64
    STORE = 512  # recent media packets kept for ULPFEC recovery

    def __init__(self, media_ssrc: int, media_pt: int, clock_rate: int, codec: str | None,
                 rtx_ssrc: int | None = None, rtx_pt: int | None = None,
                 fec_pt: int | None = RS_FEC_PT, ulpfec_pt: int | None = ULPFEC_PT,
                 budget_s: float = 0.2, *, sender_ssrc: int = 1, nack: bool = True,
                 min_delay: float | None = None, max_retries: int = 10,
                 late_wait: float = 0.0) -> None:
        self.media_ssrc = media_ssrc
        self.media_pt = media_pt
        self.clock_rate = clock_rate
        self.rtx_ssrc = rtx_ssrc
        self.rtx_pt = rtx_pt
        self.fec_pt = fec_pt
        self.ulpfec_pt = ulpfec_pt
        self.budget = budget_s
        self.sender_ssrc = sender_ssrc
        self.stats = RecoveryStats()
        # late_wait: an incomplete video frame may hold playout that much longer, so NACKs
        # for it stay worth sending until then.
        self.nack = NackGenerator(max_retries=max_retries, deadline_s=budget_s + late_wait,
                                  enabled=nack)
        self.reception = ReceptionStats(clock_rate)
        self.jitter: _native.JitterBuffer | None = None
        if codec is not None:
            lo = budget_s if min_delay is None else min(min_delay, budget_s)
            self.jitter = _native.JitterBuffer(clock_rate, codec, capacity=1024,
                                               min_delay=lo, max_delay=budget_s,
                                               late_wait=late_wait)
        self._rs: Any | None = None
        self._rs_tried = False
        self._store: dict[int, bytes] = {}
        self._store_order: deque[int] = deque()
        self._ulpfec: list[tuple[bytes, frozenset[int]]] = []
        self._out: list[tuple[bytes, str]] = []
        self._vanished_need_key = False
        self._last_ts: int | None = None
        self._period = 0
        self.vanished: list[int] = []  # per frame of the last play_until: frames lost before it
        self._audio = codec is not None and codec.lower() == "opus"

    # -- input ------------------------------------------------------------------------

    def feed(self, rtp: bytes, now: float) -> list[tuple[bytes, str]]:
        """Process one RTP datagram of this subscription (media, RTX or FEC)."""
        st = self.stats
        self._out = []
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            st.malformed += 1
            return []
        pt = rtp[1] & 0x7F
        ssrc = rtp_ssrc(rtp)
        if ssrc == self.media_ssrc and pt == self.media_pt:
            if rtp_bounds(rtp) is None:
                st.malformed += 1
            else:
                self._accept(rtp, "direct", now)
        elif self.rtx_ssrc is not None and ssrc == self.rtx_ssrc and pt == self.rtx_pt:
            st.rtx_packets += 1
            st.rtx_bytes += len(rtp)
            orig = unwrap_rtx(rtp, self.media_ssrc, self.media_pt)
            if orig is None:
                st.malformed += 1
            else:
                self._accept(orig, "rtx", now)
        elif self.fec_pt is not None and pt == self.fec_pt:
            st.fec_packets += 1
            st.fec_bytes += len(rtp)
            st.fec_scheme = "rs"
            self._on_rs(rtp, now)
        elif self.ulpfec_pt is not None and pt == self.ulpfec_pt:
            st.fec_packets += 1
            st.fec_bytes += len(rtp)
            st.fec_scheme = "ulpfec"
            if ssrc == self.media_ssrc:
                # In-band ULPFEC (RFC 5109 §9.1) takes seqs of the media stream: they are no
                # holes to NACK, and the link did deliver them.
                if self.nack.on_packet(rtp_seq(rtp), now, "fec") not in (DUPLICATE, LATE):
                    self.reception.update(rtp_seq(rtp), int.from_bytes(rtp[4:8], "big"), now)
            self._on_ulpfec(rtp, now)
        else:
            st.foreign += 1
        return self._out

    def _decoder(self) -> Any | None:
        if not self._rs_tried:
            self._rs_tried = True
            self._rs = rs_decoder(self.media_pt, self.media_ssrc)
        return self._rs

    def _accept(self, pkt: bytes, how: str, now: float) -> None:
        st = self.stats
        seq = rtp_seq(pkt)
        res = self.nack.on_packet(seq, now, "media" if how == "direct" else how)
        if res == DUPLICATE:
            st.duplicates += 1
            return
        if res == LATE:
            st.late += 1
            return
        if how == "direct" and res != FILLED_NACKED:
            st.received += 1
            b = rtp_bounds(pkt)
            st.received_bytes += (b[1] - b[0]) if b else 0
            self.reception.update(seq, int.from_bytes(pkt[4:8], "big"), now)
        elif how == "fec":
            st.recovered_fec += 1
        else:  # RTX, or a plain resend answering our NACK
            st.recovered_rtx += 1
            how = "rtx"
        self._out.append((pkt, how))
        if self.jitter is not None:
            if self.jitter.insert(pkt, now, how != "direct") == _native.LATE:
                st.late += 1
        self._remember(seq, pkt)
        dec = self._decoder()
        if dec is not None:
            for rec in dec.add_media(pkt):
                self._accept(rec, "fec", now)
        if self._ulpfec:
            self._retry_ulpfec(seq, now)

    def _remember(self, seq: int, pkt: bytes) -> None:
        if seq in self._store:
            self._store_order.remove(seq)
        self._store[seq] = pkt
        self._store_order.append(seq)
        while len(self._store_order) > self.STORE:
            del self._store[self._store_order.popleft()]

    def _on_rs(self, rtp: bytes, now: float) -> None:
        dec = self._decoder()
        if dec is None:
            return
        try:
            recovered = dec.add_fec(rtp)
        except ValueError:  # the decoder counts malformed input; be safe regardless
            self.stats.malformed += 1
            return
        for rec in recovered:
            self._accept(rec, "fec", now)

    def _on_ulpfec(self, rtp: bytes, now: float) -> None:
        try:
            info = _native.ulpfec_parse(rtp)
        except ValueError:
            self.stats.malformed += 1
            return
        protected = frozenset(int(s) for s in info["protected"])  # type: ignore[attr-defined]
        if not self._try_ulpfec(rtp, protected, now):
            self._ulpfec.append((rtp, protected))
            if len(self._ulpfec) > self.MAX_ULPFEC_PENDING:
                del self._ulpfec[0]

    def _try_ulpfec(self, rtp: bytes, protected: frozenset[int], now: float) -> bool:
        """True when the FEC packet is spent (all present, or the one missing rebuilt)."""
        missing = [s for s in protected if s not in self._store]
        if not missing:
            return True
        if len(missing) > 1:
            return False
        received = {s: self._store[s] for s in protected if s in self._store}
        try:
            rec = _native.ulpfec_recover(rtp, received, self.media_ssrc)
        except ValueError:
            self.stats.malformed += 1
            return True
        if rec is None:
            return False
        self._accept(rec, "fec", now)
        return True

    def _retry_ulpfec(self, seq: int, now: float) -> None:
        for item in [u for u in self._ulpfec if seq in u[1]]:
            if item not in self._ulpfec:
                continue  # spent by a recovery this loop triggered
            # out of the list while tried: a recovery re-enters here for the rebuilt seq
            self._ulpfec.remove(item)
            if not self._try_ulpfec(item[0], item[1], now):
                self._ulpfec.append(item)

    # -- output -----------------------------------------------------------------------

    def poll(self, now: float) -> tuple[list[Frame], bytes | None, bool]:
        """Due frames, the NACK to send (or None) and whether a key frame is needed."""
        frames = self.play_until(now)
        seqs = self.nack.poll(now)
        st = self.stats
        st.lost_after_recovery = self.nack.given_up
        st.nacks_sent, st.nack_seqs = self.nack.nacks_sent, self.nack.nack_seqs
        rtcp = _native.build_nack(self.sender_ssrc, self.media_ssrc, seqs) if seqs else None
        jb = self.jitter
        key = jb is not None and (jb.keyframe_needed or self._vanished_need_key)
        return frames, rtcp, key

    def play_until(self, t: float) -> list[Frame]:
        """Frames due by ``t`` (which may be ahead of the clock: a caller that wants a
        complete key frame now releases everything before it early)."""
        jb = self.jitter
        if jb is None:
            return []
        frames: list[Frame] = jb.pop(t)
        if frames and self.nack.pending:
            self.nack.give_up_except(set(jb.missing(t)))
        self.vanished = [self._count_vanished(f[0]) for f in frames]
        for f, gone in zip(frames, self.vanished, strict=True):
            # A frame lost whole leaves no incomplete frame in the jitter buffer, only a
            # timestamp step: a video decoder has lost a reference all the same.
            if f[1] and f[3]:
                self._vanished_need_key = False
            elif gone and not self._audio:
                self._vanished_need_key = True
        return frames

    def _count_vanished(self, ts: int) -> int:
        """Frames lost whole right before the played frame ``ts``: timestamp steps of
        several frame periods (the smallest step seen is one period)."""
        self.stats.frames_expected += 1
        gone = 0
        if self._last_ts is not None:
            step = (ts - self._last_ts) & 0xFFFF_FFFF
            if 0 < step < 0x8000_0000:
                if not self._period or step < self._period:
                    self._period = step
                gone = max(0, round(step / self._period) - 1)
                self.stats.frames_expected += gone
        self._last_ts = ts
        return gone

    def on_sr(self, ntp: int, now: float) -> None:
        self.reception.on_sr(ntp, now)

    def report_block(self, now: float) -> dict[str, int]:
        return self.reception.report_block(self.media_ssrc, now)

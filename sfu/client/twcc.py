"""Receiver side of transport-wide congestion control feedback
(draft-holmer-rmcat-transport-wide-cc-extensions-01).

A participant that joined with ``twcc_ext_id`` gets a 16-bit transport-wide sequence number
on every RTP packet the node sends it (media, RTX, FEC, padding). :class:`TwccFeedback`
records their arrival times and, every ``interval`` (50 ms), turns them into transport-cc
feedback packets (RTPFB FMT 15, §3.1) covering every seq since the previous feedback.

Time is injected (``arrival``/``now`` in seconds, monotonic); the wire clock counts from the
first recorded arrival (``epoch``), so the 24-bit reference time (64 ms units) starts near 0
and only wraps after ~12 days.
"""

from __future__ import annotations

from sfu import _native

__all__ = ["TwccFeedback", "decode_feedback"]

TICK = 0.00025  # receive delta unit: 250 µs
REF_TICKS = 256  # reference time unit: 64 ms = 256 ticks
MAX_STATUSES = 1000  # per feedback packet (keeps it near one MTU with 1-byte deltas)
MAX_BYTES = 1100  # chunks + deltas per packet: split earlier when deltas are 2 bytes
HISTORY = 4096  # arrivals kept behind the highest seq (a late packet older is ignored)
MAX_JUMP = 8192  # a forward jump larger than this restarts the window (sender restart)


class TwccFeedback:
    """Arrival log and feedback builder for one receiving participant.

    ``record`` takes every packet carrying the transport-wide seq; ``build`` returns the
    feedback RTCP packets for all seqs from the first not yet reported to the highest
    received. Seqs are unwrapped from 16 bits; lost ones are reported "not received"; a
    duplicate keeps its first arrival; a packet arriving after its seq was reported lost
    moves the window back, so the next feedback reports it (and the seqs after it, again)
    as received, as the draft's receiver does.
    """

    def __init__(self, sender_ssrc: int, media_ssrc: int, interval: float = 0.05) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self.interval = interval
        self.epoch: float | None = None  # arrival time that wire time 0 stands for
        self.fb_count = 0  # feedback packet count of the next packet (mod 256)
        self._arrivals: dict[int, int] = {}  # extended seq -> arrival in ticks since epoch
        self._highest: int | None = None
        self._next: int | None = None  # first extended seq not yet reported
        self._last_build = -1e18
        self.packets_recorded = 0
        self.duplicates = 0
        self.too_old = 0  # late packets behind the kept history
        self.feedbacks = 0  # feedback packets built

    def _unwrap(self, seq: int) -> int:
        h = self._highest
        if h is None:
            return seq + (1 << 16)  # room below for packets reordered before the first
        return h + ((seq - h + 0x8000) & 0xFFFF) - 0x8000

    def record(self, tw_seq: int, arrival: float) -> None:
        """Log the arrival of the packet with transport-wide seq ``tw_seq``."""
        if self.epoch is None:
            self.epoch = arrival
        ext = self._unwrap(tw_seq & 0xFFFF)
        ticks = round((arrival - self.epoch) / TICK)
        if self._highest is None or ext - self._highest > MAX_JUMP:
            # First packet, or the counter jumped: start a new window there.
            self._arrivals.clear()
            self._highest = self._next = ext
        elif ext > self._highest:
            self._highest = ext
            floor = ext - HISTORY
            if len(self._arrivals) > 2 * HISTORY:
                self._arrivals = {s: t for s, t in self._arrivals.items() if s >= floor}
        elif ext < self._highest - HISTORY:
            self.too_old += 1
            return
        if ext in self._arrivals:
            self.duplicates += 1
            return
        self._arrivals[ext] = ticks
        self.packets_recorded += 1
        assert self._next is not None
        if ext < self._next:
            self._next = ext  # reported lost before: report it again, as received

    def due(self, now: float) -> bool:
        """True when a feedback is due (``interval`` since the last :meth:`build`)."""
        return now - self._last_build >= self.interval - 1e-6  # float slack

    @property
    def next_due(self) -> float:
        return self._last_build + self.interval

    @property
    def pending(self) -> int:
        """Seqs the next feedback would cover."""
        if self._next is None or self._highest is None:
            return 0
        return max(0, self._highest - self._next + 1)

    def build(self, now: float) -> list[bytes]:
        """Feedback packets covering every seq since the last feedback (may be empty)."""
        self._last_build = now
        if self._next is None or self._highest is None or self._next > self._highest:
            return []
        out: list[bytes] = []
        start, end = self._next, self._highest
        while start <= end:
            packet, start = self._one(start, end)
            out.append(packet)
        self._next = end + 1
        floor = end - HISTORY
        if self._arrivals and min(self._arrivals) < floor:
            self._arrivals = {s: t for s, t in self._arrivals.items() if s >= floor}
        return out

    def _one(self, start: int, end: int) -> tuple[bytes, int]:
        """One packet from ``start``: as many seqs as fit; returns it and the next start."""
        arrivals = self._arrivals
        ref: int | None = None
        prev = 0
        deltas: list[int | None] = []
        size = 0
        seq = start
        while seq <= end and len(deltas) < MAX_STATUSES:
            t = arrivals.get(seq)
            if t is None:
                deltas.append(None)
            else:
                if ref is None:
                    ref = t // REF_TICKS
                    prev = ref * REF_TICKS
                d = t - prev
                if not -0x8000 <= d <= 0x7FFF:
                    break  # not representable: the next packet gets its own reference
                width = 1 if 0 <= d <= 255 else 2
                if size + width > MAX_BYTES and deltas:
                    break
                size += width
                deltas.append(d)
                prev = t
            seq += 1
        if not deltas:  # cannot happen (the first received seq always fits); be safe
            deltas.append(None)
            seq = start + 1
        # Trailing "not received" would be reported again by the next packet anyway: keep
        # them (every seq is covered exactly once per build).
        packet = _native.build_twcc(self.sender_ssrc, self.media_ssrc, start & 0xFFFF,
                                    (ref or 0) & 0xFFFFFF, self.fb_count, deltas)
        self.fb_count = (self.fb_count + 1) & 0xFF
        self.feedbacks += 1
        return packet, seq


def decode_feedback(fb: dict[str, object]) -> dict[int, float | None]:
    """A parsed "twcc" RTCP dict (``_native.parse_rtcp``) as {seq: arrival seconds since the
    receiver's epoch, or None when not received}: for tests and benches."""
    t = int(fb["ref_time"]) * REF_TICKS  # type: ignore[call-overload]
    out: dict[int, float | None] = {}
    for seq, status, delta in fb["packets"]:  # type: ignore[attr-defined]
        if status == 0:
            out[seq] = None
        else:
            t += delta
            out[seq] = t * TICK
    return out

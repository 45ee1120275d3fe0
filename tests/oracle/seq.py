"""16-bit RTP sequence-number arithmetic (RFC 3550 §A.1, RFC 1982 serial numbers).

A reference for the native ``seq`` helpers: a is "before" b when the forward distance
from a to b is in (0, 2^15). Exactly half-way (distance 0x8000) is ambiguous; like
RFC 1982 we say neither is less, and ``seq_diff`` returns -0x8000 for it.
"""

SEQ_MOD = 1 << 16
HALF = 1 << 15


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in [-0x8000, 0x7fff] (how far a is ahead of b)."""
    d = (a - b) & 0xFFFF
    return d - SEQ_MOD if d >= HALF else d


def seq_lt(a: int, b: int) -> bool:
    """True when a comes strictly before b (modulo 2^16)."""
    d = (b - a) & 0xFFFF
    return 0 < d < HALF


def seq_gt(a: int, b: int) -> bool:
    return seq_lt(b, a)


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFF


class Unwrapper:
    """Extends 16-bit sequence numbers to a monotone 64-bit-style int.

    Each new value is placed at the extended number closest to the previous one
    (forward if the half-way case), so reordering of less than 2^15 never
    wraps backwards and a rollover increments the cycle count (RFC 3550 §A.1).
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"sequence number out of range: {seq}")
        if self._last is None:
            self._last = seq
            return seq
        d = (seq - self._last) & 0xFFFF
        # Half-way counts as forward, the usual tie-break (pion, webrtc).
        delta = d if d <= HALF else d - SEQ_MOD
        self._last += delta
        return self._last

    @property
    def last(self) -> int | None:
        return self._last


MAX_DROPOUT = 3000  # RFC 3550 §A.1: larger forward jumps are not taken as the new maximum


class ReceiveStats:
    """Extended highest sequence number and cumulative loss, RFC 3550 §A.1 and §A.3.

    Without the probation/resync part of §A.1: a forward jump of MAX_DROPOUT or more,
    or a packet from the past, is counted as received but does not move the maximum.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.received = 0

    def update(self, seq: int) -> None:
        if self.base is None:
            self.base = self.max_seq = seq
        else:
            udelta = (seq - self.max_seq) & 0xFFFF
            if 0 < udelta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += SEQ_MOD
                self.max_seq = seq
        self.received += 1

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        assert self.base is not None
        return self.extended_max - self.base + 1

    @property
    def lost(self) -> int:
        """Cumulative number of packets lost, clamped to 24-bit signed (§6.4.1)."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

"""Client-side sending half of loss recovery: the send history that answers NACKs with
RTX (RFC 4588: own SSRC and seq space, payload = 2-byte original seq + original payload) or
plain resends, the RTP/RTX helpers, and the adapter to the native SFU-RS codec (the only
place that touches it). Time is injected (``now``); bad input never raises.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from sfu import _native

RTX_PT = {"video": 97, "audio": 112}
RS_FEC_PT = 125
ULPFEC_PT = 116


# -- the SFU-RS adapter: the only place that touches the native RS codec -----------------

def rs_available() -> bool:
    return hasattr(_native, "RsDecoder") and hasattr(_native, "RsEncoder")


def rs_decoder(media_pt: int, media_ssrc: int, window: int = 64) -> Any | None:
    """An ``_native.RsDecoder`` or None when the native module has no SFU-RS yet."""
    cls = getattr(_native, "RsDecoder", None)
    return None if cls is None else cls(media_pt, media_ssrc, window)


def rs_encoder(fec_pt: int, fec_ssrc: int, k: int, m: int, seq: int = 0) -> Any:
    cls = getattr(_native, "RsEncoder", None)
    if cls is None:
        raise RuntimeError("this build of sfu._native has no SFU-RS encoder (RsEncoder)")
    return cls(fec_pt, fec_ssrc, k, m, seq)


# -- RTP helpers ----------------------------------------------------------------------------

def rtp_seq(pkt: bytes) -> int:
    return (pkt[2] << 8) | pkt[3]


def rtp_ssrc(pkt: bytes) -> int:
    return int.from_bytes(pkt[8:12], "big")


def rtp_bounds(pkt: bytes) -> tuple[int, int] | None:
    """(header size, end of payload) of a well-formed RTP packet, else None."""
    n = len(pkt)
    if n < 12 or pkt[0] >> 6 != 2:
        return None
    hs = 12 + 4 * (pkt[0] & 0x0F)
    if pkt[0] & 0x10:
        if hs + 4 > n:
            return None
        hs += 4 + 4 * int.from_bytes(pkt[hs + 2 : hs + 4], "big")
    end = n
    if pkt[0] & 0x20:
        end -= pkt[-1]
    if hs > end or (pkt[0] & 0x20 and pkt[-1] == 0):
        return None
    return hs, end


class SeqCounter:
    """A 16-bit sequence counter shared by the calls that number one stream (RTX, FEC)."""

    def __init__(self, start: int | None = None) -> None:
        self.value = int.from_bytes(os.urandom(2), "big") if start is None else start & 0xFFFF

    def next(self) -> int:
        v = self.value
        self.value = (v + 1) & 0xFFFF
        return v


def build_rtx(original: bytes, rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> bytes | None:
    """RFC 4588 §4: the original header (ts, marker, CSRCs, extension) with the RTX PT, seq
    and SSRC, then the original seq, then the original payload (padding dropped)."""
    b = rtp_bounds(original)
    if b is None:
        return None
    hs, end = b
    head = bytearray(original[:hs])
    head[0] &= ~0x20 & 0xFF  # no padding in the RTX packet
    head[1] = (head[1] & 0x80) | (rtx_pt & 0x7F)
    head[2:4] = (rtx_seq & 0xFFFF).to_bytes(2, "big")
    head[8:12] = (rtx_ssrc & 0xFFFF_FFFF).to_bytes(4, "big")
    return bytes(head) + original[2:4] + original[hs:end]


def unwrap_rtx(rtx: bytes, media_ssrc: int, media_pt: int) -> bytes | None:
    """The original packet carried by an RTX packet, or None when it carries none."""
    b = rtp_bounds(rtx)
    if b is None or b[1] - b[0] < 2:
        return None
    hs, end = b
    head = bytearray(rtx[:hs])
    head[0] &= ~0x20 & 0xFF
    head[1] = (head[1] & 0x80) | (media_pt & 0x7F)
    head[2:4] = rtx[hs : hs + 2]
    head[8:12] = (media_ssrc & 0xFFFF_FFFF).to_bytes(4, "big")
    return bytes(head) + rtx[hs + 2 : end]


# -- publisher side -------------------------------------------------------------------------

@dataclass(slots=True)
class SendHistoryStats:
    stored: int = 0
    requested: int = 0  # seqs asked for
    first_requests: int = 0  # seqs asked for the first time (a measure of the loss)
    resent: int = 0  # packets resent (RTX or plain)
    resent_bytes: int = 0
    missing: int = 0  # asked for but no longer (or never) in the history
    deduped: int = 0  # asked again within RTT/2 of the last resend


class SendHistory:
    """The sender's copy of recent packets, answering NACKs (RFC 4585) with RTX or resends."""

    DEDUPE_MAX_S = 0.05  # an inflated RTT estimate must not swallow real retries

    def __init__(self, capacity_packets: int = 1024, max_age_s: float = 2.0) -> None:
        if not 1 <= capacity_packets <= 32768:
            raise ValueError("capacity_packets must be in 1..32768")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.capacity = capacity_packets
        self.max_age = max_age_s
        self.rtt = 0.1  # seconds; the owner updates it from RTCP
        self.stats = SendHistoryStats()
        # seq -> [packet, sent_at, last_resent_at]
        self._pkts: dict[int, list[Any]] = {}
        self._order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._pkts)

    def add(self, packet: bytes, now: float) -> None:
        if len(packet) < 12:
            return
        seq = rtp_seq(packet)
        if seq in self._pkts:  # seq space wrapped onto a stale entry
            self._order.remove(seq)
        self._pkts[seq] = [packet, now, -1e18]
        self._order.append(seq)
        self.stats.stored += 1
        self._evict(now)

    def _evict(self, now: float) -> None:
        order, pkts = self._order, self._pkts
        while order and (len(order) > self.capacity or pkts[order[0]][1] < now - self.max_age):
            del pkts[order.popleft()]

    def get(self, seq: int) -> bytes | None:
        entry = self._pkts.get(seq & 0xFFFF)
        return None if entry is None else entry[0]

    def resend(self, seqs: list[int], now: float, rtx_ssrc: int | None = None,
               rtx_pt: int = 97, rtx_seq_counter: SeqCounter | None = None) -> list[bytes]:
        """Packets answering a NACK for ``seqs``: RTX when ``rtx_ssrc`` is given (numbered
        by ``rtx_seq_counter``), else the originals. A seq resent less than RTT/2 ago is
        skipped: the request crossed our answer."""
        self._evict(now)
        st = self.stats
        out: list[bytes] = []
        if rtx_ssrc is not None and rtx_seq_counter is None:
            raise ValueError("RTX needs an rtx_seq_counter")
        for seq in seqs:
            st.requested += 1
            entry = self._pkts.get(seq & 0xFFFF)
            if entry is None:
                st.missing += 1
                continue
            if now - entry[2] < min(self.rtt / 2, self.DEDUPE_MAX_S):
                st.deduped += 1
                continue
            repeat = entry[2] >= 0
            st.first_requests += not repeat
            entry[2] = now
            # A repeated request means an answer (or the request) was lost already: two
            # copies this time, so one more loss does not cost another round trip.
            for _ in range(2 if repeat else 1):
                pkt: bytes | None = entry[0]
                if rtx_ssrc is not None:
                    assert rtx_seq_counter is not None
                    pkt = build_rtx(entry[0], rtx_ssrc, rtx_pt, rtx_seq_counter.next())
                if pkt is None:
                    st.missing += 1
                    break
                out.append(pkt)
                st.resent += 1
                st.resent_bytes += len(pkt)
        return out

"""Media-synced events at the viewer: show a product card on the frame it belongs to.

The node stamps a synced event (``data.send`` with ``sync``) with ``media.ntp``: its own clock,
as 64-bit NTP, when the host's last video packet arrived. The sender reports the node sends
each viewer pair that same clock with the viewer's own RTP timestamps (they extrapolate the
last forwarded packet's timestamp by the elapsed wall time), so a viewer maps the stamp to
its subscription's RTP clock (:class:`MediaClock`) and holds the event until that frame is
decoded (:class:`SyncedEventScheduler`).

To check which frame was on screen, :func:`read_frame_index` reads the frame number that
``sfu.client.media.TestPattern`` draws (3x5 cells of ``max(2, h // 60)`` pixels, white on
black, top left) from a decoded picture: the luma of each cell's inside is thresholded and
the 15 bits looked up in the font; reading stops at the first cell group that is no digit.
The test pattern's backgrounds (a horizontal ramp, a uniform box) cannot form a digit glyph,
and libvpx keeps 235-vs-16 cells readable even at 320x180 and 100 kbit/s (checked: 300 of
300 frames at 640x360/800k, 320x180/300k and 320x180/100k).

:class:`SyncedViewer` (a subscriber with a data channel, a media clock and a scheduler) and
:func:`run_synced_events` (host + viewer + stamped events, errors in frames) serve
tests/test_synced_events.py and bench/costream_data.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from sfu import _native
from sfu.client.data import DataChannel
from sfu.client.media import _FONT, EncodedFrame, Vp8Decoder
from sfu.client.publisher import Publisher
from sfu.client.subscriber import Subscriber
from sfu.client.vp8 import AssembledFrame

__all__ = ["FrameIndexPublisher", "MediaClock", "ShownEvent", "SyncedEventScheduler",
           "SyncedResult", "SyncedViewer", "read_frame_index", "run_synced_events"]

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_GLYPHS = {bits: int(ch) for ch, bits in _FONT.items()}
MAX_DIGITS = 9


def _signed32(d: int) -> int:
    d &= _U32
    return d - (1 << 32) if d & 0x8000_0000 else d


def _signed64(d: int) -> int:
    d &= _U64
    return d - (1 << 64) if d & (1 << 63) else d


# -- the frame number drawn by TestPattern --------------------------------------------------

def read_frame_index(luma: npt.NDArray[np.uint8]) -> int | None:
    """The frame number TestPattern drew on this (h, w) luma plane; None if unreadable."""
    h, w = luma.shape[:2]
    s = max(2, h // 60)
    x0 = y0 = 2 * s
    m = 1 if s >= 4 else 0  # skip the cell border: compression smears edges
    value, digits = 0, 0
    for k in range(MAX_DIGITS):
        left0 = x0 + 4 * s * k
        if left0 + 3 * s > w or y0 + 5 * s > h:
            break
        bits = []
        for r in range(5):
            top = y0 + r * s
            for c in range(3):
                left = left0 + c * s
                cell = luma[top + m:top + s - m, left + m:left + s - m]
                bits.append("1" if float(cell.mean()) > 125.0 else "0")
        digit = _GLYPHS.get("".join(bits))
        if digit is None:
            break
        value, digits = value * 10 + digit, digits + 1
    return value if digits else None


def luma_of(picture: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The luma plane of a decoded picture (a view, no conversion)."""
    plane = picture.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return rows[:picture.height, :picture.width]


# -- NTP -> the subscription's RTP clock ----------------------------------------------------

class MediaClock:
    """Maps the node's NTP clock to one subscription's RTP timestamps, from the SRs the node
    sends about it (RFC 3550 §6.4.1): each predicts ``rtp = sr_rtp + (ntp - sr_ntp) * rate``.

    The node's SR extrapolates the timestamp of the last packet it forwarded by the wall
    time since that packet arrived, so a packet the host sent late makes that SR's
    prediction low by the delay. Over the last ``window`` SRs the highest prediction is
    used: the least delayed one (a minimum-delay filter, as NTP's clock filter). A
    prediction off the latest by more than ``jump_s`` means the timestamps jumped (a
    switch, a resume): the older SRs are dropped.
    """

    def __init__(self, clock_rate: int = 90_000, window: int = 5,
                 jump_s: float = 0.25) -> None:
        self.clock_rate = clock_rate
        self.jump_ticks = int(jump_s * clock_rate)
        self._srs: deque[tuple[int, int]] = deque(maxlen=window)  # (ntp64, rtp32)
        self.sr_count = 0
        self.jumps = 0

    @property
    def ready(self) -> bool:
        return bool(self._srs)

    def _predict(self, sr: tuple[int, int], ntp: int) -> int:
        sr_ntp, rtp = sr
        return (rtp + ((_signed64(ntp - sr_ntp) * self.clock_rate + (1 << 31)) >> 32)) & _U32

    def on_sr(self, ntp: int, rtp_ts: int) -> None:
        ntp, rtp_ts = ntp & _U64, rtp_ts & _U32
        if self._srs and _signed64(ntp - self._srs[-1][0]) <= 0:
            return  # a duplicate or reordered SR
        if any(abs(_signed32(self._predict(sr, ntp) - rtp_ts)) > self.jump_ticks
               for sr in self._srs):
            self._srs.clear()
            self.jumps += 1
        self._srs.append((ntp, rtp_ts))
        self.sr_count += 1

    def feed_rtcp(self, data: bytes, ssrc: int) -> int:
        """Take the SRs about ``ssrc`` from an RTCP datagram; returns how many. Malformed
        input is ignored (the subscriber counts it)."""
        try:
            packets = _native.parse_rtcp(data)
        except ValueError:
            return 0
        n = 0
        for p in packets:
            if p["type"] == "sr" and p["ssrc"] == ssrc:
                self.on_sr(int(p["ntp"]), int(p["rtp_ts"]))  # type: ignore[call-overload]
                n += 1
        return n

    def rtp_at(self, ntp: int) -> int | None:
        """The subscription's RTP timestamp at node time ``ntp``; None before the first SR."""
        if not self._srs:
            return None
        base = self._predict(self._srs[-1], ntp)
        return (base + max(_signed32(self._predict(sr, ntp) - base) for sr in self._srs)) \
            & _U32


# -- holding events until their frame -------------------------------------------------------

@dataclass(slots=True)
class ShownEvent:
    message: dict[str, Any]
    event_ts: int  # the stamp on this subscription's RTP clock
    frame_ts: int  # the frame it was shown with
    frame_index: int | None  # that frame's number, when the caller can read it
    delta_ticks: int  # frame_ts - event_ts (signed)
    late: bool  # its frame had already been shown when it was mapped
    shown_at: float


@dataclass(slots=True)
class _Pending:
    message: dict[str, Any]
    ntp: int
    ts: int | None = None
    late: bool = False


class SyncedEventScheduler:
    """Holds stamped events until the first decoded frame whose timestamp is at or past the
    event's, less half a frame (the frame the stamp falls in), then reports them shown with
    it. An event whose frame is already past is shown with the next frame (``late``).
    ``frame_ticks`` is learnt from the decoded frames' timestamps (median step) unless given.
    """

    def __init__(self, clock: MediaClock, frame_ticks: int | None = None,
                 on_show: Callable[[ShownEvent], None] | None = None) -> None:
        self.clock = clock
        self.fixed_ticks = frame_ticks
        self.on_show = on_show
        self.pending: list[_Pending] = []
        self.shown: list[ShownEvent] = []
        self._last_ts: int | None = None
        self._steps: deque[int] = deque(maxlen=15)

    @property
    def frame_ticks(self) -> int:
        if self.fixed_ticks:
            return self.fixed_ticks
        return int(statistics.median(self._steps)) if self._steps else 3000

    def add(self, message: dict[str, Any]) -> None:
        """A message with a ``media`` stamp (``{"track", "rtp_ts", "ntp"}``)."""
        media = message.get("media") or {}
        ntp = media.get("ntp")
        if type(ntp) is not int:
            raise ValueError("the message has no media.ntp stamp")
        p = _Pending(message, ntp)
        self._map(p)
        self.pending.append(p)

    def _map(self, p: _Pending) -> None:
        if p.ts is not None:
            return
        p.ts = self.clock.rtp_at(p.ntp)
        if p.ts is not None and self._last_ts is not None:
            p.late = _signed32(self._last_ts - p.ts) > self.frame_ticks // 2

    def on_frame(self, ts: int, index: int | None = None,
                 now: float | None = None) -> list[ShownEvent]:
        """A frame was decoded (put on screen); returns the events shown with it."""
        ts &= _U32
        if self._last_ts is not None:
            step = _signed32(ts - self._last_ts)
            if 0 < step < self.clock.clock_rate:
                self._steps.append(step)
        half = self.frame_ticks // 2
        shown: list[ShownEvent] = []
        keep: list[_Pending] = []
        for p in self.pending:
            self._map(p)
            if p.ts is not None and _signed32(ts - p.ts) >= -half:
                ev = ShownEvent(p.message, p.ts, ts, index, _signed32(ts - p.ts), p.late,
                                time.monotonic() if now is None else now)
                shown.append(ev)
            else:
                keep.append(p)
        self.pending = keep
        self._last_ts = ts
        for ev in shown:
            self.shown.append(ev)
            if self.on_show is not None:
                self.on_show(ev)
        return shown


# -- clients ------------------------------------------------------------------------------

def _single_thread(ctx: Any) -> None:
    # libvpx's default (one thread per core) makes a 2 ms frame take 20-60 ms when the
    # machine is oversubscribed (its threads wait for each other); one thread stays fast.
    # Before the codec opens (at the first frame). Vp8Encoder/Decoder keep the context in
    # ``_ctx`` and take no thread option.
    if ctx is not None and not ctx.is_open:
        ctx.thread_count = 1


class _KeepingDecoder(Vp8Decoder):
    """Keeps the last decoded picture so the viewer can read what is on screen."""

    last_picture: av.VideoFrame | None = None

    def __init__(self) -> None:
        super().__init__()
        _single_thread(getattr(self, "_ctx", None))

    def decode(self, data: bytes) -> list[av.VideoFrame]:
        frames = super().decode(data)
        if frames:
            self.last_picture = frames[-1]
        return frames


class SyncedViewer(Subscriber):
    """A subscriber with a data channel on its endpoint that shows the synced events of its
    track with their frame, reading each decoded frame's number."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, **kwargs: Any) -> None:
        super().__init__(node, ufrag, pwd, **kwargs)
        self.decoder = _KeepingDecoder()
        self.track_id: str | None = None
        self.media_clock = MediaClock()
        self.scheduler = SyncedEventScheduler(self.media_clock)
        self.data = DataChannel(self)
        self.data.on_message = self._on_data
        self.indices: dict[int, int | None] = {}  # frame ts -> number read (last 300)
        self.unreadable = 0
        self.foreign_events = 0  # stamped for another track

    @classmethod
    async def join(cls, control: Any, room: str, participant: str, track: str,
                   **kwargs: Any) -> SyncedViewer:
        sub = await super().join(control, room, participant, track, **kwargs)
        assert isinstance(sub, SyncedViewer)
        sub.track_id = track
        return sub

    def _on_data(self, message: dict[str, Any]) -> None:
        media = message.get("media")
        if not isinstance(media, dict) or "ntp" not in media:
            return
        if self.track_id is not None and media.get("track") != self.track_id:
            self.foreign_events += 1
            return
        with contextlib.suppress(ValueError):  # no integer stamp: nothing to sync to
            self.scheduler.add(message)

    def on_rtcp(self, data: bytes) -> None:
        super().on_rtcp(data)
        if self.media_ssrc:
            self.media_clock.feed_rtcp(data, self.media_ssrc)

    def _on_frame(self, frame: AssembledFrame, now: float) -> None:
        decoder = self.decoder
        before = decoder.decoded if decoder is not None else 0
        super()._on_frame(frame, now)
        if not isinstance(decoder, _KeepingDecoder) or decoder.decoded == before:
            return  # skipped or undecodable: nothing new on screen
        assert decoder.last_picture is not None
        index = read_frame_index(luma_of(decoder.last_picture))
        self.unreadable += index is None
        self.indices[frame.timestamp] = index
        if len(self.indices) > 300:
            del self.indices[next(iter(self.indices))]
        self.scheduler.on_frame(frame.timestamp, index, now)

    def close(self) -> None:
        self.data.close()
        super().close()


class FrameIndexPublisher(Publisher):
    """A publisher run by a camera-like clock (:meth:`run_clocked`), remembering the number
    (pts) and RTP timestamp of each frame it sent.

    ``Publisher.run`` counts timestamps in frames (``pts * 90000 / fps``) and catches up
    after a stall by sending late frames back to back: on a busy machine its media clock
    trails real time by a varying amount, and the node's SRs, which extrapolate by wall time
    as for any live source, cannot match it. Here frame slots are fixed on the monotonic
    clock (RFC 3550 §5.1: the timestamp is the sampling instant): the frame captured for
    slot k has timestamp ``k * 90000 / fps``; after a stall the frames catch up back to back,
    and a frame more than ``max_lag`` periods late moves to the slot it is in (the skipped
    slots are frames a camera would have dropped).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_index: int | None = None
        self.ts_of: dict[int, int] = {}  # frame number -> RTP timestamp
        self.index_at: dict[int, int] = {}  # RTP timestamp -> frame number
        self.slots_skipped = 0
        # Frame periods a frame may leave after its slot: behind by less, the next frames
        # go out back to back until on time again (a timestamp gap would look like a lost
        # frame to the receiver, which then waits for a key frame).
        self.max_lag = 10.0
        self.last_lag = 0.0  # of the last frame sent, in frame periods
        self.last_skip_at: float | None = None
        self._slot = 0
        _single_thread(getattr(self.encoder, "_ctx", None))

    def rtp_timestamp(self, pts: int) -> int:
        ts = self.ts_of.get(pts)
        if ts is None:
            ts = (self._ts_base + self._slot * 90_000 // self.encoder.fps) & _U32
            self.ts_of[pts], self.index_at[ts] = ts, pts
        return ts

    def send_frame(self, frame: EncodedFrame) -> int:
        n = super().send_frame(frame)
        self.last_index = frame.pts
        return n

    async def run_clocked(self, seconds: float, sr_interval: float = 1.0) -> None:
        """Capture, encode and send one frame per slot for ``seconds``."""
        fps = self.encoder.fps
        t0 = time.monotonic()
        next_sr = t0
        slot = -1
        while True:
            slot += 1
            due = t0 + slot / fps
            if due - t0 >= seconds:
                return
            # Always yield: catching up must not starve the loop (the node may live in it).
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            if (now - due) * fps > self.max_lag:
                current = int((now - t0) * fps)
                self.slots_skipped += current - slot
                self.last_skip_at, slot = now, current
            self._slot = slot
            # In the loop, not a thread: a 320x180 frame takes a few ms, and a thread hop
            # would add its own scheduling delay to the send time.
            self.send_next()
            now = time.monotonic()
            self.last_lag = (now - t0) * fps - slot
            if now >= next_sr:
                self.send_sr()
                next_sr = now + sr_interval


# -- the scenario -------------------------------------------------------------------------

@dataclass(slots=True)
class SyncedResult:
    sent_index: list[int] = field(default_factory=list)  # host's last sent frame at the call
    stamp_index: list[int] = field(default_factory=list)  # frame the stamp names (-1: none)
    shown_index: list[int | None] = field(default_factory=list)  # frame shown with, viewer
    late: list[bool] = field(default_factory=list)
    missing: int = 0  # events never shown before the timeout
    uncalm: int = 0  # events sent while the host's frames were late (see _calm_moment)
    unreadable: int = 0  # decoded frames whose number could not be read
    index_mismatch: int = 0  # frames whose number disagrees with their RTP timestamp
    frames_decoded: int = 0

    @property
    def errors(self) -> list[int]:
        """Shown frame minus the host's frame at the call, per shown event."""
        return [s - e for s, e in zip(self.shown_index, self.sent_index, strict=True)
                if s is not None]

    @property
    def max_abs_error(self) -> int | None:
        errs = self.errors
        return max((abs(e) for e in errs), default=None) if len(errs) == len(
            self.sent_index) else None


def _mismatches(indices: dict[int, int | None], ts_of: dict[int, int]) -> int:
    """Decoded frames whose number read does not match their timestamp: the node shifts
    every timestamp of a subscription by one offset, so ``viewer ts - host ts`` of the
    number read must be the same for all (the reader misread otherwise)."""
    offsets = [(ts - ts_of[i]) & _U32 for ts, i in indices.items()
               if i is not None and i in ts_of]
    if not offsets:
        return 0
    common = max(set(offsets), key=offsets.count)
    return sum(1 for o in offsets if o != common) + sum(
        1 for i in indices.values() if i is not None and i not in ts_of)


async def _calm_moment(pub: FrameIndexPublisher, timeout: float = 2.0) -> bool:
    """Wait for a frame the host sent on time (less than half a frame late), and more
    than an SR interval after it last skipped slots. The test machine's scheduling delays
    of our synthetic camera are not what is measured; a live camera sends on time. False
    if no such moment came within ``timeout`` (the event is sent anyway)."""
    deadline = time.monotonic() + timeout
    seen = pub.last_index
    while time.monotonic() < deadline:
        await asyncio.sleep(0.002)
        if pub.last_index == seen:
            continue
        seen = pub.last_index
        skip = pub.last_skip_at
        if pub.last_lag < 0.5 and (skip is None or time.monotonic() - skip > 1.2):
            return True
    return False


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run_synced_events(control: Any, room: str, events: int = 5, *,
                            gap_s: tuple[float, float] = (0.25, 0.6), width: int = 320,
                            height: int = 180, fps: int = 30, bitrate: int = 300_000,
                            seed: int = 1, host: str = "host", viewer: str = "viewer",
                            show_timeout: float = 3.0) -> SyncedResult:
    """A host publishing numbered VP8 frames, a viewer decoding them; ``events`` product
    events sent with ``sync: true`` at random moments. For each: the host's last sent frame
    at the call, the frame the stamp names, and the frame the viewer showed it with."""
    rng = random.Random(seed)
    pub = await FrameIndexPublisher.join(control, room, host, width=width, height=height,
                                         fps=fps, bitrate=bitrate, keyframe_interval=60)
    assert pub.track is not None
    sub: SyncedViewer | None = None
    sending = asyncio.create_task(pub.run_clocked(120.0))
    out = SyncedResult()
    try:
        sub = await SyncedViewer.join(control, room, viewer, pub.track)
        v = sub
        # Decoding, and at least one SR about the subscription (the node sends one a second).
        try:
            await _until(lambda: v.stats.frames_decoded >= 10 and v.media_clock.ready, 8.0,
                         "the viewer decoding and its first SR")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: viewer {v.stats}, SRs {v.media_clock.sr_count}, "
                               f"host {pub.stats}") from None
        for i in range(events):
            await asyncio.sleep(rng.uniform(*gap_s))
            out.uncalm += not await _calm_moment(pub)
            assert pub.last_index is not None
            sent = pub.last_index  # no await between this and the request going out
            res = await control.call("data.send", room=room, kind="product", text=f"card {i}",
                                     extra={"i": i}, sync=True)
            out.sent_index.append(sent)
            out.stamp_index.append(pub.index_at.get(int(res["media"]["rtp_ts"]), -1))
        # Not shown in time: counted as missing below.
        with contextlib.suppress(TimeoutError):
            await _until(lambda: not v.scheduler.pending and len(v.scheduler.shown) >= events,
                         show_timeout, "every event shown")
    finally:
        sending.cancel()
        if sub is not None:
            by_i = {ev.message.get("x", {}).get("i"): ev for ev in sub.scheduler.shown}
            for i in range(len(out.sent_index)):
                ev = by_i.get(i)
                out.shown_index.append(None if ev is None else ev.frame_index)
                out.late.append(bool(ev and ev.late))
                out.missing += ev is None
            out.unreadable = sub.unreadable
            out.index_mismatch = _mismatches(sub.indices, pub.ts_of)
            out.frames_decoded = sub.stats.frames_decoded
            sub.close()
        pub.close()
    return out

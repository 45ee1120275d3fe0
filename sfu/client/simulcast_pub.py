"""Simulcast VP8 publisher: three resolutions of the same synthetic video, L1T3 each.

One PyAV libvpx encoder per layer (q 320x180, h 640x360, f 1280x720 by default) is fed the
SAME picture (the :class:`~sfu.client.media.TestPattern` at the top layer's size, decimated
for the lower ones), so the layers show the same frame at the same RTP time. Each layer is
its own RTP stream (spec: simulcast layers are separate SSRCs of one track):

- own SSRC, RTX SSRC, random sequence and timestamp bases, send history answering NACKs
  with RTX (RFC 4588), a keyframe answer to PLI/FIR naming that SSRC (that layer only);
- an RFC 7741 descriptor on every packet: 15-bit PictureID (+1 per frame), TL0PICIDX (+1 per
  TID-0 frame), TID and Y. The TIDs are libvpx's own: FFmpeg's ``ts_layering_mode=3``
  (``ts-parameters``) encodes frame k of each 4-frame period as TID 0,2,1,2 and restarts the
  period at a forced keyframe; we mirror that counter. Mode 3 references (FFmpeg
  set_temporal_layer_pattern): TID 0 refs/updates LAST; TID 2 (k=1) refs LAST, updates
  nothing; TID 1 refs LAST, updates GOLDEN; TID 2 (k=3) refs GOLDEN, updates nothing. So
  k=1 and k=2 depend on TL0 only (Y=1), k=3 does not (Y=0), and TID 2 frames are
  non-reference (N=1);
- an RTCP SR per layer right after its first frame and every ``sr_interval`` s, NTP from one
  wall clock, RTP time of "now" on that layer's clock (one capture clock for all layers), so
  the node can align the layers' timestamps.

Encoding runs off the event loop: in one thread (``encoder="thread"``), or in a worker
process (``encoder="process"``; PyAV holds the GIL for part of each encode, so a busy loop
in the same process and the encoder slow each other down). Frames are paced at ``fps`` on
an absolute schedule; a late publisher skips the frames it missed instead of a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt

from sfu import _native
from sfu.client.loss import RTX_PT, SendHistory, SeqCounter
from sfu.client.media import TestPattern, vp8_encoder_name
from sfu.client.publisher import (
    VIDEO_CLOCK,
    RtpEndpoint,
    ntp_now,
    parse_hostport,
    parse_rtcp_counted,
    random_ssrc,
)
from sfu.client.vp8 import PICTURE_ID_MOD, build_descriptor

__all__ = ["DEFAULT_LAYERS", "LayerSpec", "LayerStats", "SimulcastPublisher", "TID_PATTERN",
           "scale_yuv420"]

TID_PATTERN = (0, 2, 1, 2)  # libvpx/FFmpeg ts_layering_mode=3, period 4
_SYNC = (False, True, True, False)  # TID>0 frame k refs TL0 frames only (docstring)


@dataclass(frozen=True, slots=True)
class LayerSpec:
    rid: str
    width: int
    height: int
    max_bitrate: int  # bit/s, the encoder's target


DEFAULT_LAYERS = (LayerSpec("q", 320, 180, 150_000), LayerSpec("h", 640, 360, 500_000),
                  LayerSpec("f", 1280, 720, 2_400_000))


@dataclass(slots=True)
class LayerStats:
    frames: int = 0
    keyframes: int = 0
    forced_keyframes: int = 0
    plis: int = 0
    firs: int = 0
    packets: int = 0
    bytes: int = 0  # RTP payload octets (what the SR counts)
    nacks: int = 0
    nack_seqs: int = 0
    rtx_sent: int = 0
    rtx_bytes: int = 0
    sr_sent: int = 0
    keyframe_bytes: int = 0
    # PLI/FIR received -> last packet of the keyframe answering it sent (ms), last 64
    key_delay_ms: list[float] = field(default_factory=list)
    encode_s: float = 0.0  # wall time in this layer's encoder (thread), for the CPU check


@dataclass(slots=True)
class _Encoded:
    data: bytes
    keyframe: bool
    tid: int
    sync: bool  # Y: depends on TL0 frames only


@dataclass(slots=True)
class _Layer:
    spec: LayerSpec
    ssrc: int
    rtx_ssrc: int
    seq: int
    ts_base: int
    picture_id: int
    tl0picidx: int
    history: SendHistory
    rtx_seq: SeqCounter
    stats: LayerStats = field(default_factory=LayerStats)
    want_keyframe: bool = True  # the first frame is forced: it restarts libvpx's period
    last_fir_seq: int | None = None
    key_asked_at: float | None = None  # first PLI/FIR not answered yet
    paused: bool = False
    sent_first: bool = False


def _rand(bits: int) -> int:
    return int.from_bytes(os.urandom(4), "big") & ((1 << bits) - 1)


def _plane_index(src: int, dst: int) -> slice | npt.NDArray[np.intp]:
    """Rows/columns of a source plane of size ``src`` that make a ``dst`` plane."""
    if src % dst == 0:
        return slice(None, None, src // dst)
    return (np.arange(dst) * src // dst).astype(np.intp)


def scale_yuv420(buf: npt.NDArray[np.uint8], width: int, height: int, out_w: int,
                 out_h: int) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour downscale of a packed yuv420p picture (``(h*3/2, w)``, the layout
    of TestPattern and ``VideoFrame.from_ndarray``). Decimation is enough: the point is the
    same content at three sizes, not image quality."""
    if (out_w, out_h) == (width, height):
        return buf
    out = np.empty((out_h * 3 // 2, out_w), dtype=np.uint8)
    ry, cy = _plane_index(height, out_h), _plane_index(width, out_w)
    out[:out_h] = buf[:height][ry][:, cy]
    rc, cc = _plane_index(height // 2, out_h // 2), _plane_index(width // 2, out_w // 2)
    q, oq = height // 4, out_h // 4
    for k in range(2):  # U then V, each stored as (h/4, w) rows of a (h/2, w/2) plane
        plane = buf[height + k * q : height + (k + 1) * q].reshape(height // 2, width // 2)
        out[out_h + k * oq : out_h + (k + 1) * oq] = (
            plane[rc][:, cc].reshape(oq, out_w))
    return out


def _make_encoder(spec: LayerSpec, fps: int, temporal_layers: int,
                  cpu_used: int) -> av.VideoCodecContext:
    ctx = av.CodecContext.create(vp8_encoder_name(), "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height = spec.width, spec.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps)
    ctx.bit_rate = spec.max_bitrate
    ctx.gop_size = 1 << 30  # keyframes only when we force them (they restart the TID period)
    ctx.thread_count = 1
    opts = {"deadline": "realtime", "cpu-used": str(cpu_used), "lag-in-frames": "0",
            # ER mode: no entropy carried between frames, so dropping TID>0 frames is safe
            "error-resilient": "1"}
    if temporal_layers == 3:
        kbps = spec.max_bitrate // 1000
        # Cumulative per-TID targets (libwebrtc's 40/60/100 % split); ts_layering_mode must
        # come last: it overrides the periodicity and ids set before it.
        opts["ts-parameters"] = (f"ts_target_bitrate={kbps * 2 // 5},{kbps * 3 // 5},{kbps}"
                                 ":ts_layering_mode=3")
    ctx.options = opts
    return ctx


class _EncoderBank:
    """The per-layer encoders and the picture source: lives in the encoding thread or in
    the worker process, and is touched by nothing else."""

    def __init__(self, specs: tuple[LayerSpec, ...], fps: int, temporal_layers: int,
                 cpu_used: int, seed: int) -> None:
        self.top = max(specs, key=lambda s: s.width * s.height)
        self.pattern = TestPattern(self.top.width, self.top.height, seed)
        self.specs, self.temporal_layers = specs, temporal_layers
        self.ctxs = [_make_encoder(s, fps, temporal_layers, cpu_used) for s in specs]
        self.period = [0] * len(specs)  # position in TID_PATTERN, per layer

    def encode(self, index: int, forced: list[bool],
               paused: list[bool]) -> tuple[list[list[_Encoded]], list[float]]:
        picture = self.pattern.picture(index)
        out: list[list[_Encoded]] = []
        took: list[float] = []
        for i, spec in enumerate(self.specs):
            if paused[i]:
                out.append([])
                took.append(0.0)
                continue
            t = time.perf_counter()
            arr = scale_yuv420(picture, self.top.width, self.top.height, spec.width,
                               spec.height)
            frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
            frame.pts = index
            if forced[i]:
                frame.pict_type = av.video.frame.PictureType.I  # libvpx: VPX_EFLAG_FORCE_KF
                self.period[i] = 0  # FFmpeg restarts the temporal period at a forced key
            k = self.period[i] if self.temporal_layers == 3 else 0
            self.period[i] = (self.period[i] + 1) % len(TID_PATTERN)
            frames = []
            for packet in self.ctxs[i].encode(frame):
                key = bool(packet.is_keyframe)
                # A keyframe refreshes every reference buffer: TID 0 whatever its slot.
                frames.append(_Encoded(bytes(packet), key, 0 if key else TID_PATTERN[k],
                                       key or _SYNC[k]))
            out.append(frames)
            took.append(time.perf_counter() - t)
        return out, took


def _encoder_worker(conn: Connection, args: tuple[Any, ...]) -> None:
    """Worker process: encodes on request, so PyAV's GIL-held work (frame conversion,
    packet copies) never competes with the publisher's event loop."""
    bank = _EncoderBank(*args)
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
        conn.send("ready")
        while (req := conn.recv()) is not None:
            conn.send(bank.encode(*req))
    conn.close()


class SimulcastPublisher(RtpEndpoint):
    """Publishes one VP8 video track as simulcast layers (low → high), L1T3 on each."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, *,
                 layers: tuple[LayerSpec, ...] = DEFAULT_LAYERS, fps: int = 30,
                 temporal_layers: int = 3, keyframe_interval_s: float = 0.0,
                 payload_type: int = 96, max_payload: int = 1200, cpu_used: int = 16,
                 sr_interval: float = 0.5, seed: int = 7, cname: str = "simulcast",
                 encoder: str = "thread") -> None:
        super().__init__(node, ufrag, pwd)
        if not layers or len({s.rid for s in layers}) != len(layers):
            raise ValueError("layers must be non-empty with distinct rids")
        areas = [s.width * s.height for s in layers]
        if areas != sorted(areas):
            raise ValueError("layers must be listed low -> high (track.publish order)")
        top = layers[-1]
        for s in layers:
            if s.width % 2 or s.height % 4 or s.width > top.width or s.height > top.height \
                    or s.max_bitrate <= 0:
                raise ValueError(f"layer {s.rid}: width even, height a multiple of 4, within "
                                 f"{top.width}x{top.height}, positive bitrate")
        if temporal_layers not in (1, 3):
            raise ValueError("temporal_layers must be 1 or 3 (libvpx ts_layering_mode=3)")
        if fps <= 0 or max_payload < 64 or sr_interval <= 0 or keyframe_interval_s < 0:
            raise ValueError("fps, max_payload, sr_interval must be positive")
        self.fps, self.temporal_layers = fps, temporal_layers
        self.payload_type, self.rtx_pt = payload_type, RTX_PT["video"]
        self.max_payload, self.sr_interval, self.cname = max_payload, sr_interval, cname
        self.keyframe_interval_s = keyframe_interval_s  # 0: keyframes only on PLI/FIR
        if encoder not in ("thread", "process"):
            raise ValueError("encoder must be 'thread' or 'process'")
        self.encoder_mode = encoder
        self._bank_args = (tuple(layers), fps, temporal_layers, cpu_used, seed)
        self.layers = [
            _Layer(s, random_ssrc(), random_ssrc(), _rand(16), _rand(32), _rand(15), _rand(8),
                   SendHistory(2048, 2.0), SeqCounter())
            for s in layers]
        self.by_ssrc = {lay.ssrc: lay for lay in self.layers}
        self.by_rid = {lay.spec.rid: lay for lay in self.layers}
        self.frames_skipped = 0  # capture instants missed because we ran late
        self.rtcp_errors = 0
        self.rtt_ms = 0.0
        self.track: str | None = None
        self.room = self.participant = ""
        self._rtt_samples: list[float] = []
        self._node_sr: tuple[int, int, float] | None = None  # (ssrc, lsr, received at)
        self._t0 = 0.0  # monotonic time of frame index 0 (the capture clock's origin)
        self._pool: ThreadPoolExecutor | None = None
        self._bank: _EncoderBank | None = None
        self._worker: BaseProcess | None = None
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- control-side helpers ---------------------------------------------------------------

    def layers_param(self) -> dict[str, Any]:
        """The ``layers`` and ``temporal_layers`` params of ``track.publish`` (low → high)."""
        out = [{"rid": lay.spec.rid, "ssrc": lay.ssrc, "rtx_ssrc": lay.rtx_ssrc,
                "width": lay.spec.width, "height": lay.spec.height,
                "max_bitrate": lay.spec.max_bitrate} for lay in self.layers]
        return {"layers": out, "temporal_layers": self.temporal_layers}

    @classmethod
    async def join(cls, control: Any, room: str, participant: str, *, role: str = "host",
                   via: tuple[str, int] | None = None, bind_timeout: float = 5.0,
                   **kw: Any) -> SimulcastPublisher:
        """participant.join, STUN bind, track.publish; call :meth:`start` to send media."""
        joined = await control.call("participant.join", room=room, participant=participant,
                                    role=role)
        pub = cls(via or parse_hostport(joined["udp"]), joined["ice_ufrag"],
                  joined["ice_pwd"], cname=participant, **kw)
        pub.room, pub.participant = room, participant
        res = await pub.open_bind_call(
            control, bind_timeout, "track.publish", room=room, participant=participant,
            kind="video", codec="VP8", payload_type=pub.payload_type, clock_rate=VIDEO_CLOCK,
            **pub.layers_param())
        pub.track = res["track"]
        return pub

    def stats(self) -> dict[str, LayerStats]:
        return {lay.spec.rid: lay.stats for lay in self.layers}

    def request_keyframe(self, rid: str) -> None:
        self.by_rid[rid].want_keyframe = True

    def set_paused(self, rid: str, paused: bool) -> None:
        """Stop (or resume) encoding one layer, e.g. on ``track.layers_changed`` unused;
        a resumed layer starts with a keyframe."""
        lay = self.by_rid[rid]
        if lay.paused and not paused:
            lay.want_keyframe = True
        lay.paused = paused

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open and bind the socket if not done yet, then send frames until :meth:`close`."""
        if self._task is not None:
            return
        if self.transport is None:
            await self.open()
        if self.mapped is None:
            await self.bind()
        if self.encoder_mode == "process":
            # spawn: forking a process that runs an event loop and threads is unsafe.
            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe()
            worker = ctx.Process(target=_encoder_worker, args=(child, self._bank_args),
                                 daemon=True, name="simulcast-encoder")
            worker.start()
            self._worker = worker
            child.close()
        else:
            self._bank = _EncoderBank(*self._bank_args)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="simulcast-enc")
        if self._conn is not None:
            # The worker imports PyAV and builds the encoders (~1 s): wait, so the first
            # frames are not counted as late.
            try:
                ready = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self._pool, self._conn.recv),
                    30.0)
            except (EOFError, OSError) as exc:
                raise RuntimeError("simulcast encoder process failed to start") from exc
            if ready != "ready":
                raise RuntimeError(f"simulcast encoder process said {ready!r}")
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._conn.close()
        if self._worker is not None:
            self._worker.join(2.0)
            if self._worker.is_alive():
                self._worker.kill()
        super().close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        self._t0 = time.monotonic()
        index, next_sr, next_kf = 0, self._t0, self._t0 + (self.keyframe_interval_s or 1e18)
        while not self._closed:
            if time.monotonic() >= next_kf:
                for lay in self.layers:
                    lay.want_keyframe = True
                next_kf += self.keyframe_interval_s
            # Taken on the loop, so a PLI arriving during the encode is kept for the next one.
            forced = [lay.want_keyframe and not lay.paused for lay in self.layers]
            for lay, f in zip(self.layers, forced, strict=True):
                lay.want_keyframe = lay.want_keyframe and not f
            assert self._pool is not None
            try:
                encoded, took = await loop.run_in_executor(
                    self._pool, self._encode, index, forced,
                    [lay.paused for lay in self.layers])
            except (RuntimeError, EOFError, OSError):  # closed meanwhile
                return
            now = time.monotonic()
            for lay, frames, dt, f in zip(self.layers, encoded, took, forced, strict=True):
                lay.stats.encode_s += dt
                lay.stats.forced_keyframes += f
                for fr in frames:
                    self._send_frame(lay, index, fr)
                if frames and not lay.sent_first:
                    lay.sent_first = True
                    self._send_sr(lay, now)  # the node can align this layer at once
            if now >= next_sr:
                for lay in self.layers:
                    if lay.sent_first:
                        self._send_sr(lay, now)
                next_sr = now + self.sr_interval
            index += 1
            late = time.monotonic() - (self._t0 + index * period)
            if late > period:
                # Missed capture instants are skipped (a camera drops frames too): catching
                # up by encoding them back to back would send a burst.
                skip = int(late / period)
                index += skip
                self.frames_skipped += skip
            await asyncio.sleep(max(0.0, self._t0 + index * period - time.monotonic()))

    # -- encoding (worker thread) -------------------------------------------------------------

    def _encode(self, index: int, forced: list[bool],
                paused: list[bool]) -> tuple[list[list[_Encoded]], list[float]]:
        """Runs in the pool thread: encode here, or ask the worker process (the thread
        waits on the pipe without the GIL)."""
        if self._bank is not None:
            return self._bank.encode(index, forced, paused)
        assert self._conn is not None
        self._conn.send((index, forced, paused))
        return cast(tuple[list[list[_Encoded]], list[float]], self._conn.recv())

    # -- RTP ------------------------------------------------------------------------------------

    def rtp_timestamp(self, lay: _Layer, index: int) -> int:
        return (lay.ts_base + index * VIDEO_CLOCK // self.fps) & 0xFFFF_FFFF

    def _send_frame(self, lay: _Layer, index: int, fr: _Encoded) -> None:
        if fr.tid == 0:
            lay.tl0picidx = (lay.tl0picidx + 1) & 0xFF
        desc = {"picture_id": lay.picture_id, "tl0picidx": lay.tl0picidx, "tid": fr.tid,
                "layer_sync": fr.sync, "non_reference": fr.tid == 2}
        first = build_descriptor(True, **desc)  # type: ignore[arg-type]
        rest = build_descriptor(False, **desc)  # type: ignore[arg-type]
        budget = self.max_payload - len(first)
        count = max(1, -(-len(fr.data) // budget))
        base, extra = divmod(len(fr.data), count)  # balanced: no tiny last packet
        ts = self.rtp_timestamp(lay, index)
        now = time.monotonic()
        st, pos = lay.stats, 0
        for i in range(count):
            size = base + (1 if i < extra else 0)
            payload = (first if i == 0 else rest) + fr.data[pos : pos + size]
            pos += size
            pkt = _native.build_rtp(self.payload_type, lay.seq, ts, lay.ssrc, payload,
                                    marker=i == count - 1)
            lay.seq = (lay.seq + 1) & 0xFFFF
            self.send(pkt)
            lay.history.add(pkt, now)
            st.packets += 1
            st.bytes += len(payload)
        lay.picture_id = (lay.picture_id + 1) % PICTURE_ID_MOD
        if fr.keyframe and lay.key_asked_at is not None:
            st.key_delay_ms = (st.key_delay_ms + [(time.monotonic() - lay.key_asked_at)
                                                  * 1000])[-64:]
            lay.key_asked_at = None
        st.frames += 1
        st.keyframes += fr.keyframe
        st.keyframe_bytes += len(fr.data) if fr.keyframe else 0

    def _send_sr(self, lay: _Layer, mono: float) -> None:
        wall = time.time() - (time.monotonic() - mono)
        # RTP time of "now" on the shared capture clock: the same instant on every layer.
        ts = (lay.ts_base + round((mono - self._t0) * VIDEO_CLOCK)) & 0xFFFF_FFFF
        reports = []
        if self._node_sr is not None:
            node_ssrc, lsr, at = self._node_sr
            reports.append({"ssrc": node_ssrc, "lsr": lsr,
                            "dlsr": int((mono - at) * 65536) & 0xFFFF_FFFF})
        st = lay.stats
        sr = _native.build_sr(lay.ssrc, ntp_now(wall), ts, st.packets & 0xFFFF_FFFF,
                              st.bytes & 0xFFFF_FFFF, reports=reports)
        self.send(sr + _native.build_sdes(lay.ssrc, self.cname))
        st.sr_sent += 1

    # -- RTCP in ----------------------------------------------------------------------------

    def on_rtcp(self, data: bytes) -> None:
        for pkt in parse_rtcp_counted(data, self):
            kind = pkt["type"]
            if kind == "pli":
                lay = self.by_ssrc.get(cast(int, pkt["media_ssrc"]))
                if lay is not None:
                    lay.stats.plis += 1
                    self._keyframe_asked(lay)
            elif kind == "fir":
                for entry in cast(list[dict[str, int]], pkt.get("entries", [])):
                    lay = self.by_ssrc.get(entry["ssrc"])
                    # RFC 5104 §4.3.1.2: a repeated seq_nr is a retransmitted request.
                    if lay is not None and entry.get("seq_nr") != lay.last_fir_seq:
                        lay.last_fir_seq = entry.get("seq_nr")
                        lay.stats.firs += 1
                        self._keyframe_asked(lay)
            elif kind == "nack":
                lay = self.by_ssrc.get(cast(int, pkt["media_ssrc"]))
                if lay is not None:
                    self._resend(lay, cast(list[int], pkt.get("lost", [])))
            elif kind in ("sr", "rr"):
                if kind == "sr" and pkt["ssrc"] not in self.by_ssrc:
                    self._node_sr = (cast(int, pkt["ssrc"]),
                                     (cast(int, pkt["ntp"]) >> 16) & 0xFFFF_FFFF,
                                     time.monotonic())
                for block in cast(list[dict[str, int]], pkt.get("reports", [])):
                    if block.get("ssrc") in self.by_ssrc:
                        self._rtt_from(block)

    @staticmethod
    def _keyframe_asked(lay: _Layer) -> None:
        lay.want_keyframe = True
        if lay.key_asked_at is None:
            lay.key_asked_at = time.monotonic()

    def _resend(self, lay: _Layer, seqs: list[int]) -> None:
        st = lay.stats
        st.nacks += 1
        st.nack_seqs += len(seqs)
        for out in lay.history.resend(seqs, time.monotonic(), lay.rtx_ssrc, self.rtx_pt,
                                      lay.rtx_seq):
            self.send(out)
            st.rtx_sent += 1
            st.rtx_bytes += len(out)

    def _rtt_from(self, block: dict[str, int]) -> None:
        # RFC 3550 §6.4.1: RTT = A - LSR - DLSR, in 1/65536 s.
        lsr, dlsr = block.get("lsr", 0), block.get("dlsr", 0)
        if not lsr:
            return
        rtt = (((ntp_now() >> 16) - lsr - dlsr) & 0xFFFF_FFFF) / 65536
        if rtt < 10.0:
            self._rtt_samples = (self._rtt_samples + [rtt])[-8:]
            best = min(self._rtt_samples)  # a stalled loop only inflates samples
            self.rtt_ms = best * 1000
            for lay in self.layers:
                lay.history.rtt = best

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Per-layer counters plus the achieved bitrate and encode cost, for benches."""
        elapsed = max(1e-9, time.monotonic() - self._t0) if self._t0 else 0.0
        out: dict[str, Any] = {"elapsed_s": round(elapsed, 1),
                               "frames_skipped": self.frames_skipped,
                               "rtt_ms": round(self.rtt_ms, 1)}
        for lay in self.layers:
            st = lay.stats
            out[lay.spec.rid] = {
                "frames": st.frames, "keyframes": st.keyframes, "plis": st.plis,
                "firs": st.firs, "bytes": st.bytes, "rtx_sent": st.rtx_sent,
                "kbps": round(st.bytes * 8 / elapsed / 1000, 1) if elapsed else 0.0,
                "keyframe_bytes_avg": round(st.keyframe_bytes / st.keyframes)
                if st.keyframes else 0,
                "pli_to_keyframe_ms": {
                    "p50": round(sorted(st.key_delay_ms)[len(st.key_delay_ms) // 2], 1),
                    "max": round(max(st.key_delay_ms), 1)} if st.key_delay_ms else None,
                "encode_ms_per_frame": round(st.encode_s * 1000 / st.frames, 2)
                if st.frames else 0.0}
        return out

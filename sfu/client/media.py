"""PyAV helpers: a VP8 encoder fed with synthetic moving pictures, and a VP8 decoder.

The pictures are deterministic (a scrolling gradient, a moving box, a noisy patch that
keeps the bitrate up, and the frame number drawn in large digits) so a decoded picture
can be related to the frame that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

__all__ = ["EncodedFrame", "TestPattern", "Vp8Decoder", "Vp8Encoder", "vp8_encoder_name"]

# 3x5 bitmap font for the frame counter, one string of 15 bits per digit (row-major).
_FONT = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
}


def vp8_encoder_name() -> str:
    """The VP8 encoder PyAV offers here (only libvpx encodes VP8)."""
    if "libvpx" not in av.codecs_available:
        raise RuntimeError("PyAV was built without libvpx: VP8 encoding is unavailable")
    return "libvpx"


class TestPattern:
    """Deterministic yuv420p pictures with motion and a visible frame counter."""

    __test__ = False  # not a pytest test class

    def __init__(self, width: int, height: int, seed: int = 7) -> None:
        if width % 2 or height % 2 or width < 64 or height < 48:
            raise ValueError("width/height must be even and at least 64x48")
        self.width = width
        self.height = height
        self._rng = np.random.default_rng(seed)
        ramp = np.linspace(16, 235, width, dtype=np.float32)
        self._ramp = np.tile(ramp.astype(np.uint8), (height, 1))

    def picture(self, index: int) -> npt.NDArray[np.uint8]:
        """The luma+chroma planes of frame ``index`` as one (h*3/2, w) array."""
        w, h = self.width, self.height
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y = buf[:h]
        y[:] = np.roll(self._ramp, index * 4, axis=1)
        box = max(8, h // 6)
        bx = (index * 7) % (w - box)
        by = (index * 3) % (h - box)
        y[by : by + box, bx : bx + box] = 235 - (index % 64)
        # A noisy patch costs bits, so frames span several RTP packets like real video.
        ph, pw = h // 4, w // 4
        y[h - ph :, :pw] = self._rng.integers(16, 236, size=(ph, pw), dtype=np.uint8)
        self._draw_number(y, index, scale=max(2, h // 60))
        buf[h:] = 128  # neutral chroma (U and V planes, packed as yuv420p expects)
        buf[h : h + h // 4, : w // 2] = 128 + (index % 32)
        return buf

    @staticmethod
    def _draw_number(y: npt.NDArray[np.uint8], value: int, scale: int) -> None:
        x0, y0 = scale * 2, scale * 2
        for ch in str(value):
            bits = _FONT[ch]
            for r in range(5):
                for c in range(3):
                    top, left = y0 + r * scale, x0 + c * scale
                    lit = bits[r * 3 + c] == "1"
                    y[top : top + scale, left : left + scale] = 235 if lit else 16
            x0 += 4 * scale


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    keyframe: bool
    pts: int  # frame index (time base 1/fps)


class PatternEncoder:
    """Encodes the test pattern with a PyAV encoder, one frame in and one frame out, as a
    live sender needs. Subclasses name the codec and its options.

    ``keyframe_interval`` frames between periodic key frames; :meth:`force_keyframe`
    makes the next encoded frame a key frame (the answer to a PLI).
    """

    def __init__(self, codec: str, options: dict[str, str], width: int, height: int, fps: int,
                 bitrate: int, keyframe_interval: int, seed: int,
                 threads: int | None = None) -> None:
        if fps <= 0 or bitrate <= 0 or keyframe_interval <= 0:
            raise ValueError("fps, bitrate and keyframe_interval must be positive")
        self.width, self.height, self.fps = width, height, fps
        self.pattern = TestPattern(width, height, seed)
        ctx = av.CodecContext.create(codec, "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, fps)
        ctx.framerate = Fraction(fps)
        ctx.bit_rate = bitrate
        ctx.gop_size = keyframe_interval
        ctx.options = options
        if threads is not None:
            ctx.thread_count = threads
        self._ctx = ctx
        self._index = 0
        self._force = False
        self.keyframes = 0
        self.forced_keyframes = 0

    def force_keyframe(self) -> None:
        self._force = True

    def encode_next(self) -> list[EncodedFrame]:
        """Encode the next pattern picture; usually returns exactly one frame."""
        frame = av.VideoFrame.from_ndarray(self.pattern.picture(self._index), format="yuv420p")
        frame.pts = self._index
        if self._force:
            # libvpxenc maps pict_type I to VPX_EFLAG_FORCE_KF, libx264 to an IDR.
            frame.pict_type = av.video.frame.PictureType.I
            self._force = False
            self.forced_keyframes += 1
        self._index += 1
        out: list[EncodedFrame] = []
        for packet in self._ctx.encode(frame):
            key = bool(packet.is_keyframe)
            self.keyframes += key
            out.append(EncodedFrame(bytes(packet), key, int(packet.pts or 0)))
        return out


class Vp8Encoder(PatternEncoder):
    """The test pattern in VP8 with libvpx in real-time mode."""

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30,
                 bitrate: int = 800_000, keyframe_interval: int = 300, seed: int = 7) -> None:
        # No look-ahead: one frame in, one frame out.
        super().__init__(vp8_encoder_name(), {"deadline": "realtime", "cpu-used": "8",
                                              "lag-in-frames": "0", "error-resilient": "1"},
                         width, height, fps, bitrate, keyframe_interval, seed)


class Vp8Decoder:
    """Decodes VP8 frames to ``av.VideoFrame``; decode failures are counted, not raised."""

    def __init__(self, codec: str | None = None) -> None:
        # FFmpeg's native "vp8" decoder is faster than libvpx's and decodes the same stream.
        name = codec or ("vp8" if "vp8" in av.codecs_available else "libvpx")
        ctx = av.CodecContext.create(name, "r")
        assert isinstance(ctx, av.VideoCodecContext)
        self._ctx = ctx
        self.decoded = 0
        self.errors = 0
        self.last_size: tuple[int, int] | None = None

    def decode(self, data: bytes) -> list[av.VideoFrame]:
        try:
            frames = [f for f in self._ctx.decode(av.Packet(data)) if isinstance(f, av.VideoFrame)]
        except (av.FFmpegError, ValueError):
            self.errors += 1
            return []
        if not frames:
            self.errors += 1  # VP8 has no frame delay: no output means it was rejected
            return []
        self.decoded += len(frames)
        last = frames[-1]
        self.last_size = (last.width, last.height)
        return frames

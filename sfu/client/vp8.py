"""VP8 RTP payload format (RFC 7741): payload descriptor, packetizer and frame assembler.

Pure Python on purpose: this is the client side (tests, demo, bench), where per-packet
Python work is fine. The node never looks inside VP8 payloads except for keyframe probes.

Payload descriptor (RFC 7741 §4.2)::

      0 1 2 3 4 5 6 7
     +-+-+-+-+-+-+-+-+
     |X|R|N|S|R| PID | (REQUIRED)
     +-+-+-+-+-+-+-+-+
  X: |I|L|T|K| RSV   | (OPTIONAL)
     +-+-+-+-+-+-+-+-+
  I: |M| PictureID   | (OPTIONAL, 7 bits, or 15 bits when M=1)
     +-+-+-+-+-+-+-+-+
     |   PictureID   |
     +-+-+-+-+-+-+-+-+
  L: |   TL0PICIDX   | (OPTIONAL)
     +-+-+-+-+-+-+-+-+
T/K: |TID|Y| KEYIDX  | (OPTIONAL)
     +-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AssembledFrame",
    "FrameAssembler",
    "Vp8Descriptor",
    "Vp8Packetizer",
    "build_descriptor",
    "is_keyframe",
    "packetize",
    "parse_descriptor",
]

PICTURE_ID_MOD = 1 << 15


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """A parsed RFC 7741 payload descriptor; ``size`` is its length in bytes."""

    start: bool  # S: first packet of a VP8 partition
    partition_id: int  # PID (0..7)
    non_reference: bool = False  # N: frame can be discarded without affecting others
    picture_id: int | None = None  # I present
    picture_id_bits: int = 0  # 0 (absent), 7 or 15
    tl0picidx: int | None = None  # L present
    tid: int | None = None  # T present
    layer_sync: bool = False  # Y (meaningful only with T)
    keyidx: int | None = None  # K present
    size: int = 1


def parse_descriptor(payload: bytes) -> Vp8Descriptor:
    """Parse the descriptor at the start of an RTP payload.

    Raises ValueError naming the defect when the payload is truncated or carries no
    VP8 data after the descriptor.
    """
    n = len(payload)
    if n == 0:
        raise ValueError("vp8: empty payload")
    b0 = payload[0]
    start = bool(b0 & 0x10)
    pid = b0 & 0x07
    non_ref = bool(b0 & 0x20)
    pos = 1
    picture_id: int | None = None
    pic_bits = 0
    tl0: int | None = None
    tid: int | None = None
    sync = False
    keyidx: int | None = None
    if b0 & 0x80:  # X: extension byte follows
        if n < 2:
            raise ValueError("vp8: X set but extension byte missing")
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID
            if pos >= n:
                raise ValueError("vp8: I set but PictureID missing")
            if payload[pos] & 0x80:  # M: 15-bit PictureID
                if pos + 1 >= n:
                    raise ValueError("vp8: 15-bit PictureID truncated")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                pic_bits = 15
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                pic_bits = 7
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= n:
                raise ValueError("vp8: L set but TL0PICIDX missing")
            tl0 = payload[pos]
            pos += 1
        if ext & 0x30:  # T or K: one shared byte
            if pos >= n:
                raise ValueError("vp8: T/K set but TID/KEYIDX byte missing")
            tk = payload[pos]
            if ext & 0x20:
                tid = tk >> 6
                sync = bool(tk & 0x20)
            if ext & 0x10:
                keyidx = tk & 0x1F
            pos += 1
    if pos >= n:
        raise ValueError("vp8: no VP8 payload after descriptor")
    return Vp8Descriptor(start, pid, non_ref, picture_id, pic_bits, tl0, tid, sync, keyidx, pos)


def build_descriptor(
    start: bool,
    partition_id: int = 0,
    *,
    picture_id: int | None = None,
    picture_id_bits: int = 15,
    non_reference: bool = False,
    tl0picidx: int | None = None,
    tid: int | None = None,
    layer_sync: bool = False,
    keyidx: int | None = None,
) -> bytes:
    """Serialize a descriptor (the inverse of :func:`parse_descriptor`)."""
    if not 0 <= partition_id <= 7:
        raise ValueError(f"vp8: partition id {partition_id} out of range 0..7")
    b0 = (0x20 if non_reference else 0) | (0x10 if start else 0) | partition_id
    ext = 0
    tail = bytearray()
    if picture_id is not None:
        ext |= 0x80
        if picture_id_bits == 15:
            if not 0 <= picture_id < PICTURE_ID_MOD:
                raise ValueError(f"vp8: 15-bit PictureID {picture_id} out of range")
            tail += bytes((0x80 | (picture_id >> 8), picture_id & 0xFF))
        elif picture_id_bits == 7:
            if not 0 <= picture_id < 128:
                raise ValueError(f"vp8: 7-bit PictureID {picture_id} out of range")
            tail.append(picture_id)
        else:
            raise ValueError("vp8: picture_id_bits must be 7 or 15")
    if tl0picidx is not None:
        ext |= 0x40
        tail.append(tl0picidx & 0xFF)
    if tid is not None or keyidx is not None:
        tk = 0
        if tid is not None:
            ext |= 0x20
            tk |= (tid & 0x03) << 6 | (0x20 if layer_sync else 0)
        if keyidx is not None:
            ext |= 0x10
            tk |= keyidx & 0x1F
        tail.append(tk)
    if ext:
        return bytes((b0 | 0x80, ext)) + bytes(tail)
    return bytes((b0,))


def is_keyframe(vp8_data: bytes) -> bool:
    """True if ``vp8_data`` (the start of a frame's first partition) is a key frame.

    RFC 7741 §4.3: the P bit (LSB of the first byte of the VP8 payload header) is an
    inverse key-frame flag. A key frame also carries the start code 9d 01 2a
    (RFC 6386 §9.1); we check both so a stray delta frame is not taken for a key frame.
    """
    if len(vp8_data) < 10:
        return False
    return (vp8_data[0] & 0x01) == 0 and vp8_data[3:6] == b"\x9d\x01\x2a"


def packetize(
    frame: bytes, max_payload: int = 1200, picture_id: int | None = None
) -> list[bytes]:
    """Split one encoded frame into RTP payloads of at most ``max_payload`` bytes.

    The first payload has S=1; all carry PID 0 and, if given, the same 15-bit
    PictureID. Chunks are balanced so the last packet is not a tiny runt. The caller
    sets the RTP marker bit on the last payload.
    """
    if not frame:
        raise ValueError("vp8: empty frame")
    first = build_descriptor(True, picture_id=picture_id)
    rest = build_descriptor(False, picture_id=picture_id)
    budget = max_payload - len(first)
    if budget <= 0:
        raise ValueError(f"vp8: max_payload {max_payload} leaves no room for data")
    count = -(-len(frame) // budget)
    base, extra = divmod(len(frame), count)
    out: list[bytes] = []
    pos = 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        out.append((first if i == 0 else rest) + frame[pos : pos + size])
        pos += size
    return out


class Vp8Packetizer:
    """Stateful packetizer: assigns an incrementing 15-bit PictureID per frame."""

    def __init__(self, max_payload: int = 1200, picture_id: int = 0) -> None:
        self.max_payload = max_payload
        self.picture_id = picture_id % PICTURE_ID_MOD

    def packetize(self, frame: bytes) -> list[bytes]:
        out = packetize(frame, self.max_payload, self.picture_id)
        self.picture_id = (self.picture_id + 1) % PICTURE_ID_MOD
        return out


@dataclass(slots=True)
class AssembledFrame:
    """A complete frame reassembled from RTP packets."""

    timestamp: int
    data: bytes
    keyframe: bool
    first_seq: int
    last_seq: int
    picture_id: int | None


@dataclass(slots=True)
class AssemblerStats:
    packets: int = 0
    malformed: int = 0  # descriptor parse errors (packet dropped)
    lost: int = 0  # packets missing according to sequence gaps
    late: int = 0  # duplicate or reordered-behind packets (dropped)
    frames_complete: int = 0
    frames_dropped: int = 0  # frames seen only in part (gap, missing start or marker)


@dataclass(slots=True)
class _Pending:
    timestamp: int
    first_seq: int
    parts: list[bytes] = field(default_factory=list)
    broken: bool = False
    keyframe: bool = False
    picture_id: int | None = None


class FrameAssembler:
    """Reassembles VP8 frames from RTP packets in arrival order.

    Frames are delimited by RTP timestamp, the S bit with PID 0 (start) and the RTP
    marker bit (end). A sequence-number gap breaks the frame in progress; broken frames
    are dropped and counted, never returned. Packets behind the highest sequence number
    seen (duplicates, reordering) are dropped: on loopback they do not occur, and a
    jitter buffer is not this class's job.
    """

    def __init__(self) -> None:
        self.stats = AssemblerStats()
        self._next_seq: int | None = None
        self._cur: _Pending | None = None

    def _finish_dropped(self) -> None:
        self.stats.frames_dropped += 1
        self._cur = None

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> AssembledFrame | None:
        """Feed one RTP packet's fields; returns a frame when one completes."""
        st = self.stats
        st.packets += 1
        gap = False
        if self._next_seq is not None:
            diff = (seq - self._next_seq) & 0xFFFF
            if diff >= 0x8000:  # behind what we've seen: duplicate or late
                st.late += 1
                return None
            if diff:
                st.lost += diff
                gap = True
        self._next_seq = (seq + 1) & 0xFFFF
        try:
            desc = parse_descriptor(payload)
        except ValueError:
            st.malformed += 1
            if self._cur is not None:
                self._cur.broken = True
            return None
        data = payload[desc.size :]
        starts = desc.start and desc.partition_id == 0
        cur = self._cur
        if cur is not None and cur.timestamp != timestamp:
            self._finish_dropped()  # previous frame never saw its marker
            cur = None
        if cur is None:
            cur = _Pending(timestamp, seq, picture_id=desc.picture_id)
            cur.broken = not starts  # its beginning was lost
            if starts:
                cur.keyframe = is_keyframe(data)
            self._cur = cur
        elif gap or starts:
            cur.broken = True  # hole inside the frame, or a second start
        cur.parts.append(data)
        if not marker:
            return None
        self._cur = None
        if cur.broken:
            st.frames_dropped += 1
            return None
        st.frames_complete += 1
        return AssembledFrame(
            timestamp, b"".join(cur.parts), cur.keyframe, cur.first_seq, seq, cur.picture_id
        )

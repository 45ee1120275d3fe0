# Jitter buffer for the client library and recording taps: reorder, adaptive target delay
# (NetEq-style percentile of relative transit), frame assembly for VP8/H.264/Opus, loss and
# late accounting, keyframe request on an unrecoverable frame. Time is injected (`now`,
# seconds) so tests and offline tools run on fake clocks. The C core is nogil and works on a
# preallocated ring (slot = seq & (capacity - 1)); only pop()/missing() build Python objects.
from libc.stdlib cimport qsort

cdef enum:
    JB_ACCEPTED = 0
    JB_DUPLICATE = 1
    JB_LATE = 2              # its frame was already emitted or given up
    JB_MALFORMED = 3
    JB_SLOT_BYTES = 2048     # largest payload stored; bigger ones count as malformed
    JB_WINDOW = 200          # jitter samples (frames) kept; also bounded to JB_WINDOW_S
    JB_VP8 = 0
    JB_H264 = 1
    JB_OPUS = 2
    JB_F_START = 1           # codec says this packet starts a frame
    JB_F_KEY = 2             # packet carries keyframe data

cdef double JB_WINDOW_S = 2.0

ACCEPTED = JB_ACCEPTED
DUPLICATE = JB_DUPLICATE
LATE = JB_LATE
MALFORMED = JB_MALFORMED


cdef struct JbSlot:
    int64_t seq              # extended seq; -1 when empty
    int64_t ts               # extended timestamp
    double arrival
    uint16_t length
    uint8_t marker
    uint8_t flags


cdef struct JbState:
    int codec
    int64_t cap
    double clock_rate, min_delay, max_delay, percentile, target
    double late_wait         # how much longer an incomplete video frame may hold playout
    JbSlot *slots
    uint8_t *data            # cap * JB_SLOT_BYTES payload copies
    int started, head_start
    int released             # a frame has been popped: the playout point is fixed
    int64_t head             # playout point: lowest seq not yet released
    int64_t highest          # highest extended seq seen
    int64_t ts_ref           # highest extended timestamp seen
    int64_t last_emitted_ts
    int keyframe_needed
    double win_transit[JB_WINDOW]
    double win_arrival[JB_WINDOW]
    double scratch[JB_WINDOW]
    int win_pos, win_count
    uint64_t received, duplicates, late, malformed, recovered, frames_emitted
    uint64_t frames_lost, packets_lost, keyframe_requests, overflows


cdef int _jb_cmp(const void *a, const void *b) noexcept nogil:
    cdef double x = (<const double *>a)[0], y = (<const double *>b)[0]
    return (x > y) - (x < y)


cdef int jb_vp8_flags(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """RFC 7741 descriptor: returns JB_F_* flags, or -1 when truncated."""
    cdef Py_ssize_t pos = 1
    cdef uint8_t ext
    cdef int flags = 0
    if n < 1:
        return -1
    if p[0] & 0x80:
        if n < 2:
            return -1
        ext = p[1]
        pos = 2
        if ext & 0x80:
            if pos >= n:
                return -1
            pos += 2 if p[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    if pos >= n:
        return -1
    if (p[0] & 0x10) and (p[0] & 0x07) == 0:
        flags = JB_F_START
        if (p[pos] & 0x01) == 0:   # P bit: 0 means key frame
            flags |= JB_F_KEY
    return flags


cdef inline int jb_h264_nal_flags(uint8_t nal) noexcept nogil:
    cdef int t = nal & 0x1F
    cdef int flags = 0
    if t == 5 or t == 7:
        flags |= JB_F_KEY
    if t == 7 or t == 9:       # SPS or access unit delimiter open an access unit
        flags |= JB_F_START
    return flags


cdef int jb_h264_flags(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """RFC 6184 single NAL, STAP-A and FU-A: JB_F_* flags, or -1 when malformed."""
    cdef int t, flags = 0, first = 1
    cdef Py_ssize_t off, size
    if n < 1 or (p[0] & 0x80):  # F bit must be 0
        return -1
    t = p[0] & 0x1F
    if t == 0:
        return -1
    if t <= 23:
        return jb_h264_nal_flags(p[0])
    if t == 24:
        off = 1
        if n < 4:
            return -1
        while off < n:
            if off + 2 > n:
                return -1
            size = rd16(p + off)
            off += 2
            if size == 0 or off + size > n:
                return -1
            if first:
                flags |= jb_h264_nal_flags(p[off]) & JB_F_START
                first = 0
            flags |= jb_h264_nal_flags(p[off]) & JB_F_KEY
            off += size
        return flags
    if t == 28:
        if n < 3:
            return -1
        if p[1] & 0x80:        # FU start: the NAL type is meaningful
            return jb_h264_nal_flags(p[1])
        return 0
    return 0                   # other aggregation types: stored, no hints


cdef inline int jb_present(JbState *s, int64_t seq) noexcept nogil:
    return s.slots[seq & (s.cap - 1)].seq == seq


cdef void jb_update_target(JbState *s, double now) noexcept nogil:
    cdef int i, n = 0, k
    cdef double mn = 1e300, t
    for i in range(s.win_count):
        if s.win_arrival[i] >= now - JB_WINDOW_S and s.win_transit[i] < mn:
            mn = s.win_transit[i]
    for i in range(s.win_count):
        if s.win_arrival[i] >= now - JB_WINDOW_S:
            s.scratch[n] = s.win_transit[i] - mn
            n += 1
    if n == 0:
        s.target = s.min_delay
        return
    qsort(s.scratch, n, sizeof(double), _jb_cmp)
    k = <int>(s.percentile * n + 0.999999) - 1
    if k < 0:
        k = 0
    if k >= n:
        k = n - 1
    t = s.scratch[k]
    s.target = s.min_delay if t < s.min_delay else (s.max_delay if t > s.max_delay else t)


cdef void jb_reset_ring(JbState *s) noexcept nogil:
    cdef int64_t i
    for i in range(s.cap):
        s.slots[i].seq = -1


cdef int jb_insert(JbState *s, const uint8_t *d, Py_ssize_t n, double now,
                   int recovered) noexcept nogil:
    cdef RtpView v
    cdef const uint8_t *pl
    cdef int flags
    cdef int64_t ext, ext_ts
    cdef JbSlot *slot
    if d == NULL or rtp_parse(d, n, &v) or v.payload_size == 0 \
            or v.payload_size > JB_SLOT_BYTES:
        s.malformed += 1
        return JB_MALFORMED
    pl = d + v.header_size
    if s.codec == JB_VP8:
        flags = jb_vp8_flags(pl, v.payload_size)
    elif s.codec == JB_H264:
        flags = jb_h264_flags(pl, v.payload_size)
    else:
        flags = JB_F_START     # Opus: every packet is a frame
    if flags < 0:
        s.malformed += 1
        return JB_MALFORMED
    if not s.started:
        s.started = 1
        s.head = s.highest = v.seq
        s.head_start = 1       # assume the stream opens on a frame boundary
        s.ts_ref = v.ts
        s.last_emitted_ts = -1
    ext = s.highest + <int16_t>(v.seq - <uint16_t>s.highest)
    ext_ts = s.ts_ref + <int32_t>(v.ts - <uint32_t>s.ts_ref)
    if ext < s.head and not s.released and s.highest - ext < s.cap:
        s.head = ext           # reordered start of the stream: nothing released yet
    if ext < s.head or ext_ts <= s.last_emitted_ts:
        s.late += 1
        return JB_LATE
    if ext >= s.head + s.cap:
        # a jump past the whole ring: drop everything held and restart at this packet
        s.overflows += 1
        jb_reset_ring(s)
        s.head = ext
        s.head_start = (flags & JB_F_START) != 0
        if s.codec != JB_OPUS and not s.keyframe_needed:
            s.keyframe_needed = 1
            s.keyframe_requests += 1
    slot = &s.slots[ext & (s.cap - 1)]
    if slot.seq == ext:
        s.duplicates += 1
        return JB_DUPLICATE
    slot.seq = ext
    slot.ts = ext_ts
    slot.arrival = now
    slot.length = v.payload_size
    slot.marker = v.marker
    slot.flags = <uint8_t>flags
    memcpy(s.data + (ext & (s.cap - 1)) * JB_SLOT_BYTES, pl, v.payload_size)
    if ext > s.highest:
        s.highest = ext
    s.received += 1
    if recovered:
        s.recovered += 1
    if ext_ts > s.ts_ref or s.win_count == 0:
        # first packet of a newer frame: one relative-transit sample per frame
        if ext_ts > s.ts_ref:
            s.ts_ref = ext_ts
        s.win_transit[s.win_pos] = now - <double>ext_ts / s.clock_rate
        s.win_arrival[s.win_pos] = now
        s.win_pos = (s.win_pos + 1) % JB_WINDOW
        if s.win_count < JB_WINDOW:
            s.win_count += 1
        jb_update_target(s, now)
    return JB_ACCEPTED


cdef struct JbFrame:
    int64_t first, last      # seq range released by this frame
    int64_t ts
    int complete, key


cdef int jb_next_frame(JbState *s, double now, JbFrame *f) noexcept nogil:
    """Finds the frame at the playout point; 1 when it is due (complete or past its
    deadline), 0 when nothing is due."""
    cdef int64_t q, j
    cdef JbSlot *sl
    cdef double first_arr
    cdef int contiguous = 1, marker = 0, start
    if not s.started:
        return 0
    jb_update_target(s, now)   # let the window age out even without new packets
    q = s.head
    while q <= s.highest and not jb_present(s, q):
        q += 1
    if q > s.highest:
        return 0
    sl = &s.slots[q & (s.cap - 1)]
    f.first = q
    f.ts = sl.ts
    f.key = (sl.flags & JB_F_KEY) != 0
    first_arr = sl.arrival
    start = (q == s.head and s.head_start) or (sl.flags & JB_F_START) != 0
    f.last = q
    if s.codec == JB_OPUS:
        marker = 1
    else:
        j = q
        while j <= s.highest:
            if not jb_present(s, j):
                contiguous = 0
                j += 1
                continue
            sl = &s.slots[j & (s.cap - 1)]
            if sl.ts != f.ts:
                break
            f.last = j
            if sl.flags & JB_F_KEY:
                f.key = 1
            if sl.arrival < first_arr:
                first_arr = sl.arrival
            if sl.marker:
                marker = 1
                break
            j += 1
    f.complete = start and contiguous and marker
    if f.complete or s.codec == JB_OPUS:
        return now >= first_arr + s.target
    # A repair may still be on its way: a short freeze now beats a keyframe round trip
    # (every later frame depends on this one).
    return now >= first_arr + s.target + s.late_wait


cdef class JitterBuffer:
    """Reorders RTP packets of one stream and releases frames at their playout time.

    insert() returns ACCEPTED, DUPLICATE, LATE or MALFORMED and never raises on network
    input. pop(now) returns (timestamp, keyframe, payloads, complete) tuples in order; a
    frame incomplete at its deadline is returned once with complete=False (counted lost)
    so recording taps can keep what arrived; decoders should skip it."""
    cdef JbState *s

    def __cinit__(self, *args, **kwargs):
        self.s = NULL

    def __init__(self, clock_rate, codec, capacity=1024, min_delay=0.02, max_delay=0.5,
                 percentile=0.95, late_wait=0.0):
        codecs = {"vp8": JB_VP8, "h264": JB_H264, "opus": JB_OPUS}
        if not isinstance(codec, str) or codec.lower() not in codecs:
            raise ValueError(f"codec must be one of vp8, h264, opus, got {codec!r}")
        if not isinstance(clock_rate, int) or clock_rate <= 0:
            raise ValueError(f"clock_rate must be a positive int, got {clock_rate!r}")
        if (not isinstance(capacity, int) or capacity < 16 or capacity > 16384
                or capacity & (capacity - 1)):
            raise ValueError(f"capacity must be a power of two in 16..16384, got {capacity!r}")
        if not (0.0 <= min_delay <= max_delay):
            raise ValueError("need 0 <= min_delay <= max_delay")
        if not (0.0 < percentile <= 1.0):
            raise ValueError("percentile must be in (0, 1]")
        if not (0.0 <= late_wait <= 5.0):
            raise ValueError("late_wait must be in [0, 5] seconds")
        if self.s != NULL:
            raise ValueError("JitterBuffer is already initialised")
        self.s = <JbState *>calloc(1, sizeof(JbState))
        if self.s == NULL:
            raise MemoryError()
        self.s.slots = <JbSlot *>malloc(capacity * sizeof(JbSlot))
        self.s.data = <uint8_t *>malloc(capacity * JB_SLOT_BYTES)
        if self.s.slots == NULL or self.s.data == NULL:
            raise MemoryError()
        self.s.codec = codecs[codec.lower()]
        self.s.cap = capacity
        self.s.clock_rate = clock_rate
        self.s.min_delay = min_delay
        self.s.max_delay = max_delay
        self.s.percentile = percentile
        self.s.target = min_delay
        self.s.late_wait = late_wait
        jb_reset_ring(self.s)

    def __dealloc__(self):
        if self.s != NULL:
            free(self.s.slots)
            free(self.s.data)
            free(self.s)

    cdef inline JbState *_st(self) except NULL:
        if self.s == NULL:
            raise ValueError("JitterBuffer is not initialised")
        return self.s

    def insert(self, packet, double now, bint recovered=False) -> int:
        cdef JbState *s = self._st()
        cdef const uint8_t[::1] mv
        try:
            mv = packet
        except (TypeError, ValueError, BufferError):
            s.malformed += 1
            return JB_MALFORMED
        if mv.shape[0] == 0:
            s.malformed += 1
            return JB_MALFORMED
        return jb_insert(s, &mv[0], mv.shape[0], now, recovered)

    def pop(self, double now) -> list:
        cdef JbState *s = self._st()
        cdef JbFrame f
        cdef int64_t q
        cdef JbSlot *sl
        cdef list out = [], payloads
        while jb_next_frame(s, now, &f):
            payloads = []
            for q in range(s.head, f.last + 1):
                if not jb_present(s, q):
                    s.packets_lost += 1
                    continue
                sl = &s.slots[q & (s.cap - 1)]
                if q >= f.first and sl.ts == f.ts:
                    payloads.append(<bytes>(s.data + (q & (s.cap - 1)) * JB_SLOT_BYTES)[:sl.length])
                sl.seq = -1
            s.head_start = f.complete or (s.slots[f.last & (s.cap - 1)].marker != 0)
            s.head = f.last + 1
            s.last_emitted_ts = f.ts
            s.released = 1
            if f.complete:
                s.frames_emitted += 1
                if f.key:
                    s.keyframe_needed = 0
            else:
                s.frames_lost += 1
                if s.codec != JB_OPUS and not s.keyframe_needed:
                    s.keyframe_needed = 1
                    s.keyframe_requests += 1
            out.append((<uint32_t>(f.ts & 0xFFFFFFFF), bool(f.key), payloads, bool(f.complete)))
        return out

    def missing(self, double now) -> list:
        """Sequence numbers (16-bit) of holes between the playout point and the newest packet."""
        cdef JbState *s = self._st()
        cdef int64_t q
        cdef list out = []
        if not s.started:
            return out
        for q in range(s.head, s.highest + 1):
            if not jb_present(s, q):
                out.append(<int>(q & 0xFFFF))
        return out

    @property
    def target_delay(self) -> float:
        return self._st().target

    @property
    def keyframe_needed(self) -> bool:
        return bool(self._st().keyframe_needed)

    @property
    def capacity(self) -> int:
        return self._st().cap

    def stats(self) -> dict:
        cdef JbState *s = self._st()
        return {
            "received": s.received, "duplicates": s.duplicates, "late": s.late,
            "malformed": s.malformed, "recovered": s.recovered,
            "frames_emitted": s.frames_emitted, "frames_lost": s.frames_lost,
            "packets_lost": s.packets_lost, "keyframe_requests": s.keyframe_requests,
            "overflows": s.overflows,
        }

# Codec probes run once per received media packet (never per viewer): is this the start of
# a frame, of a keyframe, and which VP8 temporal layer / picture it belongs to.

cdef enum:
    CODEC_OTHER = 0
    CODEC_VP8 = 1
    CODEC_H264 = 2
    CODEC_OPUS = 3

CODECS = {"other": 0, "vp8": 1, "h264": 2, "opus": 3}


cdef struct MediaInfo:
    uint8_t key             # first packet of a keyframe (VP8) / IDR access unit (H.264)
    uint8_t start           # first packet of a frame
    uint8_t desc_len        # VP8 payload descriptor bytes (0 for other codecs)
    uint8_t sync            # VP8 Y bit: frame references only TL0
    int8_t tid              # VP8 temporal layer, -1 = not signalled
    int16_t tl0             # VP8 TL0PICIDX, -1 = absent
    int32_t pic             # VP8 PictureID, -1 = absent
    uint8_t pic_bits        # 7 or 15


cdef inline void probe_vp8(const uint8_t *p, Py_ssize_t n, MediaInfo *mi) noexcept nogil:
    """RFC 7741 section 4.2 descriptor; keyframe = S, PID 0 and P bit 0 in the VP8 header."""
    cdef Py_ssize_t off = 1
    cdef uint8_t x, b0
    if n < 1:
        return
    b0 = p[0]
    if b0 & 0x80:
        if n < 2:
            return
        x = p[1]
        off = 2
        if x & 0x80:                        # I: PictureID
            if off >= n:
                return
            if p[off] & 0x80:
                if off + 1 >= n:
                    return
                mi.pic = ((p[off] & 0x7F) << 8) | p[off + 1]
                mi.pic_bits = 15
                off += 2
            else:
                mi.pic = p[off] & 0x7F
                mi.pic_bits = 7
                off += 1
        if x & 0x40:                        # L: TL0PICIDX
            if off >= n:
                mi.pic = -1
                return
            mi.tl0 = p[off]
            off += 1
        if x & 0x30:                        # T and/or K share one byte
            if off >= n:
                mi.pic = -1
                mi.tl0 = -1
                return
            if x & 0x20:
                mi.tid = p[off] >> 6
                mi.sync = (p[off] >> 5) & 1
            off += 1
    if off > n:
        return
    mi.desc_len = <uint8_t>off
    if (b0 & 0x10) and (b0 & 0x07) == 0:
        mi.start = 1
        if off < n and (p[off] & 0x01) == 0:
            mi.key = 1


cdef inline int h264_nal_is_key(uint8_t nal_type) noexcept nogil:
    return nal_type == 5 or nal_type == 7     # IDR slice or SPS (which precedes an IDR)


cdef inline void probe_h264(const uint8_t *p, Py_ssize_t n, MediaInfo *mi) noexcept nogil:
    """RFC 6184: single NAL, STAP-A (24) or FU-A (28) start carrying an IDR or SPS."""
    cdef uint8_t t
    cdef Py_ssize_t off, sz
    if n < 1:
        return
    t = p[0] & 0x1F
    if 1 <= t <= 23:
        mi.start = 1
        mi.key = h264_nal_is_key(t)
    elif t == 24:
        mi.start = 1
        off = 1
        while off + 2 < n:
            sz = rd16(p + off)
            if sz == 0 or off + 2 + sz > n:
                break
            if h264_nal_is_key(p[off + 2] & 0x1F):
                mi.key = 1
            off += 2 + sz
    elif t == 28 and n >= 2:
        if p[1] & 0x80:
            mi.start = 1
            mi.key = h264_nal_is_key(p[1] & 0x1F)


cdef inline void probe_codec(int codec, const uint8_t *p, Py_ssize_t n, MediaInfo *mi) noexcept nogil:
    mi.key = 0
    mi.start = 0
    mi.desc_len = 0
    mi.sync = 0
    mi.tid = -1
    mi.tl0 = -1
    mi.pic = -1
    mi.pic_bits = 0
    if codec == CODEC_VP8:
        probe_vp8(p, n, mi)
    elif codec == CODEC_H264:
        probe_h264(p, n, mi)
    else:
        mi.start = 1      # audio and unknown codecs: every packet is a frame, no keyframes
        mi.key = 1 if codec == CODEC_OPUS else 0


cdef inline Py_ssize_t vp8_write_desc(const uint8_t *p, const MediaInfo *mi, uint8_t *out,
                                      uint16_t pid_off, uint8_t tl0_off) noexcept nogil:
    """The descriptor with PictureID (its own width) and TL0PICIDX moved by the viewer's
    offsets; T/K byte copied. Returns its length (at most 6)."""
    cdef Py_ssize_t o = 1
    cdef uint8_t x
    cdef uint16_t pic
    out[0] = p[0]
    if not (p[0] & 0x80):
        return 1
    x = p[1]
    out[1] = x
    o = 2
    if x & 0x80 and mi.pic_bits == 7:
        out[2] = <uint8_t>((mi.pic + pid_off) & 0x7F)    # keep the publisher's width
        o = 3
    elif x & 0x80:
        pic = <uint16_t>((mi.pic + pid_off) & 0x7FFF)
        out[2] = 0x80 | (pic >> 8)
        out[3] = pic & 0xFF
        o = 4
    if x & 0x40:
        out[o] = <uint8_t>(mi.tl0 + tl0_off)
        o += 1
    if x & 0x30:
        out[o] = p[mi.desc_len - 1]
        o += 1
    return o


def probe_media(str codec, const uint8_t[::1] payload not None):
    """Test helper: the native codec probe of one RTP payload, as a dict."""
    cdef MediaInfo mi
    cdef int c = CODECS.get(codec.lower(), -1)
    if c < 0:
        raise ValueError(f"unknown codec {codec!r}")
    probe_codec(c, &payload[0] if payload.shape[0] else NULL, payload.shape[0], &mi)
    return {"key": bool(mi.key), "start": bool(mi.start), "desc_len": mi.desc_len,
            "sync": bool(mi.sync), "tid": None if mi.tid < 0 else mi.tid,
            "tl0picidx": None if mi.tl0 < 0 else mi.tl0,
            "picture_id": None if mi.pic < 0 else mi.pic,
            "picture_id_bits": mi.pic_bits}

# RTP (RFC 3550) header view: offsets into the caller's buffer, nothing copied.
# Header extensions (RFC 8285) are looked up lazily by id.

cdef enum:
    RTP_OK = 0
    RTP_ERR_SHORT = 1          # fewer than 12 bytes
    RTP_ERR_VERSION = 2        # version != 2
    RTP_ERR_CSRC = 3           # CSRC list overruns the packet
    RTP_ERR_EXT_HEADER = 4     # X bit set but no room for the extension header
    RTP_ERR_EXT_LENGTH = 5     # extension length overruns the packet
    RTP_ERR_PADDING_ZERO = 6   # P bit set with padding count 0
    RTP_ERR_PADDING = 7        # padding count overruns header + packet


RTP_ERROR_TEXT = {
    1: "packet shorter than the 12-byte RTP header",
    2: "RTP version is not 2",
    3: "CSRC list overruns the packet",
    4: "extension bit set but no room for the extension header",
    5: "header extension length overruns the packet",
    6: "padding bit set but padding count is 0",
    7: "padding count larger than the packet payload",
}


cdef struct RtpView:
    uint16_t header_size      # fixed + CSRCs + extension block
    uint16_t payload_size
    uint8_t padding_size
    uint8_t payload_type
    uint8_t marker
    uint8_t csrc_count
    uint16_t seq
    uint32_t ts
    uint32_t ssrc
    uint16_t ext_profile      # 0 if no extension
    uint16_t ext_offset       # start of extension elements
    uint16_t ext_size         # bytes of extension elements


cdef inline int rtp_parse(const uint8_t *d, Py_ssize_t n, RtpView *v) noexcept nogil:
    cdef Py_ssize_t off, ext_words, pad
    if n < 12:
        return RTP_ERR_SHORT
    if (d[0] >> 6) != 2:
        return RTP_ERR_VERSION
    v.csrc_count = d[0] & 0x0F
    v.marker = d[1] >> 7
    v.payload_type = d[1] & 0x7F
    v.seq = rd16(d + 2)
    v.ts = rd32(d + 4)
    v.ssrc = rd32(d + 8)
    off = 12 + 4 * v.csrc_count
    if off > n:
        return RTP_ERR_CSRC
    v.ext_profile = 0
    v.ext_offset = 0
    v.ext_size = 0
    if d[0] & 0x10:
        if off + 4 > n:
            return RTP_ERR_EXT_HEADER
        v.ext_profile = rd16(d + off)
        ext_words = rd16(d + off + 2)
        v.ext_offset = <uint16_t>(off + 4)
        off += 4 + 4 * ext_words
        if off > n:
            return RTP_ERR_EXT_LENGTH
        v.ext_size = <uint16_t>(4 * ext_words)
    pad = 0
    if d[0] & 0x20:
        pad = d[n - 1]
        if pad == 0:
            return RTP_ERR_PADDING_ZERO
        if off + pad > n:
            return RTP_ERR_PADDING
    v.header_size = <uint16_t>off
    v.padding_size = <uint8_t>pad
    v.payload_size = <uint16_t>(n - off - pad)
    return RTP_OK


cdef inline int rtp_ext_find(const uint8_t *d, const RtpView *v, int ext_id,
                             Py_ssize_t *out_off, Py_ssize_t *out_len) noexcept nogil:
    """Find extension element ext_id. Returns 1 and sets offset/length, 0 if absent,
    -1 if the element list is malformed."""
    cdef Py_ssize_t p = v.ext_offset
    cdef Py_ssize_t end = v.ext_offset + v.ext_size
    cdef int eid, elen
    if v.ext_size == 0:
        return 0
    if v.ext_profile == 0xBEDE:
        while p < end:
            if (d[p] >> 4) == 0:   # id 0 is padding: skip the byte (as libwebrtc does)
                p += 1
                continue
            eid = d[p] >> 4
            elen = (d[p] & 0x0F) + 1
            if eid == 15:          # reserved: stop parsing (RFC 8285 4.2)
                return 0
            if p + 1 + elen > end:
                return -1
            if eid == ext_id:
                out_off[0] = p + 1
                out_len[0] = elen
                return 1
            p += 1 + elen
        return 0
    if (v.ext_profile & 0xFFF0) == 0x1000:
        while p < end:
            if d[p] == 0:
                p += 1
                continue
            if p + 2 > end:
                return -1
            eid = d[p]
            elen = d[p + 1]
            if p + 2 + elen > end:
                return -1
            if eid == ext_id:
                out_off[0] = p + 2
                out_len[0] = elen
                return 1
            p += 2 + elen
        return 0
    return 0

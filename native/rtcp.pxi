# RTCP (RFC 3550, 4585, 5104) compound validation and the builders the engine uses.
# Builders write into a caller buffer and return the number of bytes written.

cdef enum:
    RTCP_SR = 200
    RTCP_RR = 201
    RTCP_SDES = 202
    RTCP_BYE = 203
    RTCP_APP = 204
    RTCP_RTPFB = 205
    RTCP_PSFB = 206
    FMT_NACK = 1
    FMT_TWCC = 15
    FMT_PLI = 1
    FMT_FIR = 4
    FMT_AFB = 15


cdef struct ReportBlock:
    uint32_t ssrc
    uint8_t fraction
    int32_t lost              # 24-bit signed cumulative
    uint32_t highest          # extended highest sequence number
    uint32_t jitter
    uint32_t lsr
    uint32_t dlsr


cdef inline int rtcp_validate(const uint8_t *d, Py_ssize_t n) noexcept nogil:
    """Number of packets in a well-formed compound packet, or -1."""
    cdef Py_ssize_t off = 0, plen
    cdef int count = 0
    if n < 4:
        return -1
    while off < n:
        if n - off < 4 or (d[off] >> 6) != 2:
            return -1
        plen = (<Py_ssize_t>rd16(d + off + 2) + 1) * 4
        if off + plen > n:
            return -1
        if (d[off] & 0x20) and (d[off + plen - 1] == 0 or d[off + plen - 1] > plen - 4):
            return -1
        off += plen
        count += 1
    return count


cdef inline void rtcp_header(uint8_t *out, int count, int pt, Py_ssize_t total) noexcept nogil:
    out[0] = 0x80 | (count & 0x1F)
    out[1] = <uint8_t>pt
    wr16(out + 2, <uint16_t>(total // 4 - 1))


cdef inline void write_report_block(uint8_t *p, const ReportBlock *b) noexcept nogil:
    wr32(p, b.ssrc)
    p[4] = b.fraction
    wr24(p + 5, <uint32_t>b.lost & 0xFFFFFF)
    wr32(p + 8, b.highest)
    wr32(p + 12, b.jitter)
    wr32(p + 16, b.lsr)
    wr32(p + 20, b.dlsr)


cdef inline void read_report_block(const uint8_t *p, ReportBlock *b) noexcept nogil:
    cdef uint32_t raw
    b.ssrc = rd32(p)
    b.fraction = p[4]
    raw = rd24(p + 5)
    if raw & 0x800000:
        b.lost = <int32_t>(raw | <uint32_t>0xFF000000U)
    else:
        b.lost = <int32_t>raw
    b.highest = rd32(p + 8)
    b.jitter = rd32(p + 12)
    b.lsr = rd32(p + 16)
    b.dlsr = rd32(p + 20)


cdef inline Py_ssize_t build_sr_into(uint8_t *out, uint32_t ssrc, uint64_t ntp, uint32_t rtp_ts,
                                     uint32_t packets, uint32_t octets,
                                     const ReportBlock *blocks, int nblocks) noexcept nogil:
    cdef Py_ssize_t total = 28 + 24 * nblocks
    cdef int i
    rtcp_header(out, nblocks, RTCP_SR, total)
    wr32(out + 4, ssrc)
    wr32(out + 8, <uint32_t>(ntp >> 32))
    wr32(out + 12, <uint32_t>ntp)
    wr32(out + 16, rtp_ts)
    wr32(out + 20, packets)
    wr32(out + 24, octets)
    for i in range(nblocks):
        write_report_block(out + 28 + 24 * i, &blocks[i])
    return total


cdef inline Py_ssize_t build_rr_into(uint8_t *out, uint32_t ssrc, const ReportBlock *blocks,
                                     int nblocks) noexcept nogil:
    cdef Py_ssize_t total = 8 + 24 * nblocks
    cdef int i
    rtcp_header(out, nblocks, RTCP_RR, total)
    wr32(out + 4, ssrc)
    for i in range(nblocks):
        write_report_block(out + 8 + 24 * i, &blocks[i])
    return total


cdef inline Py_ssize_t sdes_size(int cname_len) noexcept nogil:
    return 4 + ((4 + 2 + cname_len + 1 + 3) // 4) * 4


cdef inline Py_ssize_t build_sdes_into(uint8_t *out, uint32_t ssrc, const uint8_t *cname,
                                       int cname_len) noexcept nogil:
    # One chunk: SSRC, CNAME item, terminating zero, padded to 32 bits.
    cdef Py_ssize_t total = sdes_size(cname_len)
    memset(out, 0, total)
    rtcp_header(out, 1, RTCP_SDES, total)
    wr32(out + 4, ssrc)
    out[8] = 1
    out[9] = <uint8_t>cname_len
    memcpy(out + 10, cname, cname_len)
    return total


cdef inline Py_ssize_t build_pli_into(uint8_t *out, uint32_t sender, uint32_t media) noexcept nogil:
    rtcp_header(out, FMT_PLI, RTCP_PSFB, 12)
    wr32(out + 4, sender)
    wr32(out + 8, media)
    return 12


cdef inline Py_ssize_t build_fir_into(uint8_t *out, uint32_t sender, uint32_t media,
                                      uint8_t seq_nr) noexcept nogil:
    rtcp_header(out, FMT_FIR, RTCP_PSFB, 20)
    wr32(out + 4, sender)
    wr32(out + 8, 0)
    wr32(out + 12, media)
    out[16] = seq_nr
    out[17] = 0
    out[18] = 0
    out[19] = 0
    return 20


cdef inline uint64_t ntp_from_unix(double t) noexcept nogil:
    cdef double secs = t + NTP_EPOCH_OFFSET
    cdef uint64_t whole = <uint64_t>secs
    return (whole << 32) | <uint64_t>((secs - <double>whole) * 4294967296.0)

# ULPFEC (RFC 5109), level 0 only: one FEC packet protects up to 48 RTP packets whose
# sequence numbers lie within 48 of the FEC packet's SN base. The C functions are nogil and
# allocation-free (callers own every buffer); the Python wrappers below are for tests, the
# client library and offline tools.
#
# FEC payload layout (RFC 5109 section 7.3 and 7.4):
#   0: E L P X CC(4)   1: M PT(7)   2-3: SN base   4-7: TS recovery   8-9: length recovery
#   10-11: protection length   12-13 (or 12-17 when L=1): mask, MSB = SN base + 0
#   then `protection length` bytes: XOR of every protected packet from byte 12 on.

cdef enum:
    FEC_MAX_GROUP = 48
    FEC_HEADER = 10
    FEC_OK = 0
    FEC_ERR_COUNT = 1          # no packets, or more than 48
    FEC_ERR_MEDIA = 2          # media packet shorter than 12 bytes, not version 2, or > 64 KiB
    FEC_ERR_SPAN = 3           # sequence numbers span more than 48
    FEC_ERR_DUP = 4            # the same sequence number twice
    FEC_ERR_SPACE = 5          # output buffer too small
    FEC_ERR_SHORT = 6          # FEC payload shorter than its headers
    FEC_ERR_EBIT = 7           # E bit set (reserved for a future extension)
    FEC_ERR_PROT_LEN = 8       # protection length overruns the FEC payload
    FEC_ERR_MASK_EMPTY = 9     # mask protects nothing
    FEC_ERR_NOT_PROTECTED = 10 # a received packet is outside the mask
    FEC_ERR_MISSING = 11       # not exactly one protected packet missing
    FEC_ERR_TOO_LONG = 12      # a received packet is longer than the protection length
    FEC_ERR_RECOVERED_LEN = 13 # recovered length exceeds the protection length
    FEC_ERR_RECOVERED_RTP = 14 # recovered bytes do not parse as RTP


FEC_ERROR_TEXT = {
    1: "a FEC group needs 1..48 packets",
    2: "media packet is not a valid RTP packet (12..65547 bytes, version 2)",
    3: "sequence numbers span more than 48",
    4: "duplicate sequence number in the group",
    5: "output buffer too small",
    6: "FEC payload shorter than the FEC and level-0 headers",
    7: "FEC header E bit is set",
    8: "protection length overruns the FEC payload",
    9: "FEC mask protects no packet",
    10: "received packet is not protected by this FEC packet",
    11: "not exactly one protected packet is missing",
    12: "received packet is longer than the protection length",
    13: "recovered length exceeds the protection length",
    14: "recovered packet is not valid RTP",
}


cdef struct FecView:
    uint8_t byte0             # E L P X CC: only P X CC are recovery bits
    uint8_t byte1             # M + PT recovery
    uint8_t long_mask         # L bit: 48-bit mask
    uint16_t sn_base
    uint32_t ts_recovery
    uint16_t length_recovery
    uint16_t prot_len
    uint64_t mask             # bit i (LSB first) set: SN base + i is protected
    Py_ssize_t data_off       # offset of the protected XOR bytes in the FEC payload


cdef inline void fec_xor(uint8_t *dst, const uint8_t *src, Py_ssize_t n) noexcept nogil:
    # 8 bytes per step through memcpy'd words (no alignment or aliasing assumptions);
    # gcc turns each memcpy into one load/store.
    cdef Py_ssize_t i = 0
    cdef uint64_t a0, a1, a2, a3, b0, b1, b2, b3
    while i + 32 <= n:
        memcpy(&a0, dst + i, 8)
        memcpy(&a1, dst + i + 8, 8)
        memcpy(&a2, dst + i + 16, 8)
        memcpy(&a3, dst + i + 24, 8)
        memcpy(&b0, src + i, 8)
        memcpy(&b1, src + i + 8, 8)
        memcpy(&b2, src + i + 16, 8)
        memcpy(&b3, src + i + 24, 8)
        a0 ^= b0
        a1 ^= b1
        a2 ^= b2
        a3 ^= b3
        memcpy(dst + i, &a0, 8)
        memcpy(dst + i + 8, &a1, 8)
        memcpy(dst + i + 16, &a2, 8)
        memcpy(dst + i + 24, &a3, 8)
        i += 32
    while i + 8 <= n:
        memcpy(&a0, dst + i, 8)
        memcpy(&b0, src + i, 8)
        a0 ^= b0
        memcpy(dst + i, &a0, 8)
        i += 8
    while i < n:
        dst[i] ^= src[i]
        i += 1


cdef inline int fec_media_ok(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    # Level 0 protects raw bytes, so only the fixed header must be sane; the 16-bit
    # length recovery field bounds the rest.
    return p != NULL and n >= 12 and n - 12 <= 0xFFFF and (p[0] >> 6) == 2


cdef int fec_parse(const uint8_t *p, Py_ssize_t n, FecView *v) noexcept nogil:
    """Validates a FEC payload (the RTP payload of a FEC packet) and fills v."""
    cdef Py_ssize_t hdr
    cdef uint64_t wire = 0
    cdef int bits, i
    if p == NULL or n < FEC_HEADER + 4:
        return FEC_ERR_SHORT
    if p[0] & 0x80:
        return FEC_ERR_EBIT
    v.long_mask = 1 if p[0] & 0x40 else 0
    hdr = FEC_HEADER + (8 if v.long_mask else 4)
    if n < hdr:
        return FEC_ERR_SHORT
    v.byte0 = p[0]
    v.byte1 = p[1]
    v.sn_base = rd16(p + 2)
    v.ts_recovery = rd32(p + 4)
    v.length_recovery = rd16(p + 8)
    v.prot_len = rd16(p + 10)
    bits = 48 if v.long_mask else 16
    for i in range(bits // 8):
        wire = (wire << 8) | p[12 + i]
    v.mask = 0
    for i in range(bits):   # wire MSB is offset 0
        if (wire >> (bits - 1 - i)) & 1:
            v.mask |= (<uint64_t>1) << i
    if v.mask == 0:
        return FEC_ERR_MASK_EMPTY
    if n - hdr < v.prot_len:
        return FEC_ERR_PROT_LEN
    v.data_off = hdr
    return FEC_OK


cdef int fec_encode_into(const uint8_t **pkts, const Py_ssize_t *lens, int count,
                         uint8_t *out, Py_ssize_t out_cap, Py_ssize_t *out_len) noexcept nogil:
    """Writes the FEC payload (FEC header, level-0 header, XOR) protecting pkts to out."""
    cdef int i, bits, span = 0
    cdef int16_t d, min_d = 0
    cdef uint16_t base, off
    cdef uint64_t mask = 0, wire = 0
    cdef Py_ssize_t prot_len = 0, hdr, plen
    cdef uint8_t b0 = 0, b1 = 0
    cdef uint16_t len_rec = 0
    cdef uint32_t ts_rec = 0
    if count < 1 or count > FEC_MAX_GROUP:
        return FEC_ERR_COUNT
    for i in range(count):
        if not fec_media_ok(pkts[i], lens[i]):
            return FEC_ERR_MEDIA
        # signed distance from the first packet finds the oldest across 65535 -> 0
        d = <int16_t>(rd16(pkts[i] + 2) - rd16(pkts[0] + 2))
        if d < min_d:
            min_d = d
        if lens[i] - 12 > prot_len:
            prot_len = lens[i] - 12
    base = <uint16_t>(rd16(pkts[0] + 2) + min_d)
    for i in range(count):
        off = <uint16_t>(rd16(pkts[i] + 2) - base)
        if off >= FEC_MAX_GROUP:
            return FEC_ERR_SPAN
        if mask & ((<uint64_t>1) << off):
            return FEC_ERR_DUP
        mask |= (<uint64_t>1) << off
        if off + 1 > span:
            span = off + 1
    bits = 48 if span > 16 else 16
    hdr = FEC_HEADER + (8 if bits == 48 else 4)
    if out == NULL or out_cap < hdr + prot_len:
        return FEC_ERR_SPACE
    memset(out + hdr, 0, prot_len)
    for i in range(count):
        plen = lens[i] - 12
        b0 ^= pkts[i][0]
        b1 ^= pkts[i][1]
        ts_rec ^= rd32(pkts[i] + 4)
        len_rec ^= <uint16_t>plen
        fec_xor(out + hdr, pkts[i] + 12, plen)
    # E = 0; L replaces the XORed version bits, which recovery restores as 2
    out[0] = (b0 & 0x3F) | (0x40 if bits == 48 else 0)
    out[1] = b1
    wr16(out + 2, base)
    wr32(out + 4, ts_rec)
    wr16(out + 8, len_rec)
    wr16(out + 10, <uint16_t>prot_len)
    for i in range(bits):
        if mask & ((<uint64_t>1) << i):
            wire |= (<uint64_t>1) << (bits - 1 - i)
    for i in range(bits // 8):
        out[12 + i] = (wire >> (bits - 8 - 8 * i)) & 0xFF
    out_len[0] = hdr + prot_len
    return FEC_OK


cdef int fec_recover_into(const uint8_t *fec, Py_ssize_t fec_len, uint32_t ssrc,
                          const uint8_t **pkts, const Py_ssize_t *lens, int count,
                          uint8_t *out, Py_ssize_t out_cap, Py_ssize_t *out_len) noexcept nogil:
    """Rebuilds the one missing packet of the group described by the FEC payload `fec`.

    pkts are all the other protected packets (any order). ssrc is the media stream's SSRC
    (the FEC packet's own SSRC when FEC shares the media stream)."""
    cdef FecView v
    cdef RtpView rv
    cdef int err, i, miss = 0
    cdef uint16_t off
    cdef uint64_t seen = 0, missing
    cdef uint8_t b0, b1
    cdef uint16_t len_rec
    cdef uint32_t ts_rec
    err = fec_parse(fec, fec_len, &v)
    if err:
        return err
    if count < 0 or count >= FEC_MAX_GROUP:
        return FEC_ERR_COUNT
    if out == NULL or out_cap < 12 + <Py_ssize_t>v.prot_len:
        return FEC_ERR_SPACE
    b0 = v.byte0
    b1 = v.byte1
    ts_rec = v.ts_recovery
    len_rec = v.length_recovery
    for i in range(count):
        if not fec_media_ok(pkts[i], lens[i]):
            return FEC_ERR_MEDIA
        off = <uint16_t>(rd16(pkts[i] + 2) - v.sn_base)
        if off >= FEC_MAX_GROUP or not (v.mask & ((<uint64_t>1) << off)):
            return FEC_ERR_NOT_PROTECTED
        if seen & ((<uint64_t>1) << off):
            return FEC_ERR_DUP
        seen |= (<uint64_t>1) << off
        if lens[i] - 12 > v.prot_len:
            return FEC_ERR_TOO_LONG
    missing = v.mask & ~seen
    if missing == 0 or (missing & (missing - 1)) != 0:
        return FEC_ERR_MISSING
    while not (missing & 1):
        missing >>= 1
        miss += 1
    memcpy(out + 12, fec + v.data_off, v.prot_len)
    for i in range(count):
        b0 ^= pkts[i][0]
        b1 ^= pkts[i][1]
        ts_rec ^= rd32(pkts[i] + 4)
        len_rec ^= <uint16_t>(lens[i] - 12)
        fec_xor(out + 12, pkts[i] + 12, lens[i] - 12)
    if len_rec > v.prot_len:
        return FEC_ERR_RECOVERED_LEN
    out[0] = 0x80 | (b0 & 0x3F)
    out[1] = b1
    wr16(out + 2, <uint16_t>(v.sn_base + miss))
    wr32(out + 4, ts_rec)
    wr32(out + 8, ssrc)
    # a corrupt FEC packet can XOR into nonsense: never hand that to the data path
    if rtp_parse(out, 12 + <Py_ssize_t>len_rec, &rv):
        return FEC_ERR_RECOVERED_RTP
    out_len[0] = 12 + len_rec
    return FEC_OK


# ---- Python-visible wrappers -------------------------------------------------------------

cdef inline int _fec_popcount(uint64_t m) noexcept nogil:
    cdef int c = 0
    while m:
        m &= m - 1
        c += 1
    return c


cdef inline void _fec_check_range(str name, object value, unsigned long long top) except *:
    if not isinstance(value, int) or value < 0 or value > top:
        raise ValueError(f"{name} must be an int in 0..{top}, got {value!r}")


cdef bytes _fec_encode_rtp(list packets, int fec_pt, int seq, uint32_t ts, uint32_t ssrc):
    cdef int count = len(packets), i, err
    cdef const uint8_t *ptrs[FEC_MAX_GROUP]
    cdef Py_ssize_t lens[FEC_MAX_GROUP]
    cdef Py_ssize_t cap = FEC_HEADER + 8, out_len = 0
    cdef bytes b
    cdef bytearray out
    cdef uint8_t *o
    if count < 1 or count > FEC_MAX_GROUP:
        raise ValueError(FEC_ERROR_TEXT[FEC_ERR_COUNT])
    for i in range(count):
        b = packets[i]
        ptrs[i] = <const uint8_t *><const char *>b
        lens[i] = len(b)
        if lens[i] > 12:
            cap = max(cap, FEC_HEADER + 8 + lens[i] - 12)
    out = bytearray(12 + cap)
    o = <uint8_t *><char *>out
    err = fec_encode_into(ptrs, lens, count, o + 12, cap, &out_len)
    if err:
        raise ValueError(FEC_ERROR_TEXT[err])
    o[0] = 0x80
    o[1] = <uint8_t>fec_pt
    wr16(o + 2, <uint16_t>seq)
    wr32(o + 4, ts)
    wr32(o + 8, ssrc)
    return bytes(out[:12 + out_len])


cdef list _fec_as_bytes(object packets):
    if not isinstance(packets, (list, tuple)):
        raise ValueError("media_packets must be a list of bytes")
    return [bytes(p) for p in packets]


def ulpfec_encode(media_packets, fec_pt, seq, ts, ssrc) -> bytes:
    """Returns a complete RTP packet (V=2, M=0, PT=fec_pt) carrying the ULPFEC payload
    that protects media_packets (1..48 RTP packets whose sequence numbers span <= 48)."""
    _fec_check_range("fec_pt", fec_pt, 127)
    _fec_check_range("seq", seq, 0xFFFF)
    _fec_check_range("ts", ts, 0xFFFFFFFF)
    _fec_check_range("ssrc", ssrc, 0xFFFFFFFF)
    return _fec_encode_rtp(_fec_as_bytes(media_packets), fec_pt, seq, <uint32_t>ts,
                           <uint32_t>ssrc)


cdef int _fec_payload(const uint8_t[::1] data, RtpView *rv, FecView *fv) except -1:
    cdef Py_ssize_t n = data.shape[0]
    cdef int err
    if n > 0xFFFF:
        raise ValueError("FEC packet longer than 65535 bytes")
    if n == 0 or rtp_parse(&data[0], n, rv):
        raise ValueError("FEC packet is not a valid RTP packet")
    err = fec_parse(&data[0] + rv.header_size, rv.payload_size, fv)
    if err:
        raise ValueError(FEC_ERROR_TEXT[err])
    return 0


def ulpfec_parse(const uint8_t[::1] fec_rtp not None) -> dict:
    """Decodes a ULPFEC RTP packet's headers; ValueError when malformed."""
    cdef RtpView rv
    cdef FecView fv
    cdef int i
    _fec_payload(fec_rtp, &rv, &fv)
    start = rv.header_size + fv.data_off
    return {
        "ssrc": rv.ssrc,
        "sequence_number": rv.seq,
        "timestamp": rv.ts,
        "payload_type": rv.payload_type,
        "e": False,
        "l": bool(fv.long_mask),
        "p_recovery": bool(fv.byte0 & 0x20),
        "x_recovery": bool(fv.byte0 & 0x10),
        "cc_recovery": fv.byte0 & 0x0F,
        "m_recovery": bool(fv.byte1 & 0x80),
        "pt_recovery": fv.byte1 & 0x7F,
        "sn_base": fv.sn_base,
        "ts_recovery": fv.ts_recovery,
        "length_recovery": fv.length_recovery,
        "protection_length": fv.prot_len,
        "mask": fv.mask,   # bit i set: sn_base + i protected
        "protected": [(fv.sn_base + i) & 0xFFFF for i in range(FEC_MAX_GROUP)
                      if (fv.mask >> i) & 1],
        "payload": bytes(fec_rtp[start:start + fv.prot_len]),
    }


def ulpfec_recover(const uint8_t[::1] fec_rtp not None, dict received not None,
                   media_ssrc=None):
    """Rebuilds the one missing protected packet from the FEC packet and received
    (seq -> RTP packet); None unless exactly one protected packet is missing.
    The SSRC comes from media_ssrc, else from the FEC packet (same-stream ULPFEC)."""
    cdef RtpView rv
    cdef FecView fv
    cdef const uint8_t *ptrs[FEC_MAX_GROUP]
    cdef Py_ssize_t lens[FEC_MAX_GROUP]
    cdef int count = 0, err, i
    cdef Py_ssize_t out_len = 0
    cdef uint32_t ssrc
    cdef bytes b
    cdef bytearray out
    cdef list keep = []
    _fec_payload(fec_rtp, &rv, &fv)
    if media_ssrc is None:
        ssrc = rv.ssrc
    else:
        _fec_check_range("media_ssrc", media_ssrc, 0xFFFFFFFF)
        ssrc = <uint32_t>media_ssrc
    for i in range(FEC_MAX_GROUP):
        if not (fv.mask >> i) & 1:
            continue
        pkt = received.get((fv.sn_base + i) & 0xFFFF)
        if pkt is None:
            continue
        b = bytes(pkt)
        if len(b) < 12 or rd16(<const uint8_t *><const char *>b + 2) != (fv.sn_base + i) & 0xFFFF:
            raise ValueError(f"received[{(fv.sn_base + i) & 0xFFFF}] is not the RTP packet"
                             " with that sequence number")
        keep.append(b)
        ptrs[count] = <const uint8_t *><const char *>b
        lens[count] = len(b)
        count += 1
    # mask has at most 48 bits set, so count < 48 unless nothing is missing
    if count == FEC_MAX_GROUP or count + 1 != _fec_popcount(fv.mask):
        return None
    out = bytearray(12 + fv.prot_len)
    err = fec_recover_into(&fec_rtp[0] + rv.header_size, rv.payload_size, ssrc,
                           ptrs, lens, count, <uint8_t *><char *>out, len(out), &out_len)
    if err:
        raise ValueError(FEC_ERROR_TEXT[err])
    return bytes(out[:out_len])


cdef class UlpfecEncoder:
    """Groups outgoing media packets and emits one ULPFEC packet per group.

    add() returns the FEC packets that became due (0, 1 or 2): a group closes when it
    holds max_group packets, or before a packet that cannot join it (seq gap > 48 or
    out of order). FEC packets number from `seq` in their own sequence space."""
    cdef readonly int fec_pt
    cdef readonly uint32_t ssrc
    cdef readonly int max_group
    cdef int _seq
    cdef list _group
    cdef uint16_t _base

    def __init__(self, fec_pt, ssrc, max_group=10, seq=0):
        _fec_check_range("fec_pt", fec_pt, 127)
        _fec_check_range("ssrc", ssrc, 0xFFFFFFFF)
        _fec_check_range("seq", seq, 0xFFFF)
        if not isinstance(max_group, int) or max_group < 1 or max_group > FEC_MAX_GROUP:
            raise ValueError(f"max_group must be in 1..{FEC_MAX_GROUP}, got {max_group}")
        self.fec_pt = fec_pt
        self.ssrc = <uint32_t>ssrc
        self.max_group = max_group
        self._seq = seq
        self._group = []
        self._base = 0

    @property
    def next_seq(self) -> int:
        return self._seq

    def add(self, media_packet) -> list:
        cdef bytes b = bytes(media_packet)
        cdef list out = []
        cdef uint16_t seq, off
        if not fec_media_ok(<const uint8_t *><const char *>b, len(b)):
            raise ValueError(FEC_ERROR_TEXT[FEC_ERR_MEDIA])
        seq = rd16(<const uint8_t *><const char *>b + 2)
        if self._group:
            off = <uint16_t>(seq - self._base)
            last = <bytes>self._group[len(self._group) - 1]
            prev = <uint16_t>(rd16(<const uint8_t *><const char *>last + 2) - self._base)
            if off >= FEC_MAX_GROUP or off <= prev:
                out.extend(self.flush())
        if not self._group:
            self._base = seq
        self._group.append(b)
        if len(self._group) >= self.max_group:
            out.extend(self.flush())
        return out

    def flush(self) -> list:
        """Emits the FEC packet for a partial group (empty list when nothing is pending)."""
        cdef list group = self._group
        if not group:
            return []
        self._group = []
        last = group[len(group) - 1]
        pkt = _fec_encode_rtp(group, self.fec_pt, self._seq,
                              rd32(<const uint8_t *><const char *>last + 4), self.ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        return [pkt]

# QUIC ACK-only packet filter (issue 6): a QUIC viewer answers the engine's sealed datagrams
# with ACK-only 1-RTT packets (every ~20 ms, Chromium every 2 packets). aioquic's receive
# path costs ~50 us each; the node drops the authenticated ones here when aioquic has
# nothing of its own in flight (the engine's packets are not in aioquic's loss recovery,
# so their ACKs tell it nothing). Anything this cannot prove to be one authenticated
# ACK-only packet returns -1 and goes to aioquic untouched: a false -1 costs only time.
# Uses the libcrypto loaded by quic_crypto.pxi; no allocation per packet.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef enum:
    QUIC_OPEN_MAX = 1500        # largest packet opened (plaintext on the stack)
    QUIC_ACK_MAX_RANGES = 256   # more ACK ranges than this: left to aioquic
    QUIC_SAMPLE = 16            # header protection sample (RFC 9001 5.4.2)


cdef inline int quic_varint(const uint8_t *p, Py_ssize_t n, Py_ssize_t *pos,
                            uint64_t *out) noexcept nogil:
    """RFC 9000 16 variable-length integer at p[pos] (pos advanced); -1 if truncated."""
    cdef Py_ssize_t i = pos[0], k, size
    cdef uint64_t v
    if i >= n:
        return -1
    size = (<Py_ssize_t>1) << (p[i] >> 6)
    if size > n - i:
        return -1
    v = p[i] & 0x3F
    for k in range(1, size):
        v = (v << 8) | p[i + k]
    pos[0] = i + size
    out[0] = v
    return 0


cdef inline int64_t quic_decode_pn(uint64_t truncated, int nbits, int64_t expected) noexcept nogil:
    """RFC 9000 Appendix A.3 (aioquic's decode_packet_number); expected is 0..2**62."""
    cdef int64_t window = (<int64_t>1) << nbits
    cdef int64_t half = window // 2
    cdef int64_t candidate = (expected & ~(window - 1)) | <int64_t>truncated
    if candidate <= expected - half and candidate < ((<int64_t>1) << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


cdef int quic_ack_frames(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """1 if p[:n] is only ACK (0x02, 0x03) and PADDING frames with at least one ACK, each
    ACK well formed (ranges stay >= 0, at most QUIC_ACK_MAX_RANGES); 0 otherwise."""
    cdef Py_ssize_t pos = 0
    cdef uint64_t largest, delay, count, first, gap, length, ecn, r
    cdef int acks = 0, k
    cdef uint8_t t
    while pos < n:
        t = p[pos]
        pos += 1
        if t == 0x00:           # PADDING
            continue
        if t != 0x02 and t != 0x03:
            return 0            # anything else (PING, STREAM, DATAGRAM, long encodings...)
        if (quic_varint(p, n, &pos, &largest) < 0 or quic_varint(p, n, &pos, &delay) < 0
                or quic_varint(p, n, &pos, &count) < 0 or quic_varint(p, n, &pos, &first) < 0):
            return 0
        if count > QUIC_ACK_MAX_RANGES or first > largest:
            return 0
        largest -= first        # now the smallest acknowledged so far
        for r in range(count):
            if quic_varint(p, n, &pos, &gap) < 0 or quic_varint(p, n, &pos, &length) < 0:
                return 0
            # Next range's largest = smallest - gap - 2 (RFC 9000 19.3.1); never below 0.
            if gap > largest or largest - gap < 2:
                return 0
            largest = largest - gap - 2
            if length > largest:
                return 0
            largest -= length
        if t == 0x03:
            for k in range(3):  # ECT0, ECT1, ECN-CE counts
                if quic_varint(p, n, &pos, &ecn) < 0:
                    return 0
        acks += 1
    return 1 if acks else 0


cdef class QuicAckFilter:
    """Recognises the peer's authenticated ACK-only 1-RTT packets (see sfu/_native.pyi)."""
    cdef void *aead             # AES-GCM keyed for decryption; the nonce changes per packet
    cdef void *hp               # AES-ECB with the header protection key, padding off
    cdef uint8_t iv[12]
    cdef int dcid_len
    cdef readonly int key_phase

    def __cinit__(self, const uint8_t[::1] key not None, const uint8_t[::1] iv not None,
                  const uint8_t[::1] hp not None, int dcid_len, int key_phase=0):
        cdef int klen = key.shape[0]
        if klen != 16 and klen != 32:
            raise ValueError("key must be 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes")
        if iv.shape[0] != 12:
            raise ValueError("iv must be 12 bytes")
        if hp.shape[0] != klen:
            raise ValueError("hp must be as long as key")
        if not 0 <= dcid_len <= QUIC_MAX_DCID:
            raise ValueError("dcid_len must be 0..20")
        if key_phase != 0 and key_phase != 1:
            raise ValueError("key_phase must be 0 or 1")
        quic_load_crypto()
        self.aead = sfu_evp_new()
        self.hp = sfu_evp_new()
        if (self.aead == NULL or self.hp == NULL
                or sfu_evp_gcm_dec_key(self.aead, klen, &key[0]) != 1
                or sfu_evp_ecb_key(self.hp, klen, &hp[0]) != 1):
            raise RuntimeError("libcrypto refused to set up the QUIC packet keys")
        memcpy(self.iv, &iv[0], 12)
        self.dcid_len = dcid_len
        self.key_phase = key_phase

    def __dealloc__(self):
        sfu_evp_free(self.aead)
        sfu_evp_free(self.hp)

    cdef int64_t open_ack(self, const uint8_t *p, Py_ssize_t n,
                          int64_t expected) noexcept nogil:
        """The packet number of p[:n] if it is one authenticated ACK-only packet, else -1."""
        cdef uint8_t mask[QUIC_SAMPLE]
        cdef uint8_t header[1 + QUIC_MAX_DCID + 4]
        cdef uint8_t nonce[12]
        cdef uint8_t plain[QUIC_OPEN_MAX]
        cdef Py_ssize_t pn_off = 1 + self.dcid_len, hl, clen
        cdef int outl = 0, fin = 0, pn_len, i
        cdef uint64_t truncated = 0
        cdef int64_t pn
        # Short header, fixed bit set (RFC 9000 17.3.1); room for the sample (RFC 9001 5.4.2).
        if n > QUIC_OPEN_MAX or n < pn_off + 4 + QUIC_SAMPLE or (p[0] & 0xC0) != 0x40:
            return -1
        if sfu_evp_update(self.hp, mask, &outl, p + pn_off + 4, QUIC_SAMPLE) != 1 \
                or outl != QUIC_SAMPLE:
            return -1
        header[0] = p[0] ^ (mask[0] & 0x1F)
        # Reserved bits must be 0 (aioquic closes the connection otherwise: its call).
        if header[0] & 0x18 or ((header[0] >> 2) & 1) != self.key_phase:
            return -1
        pn_len = (header[0] & 0x03) + 1
        memcpy(header + 1, p + 1, self.dcid_len)
        for i in range(pn_len):
            header[pn_off + i] = p[pn_off + i] ^ mask[1 + i]
            truncated = (truncated << 8) | header[pn_off + i]
        pn = quic_decode_pn(truncated, 8 * pn_len, expected)
        if pn < 0 or pn > <int64_t>QUIC_MAX_PN:
            return -1
        hl = pn_off + pn_len
        clen = n - hl - QUIC_TAG
        if clen < 1:            # a packet without frames is a protocol violation
            return -1
        # Nonce: iv XOR the packet number left-padded to 12 bytes (RFC 9001 5.3).
        memcpy(nonce, self.iv, 12)
        for i in range(8):
            nonce[11 - i] ^= <uint8_t>(<uint64_t>pn >> (8 * i))
        if (sfu_evp_dec_set_iv(self.aead, nonce) != 1
                or sfu_evp_dec_update(self.aead, NULL, &outl, header, <int>hl) != 1
                or sfu_evp_dec_update(self.aead, plain, &outl, p + hl, <int>clen) != 1
                or outl != clen
                or sfu_evp_set_tag(self.aead, p + n - QUIC_TAG) != 1
                or sfu_evp_dec_final(self.aead, plain + outl, &fin) != 1):
            return -1           # not authentic (or libcrypto failed): aioquic decides
        return pn if quic_ack_frames(plain, clen) else -1

    def ack_only(self, bytes data not None, int64_t expected_pn):
        """The full packet number if data is one authenticated ACK-only 1-RTT packet in this
        key phase, else -1. expected_pn: aioquic's space.expected_packet_number."""
        if not 0 <= expected_pn <= (<int64_t>1 << 62):
            raise ValueError("expected_pn must be 0..2**62")
        return self.open_ack(<const uint8_t*>PyBytes_AS_STRING(data),
                             PyBytes_GET_SIZE(data), expected_pn)

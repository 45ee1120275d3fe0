# QUIC 1-RTT packet protection (RFC 9001 section 5) for RTP over QUIC egress: the engine
# seals short-header packets itself with the keys aioquic negotiated (aioquic costs ~50 us
# a packet). AES-GCM only (the server restricts its cipher suites). libcrypto is loaded at
# run time, so building needs no OpenSSL headers and no link flags (dlopen is in glibc).

cdef extern from *:
    """
    #include <dlfcn.h>
    /* The few libcrypto (OpenSSL 1.1 / 3) calls we need, through opaque pointers. */
    typedef struct {
        int state;                      /* 0 = not tried, 1 = loaded, -1 = failed */
        char error[256];
        void *(*ctx_new)(void);
        void (*ctx_free)(void *);
        int (*init)(void *, const void *, void *, const unsigned char *, const unsigned char *);
        int (*update)(void *, unsigned char *, int *, const unsigned char *, int);
        int (*final)(void *, unsigned char *, int *);
        int (*ctrl)(void *, int, int, void *);
        int (*set_padding)(void *, int);
        const void *(*aes_128_gcm)(void);
        const void *(*aes_256_gcm)(void);
        const void *(*aes_128_ecb)(void);
        const void *(*aes_256_ecb)(void);
        /* Opening (QuicAckFilter, quic_open.pxi). */
        int (*dinit)(void *, const void *, void *, const unsigned char *, const unsigned char *);
        int (*dupdate)(void *, unsigned char *, int *, const unsigned char *, int);
        int (*dfinal)(void *, unsigned char *, int *);
    } sfu_crypto_api;
    static sfu_crypto_api sfu_crypto;

    static int sfu_crypto_load(void) {
        void *h;
        const char *err;
        if (sfu_crypto.state)
            return sfu_crypto.state;
        h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
        if (h == NULL)
            h = dlopen("libcrypto.so", RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) {
            err = dlerror();
            snprintf(sfu_crypto.error, sizeof(sfu_crypto.error), "%s",
                     err ? err : "dlopen failed");
            sfu_crypto.state = -1;
            return -1;
        }
    #define SFU_SYM(field, name) \\
        if ((*(void **)(&sfu_crypto.field) = dlsym(h, name)) == NULL) { \\
            snprintf(sfu_crypto.error, sizeof(sfu_crypto.error), "symbol %s missing", name); \\
            sfu_crypto.state = -1; \\
            return -1; \\
        }
        SFU_SYM(ctx_new, "EVP_CIPHER_CTX_new")
        SFU_SYM(ctx_free, "EVP_CIPHER_CTX_free")
        SFU_SYM(init, "EVP_EncryptInit_ex")
        SFU_SYM(update, "EVP_EncryptUpdate")
        SFU_SYM(final, "EVP_EncryptFinal_ex")
        SFU_SYM(ctrl, "EVP_CIPHER_CTX_ctrl")
        SFU_SYM(set_padding, "EVP_CIPHER_CTX_set_padding")
        SFU_SYM(aes_128_gcm, "EVP_aes_128_gcm")
        SFU_SYM(aes_256_gcm, "EVP_aes_256_gcm")
        SFU_SYM(aes_128_ecb, "EVP_aes_128_ecb")
        SFU_SYM(aes_256_ecb, "EVP_aes_256_ecb")
        SFU_SYM(dinit, "EVP_DecryptInit_ex")
        SFU_SYM(dupdate, "EVP_DecryptUpdate")
        SFU_SYM(dfinal, "EVP_DecryptFinal_ex")
    #undef SFU_SYM
        sfu_crypto.state = 1;
        return 1;
    }
    static const char *sfu_crypto_error(void) { return sfu_crypto.error; }
    /* Thin wrappers: only called after sfu_crypto_load() returned 1. */
    static void *sfu_evp_new(void) { return sfu_crypto.ctx_new(); }
    static void sfu_evp_free(void *c) { if (c != NULL) sfu_crypto.ctx_free(c); }
    static int sfu_evp_gcm_key(void *c, int klen, const unsigned char *key) {
        return sfu_crypto.init(c, klen == 32 ? sfu_crypto.aes_256_gcm() : sfu_crypto.aes_128_gcm(),
                               NULL, key, NULL);
    }
    static int sfu_evp_ecb_key(void *c, int klen, const unsigned char *key) {
        if (sfu_crypto.init(c, klen == 32 ? sfu_crypto.aes_256_ecb() : sfu_crypto.aes_128_ecb(),
                            NULL, key, NULL) != 1)
            return 0;
        return sfu_crypto.set_padding(c, 0);
    }
    static int sfu_evp_set_iv(void *c, const unsigned char *iv) {
        return sfu_crypto.init(c, NULL, NULL, NULL, iv);
    }
    static int sfu_evp_update(void *c, unsigned char *out, int *outl, const unsigned char *in,
                              int inl) {
        return sfu_crypto.update(c, out, outl, in, inl);
    }
    static int sfu_evp_final(void *c, unsigned char *out, int *outl) {
        return sfu_crypto.final(c, out, outl);
    }
    static int sfu_evp_get_tag(void *c, unsigned char *tag) {
        return sfu_crypto.ctrl(c, 0x10 /* EVP_CTRL_GCM_GET_TAG */, 16, tag);
    }
    /* Opening: a GCM context keyed for decryption; the tag is set before final, which
       returns 1 only if it authenticates. */
    static int sfu_evp_gcm_dec_key(void *c, int klen, const unsigned char *key) {
        return sfu_crypto.dinit(c, klen == 32 ? sfu_crypto.aes_256_gcm() : sfu_crypto.aes_128_gcm(),
                                NULL, key, NULL);
    }
    static int sfu_evp_dec_set_iv(void *c, const unsigned char *iv) {
        return sfu_crypto.dinit(c, NULL, NULL, NULL, iv);
    }
    static int sfu_evp_dec_update(void *c, unsigned char *out, int *outl,
                                  const unsigned char *in, int inl) {
        return sfu_crypto.dupdate(c, out, outl, in, inl);
    }
    static int sfu_evp_dec_final(void *c, unsigned char *out, int *outl) {
        return sfu_crypto.dfinal(c, out, outl);
    }
    static int sfu_evp_set_tag(void *c, const unsigned char *tag) {
        return sfu_crypto.ctrl(c, 0x11 /* EVP_CTRL_GCM_SET_TAG */, 16, (void *)tag);
    }
    """
    int sfu_crypto_load() nogil
    const char *sfu_crypto_error() nogil
    void *sfu_evp_new() nogil
    void sfu_evp_free(void *c) nogil
    int sfu_evp_gcm_key(void *c, int klen, const uint8_t *key) nogil
    int sfu_evp_ecb_key(void *c, int klen, const uint8_t *key) nogil
    int sfu_evp_set_iv(void *c, const uint8_t *iv) nogil
    int sfu_evp_update(void *c, uint8_t *out, int *outl, const uint8_t *inp, int inl) nogil
    int sfu_evp_final(void *c, uint8_t *out, int *outl) nogil
    int sfu_evp_get_tag(void *c, uint8_t *tag) nogil
    int sfu_evp_gcm_dec_key(void *c, int klen, const uint8_t *key) nogil
    int sfu_evp_dec_set_iv(void *c, const uint8_t *iv) nogil
    int sfu_evp_dec_update(void *c, uint8_t *out, int *outl, const uint8_t *inp, int inl) nogil
    int sfu_evp_dec_final(void *c, uint8_t *out, int *outl) nogil
    int sfu_evp_set_tag(void *c, const uint8_t *tag) nogil


cdef enum:
    QUIC_TAG = 16             # AES-GCM tag
    QUIC_MAX_DCID = 20
    QUIC_MAX_PREFIX = 16      # RoQ flow id or WebTransport quarter stream id (varints)
    QUIC_SEAL_SLOT = 2048     # sealed bytes per egress entry (larger packets are "too big")
    QUIC_FRAME_DATAGRAM = 0x30  # RFC 9221 DATAGRAM without length: runs to the packet end

cdef uint64_t QUIC_MAX_PN = (<uint64_t>1 << 62) - 1


cdef struct QuicPeer:
    # Passed by argument (set_peer_quic).
    uint8_t iv[12]
    uint8_t dcid[QUIC_MAX_DCID]
    uint8_t dcid_len
    uint8_t key_phase
    uint8_t pre[1 + QUIC_MAX_PREFIX]   # DATAGRAM frame type, then the caller's prefix
    uint8_t pre_len
    int32_t max_packet
    # Allocated by this: EVP_CIPHER_CTX keyed once each.
    void *aead                # AES-GCM with the packet key (only the nonce changes per packet)
    void *hp                  # AES-ECB with the header protection key, padding off
    # Others.
    uint64_t next_pn          # shared with aioquic's packet number space (quic_next_pn)


cdef inline Py_ssize_t quic_overhead(const QuicPeer *q) noexcept nogil:
    """Bytes a sealed packet adds to the caller's data: header, frame prefix, tag."""
    return 1 + q.dcid_len + 4 + q.pre_len + QUIC_TAG


cdef int quic_load_crypto() except -1:
    if sfu_crypto_load() != 1:
        raise RuntimeError("QUIC sealing needs OpenSSL's libcrypto (libcrypto.so.3 or "
                           "libcrypto.so), which could not be loaded: "
                           + sfu_crypto_error().decode("utf-8", "replace"))
    return 0


cdef void quic_free(QuicPeer *q) noexcept nogil:
    if q != NULL:
        sfu_evp_free(q.aead)
        sfu_evp_free(q.hp)
        free(q)


cdef QuicPeer *quic_new(const uint8_t[::1] key, const uint8_t[::1] iv, const uint8_t[::1] hp,
                        const uint8_t[::1] dcid, int key_phase) except NULL:
    """Validated keys -> a sealing state (prefix empty, PN 0, max_packet 65527)."""
    cdef QuicPeer *q
    cdef int klen = key.shape[0]
    if klen != 16 and klen != 32:
        raise ValueError("key must be 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes")
    if iv.shape[0] != 12:
        raise ValueError("iv must be 12 bytes")
    if hp.shape[0] != klen:
        raise ValueError("hp must be as long as key")
    if dcid.shape[0] > QUIC_MAX_DCID:
        raise ValueError("dcid must be at most 20 bytes")
    if key_phase != 0 and key_phase != 1:
        raise ValueError("key_phase must be 0 or 1")
    quic_load_crypto()
    q = <QuicPeer*>calloc(1, sizeof(QuicPeer))
    if q == NULL:
        raise MemoryError()
    q.aead = sfu_evp_new()
    q.hp = sfu_evp_new()
    if (q.aead == NULL or q.hp == NULL or sfu_evp_gcm_key(q.aead, klen, &key[0]) != 1
            or sfu_evp_ecb_key(q.hp, klen, &hp[0]) != 1):
        quic_free(q)
        raise RuntimeError("libcrypto refused to set up the QUIC packet keys")
    memcpy(q.iv, &iv[0], 12)
    if dcid.shape[0]:
        memcpy(q.dcid, &dcid[0], dcid.shape[0])
    q.dcid_len = <uint8_t>dcid.shape[0]
    q.key_phase = <uint8_t>key_phase
    q.max_packet = 65527
    return q


cdef Py_ssize_t quic_seal(QuicPeer *q, uint64_t pn, const uint8_t *pre, Py_ssize_t npre,
                          const iovec *iov, size_t niov, uint8_t *out) noexcept nogil:
    """One protected short-header packet into out (the caller checked it fits): header,
    AEAD over pre || iov[0] || ... (read in place, nothing copied first), then header
    protection. Returns its length, or -1 if libcrypto failed."""
    cdef uint8_t nonce[12]
    cdef uint8_t mask[16]
    cdef Py_ssize_t pn_off = 1 + q.dcid_len, pos, hl
    cdef int outl = 0, i
    cdef size_t j
    # Header: fixed bit, spin 0, key phase, 4-byte packet number (RFC 9000 17.3.1).
    out[0] = 0x40 | (q.key_phase << 2) | 0x03
    memcpy(out + 1, q.dcid, q.dcid_len)
    wr32(out + pn_off, <uint32_t>pn)     # truncated PN: the low 32 bits
    hl = pn_off + 4
    # Nonce: iv XOR the packet number left-padded to 12 bytes (RFC 9001 5.3).
    memcpy(nonce, q.iv, 12)
    for i in range(8):
        nonce[11 - i] ^= <uint8_t>(pn >> (8 * i))
    if sfu_evp_set_iv(q.aead, nonce) != 1:
        return -1
    if sfu_evp_update(q.aead, NULL, &outl, out, <int>hl) != 1:     # AAD: the header
        return -1
    pos = hl
    if npre:
        if sfu_evp_update(q.aead, out + pos, &outl, pre, <int>npre) != 1:
            return -1
        pos += outl
    for j in range(niov):
        if iov[j].iov_len:
            if sfu_evp_update(q.aead, out + pos, &outl, <const uint8_t*>iov[j].iov_base,
                              <int>iov[j].iov_len) != 1:
                return -1
            pos += outl
    if sfu_evp_final(q.aead, out + pos, &outl) != 1:
        return -1
    pos += outl
    if sfu_evp_get_tag(q.aead, out + pos) != 1:
        return -1
    pos += QUIC_TAG
    # Header protection: sample 16 bytes from pn_offset + 4 (RFC 9001 5.4.2). The tag
    # guarantees they exist even for an empty payload.
    if sfu_evp_update(q.hp, mask, &outl, out + hl, 16) != 1 or outl != 16:
        return -1
    out[0] ^= mask[0] & 0x1F
    for i in range(4):
        out[pn_off + i] ^= mask[1 + i]
    return pos


cdef class QuicSealer:
    """Test and benchmark wrapper: seals caller-built frames with the engine's code."""
    cdef QuicPeer *q
    cdef uint8_t *buf

    def __cinit__(self, const uint8_t[::1] key not None, const uint8_t[::1] iv not None,
                  const uint8_t[::1] hp not None, const uint8_t[::1] dcid not None,
                  int key_phase=0):
        self.q = quic_new(key, iv, hp, dcid, key_phase)
        self.buf = <uint8_t*>malloc(65536 + 64)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        quic_free(self.q)
        free(self.buf)

    def seal(self, pn, const uint8_t[::1] payload not None):
        """The whole protected packet carrying payload (frames) with packet number pn."""
        cdef iovec v
        cdef Py_ssize_t n = payload.shape[0], got
        if not 0 <= pn <= QUIC_MAX_PN:
            raise ValueError("pn must be 0..2**62-1")
        if n > 65527 - quic_overhead(self.q):
            raise ValueError("payload too large for one UDP datagram")
        v.iov_base = <void*>&payload[0] if n else NULL
        v.iov_len = n
        got = quic_seal(self.q, <uint64_t>pn, NULL, 0, &v, 1, self.buf)
        if got < 0:
            raise RuntimeError("libcrypto failed to seal the packet")
        return (<char*>self.buf)[:got]

    def seal_many(self, uint64_t pn, const uint8_t[::1] payload not None, int count):
        """Seal payload count times (PNs pn..), discarding the output (benchmark)."""
        cdef iovec v
        cdef Py_ssize_t n = payload.shape[0], got = 0
        cdef int i
        if n > 65527 - quic_overhead(self.q) or count < 0:
            raise ValueError("payload too large for one UDP datagram, or count < 0")
        v.iov_base = <void*>&payload[0] if n else NULL
        v.iov_len = n
        with nogil:
            for i in range(count):
                got = quic_seal(self.q, pn + i, NULL, 0, &v, 1, self.buf)
                if got < 0:
                    break
        if got < 0:
            raise RuntimeError("libcrypto failed to seal the packet")
        return count

    def copy_many(self, const uint8_t[::1] payload not None, int count):
        """Baseline for the benchmark: memcpy payload count times into the same buffer."""
        cdef Py_ssize_t n = payload.shape[0]
        cdef int i
        if n > 65536 or count < 0:
            raise ValueError("payload must be at most 65536 bytes and count >= 0")
        with nogil:
            for i in range(count):
                memcpy(self.buf + (i & 15), &payload[0] if n else NULL, n)
                self.buf[0] ^= <uint8_t>i
        return self.buf[0]

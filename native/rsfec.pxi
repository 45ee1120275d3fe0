# SFU-RS burst FEC (docs/fec-burst.md): a systematic Cauchy Reed-Solomon erasure code over
# GF(2^8), polynomial 0x11D. Parity row j = sum_i C[j][i] * image_i with
# C[j][i] = 1 / ((128 + j) xor i); any m of the k + m packets of a block may be lost.
#
# The C functions are nogil and allocation-free (callers own every buffer); the engine
# calls them directly. Masks everywhere (C level, Python dicts, wire) are the wire's 64-bit
# value: bit 63 - i set = packet base_seq + i present (rs_bit); bits for i >= k are 0.
# The Python API (rsfec_py.pxi, included at the end) serves tests, the client and tools.

cdef enum:
    RS_LIMIT_K = 64
    RS_LIMIT_M = 16
    RS_HEADER = 24             # SFU-RS header after the 12-byte RTP header
    RS_PREFIX = 8              # image bytes that stand in for the RTP fixed header
    RS_VERSION = 1
    RS_LIMIT_MEDIA = 65535       # longest media packet (keeps L = n - 4 in 16 bits)
    RS_OK = 0
    RS_ERR_SHORT = 1           # FEC payload shorter than the SFU-RS header
    RS_ERR_VERSION = 2         # version field is not 1
    RS_ERR_K = 3               # k outside 1..64
    RS_ERR_M = 4               # m outside 1..16
    RS_ERR_INDEX = 5           # row index >= m
    RS_ERR_MASK = 6            # mask empty, or bits set at or beyond k
    RS_ERR_LENGTH = 7          # L < 8, or the parity is not exactly L bytes


RS_ERROR_TEXT = {
    1: "FEC payload shorter than the 24-byte SFU-RS header",
    2: "SFU-RS version is not 1",
    3: "SFU-RS k must be 1..64",
    4: "SFU-RS m must be 1..16",
    5: "SFU-RS row index must be below m",
    6: "SFU-RS mask is empty or marks packets beyond k",
    7: "SFU-RS length L is below 8 or does not match the parity bytes",
}


cdef struct RsView:
    uint8_t k
    uint8_t m
    uint8_t index              # parity row j
    uint16_t base_seq
    uint16_t length            # L: parity bytes, = longest present image
    uint32_t base_ts
    uint32_t media_ssrc
    uint64_t mask              # as on the wire: bit 63 - i set = base_seq + i present


# ---- GF(2^8) tables, built once at import --------------------------------------------------

cdef uint8_t rs_gf_exp[512]
cdef uint8_t rs_gf_log[256]
cdef uint8_t rs_gf_inv[256]
cdef uint8_t rs_gf_mul[256][256]       # 64 KiB: rs_gf_mul[c] is the "multiply by c" row
cdef uint8_t rs_cauchy[RS_LIMIT_M][RS_LIMIT_K]
cdef uint8_t rs_gf_nib[256][32]        # c * x for x < 16, then c * (x << 4): AVX2 shuffles
cdef int rs_simd = 0                   # 1: the AVX2 kernel runs (CPU checked at import)


# AVX2 split-nibble multiply (the ISA-L / Plank technique): c * s = lo[s & 15] ^ hi[s >> 4],
# 32 bytes per two shuffles. Compiled for AVX2 via a function attribute, picked at run time,
# so the extension still loads on any x86-64 (and builds elsewhere without it).
cdef extern from *:
    """
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    __attribute__((target("avx2")))
    static Py_ssize_t rs_muladd_avx2(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                     const uint8_t *nib) {
        const __m256i lo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)nib));
        const __m256i hi = _mm256_broadcastsi128_si256(
            _mm_loadu_si128((const __m128i *)(nib + 16)));
        const __m256i low4 = _mm256_set1_epi8(0x0F);
        Py_ssize_t i = 0;
        for (; i + 32 <= n; i += 32) {
            __m256i s = _mm256_loadu_si256((const __m256i *)(src + i));
            __m256i p = _mm256_xor_si256(
                _mm256_shuffle_epi8(lo, _mm256_and_si256(s, low4)),
                _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi64(s, 4), low4)));
            __m256i d = _mm256_loadu_si256((const __m256i *)(dst + i));
            _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(d, p));
        }
        return i;
    }
    static int rs_cpu_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2"); }
    #else
    static Py_ssize_t rs_muladd_avx2(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                     const uint8_t *nib) { return 0; }
    static int rs_cpu_avx2(void) { return 0; }
    #endif
    """
    Py_ssize_t rs_muladd_avx2(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                              const uint8_t *nib) nogil
    int rs_cpu_avx2() nogil


cdef void rs_gf_init() noexcept nogil:
    cdef int i, a, b, x = 1
    for i in range(255):
        rs_gf_exp[i] = <uint8_t>x
        rs_gf_exp[i + 255] = <uint8_t>x
        rs_gf_log[x] = <uint8_t>i
        x <<= 1
        if x & 0x100:
            x ^= 0x11D
    rs_gf_exp[510] = rs_gf_exp[0]
    rs_gf_exp[511] = rs_gf_exp[1]
    rs_gf_log[0] = 0                   # unused: zero has no logarithm
    rs_gf_inv[0] = 0
    for a in range(1, 256):
        rs_gf_inv[a] = rs_gf_exp[255 - rs_gf_log[a]]
    for a in range(256):
        for b in range(256):
            if a == 0 or b == 0:
                rs_gf_mul[a][b] = 0
            else:
                rs_gf_mul[a][b] = rs_gf_exp[rs_gf_log[a] + rs_gf_log[b]]
    # x_j = 128 + j never equals y_i = i < 64, so every entry is defined and nonzero
    for a in range(RS_LIMIT_M):
        for b in range(RS_LIMIT_K):
            rs_cauchy[a][b] = rs_gf_inv[(128 + a) ^ b]
    for a in range(256):
        for b in range(16):
            rs_gf_nib[a][b] = rs_gf_mul[a][b]
            rs_gf_nib[a][16 + b] = rs_gf_mul[a][b << 4]


rs_gf_init()
rs_simd = 1 if rs_cpu_avx2() else 0


cdef inline int rs_bit(uint64_t mask, int i) noexcept nogil:
    """1 when packet base_seq + i is present: the wire's MSB is packet 0."""
    return <int>((mask >> (63 - i)) & 1)


cdef inline uint64_t rs_tail(int k) noexcept nogil:
    """The mask bits of packets i >= k, which must be 0."""
    return ((<uint64_t>1) << (64 - k)) - 1 if k < 64 else 0


cdef inline void rs_muladd(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                           uint8_t c) noexcept nogil:
    """dst[b] ^= c * src[b]: AVX2 when available, then one table row, 8 bytes per step
    through memcpy'd words (no alignment assumptions)."""
    cdef const uint8_t *t
    cdef Py_ssize_t i = 0
    cdef uint64_t s, d, r
    if c == 0 or n <= 0:
        return
    if c == 1:
        fec_xor(dst, src, n)
        return
    if rs_simd:
        i = rs_muladd_avx2(dst, src, n, rs_gf_nib[c])
    t = rs_gf_mul[c]
    while i + 8 <= n:
        memcpy(&s, src + i, 8)
        # byte lanes map to the same lanes, so this is endian-neutral
        r = (<uint64_t>t[s & 0xFF]
             | (<uint64_t>t[(s >> 8) & 0xFF] << 8)
             | (<uint64_t>t[(s >> 16) & 0xFF] << 16)
             | (<uint64_t>t[(s >> 24) & 0xFF] << 24)
             | (<uint64_t>t[(s >> 32) & 0xFF] << 32)
             | (<uint64_t>t[(s >> 40) & 0xFF] << 40)
             | (<uint64_t>t[(s >> 48) & 0xFF] << 48)
             | (<uint64_t>t[s >> 56] << 56))
        memcpy(&d, dst + i, 8)
        d ^= r
        memcpy(dst + i, &d, 8)
        i += 8
    while i < n:
        dst[i] ^= t[src[i]]
        i += 1


# ---- wire format ------------------------------------------------------------------------------

cdef int rs_parse_header(const uint8_t *p, Py_ssize_t n, RsView *v) noexcept nogil:
    """Validates the RTP payload of an SFU-RS packet (header + parity) and fills v.
    The parity bytes are p[RS_HEADER : RS_HEADER + v.length]."""
    cdef int i
    if p == NULL or n < RS_HEADER:
        return RS_ERR_SHORT
    if (p[0] >> 6) != RS_VERSION:      # the 6 reserved bits are ignored (room to extend)
        return RS_ERR_VERSION
    v.k = p[1]
    v.m = p[2]
    v.index = p[3]
    if v.k < 1 or v.k > RS_LIMIT_K:
        return RS_ERR_K
    if v.m < 1 or v.m > RS_LIMIT_M:
        return RS_ERR_M
    if v.index >= v.m:
        return RS_ERR_INDEX
    v.base_seq = rd16(p + 4)
    v.length = rd16(p + 6)
    v.base_ts = rd32(p + 8)
    v.media_ssrc = rd32(p + 12)
    v.mask = 0
    for i in range(8):
        v.mask = (v.mask << 8) | p[16 + i]
    if v.mask == 0 or (v.mask & rs_tail(v.k)) != 0:
        return RS_ERR_MASK
    if v.length < RS_PREFIX or n - RS_HEADER != v.length:
        return RS_ERR_LENGTH
    return RS_OK


cdef void rs_write_header(uint8_t *p, const RsView *v) noexcept nogil:
    """Writes the 24-byte SFU-RS header (the RTP header before it is the caller's)."""
    cdef int i
    p[0] = RS_VERSION << 6
    p[1] = v.k
    p[2] = v.m
    p[3] = v.index
    wr16(p + 4, v.base_seq)
    wr16(p + 6, v.length)
    wr32(p + 8, v.base_ts)
    wr32(p + 12, v.media_ssrc)
    for i in range(8):
        p[16 + i] = (v.mask >> (56 - 8 * i)) & 0xFF


cdef inline void rs_image_prefix(const uint8_t *rtp, Py_ssize_t n, uint32_t base_ts,
                                 uint8_t *prefix) noexcept nogil:
    """The 8 image bytes standing in for the fixed header of media packet rtp (n >= 12);
    its image is prefix + rtp[12:n], L_i = n - 4."""
    prefix[0] = rtp[0]
    prefix[1] = rtp[1] & 0x80
    wr16(prefix + 2, <uint16_t>(n - 12))
    wr32(prefix + 4, rd32(rtp + 4) - base_ts)


cdef Py_ssize_t rs_image_to_rtp(const uint8_t *img, Py_ssize_t L, uint8_t pt, uint16_t seq,
                                uint32_t base_ts, uint32_t ssrc, uint8_t *out,
                                Py_ssize_t cap) noexcept nogil:
    """Rebuilds the RTP packet from a recovered image; its length, or -1 when the image
    does not hold valid RTP (a corrupt FEC packet must never reach the data path)."""
    cdef RtpView rv
    cdef Py_ssize_t body
    if img == NULL or out == NULL or L < RS_PREFIX:
        return -1
    body = rd16(img + 2)
    if RS_PREFIX + body > L or 12 + body > cap:
        return -1
    out[0] = 0x80 | (img[0] & 0x3F)
    out[1] = (img[1] & 0x80) | (pt & 0x7F)
    wr16(out + 2, seq)
    wr32(out + 4, base_ts + rd32(img + 4))
    wr32(out + 8, ssrc)
    memcpy(out + 12, img + RS_PREFIX, body)
    if rtp_parse(out, 12 + body, &rv):
        return -1
    return 12 + body


# ---- encode and recover -------------------------------------------------------------------------

cdef int rs_parity_rows(const uint8_t *prefixes, const uint8_t **bodies,
                        const uint16_t *body_lens, uint64_t mask, int k, int row0, int nrows,
                        uint8_t *out, int L) noexcept nogil:
    """Writes parity rows row0 .. row0+nrows-1 (nrows x L bytes) to out. Images are
    prefixes[8i:8i+8] + bodies[i][:body_lens[i]], zero padded to L; packets whose mask bit
    is clear are absent (zero images, bodies[i] unused). 0, or -1 on bad arguments
    (k, rows outside 0..15, L < 8, a present image longer than L)."""
    cdef int r, i, j
    cdef uint8_t c
    cdef uint8_t *row
    if k < 1 or k > RS_LIMIT_K or row0 < 0 or nrows < 0 or row0 + nrows > RS_LIMIT_M:
        return -1
    if L < RS_PREFIX or out == NULL or prefixes == NULL:
        return -1
    if (mask & rs_tail(k)) != 0:
        return -1
    for i in range(k):
        if rs_bit(mask, i):
            if body_lens[i] > L - RS_PREFIX or (body_lens[i] and bodies[i] == NULL):
                return -1
    memset(out, 0, <size_t>nrows * L)
    for r in range(nrows):
        row = out + <Py_ssize_t>r * L
        j = row0 + r
        for i in range(k):
            if rs_bit(mask, i):
                c = rs_cauchy[j][i]
                rs_muladd(row, prefixes + RS_PREFIX * i, RS_PREFIX, c)
                rs_muladd(row + RS_PREFIX, bodies[i], body_lens[i], c)
    return 0


cdef int rs_invert(uint8_t *a, uint8_t *inv, int e) noexcept nogil:
    """Gauss-Jordan inverse of the e x e matrix a (row-major, destroyed) into inv; -1 if
    singular (never for a Cauchy sub-matrix, checked anyway)."""
    cdef int col, r, p, q
    cdef uint8_t t, f
    memset(inv, 0, e * e)
    for r in range(e):
        inv[r * e + r] = 1
    for col in range(e):
        p = col
        while p < e and a[p * e + col] == 0:
            p += 1
        if p == e:
            return -1
        if p != col:
            for q in range(e):
                t = a[p * e + q]
                a[p * e + q] = a[col * e + q]
                a[col * e + q] = t
                t = inv[p * e + q]
                inv[p * e + q] = inv[col * e + q]
                inv[col * e + q] = t
        f = rs_gf_inv[a[col * e + col]]
        for q in range(e):
            a[col * e + q] = rs_gf_mul[f][a[col * e + q]]
            inv[col * e + q] = rs_gf_mul[f][inv[col * e + q]]
        for r in range(e):
            f = a[r * e + col]
            if r == col or f == 0:
                continue
            for q in range(e):
                a[r * e + q] ^= rs_gf_mul[f][a[col * e + q]]
                inv[r * e + q] ^= rs_gf_mul[f][inv[col * e + q]]
    return 0


cdef int rs_recover(int k, uint64_t mask, const uint8_t **imgs, const int *rows,
                    const uint8_t **parity, int nparity, int L,
                    uint8_t **out_imgs) noexcept nogil:
    """Rebuilds every missing present image (mask bit set, imgs[i] == NULL) into
    out_imgs[i] (L bytes, caller's buffer); other images are full length-L images, absent
    ones (mask bit clear) count as zero. rows[a]/parity[a] are the received parity rows
    (duplicates and rows >= 16 are skipped). Returns the count rebuilt, or -1 when more are
    missing than distinct usable rows (or on bad arguments); nothing is written then."""
    cdef int miss[RS_LIMIT_K]
    cdef int sel[RS_LIMIT_M]
    cdef uint8_t a[RS_LIMIT_M * RS_LIMIT_M]
    cdef uint8_t ainv[RS_LIMIT_M * RS_LIMIT_M]
    cdef int e = 0, nsel = 0, i, b, x, r
    cdef unsigned int used = 0
    cdef uint8_t d
    cdef uint8_t *o
    if k < 1 or k > RS_LIMIT_K or L < 1 or imgs == NULL or out_imgs == NULL:
        return -1
    mask &= ~rs_tail(k)
    for i in range(k):
        if rs_bit(mask, i) and imgs[i] == NULL:
            if out_imgs[i] == NULL:
                return -1
            miss[e] = i
            e += 1
    if e == 0:
        return 0
    if e > RS_LIMIT_M or nparity < e or rows == NULL or parity == NULL:
        return -1
    # any e distinct rows make an invertible Cauchy sub-matrix: take the first ones
    for x in range(nparity):
        r = rows[x]
        if r < 0 or r >= RS_LIMIT_M or parity[x] == NULL or (used >> r) & 1:
            continue
        used |= 1u << r
        sel[nsel] = x
        nsel += 1
        if nsel == e:
            break
    if nsel < e:
        return -1
    for x in range(e):
        for b in range(e):
            a[x * e + b] = rs_cauchy[rows[sel[x]]][miss[b]]
    if rs_invert(a, ainv, e):
        return -1
    # missing b = sum_x Ainv[b][x] * (parity_x + sum_known C[row_x][i] * img_i), folded
    # into one coefficient per received image: e * k row operations in all
    for b in range(e):
        o = out_imgs[miss[b]]
        memset(o, 0, L)
        for x in range(e):
            rs_muladd(o, parity[sel[x]], L, ainv[b * e + x])
        for i in range(k):
            if not rs_bit(mask, i) or imgs[i] == NULL:
                continue
            d = 0
            for x in range(e):
                d ^= rs_gf_mul[ainv[b * e + x]][rs_cauchy[rows[sel[x]]][i]]
            rs_muladd(o, imgs[i], L, d)
    return e


# Python wrappers (tests, client library, tools) live apart to keep each file readable.
include "rsfec_py.pxi"

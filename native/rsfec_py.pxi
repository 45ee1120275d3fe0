# SFU-RS Python API (docs/fec-burst.md): rs_encode / rs_parse / rs_decode, RsEncoder,
# RsDecoder, and test hooks for the C level. Included by rsfec.pxi; allocates Python
# objects and raises ValueError on bad arguments, never on network input in RsDecoder.

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING


# ---- Python-visible wrappers --------------------------------------------------------------------

cdef inline int _rs_check_int(str name, object value, long long lo, long long hi) except -1:
    if not isinstance(value, int) or value < lo or value > hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")
    return 0


cdef inline bint _rs_media_ok(bytes b):
    cdef RtpView rv
    cdef Py_ssize_t n = len(b)
    return 12 <= n <= RS_LIMIT_MEDIA and rtp_parse(<const uint8_t *><const char *>b, n, &rv) == 0


cdef list _rs_encode_block(list slots, int k, int m, int nrows, uint16_t base_seq, int fec_pt,
                           int fec_seq, uint32_t fec_ssrc):
    """Parity packets for one block; slots[i] is packet base_seq + i (checked bytes) or None."""
    cdef uint8_t prefixes[RS_LIMIT_K * RS_PREFIX]
    cdef const uint8_t *bodies[RS_LIMIT_K]
    cdef uint16_t lens[RS_LIMIT_K]
    cdef RsView v
    cdef uint64_t mask = 0
    cdef uint32_t base_ts = 0, ssrc = 0
    cdef int i, r, L = 0
    cdef bint first = True
    cdef bytes b
    cdef const uint8_t *p
    cdef uint8_t *o
    cdef list out = []
    for i in range(k):
        bodies[i] = NULL
        lens[i] = 0
        if slots[i] is None:
            continue
        b = <bytes>slots[i]
        p = <const uint8_t *><const char *>b
        if first:
            base_ts = rd32(p + 4)
            ssrc = rd32(p + 8)
            first = False
        mask |= (<uint64_t>1) << (63 - i)
        rs_image_prefix(p, len(b), base_ts, prefixes + RS_PREFIX * i)
        bodies[i] = p + 12
        lens[i] = <uint16_t>(len(b) - 12)
        L = max(L, len(b) - 4)
    if first:
        raise ValueError("a block needs at least one present media packet")
    v.k = k
    v.m = m
    v.base_seq = base_seq
    v.length = <uint16_t>L
    v.base_ts = base_ts
    v.media_ssrc = ssrc
    v.mask = mask
    for r in range(nrows):
        pkt = PyBytes_FromStringAndSize(NULL, 12 + RS_HEADER + L)
        o = <uint8_t *>PyBytes_AS_STRING(pkt)
        o[0] = 0x80
        o[1] = <uint8_t>fec_pt
        wr16(o + 2, <uint16_t>(fec_seq + r))
        wr32(o + 4, base_ts)
        wr32(o + 8, fec_ssrc)
        v.index = r
        rs_write_header(o + 12, &v)
        if rs_parity_rows(prefixes, bodies, lens, mask, k, r, 1, o + 12 + RS_HEADER, L):
            raise ValueError("internal: parity rows refused")     # unreachable by checks
        out.append(pkt)
    return out


def rs_encode(media_packets, k, m, base_seq, fec_pt, fec_seq, fec_ssrc, rows=None) -> list:
    """The SFU-RS parity packets (rows or m of them, FEC seqs fec_seq, fec_seq + 1, ...)
    protecting media_packets[i] = RTP packet base_seq + i, or None when absent. At most k
    entries (missing tail entries are absent); one media SSRC; ValueError otherwise."""
    cdef list slots
    cdef int i, nrows
    cdef uint32_t ssrc = 0
    cdef bint have = False
    cdef bytes b
    _rs_check_int("k", k, 1, RS_LIMIT_K)
    _rs_check_int("m", m, 1, RS_LIMIT_M)
    _rs_check_int("base_seq", base_seq, 0, 0xFFFF)
    _rs_check_int("fec_pt", fec_pt, 0, 127)
    _rs_check_int("fec_seq", fec_seq, 0, 0xFFFF)
    _rs_check_int("fec_ssrc", fec_ssrc, 0, 0xFFFFFFFF)
    if rows is None:
        rows = m
    _rs_check_int("rows", rows, 1, m)
    if not isinstance(media_packets, (list, tuple)) or len(media_packets) > k:
        raise ValueError("media_packets must be a list of at most k packets or None")
    slots = [None] * k
    for i in range(len(media_packets)):
        if media_packets[i] is None:
            continue
        b = bytes(media_packets[i])
        if not _rs_media_ok(b):
            raise ValueError(f"media_packets[{i}] is not a valid RTP packet of 12..65535 bytes")
        if rd16(<const uint8_t *><const char *>b + 2) != (base_seq + i) & 0xFFFF:
            raise ValueError(f"media_packets[{i}] does not have sequence number base_seq + {i}")
        if have and rd32(<const uint8_t *><const char *>b + 8) != ssrc:
            raise ValueError("media packets of one block must share one SSRC")
        ssrc = rd32(<const uint8_t *><const char *>b + 8)
        have = True
        slots[i] = b
    nrows = rows
    return _rs_encode_block(slots, k, m, nrows, <uint16_t>base_seq, fec_pt, fec_seq,
                            <uint32_t>fec_ssrc)


cdef int _rs_view(const uint8_t[::1] data, RtpView *rv, RsView *v) except -1:
    cdef Py_ssize_t n = data.shape[0]
    cdef int err
    if n > 0xFFFF:
        raise ValueError("FEC packet longer than 65535 bytes")
    if n == 0 or rtp_parse(&data[0], n, rv):
        raise ValueError("FEC packet is not a valid RTP packet")
    err = rs_parse_header(&data[0] + rv.header_size, rv.payload_size, v)
    if err:
        raise ValueError(RS_ERROR_TEXT[err])
    return 0


def rs_parse(const uint8_t[::1] fec_rtp not None) -> dict:
    """Decodes an SFU-RS FEC packet's headers; ValueError when malformed.
    mask is the wire value (bit 63 - i = base_seq + i); protected lists the present seqs."""
    cdef RtpView rv
    cdef RsView v
    _rs_view(fec_rtp, &rv, &v)
    return {
        "k": v.k, "m": v.m, "index": v.index, "base_seq": v.base_seq, "base_ts": v.base_ts,
        "length": v.length, "media_ssrc": v.media_ssrc, "mask": v.mask,
        "protected": [(v.base_seq + i) & 0xFFFF for i in range(v.k) if rs_bit(v.mask, i)],
        "fec_seq": rv.seq, "fec_ssrc": rv.ssrc,
    }


cdef class _RsRecovery:
    """The outcome of one decode attempt (internal)."""
    cdef public list packets           # rebuilt RTP packets, seq order
    cdef public int missing            # present packets not received
    cdef public int corrupt            # rebuilt images that were not valid RTP
    cdef public bint mismatch          # a received packet does not fit the block (longer than L)


cdef _RsRecovery _rs_decode(int k, uint64_t mask, uint16_t base_seq, uint32_t base_ts, int L,
                            int media_pt, uint32_t media_ssrc, list known, list prows,
                            list parities):
    """known[i]: received media packet base_seq + i (bytes) or None; prows/parities: the
    received rows and their L parity bytes. Decodes when enough rows are there."""
    cdef _RsRecovery res = _RsRecovery()
    cdef const uint8_t *imgs[RS_LIMIT_K]
    cdef uint8_t *outs[RS_LIMIT_K]
    cdef const uint8_t *par[RS_LIMIT_M]
    cdef int rws[RS_LIMIT_M]
    cdef int i, e = 0, n, npar = 0, got
    cdef bytes b
    cdef bytearray scratch, rebuilt
    cdef uint8_t *s
    cdef uint8_t *ro
    cdef uint8_t *out_pkt
    cdef Py_ssize_t pn
    res.packets = []
    res.missing = 0
    res.corrupt = 0
    res.mismatch = False
    for i in range(k):
        if rs_bit(mask, i) and known[i] is None:
            e += 1
    res.missing = e
    if e == 0 or e > len(prows):
        return res
    scratch = bytearray(<Py_ssize_t>k * L)
    rebuilt = bytearray(<Py_ssize_t>e * L + 12 + L)
    s = <uint8_t *><char *>scratch
    ro = <uint8_t *><char *>rebuilt
    e = 0
    for i in range(k):
        imgs[i] = NULL
        outs[i] = NULL
        if not rs_bit(mask, i):
            continue
        if known[i] is None:
            outs[i] = ro + <Py_ssize_t>e * L
            e += 1
            continue
        b = <bytes>known[i]
        n = len(b)
        if n - 4 > L:
            res.mismatch = True
            return res
        rs_image_prefix(<const uint8_t *><const char *>b, n, base_ts, s + <Py_ssize_t>i * L)
        memcpy(s + <Py_ssize_t>i * L + RS_PREFIX, <const char *>b + 12, n - 12)
        imgs[i] = s + <Py_ssize_t>i * L
    for i in range(min(len(prows), RS_LIMIT_M)):
        rws[i] = prows[i]
        par[i] = <const uint8_t *><const char *>(<bytes>parities[i])
        npar += 1
    got = rs_recover(k, mask, imgs, rws, par, npar, L, outs)
    if got != e:
        return res
    out_pkt = ro + <Py_ssize_t>e * L          # room for one rebuilt packet: 12 + L bytes
    for i in range(k):
        if outs[i] == NULL:
            continue
        pn = rs_image_to_rtp(outs[i], L, <uint8_t>media_pt, <uint16_t>(base_seq + i), base_ts,
                             media_ssrc, out_pkt, 12 + L)
        if pn < 0:
            res.corrupt += 1
        else:
            res.packets.append(PyBytes_FromStringAndSize(<char *>out_pkt, pn))
    return res


def rs_decode(fec_packets, received, media_pt) -> list:
    """Stateless recovery: rebuilds the protected packets missing from received
    (seq -> RTP packet) that the SFU-RS packets fec_packets allow (any blocks, any order).
    Returns the rebuilt packets (block by block, seq order); [] when too few rows.
    ValueError on a malformed FEC packet, a received packet that does not match its
    sequence number or block, or a rebuilt packet that is not valid RTP."""
    cdef RtpView rv
    cdef RsView v
    cdef dict blocks = {}
    cdef list out = []
    cdef list known
    cdef _RsRecovery res
    cdef bytes b, p
    cdef int i
    _rs_check_int("media_pt", media_pt, 0, 127)
    if not isinstance(fec_packets, (list, tuple)) or not isinstance(received, dict):
        raise ValueError("fec_packets must be a list and received a dict")
    for f in fec_packets:
        b = bytes(f)
        _rs_view(b, &rv, &v)
        key = (v.base_seq, v.k, v.mask, v.length, v.base_ts, v.media_ssrc)
        rows = blocks.setdefault(key, {})
        rows.setdefault(v.index, b[rv.header_size + RS_HEADER:rv.header_size + RS_HEADER
                                   + v.length])
    for key, rows in blocks.items():
        base_seq, k, mask, L, base_ts, ssrc = key
        known = [None] * k
        for i in range(k):
            if not (mask >> (63 - i)) & 1:
                continue
            seq = (base_seq + i) & 0xFFFF
            pkt = received.get(seq)
            if pkt is None:
                continue
            p = bytes(pkt)
            if len(p) < 12 or rd16(<const uint8_t *><const char *>p + 2) != seq:
                raise ValueError(f"received[{seq}] is not the RTP packet with that sequence"
                                 " number")
            known[i] = p
        res = _rs_decode(k, mask, base_seq, base_ts, L, media_pt, ssrc, known,
                         list(rows), list(rows.values()))
        if res.mismatch:
            raise ValueError("a received packet is longer than the block's images")
        if res.corrupt:
            raise ValueError("recovered packet is not valid RTP")
        out.extend(res.packets)
    return out


cdef class RsEncoder:
    """Cuts a media stream into SFU-RS blocks of k consecutive sequence numbers and emits
    m parity packets when a block closes: on its last sequence number, or on a packet beyond
    it (the ones not seen are absent). Blocks follow each other (next base = base + k) unless
    the stream jumps; a packet of an already closed block is late and ignored; a new SSRC
    starts a new block. FEC packets number from `seq` in their own sequence space."""
    cdef readonly int fec_pt
    cdef readonly uint32_t fec_ssrc
    cdef int _k, _m               # rate for the next block
    cdef int _bk, _bm             # rate of the open block
    cdef int _seq
    cdef list _slots              # open block (None: no block open)
    cdef int _last                # highest filled offset of the open block
    cdef uint16_t _base
    cdef uint32_t _ssrc
    cdef bint _has_next
    cdef uint16_t _next_base
    cdef uint32_t _next_ssrc

    def __init__(self, fec_pt, fec_ssrc, k, m, seq=0):
        _rs_check_int("fec_pt", fec_pt, 0, 127)
        _rs_check_int("fec_ssrc", fec_ssrc, 0, 0xFFFFFFFF)
        _rs_check_int("k", k, 1, RS_LIMIT_K)
        _rs_check_int("m", m, 1, RS_LIMIT_M)
        _rs_check_int("seq", seq, 0, 0xFFFF)
        self.fec_pt = fec_pt
        self.fec_ssrc = <uint32_t>fec_ssrc
        self._k = k
        self._m = m
        self._seq = seq
        self._slots = None
        self._has_next = False

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def k(self) -> int:
        return self._k

    @property
    def m(self) -> int:
        return self._m

    def set_rate(self, k, m) -> None:
        """New block size and parity count, from the next block on."""
        _rs_check_int("k", k, 1, RS_LIMIT_K)
        _rs_check_int("m", m, 1, RS_LIMIT_M)
        self._k = k
        self._m = m

    cdef list _close(self, int k):
        cdef list out = _rs_encode_block(self._slots, k, self._bm, self._bm, self._base,
                                         self.fec_pt, self._seq, self.fec_ssrc)
        self._seq = (self._seq + self._bm) & 0xFFFF
        self._has_next = True
        self._next_base = <uint16_t>(self._base + k)
        self._next_ssrc = self._ssrc
        self._slots = None
        return out

    def add(self, media_rtp) -> list:
        cdef bytes b = bytes(media_rtp)
        cdef list out = []
        cdef uint16_t seq
        cdef uint32_t ssrc
        cdef int off
        if not _rs_media_ok(b):
            raise ValueError("media packet is not a valid RTP packet of 12..65535 bytes")
        seq = rd16(<const uint8_t *><const char *>b + 2)
        ssrc = rd32(<const uint8_t *><const char *>b + 8)
        if self._slots is not None:
            off = <int16_t>(seq - self._base)
            if ssrc == self._ssrc and 0 <= off < self._bk:
                if self._slots[off] is None:
                    self._slots[off] = b
                    self._last = max(self._last, off)
                if off == self._bk - 1:
                    return self._close(self._bk)
                return []
            if ssrc == self._ssrc and -1024 <= off < 0:
                return []                               # late: its block is gone
            out = self._close(self._bk)                 # beyond the block (or a new stream)
        if self._has_next and ssrc == self._next_ssrc:
            off = <int16_t>(seq - self._next_base)
            if -1024 <= off < 0:
                return out                              # late for a closed block
            self._base = self._next_base if 0 <= off < self._k else seq
        else:
            self._base = seq
        self._bk = self._k
        self._bm = self._m
        self._ssrc = ssrc
        self._slots = [None] * self._bk
        off = <uint16_t>(seq - self._base)
        self._slots[off] = b
        self._last = off
        if off == self._bk - 1:
            out.extend(self._close(self._bk))
        return out

    def flush(self) -> list:
        """Parity for the open block, shortened to its last packet received ([] if none);
        the next block starts right after that packet."""
        if self._slots is None:
            return []
        self._slots = self._slots[:self._last + 1]
        return self._close(self._last + 1)


cdef class _RsBlock:
    cdef int k
    cdef int m
    cdef uint16_t base_seq
    cdef int L
    cdef uint32_t base_ts
    cdef uint64_t mask
    cdef long long ext_base
    cdef list rows               # row indexes received
    cdef list parities           # their parity bytes (L each)
    cdef bint done
    cdef bint counted            # counted as unrecoverable (all m rows, too many missing)
    cdef int missing             # as of the last attempt


cdef class RsDecoder:
    """Receives one media stream and its SFU-RS stream; returns media packets rebuilt from
    parity. Holds the last `window` blocks and the last 64 * window media packets (at most
    32768), so memory is bounded; network input never raises (malformed -> stats)."""
    cdef readonly int media_pt
    cdef readonly uint32_t media_ssrc
    cdef readonly int window
    cdef int _cap                      # media ring size (power of two)
    cdef list _ring_ext                # extended seq held by each ring slot (-1: empty)
    cdef list _ring_pkt
    cdef long long _top                # highest extended seq seen (-1: nothing yet)
    cdef dict _blocks                  # key -> _RsBlock, insertion (arrival) order
    cdef dict _pending                 # the blocks not done yet
    cdef long long _n_blocks, _n_recovered, _n_malformed, _n_unrecoverable
    cdef long long _n_late, _n_ignored, _n_duplicate

    def __init__(self, media_pt, media_ssrc, window=64):
        _rs_check_int("media_pt", media_pt, 0, 127)
        _rs_check_int("media_ssrc", media_ssrc, 0, 0xFFFFFFFF)
        _rs_check_int("window", window, 1, 1024)
        self.media_pt = media_pt
        self.media_ssrc = <uint32_t>media_ssrc
        self.window = window
        self._cap = 64
        while self._cap < 64 * window and self._cap < 32768:
            self._cap <<= 1
        self._ring_ext = [-1] * self._cap
        self._ring_pkt = [None] * self._cap
        self._top = -1
        self._blocks = {}
        self._pending = {}
        self._n_blocks = self._n_recovered = self._n_malformed = self._n_unrecoverable = 0
        self._n_late = self._n_ignored = self._n_duplicate = 0

    def stats(self) -> dict:
        """blocks seen, packets recovered, malformed FEC/media, unrecoverable blocks, plus
        late (FEC too old for the media window), ignored (other SSRC/PT), duplicate media."""
        return {"blocks": self._n_blocks, "recovered": self._n_recovered,
                "malformed": self._n_malformed, "unrecoverable": self._n_unrecoverable,
                "late": self._n_late, "ignored": self._n_ignored,
                "duplicate": self._n_duplicate}

    cdef long long _unwrap(self, uint16_t seq):
        if self._top < 0:
            return 65536 + seq             # start one cycle up: extended seqs stay positive
        return self._top + <int16_t>(seq - <uint16_t>(self._top & 0xFFFF))

    cdef object _lookup(self, long long ext):
        cdef int slot = ext & (self._cap - 1)
        if self._ring_ext[slot] == ext:
            return self._ring_pkt[slot]
        return None

    cdef void _store(self, long long ext, bytes pkt):
        cdef int slot = ext & (self._cap - 1)
        self._ring_ext[slot] = ext
        self._ring_pkt[slot] = pkt
        if ext > self._top:
            self._top = ext

    cdef list _attempt(self, _RsBlock blk):
        cdef list known = [None] * blk.k
        cdef _RsRecovery res
        cdef int i
        for i in range(blk.k):
            if rs_bit(blk.mask, i):
                known[i] = self._lookup(blk.ext_base + i)
        res = _rs_decode(blk.k, blk.mask, blk.base_seq, blk.base_ts, blk.L, self.media_pt,
                         self.media_ssrc, known, blk.rows, blk.parities)
        blk.missing = res.missing
        if res.mismatch:                   # media and parity disagree: give the block up
            self._n_malformed += 1
            self._finish(blk)
            return []
        if res.missing == 0 or res.packets or res.corrupt:
            self._n_malformed += res.corrupt
            self._finish(blk)
            if blk.counted and (res.missing == 0 or res.packets):
                self._n_unrecoverable -= 1     # late media completed it after all
            if res.packets:
                self._n_recovered += len(res.packets)
                for p in res.packets:
                    self._store(self._unwrap(rd16(<const uint8_t *><const char *>p + 2)), p)
            return res.packets
        if not blk.counted and len(blk.rows) >= blk.m:
            blk.counted = True             # every row is in and still too many are missing
            self._n_unrecoverable += 1
        return []

    cdef void _finish(self, _RsBlock blk):
        blk.done = True
        self._pending.pop((blk.ext_base, blk.k, blk.mask, blk.L, blk.base_ts), None)

    cdef void _evict(self):
        cdef _RsBlock old
        while len(self._blocks) > self.window:
            key = next(iter(self._blocks))
            old = <_RsBlock>self._blocks.pop(key)
            self._pending.pop(key, None)
            if not old.done and not old.counted and old.missing > 0:
                self._n_unrecoverable += 1

    def add_media(self, rtp) -> list:
        """Stores a received media packet; returns packets that its arrival made
        recoverable. Never raises on bad input (counted as malformed)."""
        cdef bytes b
        cdef long long ext
        cdef _RsBlock blk
        cdef list out = []
        try:
            b = bytes(memoryview(rtp))     # not bytes(n): an int must not allocate n bytes
        except (TypeError, ValueError):
            self._n_malformed += 1
            return out
        if not _rs_media_ok(b):
            self._n_malformed += 1
            return out
        if (rd32(<const uint8_t *><const char *>b + 8) != self.media_ssrc
                or (b[1] & 0x7F) != self.media_pt):
            self._n_ignored += 1
            return out
        ext = self._unwrap(rd16(<const uint8_t *><const char *>b + 2))
        if self._lookup(ext) is not None:
            self._n_duplicate += 1
            return out
        self._store(ext, b)
        for blk in list(self._pending.values()):
            if (blk.ext_base <= ext < blk.ext_base + blk.k
                    and rs_bit(blk.mask, <int>(ext - blk.ext_base))):
                out.extend(self._attempt(blk))
        return out

    def add_fec(self, fec_rtp) -> list:
        """Takes an SFU-RS packet; returns the media packets it made recoverable.
        Never raises on bad input (counted as malformed)."""
        cdef RtpView rv
        cdef RsView v
        cdef bytes b
        cdef _RsBlock blk
        cdef long long ext_base
        cdef Py_ssize_t off
        try:
            b = bytes(memoryview(fec_rtp))
            _rs_view(b, &rv, &v)
        except (TypeError, ValueError):
            self._n_malformed += 1
            return []
        if v.media_ssrc != self.media_ssrc:
            self._n_ignored += 1
            return []
        ext_base = self._unwrap(v.base_seq)
        if self._top >= 0 and ext_base <= self._top - self._cap + RS_LIMIT_K:
            self._n_late += 1              # its media may have left the ring: no false rebuilds
            return []
        key = (ext_base, v.k, v.mask, v.length, v.base_ts)
        blk = self._blocks.get(key)
        if blk is None:
            blk = _RsBlock()
            blk.k = v.k
            blk.m = v.m
            blk.base_seq = v.base_seq
            blk.L = v.length
            blk.base_ts = v.base_ts
            blk.mask = v.mask
            blk.ext_base = ext_base
            blk.rows = []
            blk.parities = []
            blk.done = blk.counted = False
            blk.missing = 0
            self._blocks[key] = blk
            self._pending[key] = blk
            self._n_blocks += 1
            if self._top < 0:
                self._top = ext_base
            self._evict()                  # drops the oldest, never the newcomer
        if blk.done or v.index in blk.rows:
            return []
        off = rv.header_size + RS_HEADER
        blk.rows.append(v.index)
        blk.parities.append(b[off:off + v.length])
        return self._attempt(blk)


# ---- test hooks for the C level --------------------------------------------------------------

def _rs_simd(enable=None) -> bool:
    """Whether the AVX2 kernel runs; enable=False forces the table kernel (tests cover
    both), enable=True turns it back on only where the CPU has AVX2."""
    global rs_simd
    if enable is not None:
        rs_simd = 1 if enable and rs_cpu_avx2() else 0
    return bool(rs_simd)


def _rs_gf_tables() -> tuple:
    """(mul 65536 bytes row-major, inv 256, exp 512, log 256, cauchy 16 x 64)."""
    return (PyBytes_FromStringAndSize(<char *>&rs_gf_mul[0][0], 65536),
            PyBytes_FromStringAndSize(<char *>rs_gf_inv, 256),
            PyBytes_FromStringAndSize(<char *>rs_gf_exp, 512),
            PyBytes_FromStringAndSize(<char *>rs_gf_log, 256),
            PyBytes_FromStringAndSize(<char *>&rs_cauchy[0][0], RS_LIMIT_M * RS_LIMIT_K))


def _rs_parity_rows(bytes prefixes, list bodies, uint64_t mask, int k, int row0, int nrows,
                    int L):
    """rs_parity_rows on Python buffers: nrows * L bytes, or None when it refuses."""
    cdef const uint8_t *bp[RS_LIMIT_K]
    cdef uint16_t bl[RS_LIMIT_K]
    cdef int i
    if k < 1 or k > RS_LIMIT_K or len(bodies) != k or len(prefixes) != RS_PREFIX * k:
        raise ValueError("need k bodies and 8 * k prefix bytes")
    if nrows < 0 or nrows > RS_LIMIT_M or L < 0 or L > 0xFFFF:
        raise ValueError("nrows 0..16, L 0..65535")
    bodies = [None if x is None else bytes(x) for x in bodies]
    for i in range(k):
        bp[i] = NULL
        bl[i] = 0
        if bodies[i] is not None:
            bp[i] = <const uint8_t *><const char *>(<bytes>bodies[i])
            bl[i] = len(<bytes>bodies[i])
    out = bytearray(max(1, nrows * L))
    if rs_parity_rows(<const uint8_t *><const char *>prefixes, bp, bl, mask, k, row0, nrows,
                      <uint8_t *><char *>out, L):
        return None
    return bytes(out[:nrows * L])


def _rs_recover(int k, uint64_t mask, list imgs, list rows, list parity, int L):
    """rs_recover on Python buffers: {i: rebuilt image} for each None in imgs whose mask
    bit is set, or None when it returns -1."""
    cdef const uint8_t *ip[RS_LIMIT_K]
    cdef uint8_t *op[RS_LIMIT_K]
    cdef const uint8_t *pp[64]
    cdef int rw[64]
    cdef int i, n
    cdef dict outs = {}
    if k < 1 or k > RS_LIMIT_K or len(imgs) != k or len(rows) != len(parity) or len(rows) > 64:
        raise ValueError("need k images and matching rows/parity (at most 64)")
    imgs = [None if x is None else bytes(x) for x in imgs]
    parity = [bytes(x) for x in parity]
    for i in range(k):
        ip[i] = NULL
        op[i] = NULL
        if imgs[i] is not None:
            if len(<bytes>imgs[i]) != L:
                raise ValueError("images must be L bytes")
            ip[i] = <const uint8_t *><const char *>(<bytes>imgs[i])
        elif rs_bit(mask, i):
            outs[i] = bytearray(L)
            op[i] = <uint8_t *><char *>(<bytearray>outs[i])
    for i in range(len(rows)):
        if len(<bytes>parity[i]) != L:
            raise ValueError("parity rows must be L bytes")
        rw[i] = rows[i]
        pp[i] = <const uint8_t *><const char *>(<bytes>parity[i])
    n = rs_recover(k, mask, ip, rw, pp, len(rows), L, op)
    if n < 0:
        return None
    return {i: bytes(v) for i, v in outs.items()}

# Loss recovery in the engine: per-ingress history of refcounted slots (retransmission
# buffer and NACK receive log in one ring), NACK responder (RTX per RFC 4588 or plain
# resend), NACK generator toward publishers, RTX and SFU-RS FEC repair on the uplink,
# SFU-RS parity per viewer on the downlink (computed once per source block).

cdef enum:
    ROLE_MEDIA = 0
    ROLE_RTX = 1
    ROLE_FEC = 2
    H_EMPTY = 0
    H_HELD = 1
    H_MISSING = 2
    H_GAVE_UP = 3
    H_MUTED = 4              # received (or due) while its source was muted: never sent on
    PUT_NEW = 0
    PUT_DUP = 1
    PUT_FILLED = 2
    PUT_OLD = 3
    PUT_EARLY = 4            # inside the window, never seen nor missed (e.g. before the first)
    PUT_MUTED = 5            # its seq fell in a muted stretch: dropped
    EARLY_ROOM = 64          # seqs below a stream's first packet still accepted (its RTX)
    HOW_DIRECT = 0
    HOW_RTX = 1
    HOW_FEC = 2
    RS_HDR = 24
    RS_MAX_K = 64
    RS_MAX_M = 16
    NACK_MAX_SEQS = 256      # seqs per NACK packet the node sends
    ULP_MAX_K = 16           # media packets per in-band ULPFEC packet
    FB_RING = 16             # recent uplink SFU-RS blocks remembered per media SSRC


cdef int eng_hist_alloc(Engine e, Ingress *g, int32_t cap, double age) except -1:
    g.h_cap = cap
    g.h_age = age
    g.h_slot = <int32_t*>malloc(cap * sizeof(int32_t))
    g.h_ext = <int64_t*>calloc(cap, sizeof(int64_t))
    g.h_time = <double*>calloc(cap, sizeof(double))
    g.h_due = <double*>calloc(cap, sizeof(double))
    g.h_nack = <double*>calloc(cap, sizeof(double))
    g.h_len = <uint16_t*>calloc(cap, sizeof(uint16_t))
    g.h_state = <uint8_t*>calloc(cap, sizeof(uint8_t))
    g.h_tries = <uint8_t*>calloc(cap, sizeof(uint8_t))
    if (g.h_slot == NULL or g.h_ext == NULL or g.h_time == NULL or g.h_due == NULL
            or g.h_nack == NULL or g.h_len == NULL or g.h_state == NULL or g.h_tries == NULL):
        eng_hist_free(e, g)
        raise MemoryError("cannot allocate retransmission history")
    g.h_lo = 0
    g.h_hi = 0
    return 0


cdef void eng_hist_free(Engine e, Ingress *g) noexcept nogil:
    cdef int32_t i
    if g.h_state != NULL and g.h_slot != NULL:
        for i in range(g.h_cap):
            if g.h_state[i] == H_HELD:
                eng_defer_release(e, g.h_slot[i])
    free(g.h_slot); free(g.h_ext); free(g.h_time); free(g.h_due); free(g.h_nack)
    free(g.h_len); free(g.h_state); free(g.h_tries)
    g.h_slot = NULL; g.h_ext = NULL; g.h_time = NULL; g.h_due = NULL; g.h_nack = NULL
    g.h_len = NULL; g.h_state = NULL; g.h_tries = NULL
    g.h_cap = 0
    g.nmissing = 0


cdef inline void eng_defer_release(Engine e, int32_t slot) noexcept nogil:
    """Release after the next flush: queued iovecs may still point into the slot."""
    if e.n_deferred == EGRESS_MAX:
        eng_flush(e)
    e.deferred[e.n_deferred] = slot
    e.n_deferred += 1


cdef inline int64_t hist_ext_of(const Ingress *g, uint16_t seq) noexcept nogil:
    """Extended seq nearest to the newest one seen (h_hi - 1)."""
    cdef int64_t top = g.h_hi - 1
    return top + <int16_t>(<uint16_t>(seq - <uint16_t>top))


cdef inline void hist_clear(Engine e, Ingress *g, int32_t pos, int32_t sid) noexcept nogil:
    if g.h_state[pos] == H_HELD:
        eng_defer_release(e, g.h_slot[pos])
    elif g.h_state[pos] == H_MISSING:
        # Pushed out of the window while still missing: lost for good.
        g.nmissing -= 1
        e.c[C_UNRECOVERED] += 1
        e.ss[sid * N_SRC_FIELDS + S_UNRECOVERED] += 1
    g.h_state[pos] = H_EMPTY


cdef inline void hist_store(Engine e, Ingress *g, int32_t pos, int64_t ext, int32_t slot,
                            Py_ssize_t n, double now) noexcept nogil:
    e.refcnt[slot] += 1
    g.h_slot[pos] = slot
    g.h_ext[pos] = ext
    g.h_len[pos] = <uint16_t>n
    g.h_time[pos] = now
    g.h_state[pos] = H_HELD


cdef int eng_hist_put(Engine e, int32_t iid, int32_t slot, Py_ssize_t n, uint16_t seq,
                      double now, int64_t *ext_out) noexcept nogil:
    """Keep the packet in its ingress's history; mark any hole it reveals as missing."""
    cdef Ingress *g = &e.ingress[iid]
    cdef int32_t mask = g.h_cap - 1, pos
    cdef int64_t ext, x, gap
    cdef uint8_t st
    if g.h_hi == 0:
        ext = (<int64_t>1 << 32) + seq       # room below for reordered early packets
        # The first packets may have been lost: their RTX must still find a place.
        g.h_lo = ext - EARLY_ROOM
        g.h_hi = ext
    else:
        ext = hist_ext_of(g, seq)
    ext_out[0] = ext
    if ext >= g.h_hi:
        gap = ext - g.h_hi
        if gap > (g.h_cap >> 1):
            # A jump (publisher restart or long outage): no NACK storm for it, and the
            # old window is let go now (nothing will address it again).
            x = g.h_lo
            while x < g.h_hi:
                pos = <int32_t>(x & mask)
                if g.h_ext[pos] == x:
                    hist_clear(e, g, pos, g.sid)
                x += 1
            g.h_lo = ext
        else:
            x = g.h_hi
            while x < ext:
                eng_mark_missing(e, iid, x, now)
                x += 1
        g.h_hi = ext + 1
        if g.h_hi - g.h_lo > g.h_cap:
            g.h_lo = g.h_hi - g.h_cap
        pos = <int32_t>(ext & mask)
        hist_clear(e, g, pos, g.sid)
        hist_store(e, g, pos, ext, slot, n, now)
        return PUT_NEW
    if ext < g.h_lo:
        return PUT_OLD
    pos = <int32_t>(ext & mask)
    st = g.h_state[pos]
    if g.h_ext[pos] == ext and st == H_HELD:
        return PUT_DUP
    if g.h_ext[pos] == ext and st == H_MUTED:
        return PUT_MUTED
    if g.h_ext[pos] == ext and (st == H_MISSING or st == H_GAVE_UP):
        if st == H_MISSING:
            g.nmissing -= 1
        g.h_state[pos] = H_EMPTY
        hist_store(e, g, pos, ext, slot, n, now)
        return PUT_FILLED
    hist_clear(e, g, pos, g.sid)
    hist_store(e, g, pos, ext, slot, n, now)
    return PUT_EARLY


cdef void eng_mark_missing(Engine e, int32_t iid, int64_t ext, double now) noexcept nogil:
    cdef Ingress *g = &e.ingress[iid]
    cdef int32_t pos = <int32_t>(ext & (g.h_cap - 1))
    cdef Source *s = &e.sources[g.sid]
    hist_clear(e, g, pos, g.sid)
    e.ss[g.sid * N_SRC_FIELDS + S_MISSING] += 1
    if not s.nack or g.role != ROLE_MEDIA:
        return
    g.h_ext[pos] = ext
    g.h_state[pos] = H_MISSING
    g.h_time[pos] = now
    g.h_due[pos] = now + e.nack_delay
    g.h_nack[pos] = 0
    g.h_tries[pos] = 0
    if g.nmissing == 0 or ext < g.miss_lo:
        g.miss_lo = ext
    g.nmissing += 1
    if not g.pending:
        g.pending = 1
        e.nack_list[e.n_nack_list] = iid
        e.n_nack_list += 1
    if g.h_due[pos] < e.next_nack:
        e.next_nack = g.h_due[pos]


cdef void eng_hist_expire(Engine e, double now) noexcept nogil:
    """Drop held packets older than their history age (video ~2 s, audio ~1 s)."""
    cdef int32_t iid, pos
    cdef Ingress *g
    for iid in range(e.max_ingress):
        g = &e.ingress[iid]
        if not g.alive or g.h_cap == 0:
            continue
        while g.h_lo < g.h_hi:
            pos = <int32_t>(g.h_lo & (g.h_cap - 1))
            if g.h_ext[pos] == g.h_lo and g.h_state[pos] != H_EMPTY:
                if now - g.h_time[pos] < g.h_age:
                    break
                hist_clear(e, g, pos, g.sid)
            g.h_lo += 1


cdef void eng_evict(Engine e, int32_t want) noexcept nogil:
    """Pool pressure: give back the oldest quarter of every history until `want` slots are free."""
    cdef int32_t iid, pos, rounds
    cdef int64_t stop
    cdef Ingress *g
    eng_flush(e)
    for rounds in range(8):
        if e.n_free_slots >= want:
            return
        for iid in range(e.max_ingress):
            g = &e.ingress[iid]
            if not g.alive or g.h_cap == 0 or g.h_hi <= g.h_lo:
                continue
            stop = g.h_lo + (g.h_hi - g.h_lo + 3) // 4
            while g.h_lo < stop:
                pos = <int32_t>(g.h_lo & (g.h_cap - 1))
                if g.h_ext[pos] == g.h_lo and g.h_state[pos] == H_HELD:
                    e.c[C_HIST_EVICTED] += 1
                    hist_clear(e, g, pos, g.sid)
                g.h_lo += 1
        eng_flush(e)    # runs the deferred releases


# ---- NACK responder (viewer -> node) -------------------------------------------------

cdef inline bint eng_rtx_budget(Engine e, Peer *p, Py_ssize_t n, double now) noexcept nogil:
    """Retransmissions to a participant with a bandwidth estimate get at most a quarter of
    it (token bucket, ~0.25 s deep): on a collapsing link, answering every NACK would keep
    the link congested (each lost RTX is NACKed again)."""
    cdef double rate = bwe_estimate(p.bwe) * 0.25 / 8.0
    cdef double cap = rate * 0.25
    if cap < 16000.0:
        cap = 16000.0
    if p.rtx_refill > 0 and now > p.rtx_refill:
        p.rtx_tokens += (now - p.rtx_refill) * rate
    elif p.rtx_refill == 0:
        p.rtx_tokens = cap
    p.rtx_refill = now
    if p.rtx_tokens > cap:
        p.rtx_tokens = cap
    if p.rtx_tokens < n:
        return False
    p.rtx_tokens -= n
    return True


cdef void eng_resend(Engine e, Downtrack *t, int32_t did, Ingress *g, int32_t pos,
                     uint16_t out_seq, uint32_t ts_off, uint16_t pid_off,
                     uint8_t tl0_off, double now) noexcept nogil:
    """Answer a viewer's NACK from the history: RTX (RFC 4588: own SSRC/PT/seq, OSN before
    the payload) or a plain resend identical to the forwarded copy."""
    cdef const uint8_t *d = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
    cdef Py_ssize_t n = g.h_len[pos], hl, consumed = 0
    cdef RtpView v
    cdef MediaInfo mi
    cdef uint8_t *out
    cdef Peer *p = &e.peers[t.pid]
    cdef bint rtx = t.rtx_ssrc != 0
    if rtp_parse(d, n, &v) != RTP_OK:
        return
    if p.bwe != NULL and not eng_rtx_budget(e, p, n, now):
        e.c[C_RTX_THROTTLED] += 1
        return
    if v.payload_type != g.payload_type:
        if t.mode == DT_PINNED and not p.tw_id:
            eng_ulp_relay(e, t, did, g, d, &v, g.h_ext[pos])     # publisher's in-band FEC
        return
    probe_codec(e.sources[g.sid].codec, d + v.header_size, v.payload_size, &mi)
    out = eng_aux_reserve(e, t.pid, n + 32)
    if out == NULL:
        return
    hl = dt_build_header(e, p, d, n, &v, &mi, out, n + 32,
                         t.rtx_seq if rtx else out_seq, v.ts + ts_off,
                         t.rtx_ssrc if rtx else t.out_ssrc, t.rtx_pt if rtx else t.out_pt,
                         dt_rewrites_desc(e, t), pid_off, tl0_off, rtx, out_seq, -1, now,
                         &consumed)
    if hl < 0:
        eng_rtcp_shrink(e, n + 32, 0)
        e.tx_count -= 1
        return
    memcpy(out + hl, d + consumed, n - consumed)
    eng_rtcp_shrink(e, n + 32, hl + n - consumed)
    if rtx:
        t.rtx_seq += 1
        e.c[C_RTX_SENT] += 1
    else:
        e.c[C_RESEND_SENT] += 1
    e.ds[did * N_DT_FIELDS + D_RTX_BYTES] += hl + n - consumed
    e.ds[did * N_DT_FIELDS + D_RTX_SENT] += 1


cdef inline void eng_hurry_upstream(Engine e, Ingress *g, int64_t ext, double now) noexcept nogil:
    """A viewer still waits for a hole the node is repairing upstream: ask the publisher
    again now rather than at the next retry."""
    cdef int32_t pos = <int32_t>(ext & (g.h_cap - 1))
    if (ext >= g.h_lo and ext < g.h_hi and g.h_ext[pos] == ext
            and g.h_state[pos] == H_MISSING and g.h_tries[pos] > 0
            and now - g.h_nack[pos] > 0.5 * eng_retry_interval(e, e.sources[g.sid].pid)):
        g.h_due[pos] = now
        if now < e.next_nack:
            e.next_nack = now


cdef bint eng_nack_switched(Engine e, Downtrack *t, int32_t did, uint16_t seq,
                            double now) noexcept nogil:
    """One NACKed viewer seq of a DT_SWITCHED viewer; False if it cannot be answered."""
    cdef OutEntry *o = om_by_out(t, seq)
    cdef int32_t iid, pos
    cdef Ingress *g
    cdef RtpView v
    cdef MediaInfo mi
    cdef const uint8_t *d
    if o == NULL:
        return False
    if t.cur_layer >= 0 and o.ii != t.cur_layer:
        # A layer the viewer has left: its decoder moved on to the new layer's keyframe, so
        # the old packet is useless. Not answered: on a link that just collapsed (the usual
        # reason to switch down) every answer would compete with that keyframe.
        return True
    if o.state == OM_PADDED:
        # Padding stands in for a packet the viewer must not get (a filtered layer).
        if e.peers[t.pid].bwe != NULL and not eng_rtx_budget(e, &e.peers[t.pid],
                                                             12 + 8 + PAD_BYTES, now):
            e.c[C_RTX_THROTTLED] += 1
            return True
        o.state = OM_PADDED
        eng_send_padding(e, t, did, False, seq, -1, now)
        return True
    iid = eng_layer_iid(e, &e.sources[t.sid], o.ii)
    if iid < 0:
        return False
    g = &e.ingress[iid]
    pos = <int32_t>(o.in_ext & (g.h_cap - 1))
    if not (o.in_ext >= g.h_lo and o.in_ext < g.h_hi and g.h_ext[pos] == o.in_ext
            and g.h_state[pos] == H_HELD):
        eng_hurry_upstream(e, g, o.in_ext, now)
        return False
    if o.state == OM_RESERVED:
        # Never sent: it may belong to a temporal layer or a layer this viewer left.
        d = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
        if rtp_parse(d, g.h_len[pos], &v) != RTP_OK:
            return False
        probe_codec(e.sources[g.sid].codec, d + v.header_size, v.payload_size, &mi)
        if ((o.ii != t.cur_layer and not (t.cur_layer < 0 and o.ii == t.paused_layer))
                or (mi.tid > <int8_t>t.cur_tid and not mi.key)):
            o.state = OM_PADDED
            eng_send_padding(e, t, did, False, seq, -1, now)
            return True
        o.state = OM_SENT
    eng_resend(e, t, did, g, pos, seq, o.ts_off, o.pid_off, o.tl0_off, now)
    return True


cdef void eng_nack_in(Engine e, int32_t did, const uint8_t *fci, Py_ssize_t count,
                      double now) noexcept nogil:
    cdef Downtrack *t = &e.dts[did]
    cdef Ingress *g
    cdef Py_ssize_t i
    cdef int b
    cdef uint16_t pid16, blp, seq
    cdef int32_t pos, prev = -2, cur
    cdef int64_t ext, nseqs = 0, runs = 0
    if not t.started or t.iid < 0:
        return
    g = &e.ingress[t.iid]
    for i in range(count):
        pid16 = rd16(fci + 4 * i)
        blp = rd16(fci + 4 * i + 2)
        for b in range(17):
            if b > 0 and not (blp >> (b - 1)) & 1:
                continue
            seq = <uint16_t>(pid16 + b)
            cur = seq
            nseqs += 1
            if <uint16_t>(seq - <uint16_t>prev) != 1 or prev < 0:
                runs += 1
            prev = cur
            if not t.nack:
                continue
            if t.mode == DT_SWITCHED:
                if not eng_nack_switched(e, t, did, seq, now):
                    e.c[C_RESEND_MISS] += 1
                    e.ds[did * N_DT_FIELDS + D_RESEND_MISS] += 1
                continue
            if g.h_cap == 0 or g.h_hi == 0:
                continue
            if t.ulp_k:
                ext = eng_ulp_nacked(e, t, did, g, seq)
                if ext < 0:
                    continue        # a FEC seq (answered) or before this viewer's start
            else:
                ext = dt_pinned_in_ext(t, g, seq)
                if ext < 0:
                    e.c[C_RESEND_MISS] += 1     # a seq no packet of the viewer's had
                    e.ds[did * N_DT_FIELDS + D_RESEND_MISS] += 1
                    continue
            pos = <int32_t>(ext & (g.h_cap - 1))
            if ext >= g.h_lo and ext < g.h_hi and g.h_ext[pos] == ext and g.h_state[pos] == H_HELD:
                eng_resend(e, t, did, g, pos, seq, t.ts_delta, 0, 0, now)
            else:
                e.c[C_RESEND_MISS] += 1
                e.ds[did * N_DT_FIELDS + D_RESEND_MISS] += 1
                eng_hurry_upstream(e, g, ext, now)
    e.ds[did * N_DT_FIELDS + D_NACK_SEQS] += nseqs
    e.ds[did * N_DT_FIELDS + D_NACK_RUNS] += runs


# ---- NACK generator (node -> publisher) ----------------------------------------------

cdef inline double eng_retry_interval(Engine e, int32_t pid) noexcept nogil:
    cdef double rtt = e.peers[pid].rtt if e.peers[pid].rtt > 0 else e.nack_rtt_default
    return rtt * 1.2 + 0.005


cdef double eng_nack_sweep(Engine e, double now) noexcept nogil:
    """Send due NACKs to publishers, give up on hopeless holes. Returns the next due time."""
    cdef int32_t li = 0, iid, pos, nseq, give_up
    cdef Ingress *g
    cdef Source *s
    cdef int64_t x
    cdef double nxt = 1e300, interval
    cdef uint16_t seqs[NACK_MAX_SEQS]
    while li < e.n_nack_list:
        iid = e.nack_list[li]
        g = &e.ingress[iid]
        if not g.alive or g.nmissing <= 0 or g.h_cap == 0:
            g.pending = 0
            e.n_nack_list -= 1
            e.nack_list[li] = e.nack_list[e.n_nack_list]
            continue
        li += 1
        s = &e.sources[g.sid]
        interval = eng_retry_interval(e, s.pid)
        nseq = 0
        give_up = 0
        x = g.miss_lo if g.miss_lo > g.h_lo else g.h_lo
        g.miss_lo = g.h_hi      # lowered again below by the first hole still missing
        while x < g.h_hi:
            pos = <int32_t>(x & (g.h_cap - 1))
            if g.h_ext[pos] == x and g.h_state[pos] == H_MISSING:
                if g.h_tries[pos] >= e.nack_max_tries or now - g.h_time[pos] > e.nack_max_age:
                    g.h_state[pos] = H_GAVE_UP
                    g.nmissing -= 1
                    e.c[C_UNRECOVERED] += 1
                    e.ss[g.sid * N_SRC_FIELDS + S_UNRECOVERED] += 1
                    if not (s.inband_fec and eng_after_frame_end(e, g, x)):
                        give_up = 1     # (a hole right after a frame may be in-band FEC)
                elif g.h_due[pos] <= now:
                    if nseq < NACK_MAX_SEQS:
                        seqs[nseq] = <uint16_t>x
                        nseq += 1
                        g.h_tries[pos] += 1
                        g.h_nack[pos] = now
                        g.h_due[pos] = now + interval
                    else:
                        g.h_due[pos] = now + 0.001   # next packet carries it
                if g.h_state[pos] == H_MISSING:
                    if x < g.miss_lo:
                        g.miss_lo = x
                    if g.h_due[pos] < nxt:
                        nxt = g.h_due[pos]
            x += 1
        if nseq:
            # Twice: a lost NACK costs a whole retry interval, a copy costs ~20 bytes.
            eng_send_nack(e, s.pid, g.ssrc, seqs, nseq)
            eng_send_nack(e, s.pid, g.ssrc, seqs, nseq)
            e.ss[g.sid * N_SRC_FIELDS + S_NACK_SENT] += nseq
        if give_up and s.kind == KIND_VIDEO_:
            eng_request_keyframe(e, g.sid, now, -1)   # coalesced per pli_interval
    return nxt


cdef void eng_send_nack(Engine e, int32_t pid, uint32_t media_ssrc, const uint16_t *seqs,
                        int32_t n) noexcept nogil:
    """RFC 4585 generic NACK; seqs ascending (mod 2^16)."""
    cdef uint8_t *out = eng_rtcp_reserve(e, pid, 12 + 4 * n)
    cdef int32_t i = 0, nfci = 0
    cdef uint16_t base, blp, d
    if out == NULL:
        return
    while i < n:
        base = seqs[i]
        blp = 0
        i += 1
        while i < n:
            d = <uint16_t>(seqs[i] - base)
            if d < 1 or d > 16:
                break
            blp |= <uint16_t>(1 << (d - 1))
            i += 1
        wr16(out + 12 + 4 * nfci, base)
        wr16(out + 14 + 4 * nfci, blp)
        nfci += 1
    rtcp_header(out, FMT_NACK, RTCP_RTPFB, 12 + 4 * nfci)
    wr32(out + 4, e.node_ssrc)
    wr32(out + 8, media_ssrc)
    eng_rtcp_shrink(e, 12 + 4 * n, 12 + 4 * nfci)
    e.c[C_NACK_SENT] += 1


# ---- repair packets from publishers ---------------------------------------------------

cdef int32_t eng_take_slot(Engine e) noexcept nogil:
    cdef int32_t slot
    if e.n_free_slots == 0:
        e.c[C_DROP_NO_SLOT] += 1
        return -1
    e.n_free_slots -= 1
    slot = e.free_slots[e.n_free_slots]
    e.refcnt[slot] = 1
    return slot


cdef void eng_rtx_in(Engine e, int32_t pid, Ingress *r, const uint8_t *d, Py_ssize_t n,
                     const RtpView *v, double now) noexcept nogil:
    """RFC 4588 RTX from a publisher: rebuild the original packet, then handle it as media."""
    cdef Ingress *m = &e.ingress[r.media]
    cdef Py_ssize_t hs = v.header_size, on
    cdef int32_t slot, pos
    cdef uint8_t *o
    cdef uint16_t osn
    cdef int64_t ext
    if v.payload_size < 2:
        e.c[C_DROP_MALFORMED] += 1
        return
    e.c[C_RX_RTP] += 1
    e.c[C_RTX_IN] += 1
    e.ss[r.sid * N_SRC_FIELDS + S_RTX_IN] += 1
    osn = rd16(d + hs)
    if m.h_cap and m.h_hi:
        ext = hist_ext_of(m, osn)
        pos = <int32_t>(ext & (m.h_cap - 1))
        # Karn's rule: after a retry we cannot tell which NACK this RTX answers.
        if (m.h_ext[pos] == ext and m.h_state[pos] == H_MISSING and m.h_nack[pos] > 0
                and m.h_tries[pos] == 1):
            eng_rtt_sample(e, e.sources[r.sid].pid, now - m.h_nack[pos])
    slot = eng_take_slot(e)
    if slot < 0:
        return
    o = e.pool + <size_t>slot * SLOT_SIZE
    on = n - 2
    memcpy(o, d, hs)
    o[1] = (d[1] & 0x80) | m.payload_type
    wr16(o + 2, osn)
    wr32(o + 8, m.ssrc)
    memcpy(o + hs, d + hs + 2, n - hs - 2)
    eng_media_in(e, r.media, slot, o, on, now, HOW_RTX)
    eng_defer_release(e, slot)


cdef inline void eng_rtt_sample(Engine e, int32_t pid, double sample) noexcept nogil:
    cdef Peer *p = &e.peers[pid]
    if sample <= 0 or sample > 5.0:
        return
    p.rtt = sample if p.rtt <= 0 else p.rtt + (sample - p.rtt) / 8.0


cdef int rs_header_read(const uint8_t *d, Py_ssize_t n, Py_ssize_t off, int *k, int *m, int *idx,
                        uint16_t *base, int *L, uint32_t *base_ts, uint32_t *mssrc,
                        uint64_t *mask) noexcept nogil:
    cdef const uint8_t *p = d + off
    if n - off < RS_HDR:
        return -1
    if (p[0] >> 6) != 1:
        return -1
    k[0] = p[1]
    m[0] = p[2]
    idx[0] = p[3]
    base[0] = rd16(p + 4)
    L[0] = rd16(p + 6)
    base_ts[0] = rd32(p + 8)
    mssrc[0] = rd32(p + 12)
    mask[0] = (<uint64_t>rd32(p + 16) << 32) | rd32(p + 20)
    if (k[0] < 1 or k[0] > RS_MAX_K or m[0] < 1 or m[0] > RS_MAX_M or idx[0] >= m[0]
            or L[0] < 8 or L[0] > SLOT_SIZE or n - off - RS_HDR != L[0]):
        return -1
    if k[0] < 64 and (mask[0] & ((<uint64_t>1 << (64 - k[0])) - 1)):
        return -1
    return 0


cdef void eng_fec_in(Engine e, int32_t pid, int32_t fiid, int32_t slot, const uint8_t *d,
                     Py_ssize_t n, const RtpView *v, double now) noexcept nogil:
    """SFU-RS parity from a publisher: keep it, and rebuild what its block can."""
    cdef Ingress *f = &e.ingress[fiid]
    cdef Ingress *m = &e.ingress[f.media]
    cdef int k, mm, idx, L
    cdef uint16_t base
    cdef uint32_t base_ts, mssrc
    cdef uint64_t mask
    cdef int64_t fext
    cdef int slot_i
    if rs_header_read(d, n, v.header_size, &k, &mm, &idx, &base, &L, &base_ts, &mssrc,
                      &mask) < 0 or mssrc != m.ssrc:
        e.c[C_DROP_MALFORMED] += 1
        return
    e.c[C_RX_RTP] += 1
    e.c[C_FEC_IN] += 1
    e.ss[f.sid * N_SRC_FIELDS + S_FEC_IN] += 1
    if eng_hist_put(e, fiid, slot, n, v.seq, now, &fext) == PUT_DUP or m.h_hi == 0:
        return
    # Remember the block, so a retransmission that arrives later can complete it.
    slot_i = m.fb_pos
    if m.fb_fec[(slot_i + FB_RING - 1) % FB_RING] != fext - idx:
        m.fb_media[slot_i] = hist_ext_of(m, base)
        m.fb_fec[slot_i] = fext - idx
        m.fb_k[slot_i] = <uint8_t>k
        m.fb_pos = (slot_i + 1) % FB_RING
    eng_fec_try(e, fiid, fext - idx, now)


cdef void eng_fec_retry(Engine e, int32_t miid, int64_t ext, double now) noexcept nogil:
    """A hole filled by RTX: blocks that could not decode before may now."""
    cdef Ingress *m = &e.ingress[miid]
    cdef int i
    if m.fec_iid < 0:
        return
    for i in range(FB_RING):
        if m.fb_k[i] and m.fb_media[i] <= ext < m.fb_media[i] + m.fb_k[i]:
            eng_fec_try(e, m.fec_iid, m.fb_fec[i], now)


cdef void eng_fec_try(Engine e, int32_t fiid, int64_t fext0, double now) noexcept nogil:
    """Rebuild the missing packets of the SFU-RS block whose row 0 has FEC ext fext0."""
    cdef Ingress *f = &e.ingress[fiid]
    cdef Ingress *m = &e.ingress[f.media]
    cdef int k = 0, mm = 0, idx, L = 0, k2, m2, idx2, L2, i, j, miss = 0, nrows = 0, got
    cdef uint16_t base = 0, base2
    cdef uint32_t base_ts = 0, ts2, ms2
    cdef uint64_t mask = 0, mask2
    cdef int64_t ext, fext
    cdef int32_t pos, fpos
    cdef Py_ssize_t plen
    cdef const uint8_t *q
    cdef const uint8_t *imgs[RS_MAX_K]
    cdef uint8_t *outs[RS_MAX_K]
    cdef const uint8_t *par[RS_MAX_M]
    cdef int rows[RS_MAX_M]
    cdef uint8_t *img
    # The block's shape, from any of its rows we hold.
    for j in range(RS_MAX_M):
        fext = fext0 + j
        fpos = <int32_t>(fext & (f.h_cap - 1))
        if fext < f.h_lo or f.h_ext[fpos] != fext or f.h_state[fpos] != H_HELD:
            continue
        q = e.pool + <size_t>f.h_slot[fpos] * SLOT_SIZE
        if rtp_parse(q, f.h_len[fpos], &e.scratch_view) != RTP_OK:
            continue
        if rs_header_read(q, f.h_len[fpos], e.scratch_view.header_size, &k, &mm, &idx, &base,
                          &L, &base_ts, &ms2, &mask) == 0 and idx == j:
            break
        k = 0
    if k == 0:
        return
    # Which protected packets are missing here, and which images we have.
    for i in range(k):
        imgs[i] = NULL
        if not (mask >> (63 - i)) & 1:
            continue
        ext = hist_ext_of(m, <uint16_t>(base + i))
        pos = <int32_t>(ext & (m.h_cap - 1))
        if ext >= m.h_lo and m.h_ext[pos] == ext and m.h_state[pos] == H_HELD:
            img = e.rs_scratch + <size_t>i * SLOT_SIZE
            q = e.pool + <size_t>m.h_slot[pos] * SLOT_SIZE
            plen = m.h_len[pos]
            if 8 + plen - 12 > L:
                return          # inconsistent with this block: do not guess
            img[0] = q[0]
            img[1] = q[1] & 0x80
            wr16(img + 2, <uint16_t>(plen - 12))
            wr32(img + 4, rd32(q + 4) - base_ts)
            memcpy(img + 8, q + 12, plen - 12)
            memset(img + 8 + plen - 12, 0, L - (8 + plen - 12))
            imgs[i] = img
        elif ext >= m.h_lo and ext < m.h_hi + 64:
            outs[i] = e.rs_scratch + <size_t>(RS_MAX_K + miss) * SLOT_SIZE
            miss += 1
        else:
            return
    if miss == 0:
        return
    # The block's parity rows we hold (consecutive FEC seqs).
    for j in range(mm):
        fext = fext0 + j
        fpos = <int32_t>(fext & (f.h_cap - 1))
        if f.h_ext[fpos] != fext or f.h_state[fpos] != H_HELD:
            continue
        q = e.pool + <size_t>f.h_slot[fpos] * SLOT_SIZE
        if rtp_parse(q, f.h_len[fpos], &e.scratch_view) != RTP_OK:
            continue
        if rs_header_read(q, f.h_len[fpos], e.scratch_view.header_size, &k2, &m2, &idx2, &base2,
                          &L2, &ts2, &ms2, &mask2) < 0:
            continue
        if k2 != k or base2 != base or L2 != L or mask2 != mask or idx2 != j:
            continue
        rows[nrows] = j
        par[nrows] = q + e.scratch_view.header_size + RS_HDR
        nrows += 1
    if nrows < miss:
        return
    got = rs_recover(k, mask, imgs, rows, par, nrows, L, outs)
    if got <= 0:
        return
    for i in range(k):
        if imgs[i] != NULL or not (mask >> (63 - i)) & 1:
            continue
        eng_rebuild_from_image(e, f.media, outs[i], L, <uint16_t>(base + i), base_ts, now)


cdef void eng_rebuild_from_image(Engine e, int32_t miid, const uint8_t *img, int L, uint16_t seq,
                                 uint32_t base_ts, double now) noexcept nogil:
    cdef Ingress *m = &e.ingress[miid]
    cdef Py_ssize_t body = rd16(img + 2), n = 12 + body
    cdef int32_t slot
    cdef uint8_t *o
    if 8 + body > L or n > SLOT_SIZE:
        e.c[C_DROP_MALFORMED] += 1
        return
    slot = eng_take_slot(e)
    if slot < 0:
        return
    o = e.pool + <size_t>slot * SLOT_SIZE
    o[0] = img[0]
    o[1] = (img[1] & 0x80) | m.payload_type
    wr16(o + 2, seq)
    wr32(o + 4, base_ts + rd32(img + 4))
    wr32(o + 8, m.ssrc)
    memcpy(o + 12, img + 8, body)
    if rtp_parse(o, n, &e.scratch_view) == RTP_OK:
        eng_media_in(e, miid, slot, o, n, now, HOW_FEC)
    else:
        e.c[C_DROP_MALFORMED] += 1
    eng_defer_release(e, slot)


# ---- downlink SFU-RS parity -------------------------------------------------------------

cdef void eng_fec_block_step(Engine e, int32_t iid, int64_t ext, double now) noexcept nogil:
    """Called for each in-order media packet; closes SFU-RS blocks and emits their parity."""
    cdef Ingress *g = &e.ingress[iid]
    cdef int k = e.sources[g.sid].fec_k
    if k <= 0 or g.blk_m == 0:
        g.blk_k = 0
        return
    if g.blk_k != k or ext < g.blk_base:
        g.blk_k = k
        g.blk_base = ext
    if ext >= g.blk_base + k:
        eng_fec_block_close(e, iid, now)
        g.blk_base = ext
    if ext == g.blk_base + k - 1:
        eng_fec_block_close(e, iid, now)
        g.blk_base = ext + 1


cdef inline bint dt_block_map(const Downtrack *t, const Ingress *g, int k, uint16_t *out_base,
                              uint32_t *ts_off) noexcept nogil:
    """Where source block [blk_base, +k) lies in the viewer's seqs, if it got it as one
    unchanged run (same layer, no temporal drops inside, payload not rewritten)."""
    if t.cur_layer != g.layer:
        return False
    if t.mode == DT_PINNED:
        if t.pin_rebase or g.blk_base < t.pin_seg_ext:
            return False            # the block straddles a mute (two deltas)
        out_base[0] = <uint16_t>(<uint16_t>g.blk_base + t.seq_delta)
        ts_off[0] = t.ts_delta
        return True
    if t.pid_off or t.tl0_off or g.blk_base < t.seg_in or g.blk_base + k - 1 > t.last_in:
        return False
    out_base[0] = <uint16_t>(g.blk_base + (t.out_top - t.last_in))
    ts_off[0] = t.ts_off
    return True


cdef void eng_fec_block_close(Engine e, int32_t iid, double now) noexcept nogil:
    cdef Ingress *g = &e.ingress[iid]
    cdef Source *s = &e.sources[g.sid]
    cdef int k = g.blk_k, i, j, L = 0, rows = g.blk_m, have = 0
    cdef int64_t ext
    cdef int32_t pos, did, x
    cdef uint64_t mask = 0
    cdef uint32_t base_ts = 0
    cdef const uint8_t *q
    cdef uint8_t *prefix = e.rs_prefix
    cdef const uint8_t *bodies[RS_MAX_K]
    cdef uint16_t lens[RS_MAX_K]
    cdef Downtrack *t
    cdef uint8_t *out
    cdef Py_ssize_t size
    cdef uint16_t out_base
    cdef uint32_t ts_off
    for i in range(k):
        ext = g.blk_base + i
        pos = <int32_t>(ext & (g.h_cap - 1))
        bodies[i] = NULL
        lens[i] = 0
        if ext < g.h_lo or g.h_ext[pos] != ext or g.h_state[pos] != H_HELD:
            continue
        q = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
        if not have:
            base_ts = rd32(q + 4)
            have = 1
        mask |= (<uint64_t>1) << (63 - i)
        prefix[8 * i] = q[0]
        prefix[8 * i + 1] = q[1] & 0x80
        wr16(prefix + 8 * i + 2, <uint16_t>(g.h_len[pos] - 12))
        wr32(prefix + 8 * i + 4, rd32(q + 4) - base_ts)
        bodies[i] = q + 12
        lens[i] = <uint16_t>(g.h_len[pos] - 12)
        if 8 + lens[i] > L:
            L = 8 + lens[i]
    if not have or rows == 0:
        return
    rs_parity_rows(prefix, bodies, lens, mask, k, 0, rows, e.rs_parity, L)
    size = 12 + RS_HDR + L
    for x in range(s.ndts):
        did = s.dts[x]
        t = &e.dts[did]
        if (t.fec_m == 0 or not t.started or not e.peers[t.pid].bound or e.peers[t.pid].tw_id
                or not dt_block_map(t, g, k, &out_base, &ts_off)):
            continue
        for j in range(t.fec_m if t.fec_m <= rows else rows):
            out = eng_aux_reserve(e, t.pid, size)
            if out == NULL:
                break
            out[0] = 0x80
            out[1] = t.fec_pt
            wr16(out + 2, t.fec_seq)
            t.fec_seq += 1
            wr32(out + 4, base_ts + ts_off)
            wr32(out + 8, t.fec_ssrc)
            out[12] = 0x40
            out[13] = <uint8_t>k
            out[14] = t.fec_m if t.fec_m <= rows else rows
            out[15] = <uint8_t>j
            wr16(out + 16, out_base)
            wr16(out + 18, <uint16_t>L)
            wr32(out + 20, base_ts + ts_off)
            wr32(out + 24, t.out_ssrc)
            wr32(out + 28, <uint32_t>(mask >> 32))
            wr32(out + 32, <uint32_t>mask)
            memcpy(out + 36, e.rs_parity + <size_t>j * L, L)
            e.c[C_FEC_SENT] += 1
            e.ds[did * N_DT_FIELDS + D_FEC_SENT] += 1
            e.ds[did * N_DT_FIELDS + D_FEC_BYTES] += size


cdef void eng_update_blk_m(Engine e, int32_t sid) noexcept nogil:
    """The parity rows a source block needs: the most any of its viewers wants."""
    cdef Source *s = &e.sources[sid]
    cdef int i, mx = 0
    for i in range(s.ndts):
        if e.dts[s.dts[i]].fec_m > mx:
            mx = e.dts[s.dts[i]].fec_m
    for i in range(s.ningress):
        e.ingress[s.ingress[i]].blk_m = mx


cdef bint eng_after_frame_end(Engine e, Ingress *g, int64_t ext) noexcept nogil:
    """Whether the nearest held packet before ext ends a frame or is in-band FEC: the
    places where a publisher like GStreamer's rtpulpfecenc puts its FEC packets."""
    cdef int64_t x = ext - 1
    cdef int32_t pos
    cdef const uint8_t *q
    while x >= g.h_lo and ext - x <= 4:
        pos = <int32_t>(x & (g.h_cap - 1))
        if g.h_ext[pos] == x and g.h_state[pos] == H_HELD:
            q = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
            return (q[1] & 0x80) != 0 or (q[1] & 0x7F) != g.payload_type
        x -= 1
    return False


# ---- in-band ULPFEC (RFC 5109, the way GStreamer sends and expects it) -------------------

cdef void eng_ulp_in(Engine e, int32_t iid, const uint8_t *d, Py_ssize_t n, const RtpView *v,
                     double now) noexcept nogil:
    """A publisher's in-band ULPFEC packet (already stored and passed through): rebuild the
    one protected packet that is missing here, if exactly one is."""
    cdef Ingress *g = &e.ingress[iid]
    cdef FecView fv
    cdef int i, count = 0, miss = -1, err
    cdef int64_t ext
    cdef int32_t pos, slot
    cdef const uint8_t *pkts[FEC_MAX_GROUP]
    cdef Py_ssize_t lens[FEC_MAX_GROUP]
    cdef Py_ssize_t out_len = 0
    cdef uint8_t *o
    e.sources[g.sid].inband_fec = 1
    if fec_parse(d + v.header_size, v.payload_size, &fv) != FEC_OK:
        return
    for i in range(FEC_MAX_GROUP):
        if not (fv.mask >> i) & 1:
            continue
        ext = hist_ext_of(g, <uint16_t>(fv.sn_base + i))
        pos = <int32_t>(ext & (g.h_cap - 1))
        if ext >= g.h_lo and ext < g.h_hi and g.h_ext[pos] == ext and g.h_state[pos] == H_HELD:
            pkts[count] = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
            lens[count] = g.h_len[pos]
            count += 1
        elif miss >= 0:
            return              # two missing: XOR cannot help
        else:
            miss = i
    if miss < 0:
        return
    slot = eng_take_slot(e)
    if slot < 0:
        return
    o = e.pool + <size_t>slot * SLOT_SIZE
    err = fec_recover_into(d + v.header_size, v.payload_size, g.ssrc, pkts, lens, count,
                           o, SLOT_SIZE, &out_len)
    if err == FEC_OK and (o[1] & 0x7F) == g.payload_type and rd32(o + 8) == g.ssrc:
        eng_media_in(e, iid, slot, o, out_len, now, HOW_FEC)
    eng_defer_release(e, slot)


cdef void eng_ulp_step(Engine e, Downtrack *t, int32_t did, Ingress *g, int64_t i) noexcept nogil:
    """After media index i went to the viewer: close every ULPFEC block that is done."""
    cdef int64_t last = i // t.ulp_k
    if i > t.ulp_top:
        t.ulp_top = i
    if i % t.ulp_k != t.ulp_k - 1:
        last -= 1               # i's own block is still open
    if last - t.ulp_block > 4:
        t.ulp_block = last - 4  # a jump: no FEC burst for blocks long gone
    while t.ulp_block <= last:
        eng_ulp_block(e, t, did, g, t.ulp_block)
        t.ulp_block += 1


cdef void eng_ulp_block(Engine e, Downtrack *t, int32_t did, Ingress *g, int64_t b) noexcept nogil:
    """The ULPFEC packet of media block b of this viewer (its seq is fixed by the mapping)."""
    cdef int i, k = t.ulp_k
    cdef int64_t exts[ULP_MAX_K]
    for i in range(k):
        exts[i] = ulp_ext_of(t, b * k + i)
    eng_ulp_emit(e, t, did, g, exts, k, <uint16_t>(t.ulp_out0 + b * (k + 1) + k), t.ulp_pt, 0)


cdef int eng_ulp_emit(Engine e, Downtrack *t, int32_t did, Ingress *g, const int64_t *exts,
                      int n, uint16_t fec_seq, uint8_t fec_pt, bint need_all) noexcept nogil:
    """XOR-protect the viewer's copies of the held media packets exts[] into one in-band
    ULPFEC packet on the viewer's SSRC. need_all: send nothing unless every one is held.
    Returns 1 if a packet was queued."""
    cdef int i, count = 0
    cdef int64_t ext
    cdef int32_t pos
    cdef uint8_t *c
    cdef const uint8_t *q
    cdef const uint8_t *pkts[FEC_MAX_GROUP]
    cdef Py_ssize_t lens[FEC_MAX_GROUP]
    cdef Py_ssize_t plen, cap = 0, used = 0
    cdef uint16_t out_seq
    cdef uint32_t ts = 0
    cdef uint8_t *out
    for i in range(n):
        ext = exts[i]
        pos = <int32_t>(ext & (g.h_cap - 1))
        if (ext < g.h_lo or ext >= g.h_hi or g.h_ext[pos] != ext or g.h_state[pos] != H_HELD
                or count == ULP_MAX_K):
            if need_all:
                return 0
            continue
        q = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
        if (q[1] & 0x7F) != g.payload_type or not dt_out_seq(t, ext, rd16(q + 2), &out_seq):
            if need_all:
                return 0
            continue
        plen = g.h_len[pos]
        # The viewer's copy (rewritten header): FEC protects what the viewer receives.
        c = e.ulp_scratch + <size_t>count * SLOT_SIZE
        memcpy(c, q, plen)
        c[1] = (q[1] & 0x80) | t.out_pt
        wr16(c + 2, out_seq)
        ts = rd32(q + 4) + t.ts_delta
        wr32(c + 4, ts)
        wr32(c + 8, t.out_ssrc)
        pkts[count] = c
        lens[count] = plen
        count += 1
        if plen - 12 > cap:
            cap = plen - 12
    if count == 0:
        return 0
    out = eng_aux_reserve(e, t.pid, 12 + FEC_HEADER + 8 + cap)
    if out == NULL:
        return 0
    if fec_encode_into(pkts, lens, count, out + 12, FEC_HEADER + 8 + cap, &used) != FEC_OK:
        eng_rtcp_shrink(e, 12 + FEC_HEADER + 8 + cap, 0)
        e.tx_count -= 1
        return 0
    out[0] = 0x80
    out[1] = fec_pt
    wr16(out + 2, fec_seq)
    wr32(out + 4, ts)
    wr32(out + 8, t.out_ssrc)
    eng_rtcp_shrink(e, 12 + FEC_HEADER + 8 + cap, 12 + used)
    e.c[C_FEC_SENT] += 1
    e.ds[did * N_DT_FIELDS + D_FEC_SENT] += 1
    e.ds[did * N_DT_FIELDS + D_FEC_BYTES] += 12 + used
    return 1


cdef int eng_ulp_relay(Engine e, Downtrack *t, int32_t did, Ingress *g, const uint8_t *d,
                       const RtpView *v, int64_t ext) noexcept nogil:
    """The publisher's in-band ULPFEC packet, re-encoded for this viewer: its header fields
    (SN base, TS recovery) depend on the viewer's rewrite, so it cannot pass as is. Sent
    only when the node holds every packet it protects (it repairs with it first)."""
    cdef FecView fv
    cdef int64_t exts[FEC_MAX_GROUP]
    cdef int i, n = 0
    cdef uint16_t out_seq
    if fec_parse(d + v.header_size, v.payload_size, &fv) != FEC_OK:
        return 0
    for i in range(FEC_MAX_GROUP):
        if (fv.mask >> i) & 1:
            exts[n] = hist_ext_of(g, <uint16_t>(fv.sn_base + i))
            n += 1
    if n > ULP_MAX_K or not dt_out_seq(t, ext, v.seq, &out_seq):
        return 0
    return eng_ulp_emit(e, t, did, g, exts, n, out_seq, v.payload_type, 1)


cdef int64_t eng_ulp_nacked(Engine e, Downtrack *t, int32_t did, Ingress *g,
                            uint16_t seq) noexcept nogil:
    """A NACKed seq of a ULPFEC viewer: the media packet's extended seq, or -1 after
    answering it (a FEC seq gets its FEC packet again, as GStreamer's receiver wants)."""
    cdef int64_t top_j, j, b, r
    cdef int k = t.ulp_k
    if not t.ulp_started:
        return -1
    top_j = t.ulp_top + t.ulp_top // k
    j = top_j + <int16_t>(<uint16_t>(seq - <uint16_t>(t.ulp_out0 + top_j)))
    if j < 0:
        return -1
    b = j // (k + 1)
    r = j % (k + 1)
    if r == k:
        if b < t.ulp_block:
            eng_ulp_block(e, t, did, g, b)
        return -1
    return ulp_ext_of(t, b * k + r)

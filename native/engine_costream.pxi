# Co-streaming additions (issue 5): RFC 6464 audio levels, server-side mute, and the
# helpers behind them. Data messages (RTCP APP "SFUD") are in engine_rtcp.pxi.

cdef inline void eng_audio_level(Source *s, const uint8_t *d, const RtpView *v) noexcept nogil:
    """RFC 6464 client-to-mixer level of one media packet: V bit and -dBov (0..127)."""
    cdef Py_ssize_t off = 0, ln = 0
    cdef uint8_t b
    if rtp_ext_find(d, v, s.al_id, &off, &ln) != 1 or ln != 1:
        return                  # absent, malformed, or not the one-octet element
    b = d[off]
    s.al_count += 1
    s.al_sum += b & 0x7F
    s.al_voiced += b >> 7


# ---- server-side mute ----------------------------------------------------------------

cdef inline void eng_muted_count(Engine e, int32_t sid, int how) noexcept nogil:
    if how == HOW_DIRECT:
        e.c[C_RX_RTP] += 1      # handled (accounting): received, deliberately not sent
    e.c[C_MUTED_DROPS] += 1
    e.ss[sid * N_SRC_FIELDS + S_MUTED_DROPS] += 1


cdef void eng_muted_in(Engine e, Ingress *g, uint16_t seq, double now, int how) noexcept nogil:
    """A media packet (received or rebuilt) of a muted source: not kept, not sent. Its seq
    is marked H_MUTED in the history (and so is any hole before it), so no NACK goes
    upstream for it and no later path (RTX answer, GOP replay, FEC, a late copy) uses it."""
    cdef int32_t mask = g.h_cap - 1, pos
    cdef int64_t ext, x
    eng_muted_count(e, g.sid, how)
    if g.h_cap == 0:
        return
    if g.h_hi == 0:
        ext = (<int64_t>1 << 32) + seq
        g.h_lo = ext            # no early room: an older seq may be a muted one too
        g.h_hi = ext
    ext = hist_ext_of(g, seq)
    if g.mute_hi == 0 or (ext < g.mute_lo and ext >= g.h_lo):
        g.mute_lo = ext if ext < g.h_hi else g.h_hi
    if ext + 1 > g.mute_hi:
        g.mute_hi = ext + 1
    if ext >= g.h_hi:
        x = g.h_hi
        if ext - x >= g.h_cap:
            x = ext - g.h_cap + 1
        while x <= ext:
            pos = <int32_t>(x & mask)
            hist_clear(e, g, pos, g.sid)
            g.h_ext[pos] = x
            g.h_state[pos] = H_MUTED
            g.h_time[pos] = now
            x += 1
        g.h_hi = ext + 1
        if g.h_hi - g.h_lo > g.h_cap:
            g.h_lo = g.h_hi - g.h_cap
    elif ext >= g.h_lo:
        pos = <int32_t>(ext & mask)
        if g.h_ext[pos] == ext and g.h_state[pos] == H_HELD:
            return              # a duplicate of a packet from before the mute
        if g.h_ext[pos] == ext and g.h_state[pos] == H_MISSING:
            g.nmissing -= 1     # a hole from before: its repair came while muted
            g.h_state[pos] = H_EMPTY
        else:
            hist_clear(e, g, pos, g.sid)
        g.h_ext[pos] = ext
        g.h_state[pos] = H_MUTED
        g.h_time[pos] = now


cdef inline void eng_pin_rebase(Downtrack *t, int64_t ext, uint16_t seq) noexcept nogil:
    """First packet after an unmute to a DT_PINNED viewer: it gets the viewer seq right
    after the last one before the mute (with ULPFEC: the next media index); older packets
    keep the mapping of then."""
    t.pin_prev_ext = t.pin_seg_ext
    t.pin_seg_ext = ext
    t.pin_rebase = 0
    if t.ulp_k:
        t.ulp_prev_origin = t.ulp_origin
        t.ulp_prev_seg_i = t.ulp_seg_i
        t.ulp_seg_i = t.ulp_next
        t.ulp_origin = ext - t.ulp_next
        return
    t.pin_prev_delta = t.seq_delta
    t.pin_seg_out = t.pin_rebase_out
    t.seq_delta = <uint16_t>(t.pin_rebase_out - seq)


cdef inline int64_t ulp_ext_of(const Downtrack *t, int64_t j) noexcept nogil:
    """The ingress extended seq of media index j of a ULPFEC viewer (-1 = none)."""
    if j >= t.ulp_seg_i:
        return t.ulp_origin + j
    if j >= t.ulp_prev_seg_i:
        return t.ulp_prev_origin + j
    return -1


cdef inline int64_t dt_pinned_in_ext(const Downtrack *t, const Ingress *g,
                                     uint16_t seq) noexcept nogil:
    """The ingress extended seq behind viewer seq `seq` of a DT_PINNED viewer (no ULPFEC),
    or -1 if that seq was never one of its packets' (before the previous unmute)."""
    cdef int64_t ext
    if t.pin_seg_ext == 0 or <int16_t>(<uint16_t>(seq - t.pin_seg_out)) >= 0:
        ext = hist_ext_of(g, <uint16_t>(seq - t.seq_delta))
        return ext if ext >= t.pin_seg_ext else -1
    ext = hist_ext_of(g, <uint16_t>(seq - t.pin_prev_delta))
    return ext if t.pin_prev_ext <= ext < t.pin_seg_ext else -1


cdef void eng_set_muted(Engine e, int32_t sid, bint muted, double now) noexcept nogil:
    cdef Source *s = &e.sources[sid]
    cdef Downtrack *t
    cdef Ingress *g
    cdef int i
    if (s.muted != 0) == (muted != 0):
        return
    for i in range(s.ningress):
        g = &e.ingress[s.ingress[i]]
        g.blk_k = 0             # downlink FEC blocks restart after the mute
        if muted and g.role == ROLE_MEDIA:
            g.key_ext = -1      # no GOP replay of frames from before: wait for a new one
            g.key_floor = g.h_hi    # nor a late pre-mute keyframe packet after unmute
    if muted:
        s.muted = 1
        s.mute_seen = 1
        for i in range(s.ndts):
            t = &e.dts[s.dts[i]]
            if (t.mode == DT_PINNED and t.started and not t.pin_rebase and t.iid >= 0
                    and (not t.ulp_k or t.ulp_started)):
                # The viewer's next seq: right after the newest packet seen before the mute.
                t.pin_rebase_out = <uint16_t>(<uint16_t>e.ingress[t.iid].h_hi + t.seq_delta)
                t.ulp_next = e.ingress[t.iid].h_hi - t.ulp_origin
                t.pin_rebase = 1
            if t.pin_rebase:
                t.pin_unmute_ext = <int64_t>1 << 62
        return
    s.muted = 0
    for i in range(s.ndts):
        t = &e.dts[s.dts[i]]
        if t.pin_rebase:
            t.pin_unmute_ext = e.ingress[t.iid].h_hi
        if t.mode == DT_SWITCHED and t.cur_layer >= 0:
            # Like a pause: resume at a keyframe, seqs/timestamps/PictureIDs continuing.
            t.paused_layer = t.cur_layer
            t.cur_layer = -1
    if s.kind == KIND_VIDEO_:
        s.last_pli = -1e18      # the unmute keyframe is not coalesced away
        for i in range(s.ningress):
            e.ingress[s.ingress[i]].last_pli = -1e18
        eng_request_keyframe(e, sid, now, -1)
        eng_flush(e)

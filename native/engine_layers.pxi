# Simulcast and bandwidth in the data path: per-viewer layer switching at keyframes with
# continuous seq/ts/PictureID rewriting, VP8 temporal-layer filtering, transport-wide seq
# stamping (TWCC), padding probes, the GOP-cache start of a new viewer, per-layer PLIs.

# ---- header rewrite ------------------------------------------------------------------

cdef Py_ssize_t dt_build_header(Engine e, Peer *p, const uint8_t *d, Py_ssize_t n,
                                const RtpView *v, const MediaInfo *mi, uint8_t *out,
                                Py_ssize_t cap, uint16_t seq, uint32_t ts, uint32_t ssrc,
                                uint8_t pt, bint rewrite_desc, uint16_t pid_off,
                                uint8_t tl0_off, int rtx, uint16_t osn, int probe,
                                double now, Py_ssize_t *consumed) noexcept nogil:
    """The viewer's header of packet d into out: fixed fields, CSRCs, the extension block
    with the transport-wide seq (when the viewer does TWCC), RTX's OSN, the rewritten VP8
    descriptor. *consumed = where the unchanged rest of d starts. -1 if cap is too small."""
    cdef Py_ssize_t cc_end = 12 + 4 * v.csrc_count, o, q, end, ext_start, elen
    cdef Py_ssize_t tw_at = -1
    cdef int eid
    cdef bint stamp = p.tw_id != 0 and p.bwe != NULL
    cdef uint16_t tw
    if v.header_size + 16 + 2 + 6 > cap:
        return -1
    memcpy(out, d, cc_end)
    out[1] = (d[1] & 0x80) | pt
    wr16(out + 2, seq)
    wr32(out + 4, ts)
    wr32(out + 8, ssrc)
    o = cc_end
    if stamp and v.ext_profile == 0:
        out[0] |= 0x10
        out[o] = 0xBE
        out[o + 1] = 0xDE
        wr16(out + o + 2, 1)
        out[o + 4] = (p.tw_id << 4) | 1
        tw_at = o + 5
        out[o + 7] = 0
        o += 8
    elif stamp and (v.ext_profile == 0xBEDE or (v.ext_profile & 0xFFF0) == 0x1000):
        # Copy the elements except one with our id, append ours, pad to 32 bits.
        ext_start = o
        memcpy(out + o, d + cc_end, 4)
        o += 4
        q = v.ext_offset
        end = v.ext_offset + v.ext_size
        while q < end:
            if d[q] == 0:
                q += 1
                continue
            if v.ext_profile == 0xBEDE:
                eid = d[q] >> 4
                if eid == 15:
                    break
                elen = 1 + (d[q] & 0x0F) + 1
            else:
                if q + 2 > end:
                    break
                eid = d[q]
                elen = 2 + d[q + 1]
            if q + elen > end:
                break
            if eid != p.tw_id:
                memcpy(out + o, d + q, elen)
                o += elen
            q += elen
        if v.ext_profile == 0xBEDE:
            out[o] = (p.tw_id << 4) | 1
            tw_at = o + 1
            o += 3
        else:
            out[o] = p.tw_id
            out[o + 1] = 2
            tw_at = o + 2
            o += 4
        while (o - ext_start) % 4:
            out[o] = 0
            o += 1
        wr16(out + ext_start + 2, <uint16_t>((o - ext_start - 4) // 4))
    else:
        memcpy(out + o, d + cc_end, v.header_size - cc_end)
        o = v.header_size
        if stamp:
            e.c[C_TWCC_UNSTAMPED] += 1      # a foreign extension profile: left as is
            stamp = False
    if rtx:
        wr16(out + o, osn)
        o += 2
    consumed[0] = v.header_size
    if rewrite_desc and mi.desc_len and v.payload_size >= mi.desc_len:
        o += vp8_write_desc(d + v.header_size, mi, out + o, pid_off, tl0_off)
        consumed[0] = v.header_size + mi.desc_len
    if tw_at >= 0:
        if probe < 0 and p.probe_until > now:
            probe = p.probe_cluster     # media during a probe counts toward its rate
        tw = bwe_on_send(p.bwe, o + n - consumed[0], probe, now)
        wr16(out + tw_at, tw)
        e.c[C_TWCC_STAMPED] += 1
    return o


cdef inline bint dt_rewrites_desc(Engine e, const Downtrack *t) noexcept nogil:
    return t.mode == DT_SWITCHED and e.sources[t.sid].codec == CODEC_VP8


cdef void eng_send_rewritten(Engine e, Downtrack *t, int32_t did, const uint8_t *d,
                             Py_ssize_t n, const RtpView *v, const MediaInfo *mi,
                             uint16_t seq, uint32_t ts, uint16_t pid_off, uint8_t tl0_off,
                             double now) noexcept nogil:
    """Queue the viewer's copy: rewritten header in tx_fixed, the rest out of the slot."""
    cdef Peer *p = &e.peers[t.pid]
    cdef uint8_t *h
    cdef uint8_t *out
    cdef Py_ssize_t hl, consumed = 0
    cdef int k
    if e.tx_count == EGRESS_MAX or (e.tx_tid != p.tid and e.tx_count):
        eng_flush(e)
    k = e.tx_count
    h = e.tx_fixed + HDR_CAP * k
    hl = dt_build_header(e, p, d, n, v, mi, h, HDR_CAP, seq, ts, t.out_ssrc, t.out_pt,
                         dt_rewrites_desc(e, t), pid_off, tl0_off, 0, 0, -1, now, &consumed)
    if hl < 0:
        # A header too large for the fast path: build the whole copy in the aux buffer.
        out = eng_aux_reserve(e, t.pid, n + 32)
        if out == NULL:
            return
        hl = dt_build_header(e, p, d, n, v, mi, out, n + 32, seq, ts, t.out_ssrc, t.out_pt,
                             dt_rewrites_desc(e, t), pid_off, tl0_off, 0, 0, -1, now, &consumed)
        memcpy(out + hl, d + consumed, n - consumed)
        eng_rtcp_shrink(e, n + 32, hl + n - consumed)
    else:
        e.tx_iov[2 * k].iov_base = h
        e.tx_iov[2 * k].iov_len = hl
        e.tx_iov[2 * k + 1].iov_base = <void*>(d + consumed)
        e.tx_iov[2 * k + 1].iov_len = n - consumed
        e.tx_hdrs[k].msg_hdr.msg_name = &p.addr
        e.tx_hdrs[k].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        e.tx_hdrs[k].msg_hdr.msg_iov = &e.tx_iov[2 * k]
        e.tx_hdrs[k].msg_hdr.msg_iovlen = 2
        e.tx_hdrs[k].msg_hdr.msg_control = NULL
        e.tx_hdrs[k].msg_hdr.msg_controllen = 0
        e.tx_hdrs[k].msg_hdr.msg_flags = 0
        e.tx_pid[k] = t.pid
        e.tx_tid = p.tid
        e.tx_count = k + 1
    t.sr_packets += 1
    t.sr_octets += v.payload_size
    e.ds[did * N_DT_FIELDS + D_PACKETS] += 1
    e.ds[did * N_DT_FIELDS + D_BYTES] += n
    e.c[C_FORWARDED] += 1


cdef void eng_send_padding(Engine e, Downtrack *t, int32_t did, bint on_rtx, uint16_t seq,
                           int probe, double now) noexcept nogil:
    """A padding-only packet: a probe on the RTX SSRC, or a stand-in for a media seq the
    viewer must not get (so it sees no hole)."""
    cdef Peer *p = &e.peers[t.pid]
    cdef RtpView v
    cdef MediaInfo mi
    cdef uint8_t hdr[12]
    cdef uint8_t *out
    cdef Py_ssize_t consumed, hl, size = 12 + 16 + PAD_BYTES
    out = eng_aux_reserve(e, t.pid, size)
    if out == NULL:
        return
    hdr[0] = 0x80
    memset(hdr + 1, 0, 11)
    rtp_parse(hdr, 12, &v)
    probe_codec(CODEC_OTHER, hdr, 0, &mi)
    hl = dt_build_header(e, p, hdr, 12 + PAD_BYTES, &v, &mi, out, size, seq, t.last_out_ts,
                         t.rtx_ssrc if on_rtx else t.out_ssrc,
                         t.rtx_pt if on_rtx else t.out_pt, False, 0, 0, 0, 0, probe, now,
                         &consumed)
    if hl < 0:
        eng_rtcp_shrink(e, size, 0)
        e.tx_count -= 1
        return
    out[0] |= 0x20
    memset(out + hl, 0, PAD_BYTES - 1)
    out[hl + PAD_BYTES - 1] = PAD_BYTES
    eng_rtcp_shrink(e, size, hl + PAD_BYTES)
    e.c[C_PADDING_SENT] += 1
    e.ds[did * N_DT_FIELDS + D_PADDING_SENT] += 1


# ---- viewer seq map (DT_SWITCHED) ----------------------------------------------------

cdef inline OutEntry *om_put(Downtrack *t, int64_t out_ext, int64_t in_ext, uint8_t ii,
                             uint8_t state) noexcept nogil:
    cdef OutEntry *o = &t.om[out_ext & (OM_VIDEO - 1)]
    o.out_ext = out_ext
    o.in_ext = in_ext
    o.ii = ii
    o.state = state
    o.ts_off = t.ts_off
    o.pid_off = t.pid_off
    o.tl0_off = t.tl0_off
    return o


cdef inline OutEntry *om_by_out(Downtrack *t, uint16_t seq) noexcept nogil:
    cdef int64_t cand = t.out_top + <int16_t>(<uint16_t>(seq - <uint16_t>t.out_top))
    cdef OutEntry *o
    if t.om == NULL or cand < 0:
        return NULL
    o = &t.om[cand & (OM_VIDEO - 1)]
    if o.out_ext != cand or o.state == OM_FREE:
        return NULL
    return o


cdef inline void om_reserve(Downtrack *t, int64_t in_ext, uint8_t ii) noexcept nogil:
    """Keep the next viewer seq for a hole at in_ext (its repair may still come)."""
    t.out_top += 1
    om_put(t, t.out_top, in_ext, ii, OM_RESERVED)
    t.om_in[in_ext & (OM_VIDEO - 1)] = t.out_top


cdef inline OutEntry *om_by_in(Downtrack *t, uint8_t ii, int64_t in_ext) noexcept nogil:
    """The entry of a held-back seq (a hole being repaired), in O(1): holes are indexed by
    their extended seq when reserved (a late packet is checked against the entry)."""
    cdef int64_t x
    cdef OutEntry *o
    if t.om == NULL:
        return NULL
    x = t.om_in[in_ext & (OM_VIDEO - 1)]
    if x < 0 or x <= t.out_top - OM_VIDEO:
        return NULL
    o = &t.om[x & (OM_VIDEO - 1)]
    if o.out_ext != x or o.ii != ii or o.in_ext != in_ext:
        return NULL
    return o


# ---- layer switching -----------------------------------------------------------------

cdef inline int32_t eng_layer_iid(Engine e, const Source *s, int layer) noexcept nogil:
    """The media ingress of a layer (-1 if not declared or not learned yet)."""
    cdef int i
    cdef int32_t iid
    if layer < 0:
        return -1
    for i in range(s.ningress):
        iid = s.ingress[i]
        if e.ingress[iid].role == ROLE_MEDIA and e.ingress[iid].layer == layer:
            return iid
    return -1


cdef uint32_t eng_align_ts(Engine e, Downtrack *t, Ingress *old, Ingress *new,
                           uint32_t new_ts, double now) noexcept nogil:
    """ts_off for the new layer so that the same capture instant keeps the same viewer
    timestamp: from the two layers' SRs (NTP <-> RTP), else from elapsed wallclock."""
    cdef Source *s = &e.sources[t.sid]
    cdef double dt
    cdef int64_t rtp_new_at_old
    cdef uint32_t off, out_ts, guess
    guess = t.last_out_ts + <uint32_t>(max(0.0, now - t.last_out_time) * s.clock_rate) + 1
    if old.sr_ntp and new.sr_ntp:
        dt = (<double>(<int64_t>(old.sr_ntp - new.sr_ntp))) / 4294967296.0
        rtp_new_at_old = <int64_t>new.sr_rtp + <int64_t>(dt * s.clock_rate)
        # in_new - offset_ab = in_old for the same instant, and out = in_old + ts_off(old).
        off = t.ts_off - <uint32_t>(rtp_new_at_old - <int64_t>old.sr_rtp)
        out_ts = new_ts + off
        # Sanity: the first frame of the new layer lies after the last one sent, within 5 s.
        if <int32_t>(out_ts - t.last_out_ts) > 0 and <int32_t>(out_ts - t.last_out_ts) < 5 * <int32_t>s.clock_rate:
            return off
    return guess - new_ts


cdef void eng_dt_switch(Engine e, Downtrack *t, int32_t did, Ingress *g, const RtpView *v,
                        const MediaInfo *mi, int64_t ext, double now) noexcept nogil:
    cdef Source *s = &e.sources[t.sid]
    if t.cur_layer >= 0:
        t.ts_off = eng_align_ts(e, t, &e.ingress[eng_layer_iid(e, s, t.cur_layer)], g, v.ts, now)
        if mi.pic >= 0 and t.last_pic >= 0:
            t.pid_off = <uint16_t>((t.last_pic + 1 - mi.pic) & 0x7FFF)
        if mi.tl0 >= 0 and t.last_tl0 >= 0:
            t.tl0_off = <uint8_t>(t.last_tl0 + 1 - mi.tl0)
        t.prev_layer = t.cur_layer
        t.prev_last_in = t.last_in
    elif t.out_top < 0:
        # First packet to this viewer: random bases, the publisher's picture numbering.
        t.out_top = (1 << 20) + (e._rand32() & 0xFFFF)
        t.ts_off = e._rand32()
    else:
        # Back from a pause: timestamps continue from the wallclock.
        t.ts_off = t.last_out_ts + <uint32_t>(max(0.0, now - t.last_out_time) * s.clock_rate) + 1 - v.ts
        t.prev_layer = t.paused_layer
        t.prev_last_in = t.last_in
        if mi.pic >= 0 and t.last_pic >= 0:
            t.pid_off = <uint16_t>((t.last_pic + 1 - mi.pic) & 0x7FFF)
        if mi.tl0 >= 0 and t.last_tl0 >= 0:
            t.tl0_off = <uint8_t>(t.last_tl0 + 1 - mi.tl0)
    t.cur_layer = g.layer
    t.paused_layer = -1
    t.drop_pic = -1
    t.cur_tid = t.tgt_tid
    t.last_in = ext - 1
    t.seg_in = ext
    e.c[C_LAYER_SWITCHES] += 1
    e.ds[did * N_DT_FIELDS + D_SWITCHES] += 1
    e.ds[did * N_DT_FIELDS + D_LAYER] = g.layer
    e.ds[did * N_DT_FIELDS + D_TEMPORAL] = t.cur_tid
    eng_push_event(e, EV_LAYER_, did, g.layer, t.cur_tid)


cdef int eng_dt_map(Engine e, Downtrack *t, int32_t did, Ingress *g, const RtpView *v,
                    const MediaInfo *mi, int64_t ext, bint fresh, double now,
                    uint16_t *seq, uint32_t *ts_off, uint16_t *pid_off,
                    uint8_t *tl0_off) noexcept nogil:
    """DT_SWITCHED: forward (1, with the viewer seq and offsets), drop (0), or send
    padding in its place (2, seq set) for packet ext of layer g."""
    cdef uint8_t ii = g.layer
    cdef int64_t gap, j
    cdef OutEntry *o
    cdef bint drop
    cdef uint8_t want, was
    # A late repair of the frames sent before a pause still belongs to the viewer's stream.
    cdef bint tail = t.cur_layer < 0 and ii == t.paused_layer and ext <= t.last_in
    if ii != t.cur_layer and not tail:
        if ii == t.tgt_layer and fresh and mi.key and mi.start:
            eng_dt_switch(e, t, did, g, v, mi, ext, now)
        else:
            if ii == t.tgt_layer:
                eng_layer_pli(e, g, now)        # still waiting for its keyframe
            elif ii == t.prev_layer and ext <= t.prev_last_in and t.cur_layer >= 0:
                o = om_by_in(t, ii, ext)          # a repair of the old layer: padding
                if o != NULL and o.state == OM_RESERVED:
                    o.state = OM_PADDED
                    seq[0] = <uint16_t>o.out_ext
                    return 2
            return 0
    if ext > t.last_in:
        if mi.start:
            if t.tgt_layer < 0:
                # Paused: stop at a frame boundary; holes before it stay the viewer's.
                gap = ext - t.last_in - 1
                if 0 < gap <= OM_VIDEO // 4:
                    for j in range(1, gap + 1):
                        om_reserve(t, t.last_in + j, ii)
                t.last_in = ext - 1
                t.paused_layer = t.cur_layer
                t.cur_layer = -1
                e.ds[did * N_DT_FIELDS + D_LAYER] = -1
                eng_push_event(e, EV_LAYER_, did, -1, t.cur_tid)
                return 0
            was = t.cur_tid
            want = t.tgt_tid
            if 0 <= t.tgt_layer < t.cur_layer:
                want = 0    # going down for bandwidth: the old layer's base rate until then
            if want < t.cur_tid:
                t.cur_tid = want              # down: at once (this frame)
            elif want > t.cur_tid and (mi.key or mi.tid <= 0 or
                                       (mi.sync and mi.tid <= want)):
                t.cur_tid = want              # up: where the decoder can follow
            if was != t.cur_tid:
                e.ds[did * N_DT_FIELDS + D_TEMPORAL] = t.cur_tid
        gap = ext - t.last_in - 1
        drop = mi.tid > <int8_t>t.cur_tid and not mi.key
        if gap > OM_VIDEO // 4:
            t.seg_in = ext          # a jump: no holes kept (the viewer sees a clean run)
        else:
            for j in range(1, gap + 1):
                om_reserve(t, t.last_in + j, ii)
        t.last_in = ext
        if drop:
            if mi.pic >= 0 and mi.pic != t.drop_pic:
                t.drop_pic = mi.pic
                t.pid_off -= 1          # PictureIDs stay consecutive for the viewer
            t.seg_in = ext + 1
            e.ds[did * N_DT_FIELDS + D_DROPPED_TEMPORAL] += 1
            return 0
        t.out_top += 1
        o = om_put(t, t.out_top, ext, ii, OM_SENT)
        if mi.pic >= 0:
            t.last_pic = (mi.pic + t.pid_off) & (0x7F if mi.pic_bits == 7 else 0x7FFF)
        if mi.tl0 >= 0:
            t.last_tl0 = <uint8_t>(mi.tl0 + t.tl0_off)
    else:
        o = om_by_in(t, ii, ext)
        if o == NULL or o.state != OM_RESERVED:
            return 0
        if mi.tid > <int8_t>t.cur_tid and not mi.key:
            o.state = OM_PADDED
            seq[0] = <uint16_t>o.out_ext
            return 2
        o.state = OM_SENT
    seq[0] = <uint16_t>o.out_ext
    ts_off[0] = o.ts_off
    pid_off[0] = o.pid_off
    tl0_off[0] = o.tl0_off
    return 1


cdef void eng_forward(Engine e, Downtrack *t, int32_t did, int32_t slot, const uint8_t *d,
                      Py_ssize_t n, const RtpView *v, const MediaInfo *mi, double now,
                      int32_t iid, bint fresh, int64_t ext) noexcept nogil:
    cdef Peer *p = &e.peers[t.pid]
    cdef Ingress *g = &e.ingress[iid]
    cdef uint32_t out_ts, ts_off = 0
    cdef uint16_t out_seq = 0, pid_off = 0
    cdef uint8_t tl0_off = 0
    cdef int r
    if not p.bound:
        return
    if t.pin_rebase and ext >= t.pin_unmute_ext:
        eng_pin_rebase(t, t.pin_unmute_ext, <uint16_t>t.pin_unmute_ext)
    if v.payload_type != g.payload_type:
        # The publisher's in-band ULPFEC: re-encoded for a pinned viewer (its header depends
        # on the rewrite); none for one that gets the node's own ULPFEC or switches layers.
        if t.mode == DT_PINNED and not t.ulp_k and t.started and g.layer == t.cur_layer:
            if eng_ulp_relay(e, t, did, g, d, v, ext):
                t.iid = iid
        return
    if t.mode == DT_SWITCHED:
        r = eng_dt_map(e, t, did, g, v, mi, ext, fresh, now, &out_seq, &ts_off, &pid_off,
                       &tl0_off)
        if r == 0:
            return
        if r == 2:
            eng_send_padding(e, t, did, False, out_seq, -1, now)
            return
        t.iid = iid
        t.started = 1
        out_ts = v.ts + ts_off
        if fresh:
            t.last_out_ts = out_ts
            t.last_out_time = now
        eng_send_rewritten(e, t, did, d, n, v, mi, out_seq, out_ts, pid_off, tl0_off, now)
        return
    # DT_PINNED: one layer, constant deltas (and the ULPFEC seq mapping).
    if t.cur_layer >= 0 and g.layer != t.cur_layer:
        return
    if not t.started:
        if not fresh or (t.tgt_layer >= 0 and g.layer != t.tgt_layer):
            return
        t.started = 1
        t.cur_layer = g.layer
        t.seq_delta = <uint16_t>(e._rand32() - v.seq)
        t.ts_delta = e._rand32() - v.ts
        e.ds[did * N_DT_FIELDS + D_LAYER] = g.layer
    if t.ulp_k and not t.ulp_started:
        if not fresh:
            return
        t.ulp_started = 1
        t.ulp_origin = ext
        t.ulp_out0 = <uint16_t>e._rand32()
        t.ulp_block = 0
        t.ulp_top = 0
    t.iid = iid
    if not dt_out_seq(t, ext, v.seq, &out_seq):
        return
    out_ts = v.ts + t.ts_delta
    if fresh:
        t.last_out_ts = out_ts
        t.last_out_time = now
    eng_send_rewritten(e, t, did, d, n, v, mi, out_seq, out_ts, 0, 0, now)
    if t.ulp_k and fresh:
        eng_ulp_step(e, t, did, g, ext - t.ulp_origin)


# ---- keyframes, GOP cache ------------------------------------------------------------

cdef int eng_layer_pli(Engine e, Ingress *g, double now) noexcept nogil:
    """PLI for one layer's SSRC, at most one per pli_interval per SSRC. 1 if sent."""
    cdef Source *s = &e.sources[g.sid]
    cdef uint8_t *out
    if now - g.last_pli < e.pli_interval or (not s.switchable
                                              and now - s.last_pli < e.pli_interval):
        return 0
    out = eng_rtcp_reserve(e, s.pid, 12)
    if out == NULL:
        return 0
    build_pli_into(out, e.node_ssrc, g.ssrc)
    g.last_pli = now
    if not s.switchable:
        s.last_pli = now        # one layer: the source's coalescing covers it
    e.c[C_PLI_SENT] += 1
    e.ss[g.sid * N_SRC_FIELDS + S_PLI_SENT] += 1
    return 1


cdef void eng_dt_replay_gop(Engine e, int32_t did, double now) noexcept nogil:
    """Start a new viewer at the target layer's latest keyframe still held: it gets that
    GOP at once and needs no PLI round trip for its first picture."""
    cdef Downtrack *t = &e.dts[did]
    cdef Source *s = &e.sources[t.sid]
    cdef Ingress *g
    cdef int64_t x
    cdef int32_t pos, iid
    cdef const uint8_t *d
    cdef RtpView v
    cdef MediaInfo mi
    cdef int64_t sent0 = e.ds[did * N_DT_FIELDS + D_PACKETS]
    if s.muted:
        return                  # joins at the unmute keyframe
    iid = eng_layer_iid(e, s, t.tgt_layer)
    if iid < 0:
        return
    g = &e.ingress[iid]
    if not s.gop_cache or g.h_cap == 0 or g.key_ext < g.h_lo or g.key_ext >= g.h_hi:
        if g.started:           # a publisher that sent nothing yet starts with a keyframe
            eng_layer_pli(e, g, now)
            eng_flush(e)
        return
    for x in range(g.key_ext, g.h_hi):
        pos = <int32_t>(x & (g.h_cap - 1))
        if g.h_ext[pos] != x or g.h_state[pos] != H_HELD:
            continue
        d = e.pool + <size_t>g.h_slot[pos] * SLOT_SIZE
        if rtp_parse(d, g.h_len[pos], &v) != RTP_OK or v.payload_type != g.payload_type:
            continue
        probe_codec(s.codec, d + v.header_size, v.payload_size, &mi)
        eng_forward(e, t, did, g.h_slot[pos], d, g.h_len[pos], &v, &mi, now, iid, True, x)
    e.ds[did * N_DT_FIELDS + D_GOP_SENT] += e.ds[did * N_DT_FIELDS + D_PACKETS] - sent0
    e.c[C_GOP_SENT] += e.ds[did * N_DT_FIELDS + D_PACKETS] - sent0
    eng_flush(e)


# ---- transport-wide feedback, estimates, probes --------------------------------------

cdef void eng_twcc_in(Engine e, int32_t pid, const uint8_t *fci, Py_ssize_t n,
                      double now) noexcept nogil:
    cdef Peer *p = &e.peers[pid]
    cdef double est, rtt = 0.0
    cdef int32_t did = p.first_dt
    cdef int64_t *row
    if p.bwe == NULL:
        return
    while did >= 0:
        if e.ds[did * N_DT_FIELDS + D_RTT_US] > 0:
            rtt = e.ds[did * N_DT_FIELDS + D_RTT_US] / 1e6
            break
        did = e.dts[did].peer_next
    if bwe_on_feedback(p.bwe, fci, n, now, rtt) < 0:
        e.c[C_TWCC_FB_MALFORMED] += 1
        return
    est = bwe_estimate(p.bwe)
    row = e.ps + pid * N_PEER_FIELDS
    row[P_TWCC_FB] += 1
    row[P_BWE_BPS] = <int64_t>est
    row[P_ACKED_BPS] = <int64_t>bwe_acked_bps(p.bwe)
    row[P_BWE_LOSS_PPM] = <int64_t>(bwe_loss(p.bwe) * 1e6)
    row[P_BWE_STATE] = bwe_state(p.bwe)
    if (est > p.bwe_reported * 1.05 or est < p.bwe_reported * 0.95
            or now - p.bwe_report_time >= 0.5):
        p.bwe_reported = est
        p.bwe_report_time = now
        eng_push_event(e, EV_BWE_, pid, <int64_t>est, <int64_t>bwe_acked_bps(p.bwe))


cdef int32_t eng_probe_downtrack(Engine e, Peer *p) noexcept nogil:
    cdef int32_t did = p.first_dt
    while did >= 0:
        if e.dts[did].rtx_ssrc and e.dts[did].started:
            return did
        did = e.dts[did].peer_next
    return -1


cdef double eng_probe_step(Engine e, double now) noexcept nogil:
    """Send the padding that is due for every participant being probed. Next due time."""
    cdef int32_t pid, did
    cdef Peer *p
    cdef double nxt = 1e300
    cdef int burst, active = 0
    cdef Downtrack *t
    if e.n_probing == 0:
        return nxt
    for pid in range(e.max_peers):
        p = &e.peers[pid]
        if not p.alive or p.probe_until <= 0:
            continue
        if now >= p.probe_until or not p.bound:
            p.probe_until = 0
            continue
        did = eng_probe_downtrack(e, p)
        if did < 0:
            p.probe_until = 0
            continue
        active += 1
        t = &e.dts[did]
        burst = 0
        while p.probe_next <= now and burst < 64:
            eng_send_padding(e, t, did, True, t.rtx_seq, p.probe_cluster, now)
            t.rtx_seq += 1
            e.ps[pid * N_PEER_FIELDS + P_PROBE_PACKETS] += 1
            p.probe_next += (12 + 8 + PAD_BYTES) * 8.0 / p.probe_bps
            burst += 1
        if p.probe_next < nxt:
            nxt = p.probe_next
    e.n_probing = active
    eng_flush(e)
    return nxt

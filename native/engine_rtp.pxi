# Data path: recvmmsg into pool slots, demultiplex, RTP fan-out with header rewrite into
# the egress batch, sendmmsg. No Python objects are created here.

cdef int eng_new_ingress(Engine e, int sid, uint32_t ssrc, int pt, int is_rtx,
                         int layer) except -1:
    """A new SSRC of source sid; is_rtx is its ROLE_*. Returns the ingress handle."""
    cdef int iid
    cdef Source *s = &e.sources[sid]
    if e.n_free_ingress == 0:
        raise ValueError("SSRC table full")
    e.n_free_ingress -= 1
    iid = e.free_ingress[e.n_free_ingress]
    memset(&e.ingress[iid], 0, sizeof(Ingress))
    e.ingress[iid].alive = 1
    e.ingress[iid].sid = sid
    e.ingress[iid].ssrc = ssrc
    e.ingress[iid].payload_type = pt
    e.ingress[iid].is_rtx = is_rtx != ROLE_MEDIA
    e.ingress[iid].role = is_rtx
    e.ingress[iid].media = iid
    e.ingress[iid].ulp_in_pt = ANY_PT
    e.ingress[iid].fec_iid = -1
    e.ingress[iid].layer = layer
    e.ingress[iid].key_ext = -1
    e.ingress[iid].last_pli = -1e18
    s.ingress[s.ningress] = iid
    s.ningress += 1
    map_put(&e.ssrc_map, ssrc, iid)
    return iid


cdef inline void eng_release(Engine e, int32_t slot) noexcept nogil:
    e.refcnt[slot] -= 1
    if e.refcnt[slot] == 0:
        e.free_slots[e.n_free_slots] = slot
        e.n_free_slots += 1


cdef void eng_push_event(Engine e, int kind, int64_t a, int64_t b, int64_t c) noexcept nogil:
    cdef int64_t *slot
    if e.ev_count >= e.event_ring:
        e.ev_overflow += 1
        e.c[C_DROP_EVENT_OVERFLOW] += 1
        return
    slot = e.ev + 5 * ((e.ev_head + e.ev_count) % e.event_ring)
    slot[0] = kind
    slot[1] = a
    slot[2] = b
    slot[3] = c
    slot[4] = 0
    e.ev_count += 1


cdef int eng_push_datagram(Engine e, int kind, int tid, const sockaddr_in *a,
                           const uint8_t *d, Py_ssize_t n) noexcept nogil:
    """Queue a control datagram (STUN) for Python. Returns 0 if it had to be dropped."""
    cdef int32_t ds
    cdef int64_t *slot
    if n > EVENT_DATA_SIZE:
        e.c[C_DROP_MALFORMED] += 1     # no STUN message we accept is this large
        return 0
    if e.ev_count >= e.event_ring or e.ev_data_count >= EVENT_DATA_SLOTS:
        e.ev_overflow += 1             # the caller counts the datagram as drop_event_queue
        return 0
    ds = (e.ev_data_head + e.ev_data_count) % EVENT_DATA_SLOTS
    memcpy(e.ev_data + EVENT_DATA_SIZE * ds, d, n)
    e.ev_data_len[ds] = <uint16_t>n
    e.ev_data_count += 1
    slot = e.ev + 5 * ((e.ev_head + e.ev_count) % e.event_ring)
    slot[0] = kind
    slot[1] = tid
    slot[2] = a.sin_addr.s_addr
    slot[3] = ntohs(a.sin_port)
    slot[4] = ds
    e.ev_count += 1
    return 1


cdef inline bint eng_stun_admit(Engine e, double now) noexcept nogil:
    if e.stun_rate <= 0:
        return True
    if e.stun_last >= 0 and now > e.stun_last:
        e.stun_tokens += (now - e.stun_last) * e.stun_rate
        if e.stun_tokens > e.stun_burst:
            e.stun_tokens = e.stun_burst
    if now > e.stun_last:
        e.stun_last = now
    if e.stun_tokens < 1.0:
        return False
    e.stun_tokens -= 1.0
    return True


cdef Py_ssize_t eng_on_readable(Engine e, int tid, double now) noexcept nogil:
    cdef int fd = e.fds[tid]
    cdef int i, n, want, rounds
    cdef int32_t slot
    cdef Py_ssize_t total = 0
    cdef int64_t copies_at_start = e.c[C_FORWARDED]
    for rounds in range(64):     # bounded, so one busy socket cannot starve the loop
        if e.c[C_FORWARDED] - copies_at_start >= COPY_BUDGET:
            break                # large fan-outs: let the control plane run in between
        want = e.batch
        if e.n_free_slots < 2 * want and e.pool_slots >= 4 * want:
            eng_evict(e, 2 * want)     # histories give way to fresh packets
        if e.n_free_slots < want:
            want = e.n_free_slots
        if want == 0:
            e.c[C_RECV_NO_SLOT] += 1   # left in the socket buffer, nothing dropped here
            break
        for i in range(want):
            slot = e.free_slots[e.n_free_slots - 1 - i]
            e.rx_slot[i] = slot
            e.rx_iov[i].iov_base = e.pool + <size_t>slot * SLOT_SIZE
            e.rx_iov[i].iov_len = SLOT_SIZE
            e.rx_hdrs[i].msg_hdr.msg_name = &e.rx_addr[i]
            e.rx_hdrs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            e.rx_hdrs[i].msg_hdr.msg_iov = &e.rx_iov[i]
            e.rx_hdrs[i].msg_hdr.msg_iovlen = 1
            e.rx_hdrs[i].msg_hdr.msg_control = NULL
            e.rx_hdrs[i].msg_hdr.msg_controllen = 0
            e.rx_hdrs[i].msg_hdr.msg_flags = 0
        n = recvmmsg(fd, e.rx_hdrs, want, MSG_DONTWAIT, NULL)
        if n <= 0:
            if n < 0 and errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                e.c[C_RECV_ERRORS] += 1
            break
        e.c[C_RECV_BATCHES] += 1
        e.n_free_slots -= n
        for i in range(n):
            e.refcnt[e.rx_slot[i]] = 1
        for i in range(n):
            e.c[C_RX_DATAGRAMS] += 1
            e.c[C_RX_BYTES] += e.rx_hdrs[i].msg_len
            if e.rx_hdrs[i].msg_hdr.msg_namelen != sizeof(sockaddr_in) or e.rx_addr[i].sin_family != AF_INET:
                e.c[C_DROP_UNBOUND] += 1
                continue
            if e.rx_hdrs[i].msg_hdr.msg_flags & MSG_TRUNC:
                e.c[C_DROP_MALFORMED] += 1   # larger than a slot: never forward a cut packet
                continue
            eng_process(e, tid, e.rx_slot[i], e.rx_hdrs[i].msg_len, &e.rx_addr[i], now)
        eng_flush(e)
        for i in range(n):
            eng_release(e, e.rx_slot[i])
        total += n
        if n < want:
            break
    if now >= e.next_nack:
        e.next_nack = eng_nack_sweep(e, now)
        eng_flush(e)
    return total


cdef void eng_process(Engine e, int tid, int32_t slot, Py_ssize_t n, const sockaddr_in *a,
                      double now) noexcept nogil:
    cdef const uint8_t *d = e.pool + <size_t>slot * SLOT_SIZE
    cdef int32_t pid
    cdef uint8_t b0
    if n <= 0:
        e.c[C_DROP_MALFORMED] += 1
        return
    b0 = d[0]
    if b0 < 4:
        # RFC 7983 demux: STUN. Python verifies credentials, so unbound senders pass.
        if n < 20:
            e.c[C_DROP_MALFORMED] += 1
        elif not eng_stun_admit(e, now):
            e.c[C_DROP_STUN_RATE] += 1
        elif eng_push_datagram(e, EV_STUN_, tid, a, d, n):
            e.c[C_RX_STUN] += 1
        elif n <= EVENT_DATA_SIZE:
            e.c[C_DROP_EVENT_QUEUE] += 1
        return
    pid = map_get(&e.addr_map, addr_key(a))
    if pid < 0 or e.peers[pid].tid != tid:
        e.c[C_DROP_UNBOUND] += 1
        return
    e.ps[pid * N_PEER_FIELDS + P_RX_PACKETS] += 1
    e.ps[pid * N_PEER_FIELDS + P_RX_BYTES] += n
    if b0 < 128 or b0 > 191:
        e.c[C_DROP_NOT_RTP] += 1
        return
    if n >= 2 and 192 <= d[1] <= 223:
        eng_rtcp_in(e, pid, d, n, now)
    else:
        eng_rtp_in(e, pid, slot, d, n, now)


cdef inline void ingress_update(Ingress *g, const RtpView *v, double now,
                                uint32_t clock_rate) noexcept nogil:
    cdef uint16_t udelta
    cdef int64_t transit, dd
    if not g.started:
        g.started = 1
        g.base_seq = v.seq
        g.max_seq = v.seq
        g.cycles = 0
        g.last_ts = v.ts
        g.last_arrival = now
    else:
        udelta = <uint16_t>(v.seq - g.max_seq)
        if 0 < udelta < 3000:
            if v.seq < g.max_seq:
                g.cycles += 65536
            g.max_seq = v.seq
            g.last_ts = v.ts
            g.last_arrival = now
    g.received += 1
    # Interarrival jitter (RFC 3550 A.8) in timestamp units.
    transit = <int64_t>(now * clock_rate) - <int64_t>v.ts
    if g.have_transit:
        dd = transit - g.last_transit
        if dd < 0:
            dd = -dd
        g.jitter += (<double>dd - g.jitter) / 16.0
    g.last_transit = transit
    g.have_transit = 1


cdef void eng_rtp_in(Engine e, int32_t pid, int32_t slot, const uint8_t *d, Py_ssize_t n,
                     double now) noexcept nogil:
    cdef RtpView v
    cdef int32_t iid
    cdef Ingress *g
    if rtp_parse(d, n, &v) != RTP_OK:
        e.c[C_DROP_MALFORMED] += 1
        e.ps[pid * N_PEER_FIELDS + P_DROP_MALFORMED] += 1
        return
    iid = map_get(&e.ssrc_map, v.ssrc)
    if iid < 0:
        e.c[C_DROP_UNKNOWN_SSRC] += 1
        if e.peers[pid].rid_id:
            eng_rid_in(e, pid, d, &v, now)
        return
    g = &e.ingress[iid]
    if e.sources[g.sid].pid != pid:
        # A bound participant sending someone else's SSRC: hijack attempt.
        e.c[C_DROP_SSRC_NOT_OWNED] += 1
        e.ps[pid * N_PEER_FIELDS + P_DROP_NOT_OWNED] += 1
        return
    if (g.payload_type != ANY_PT and v.payload_type != g.payload_type
            and (g.role != ROLE_MEDIA or v.payload_type != g.ulp_in_pt)):
        e.c[C_DROP_PAYLOAD_TYPE] += 1
        return
    if g.role == ROLE_RTX:
        eng_rtx_in(e, pid, g, d, n, &v, now)
    elif g.role == ROLE_FEC:
        eng_fec_in(e, pid, iid, slot, d, n, &v, now)
    else:
        eng_media_in(e, iid, slot, d, n, now, HOW_DIRECT)


cdef void eng_media_in(Engine e, int32_t iid, int32_t slot, const uint8_t *d, Py_ssize_t n,
                       double now, int how) noexcept nogil:
    """A media packet, received or rebuilt (RTX/FEC): history, statistics, fan-out."""
    cdef Ingress *g = &e.ingress[iid]
    cdef int32_t sid = g.sid, did, i
    cdef Source *s = &e.sources[sid]
    cdef int put = PUT_OLD
    cdef int64_t ext = 0
    cdef RtpView v
    cdef MediaInfo mi
    rtp_parse(d, n, &v)     # already validated by the caller
    if how == HOW_DIRECT:
        # RR describes the raw link; RFC 3550 A.3 counts duplicates as received.
        ingress_update(g, &v, now, s.clock_rate)
        e.ss[sid * N_SRC_FIELDS + S_PACKETS] += 1
        e.ss[sid * N_SRC_FIELDS + S_BYTES] += n
    if s.muted:
        eng_muted_in(e, g, v.seq, now, how)
        return
    if g.h_cap:
        put = eng_hist_put(e, iid, slot, n, v.seq, now, &ext)
        if put == PUT_DUP:
            e.ss[sid * N_SRC_FIELDS + S_DUPLICATES] += 1
            if how == HOW_DIRECT:
                e.c[C_DROP_DUPLICATE] += 1
            return
        if put == PUT_MUTED or (put == PUT_OLD and g.mute_lo <= ext < g.mute_hi):
            eng_muted_count(e, sid, how)    # late, from a muted stretch (or too old to tell)
            return
    if how == HOW_DIRECT:
        e.c[C_RX_RTP] += 1
        if s.al_id and v.payload_type == g.payload_type:
            eng_audio_level(s, d, &v)
    if put == PUT_FILLED:
        if how != HOW_FEC and g.fec_iid >= 0:
            eng_fec_retry(e, iid, ext, now)     # this packet may complete an FEC block
        if how == HOW_RTX:
            e.c[C_RECOVERED_RTX] += 1
            e.ss[sid * N_SRC_FIELDS + S_RECOVERED_RTX] += 1
        elif how == HOW_FEC:
            e.c[C_RECOVERED_FEC] += 1
            e.ss[sid * N_SRC_FIELDS + S_RECOVERED_FEC] += 1
        else:
            e.ss[sid * N_SRC_FIELDS + S_RECOVERED_LATE] += 1
    elif how != HOW_DIRECT and put != PUT_NEW and put != PUT_EARLY:
        return      # a repair for a hole we no longer track: nobody is waiting for it
    if put == PUT_OLD:
        ext = hist_ext_of(g, v.seq)
    probe_codec(s.codec, d + v.header_size, v.payload_size, &mi)
    if v.payload_type == g.payload_type:
        if how == HOW_DIRECT:
            g.tid_bytes[mi.tid if mi.tid > 0 else 0] += n
        if mi.key and mi.start and s.kind == KIND_VIDEO_ and ext > g.key_ext and ext >= g.key_floor and (
                put == PUT_NEW or put == PUT_FILLED or put == PUT_EARLY):
            g.key_ext = ext         # the GOP cache starts here
            g.key_time = now
            e.c[C_KEYFRAMES_IN] += 1
    if v.payload_type != g.payload_type:
        # Publisher's in-band ULPFEC: repair with it first, then relay it re-encoded.
        e.c[C_FEC_IN] += 1
        e.ss[sid * N_SRC_FIELDS + S_FEC_IN] += 1
        eng_ulp_in(e, iid, d, n, &v, now)
    for i in range(s.ndts):
        did = s.dts[i]
        eng_forward(e, &e.dts[did], did, slot, d, n, &v, &mi, now, iid, put == PUT_NEW, ext)
    if put == PUT_NEW and g.blk_m and v.payload_type == g.payload_type:
        eng_fec_block_step(e, iid, ext, now)


cdef inline bint dt_out_seq(const Downtrack *t, int64_t ext, uint16_t seq,
                            uint16_t *out) noexcept nogil:
    """The viewer-side seq of media packet (ext, seq); False if it precedes the viewer."""
    cdef int64_t i
    if t.ulp_k == 0:
        if ext >= t.pin_seg_ext:
            out[0] = <uint16_t>(seq + t.seq_delta)
            return True
        if ext >= t.pin_prev_ext:       # before the last unmute: the delta of then
            out[0] = <uint16_t>(seq + t.pin_prev_delta)
            return True
        return False
    if ext >= t.pin_seg_ext:
        i = ext - t.ulp_origin
    elif ext >= t.pin_prev_ext:         # before the last unmute: the origin of then
        i = ext - t.ulp_prev_origin
        if i >= t.ulp_seg_i:
            return False
    else:
        return False
    if i < 0:
        return False
    out[0] = <uint16_t>(t.ulp_out0 + i + i // t.ulp_k)
    return True


cdef inline uint8_t *eng_rtcp_reserve(Engine e, int32_t pid, Py_ssize_t size) noexcept nogil:
    """Room for one RTCP datagram to peer pid in the egress batch (NULL if unbound)."""
    cdef uint8_t *out = eng_aux_reserve(e, pid, size)
    if out != NULL:
        e.c[C_RTCP_SENT] += 1
    return out


cdef uint8_t *eng_aux_reserve(Engine e, int32_t pid, Py_ssize_t size) noexcept nogil:
    """Room for one datagram the node builds itself (RTCP, RTX, FEC) to peer pid."""
    cdef Peer *p = &e.peers[pid]
    cdef uint8_t *out
    cdef int k
    if not p.bound or size > RTCP_OUT_SIZE:
        return NULL
    if (e.tx_count == EGRESS_MAX or e.rtcp_used + size > RTCP_OUT_SIZE
            or (e.tx_count and e.tx_tid != p.tid)):
        eng_flush(e)
    out = e.rtcp_out + e.rtcp_used
    e.rtcp_used += size
    k = e.tx_count
    e.tx_iov[2 * k].iov_base = out
    e.tx_iov[2 * k].iov_len = size
    e.tx_hdrs[k].msg_hdr.msg_name = &p.addr
    e.tx_hdrs[k].msg_hdr.msg_namelen = sizeof(sockaddr_in)
    e.tx_hdrs[k].msg_hdr.msg_iov = &e.tx_iov[2 * k]
    e.tx_hdrs[k].msg_hdr.msg_iovlen = 1
    e.tx_hdrs[k].msg_hdr.msg_control = NULL
    e.tx_hdrs[k].msg_hdr.msg_controllen = 0
    e.tx_hdrs[k].msg_hdr.msg_flags = 0
    e.tx_pid[k] = pid
    e.tx_tid = p.tid
    e.tx_count = k + 1
    return out


cdef inline void eng_rtcp_shrink(Engine e, Py_ssize_t reserved, Py_ssize_t used) noexcept nogil:
    """Give back the unused tail of the last eng_rtcp_reserve."""
    e.rtcp_used -= reserved - used
    e.tx_iov[2 * (e.tx_count - 1)].iov_len = used


cdef void eng_flush(Engine e) noexcept nogil:
    cdef int off = 0, r, k
    cdef int fd
    cdef Py_ssize_t nbytes
    if e.tx_count == 0:
        eng_release_deferred(e)
        return
    eng_quic_seal_batch(e)
    fd = e.fds[e.tx_tid] if e.tx_tid >= 0 else -1
    while off < e.tx_count and fd >= 0:
        r = sendmmsg(fd, e.tx_hdrs + off, e.tx_count - off, MSG_DONTWAIT)
        if r < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                # Socket buffer full: shed the rest of this batch rather than block.
                e.c[C_DROP_SEND_EAGAIN] += e.tx_count - off
                break
            e.c[C_DROP_SEND_ERROR] += 1
            off += 1
            continue
        for k in range(off, off + r):
            nbytes = e.tx_hdrs[k].msg_len
            e.c[C_TX_BYTES] += nbytes
            e.ps[e.tx_pid[k] * N_PEER_FIELDS + P_TX_PACKETS] += 1
            e.ps[e.tx_pid[k] * N_PEER_FIELDS + P_TX_BYTES] += nbytes
        e.c[C_TX_DATAGRAMS] += r
        off += r
    e.tx_count = 0
    e.rtcp_used = 0
    eng_release_deferred(e)


cdef inline void eng_release_deferred(Engine e) noexcept nogil:
    cdef int32_t k
    for k in range(e.n_deferred):
        eng_release(e, e.deferred[k])
    e.n_deferred = 0


cdef void eng_rid_in(Engine e, int32_t pid, const uint8_t *d, const RtpView *v,
                     double now) noexcept nogil:
    """An undeclared SSRC with an RtpStreamId (RFC 8852): tell Python, which owns the
    track's layer list, once per SSRC per 200 ms."""
    cdef Peer *p = &e.peers[pid]
    cdef Py_ssize_t off = 0, ln = 0, i
    cdef int64_t rid = 0
    if rtp_ext_find(d, v, p.rid_id, &off, &ln) != 1 or ln < 1 or ln > 8:
        return
    cdef int k, oldest = 0
    for k in range(4):
        if p.rid_ssrc[k] == v.ssrc and now - p.rid_time[k] < 0.2:
            return
        if p.rid_time[k] < p.rid_time[oldest]:
            oldest = k
    for k in range(4):
        if p.rid_ssrc[k] == v.ssrc:
            oldest = k
    p.rid_ssrc[oldest] = v.ssrc
    p.rid_time[oldest] = now
    for i in range(ln):
        rid = (rid << 8) | d[off + i]
    eng_push_event(e, EV_RID_, pid, v.ssrc, rid)
    e.c[C_RID_REPORTED] += 1

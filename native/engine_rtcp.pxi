# RTCP in the engine: feedback from viewers (PLI/FIR/NACK/REMB/TWCC/RR), reports from
# publishers (SR/BYE), and the node's own SR/RR on a timer.

cdef inline int32_t eng_owned_ingress(Engine e, int32_t pid, uint32_t ssrc) noexcept nogil:
    cdef int32_t iid = map_get(&e.ssrc_map, ssrc)
    if iid >= 0 and e.sources[e.ingress[iid].sid].pid == pid:
        return iid
    return -1


cdef inline int32_t eng_owned_downtrack(Engine e, int32_t pid, uint32_t out_ssrc) noexcept nogil:
    """The downtrack with this out SSRC that is delivered to peer pid, else -1."""
    cdef int32_t did = map_get(&e.out_map, out_ssrc)
    if did >= 0 and e.dts[did].pid == pid:
        return did
    return -1


cdef inline uint32_t ntp_mid_now(Engine e, double now) noexcept nogil:
    return <uint32_t>(ntp_from_unix(now + e.wallclock_offset) >> 16)


cdef void eng_report_block_in(Engine e, int32_t pid, const uint8_t *p, double now) noexcept nogil:
    cdef ReportBlock b
    cdef int32_t did
    cdef int64_t *row
    cdef uint32_t rtt
    read_report_block(p, &b)
    if b.ssrc == e.node_ssrc:
        # A publisher reporting on the node's SR: uplink RTT for its NACK retries.
        if b.lsr:
            rtt = ntp_mid_now(e, now) - b.lsr - b.dlsr
            if <int32_t>rtt >= 0:
                eng_rtt_sample(e, pid, (<double>rtt) / 65536.0)
        return
    did = eng_owned_downtrack(e, pid, b.ssrc)
    if did < 0:
        e.c[C_RTCP_FOREIGN_SSRC] += 1
        return
    row = e.ds + did * N_DT_FIELDS
    row[D_RR_COUNT] += 1
    row[D_RR_FRACTION] = b.fraction
    row[D_RR_CUM_LOST] = b.lost
    row[D_RR_JITTER] = b.jitter
    row[D_RR_HIGHEST] = b.highest
    if b.lsr:
        # RTT = arrival - LSR - DLSR, in 1/65536 s (RFC 3550 6.4.1).
        rtt = ntp_mid_now(e, now) - b.lsr - b.dlsr
        if <int32_t>rtt >= 0:
            row[D_RTT_US] = (<int64_t>rtt * 1000000) >> 16
    eng_push_event(e, EV_RR_, did, b.fraction, b.lost)


cdef void eng_rtcp_in(Engine e, int32_t pid, const uint8_t *d, Py_ssize_t n,
                      double now) noexcept nogil:
    cdef Py_ssize_t off = 0, plen, body, i
    cdef const uint8_t *p
    cdef int rc, pt
    cdef int32_t did, iid
    cdef uint32_t ssrc
    if rtcp_validate(d, n) < 0:
        e.c[C_DROP_MALFORMED] += 1
        e.ps[pid * N_PEER_FIELDS + P_DROP_MALFORMED] += 1
        return
    e.c[C_RX_RTCP] += 1
    while off < n:
        p = d + off
        rc = p[0] & 0x1F
        pt = p[1]
        plen = (<Py_ssize_t>rd16(p + 2) + 1) * 4
        body = plen - (p[plen - 1] if p[0] & 0x20 else 0)
        off += plen
        if pt == RTCP_SR and body >= 28 + 24 * rc:
            e.c[C_SR_IN] += 1
            iid = eng_owned_ingress(e, pid, rd32(p + 4))
            if iid >= 0:
                e.ingress[iid].sr_ntp_mid = rd32(p + 10)
                e.ingress[iid].sr_time = now
                e.ingress[iid].sr_ntp = (<uint64_t>rd32(p + 8) << 32) | rd32(p + 12)
                e.ingress[iid].sr_rtp = rd32(p + 16)
            else:
                e.c[C_RTCP_FOREIGN_SSRC] += 1
            for i in range(rc):
                eng_report_block_in(e, pid, p + 28 + 24 * i, now)
        elif pt == RTCP_RR and body >= 8 + 24 * rc:
            e.c[C_RR_IN] += 1
            for i in range(rc):
                eng_report_block_in(e, pid, p + 8 + 24 * i, now)
        elif pt == RTCP_BYE and body >= 4 + 4 * rc:
            e.c[C_BYE_IN] += 1
            for i in range(rc):
                ssrc = rd32(p + 4 + 4 * i)
                if eng_owned_ingress(e, pid, ssrc) >= 0:
                    eng_push_event(e, EV_BYE_, pid, ssrc, 0)
        elif pt == RTCP_PSFB and body >= 12:
            if rc == FMT_PLI:
                e.c[C_PLI_IN] += 1
                eng_keyframe_for(e, pid, rd32(p + 8), now)
            elif rc == FMT_FIR:
                e.c[C_FIR_IN] += 1
                for i in range((body - 12) // 8):
                    eng_keyframe_for(e, pid, rd32(p + 12 + 8 * i), now)
            elif rc == FMT_AFB and body >= 20 and memcmp(p + 12, b"REMB", 4) == 0:
                e.c[C_REMB_IN] += 1
                if body >= 20 + 4 * p[16]:
                    for i in range(p[16]):
                        did = eng_owned_downtrack(e, pid, rd32(p + 20 + 4 * i))
                        if did >= 0:
                            e.ds[did * N_DT_FIELDS + D_REMB_BPS] = (
                                ((<int64_t>(p[17] & 0x3) << 16) | rd16(p + 18)) << (p[17] >> 2))
            else:
                e.c[C_RTCP_UNKNOWN] += 1
        elif pt == RTCP_RTPFB and body >= 12:
            if rc == FMT_NACK:
                e.c[C_NACK_IN] += 1
                did = eng_owned_downtrack(e, pid, rd32(p + 8))
                if did >= 0:
                    e.ds[did * N_DT_FIELDS + D_NACK_IN] += 1
                    eng_nack_in(e, did, p + 12, (body - 12) // 4, now)
                else:
                    e.c[C_RTCP_FOREIGN_SSRC] += 1
            elif rc == FMT_TWCC:
                e.c[C_TWCC_IN] += 1
                eng_twcc_in(e, pid, p + 12, body - 12, now)
            else:
                e.c[C_RTCP_UNKNOWN] += 1
        elif pt == RTCP_APP:
            eng_data_in(e, pid, p, plen, body, now)
        elif pt != RTCP_SDES:
            e.c[C_RTCP_UNKNOWN] += 1


cdef inline bint eng_data_admit(Engine e, Peer *p, double now) noexcept nogil:
    """Per-participant token bucket for SFUD data packets (they all go up to Python)."""
    if p.data_last < 0:
        p.data_tokens = e.data_burst
    elif now > p.data_last:
        p.data_tokens += (now - p.data_last) * e.data_rate
        if p.data_tokens > e.data_burst:
            p.data_tokens = e.data_burst
    if now > p.data_last:
        p.data_last = now
    if p.data_tokens < 1.0:
        return False
    p.data_tokens -= 1.0
    return True


cdef void eng_data_in(Engine e, int32_t pid, const uint8_t *p, Py_ssize_t plen,
                      Py_ssize_t body, double now) noexcept nogil:
    """RTCP APP (RFC 3550 6.7) named SFUD: a data message from the participant, queued for
    Python as (EV_DATA, pid, subtype, payload). Other APP names are ignored."""
    cdef int32_t ds
    cdef int64_t *slot
    cdef Py_ssize_t size
    if plen < 12:
        e.c[C_DATA_MALFORMED] += 1     # no room for SSRC and name: not a valid APP
        return
    if memcmp(p + 8, b"SFUD", 4) != 0:
        return
    size = body - 12
    if size < 0 or size > 1400:
        e.c[C_DATA_MALFORMED] += 1
        return
    # Data may fill the shared slots only up to a reserve kept for STUN (bindings must get
    # through while a burst of data waits for Python); a full queue costs no token.
    if e.ev_count >= e.event_ring or e.ev_data_count >= EVENT_DATA_SLOTS - 256:
        e.ev_overflow += 1             # reported as EV_OVERFLOW
        e.c[C_DATA_QUEUE_FULL] += 1
        return
    if not eng_data_admit(e, &e.peers[pid], now):
        e.c[C_DATA_RATE_LIMITED] += 1
        return
    ds = (e.ev_data_head + e.ev_data_count) % EVENT_DATA_SLOTS
    if size:
        memcpy(e.ev_data + EVENT_DATA_SIZE * ds, p + 12, size)
    e.ev_data_len[ds] = <uint16_t>size
    e.ev_data_count += 1
    slot = e.ev + 5 * ((e.ev_head + e.ev_count) % e.event_ring)
    slot[0] = EV_DATA_
    slot[1] = pid
    slot[2] = p[0] & 0x1F
    slot[3] = 0
    slot[4] = ds
    e.ev_count += 1
    e.c[C_DATA_IN] += 1
    e.ps[pid * N_PEER_FIELDS + P_DATA_IN] += 1


cdef void eng_keyframe_for(Engine e, int32_t pid, uint32_t out_ssrc, double now) noexcept nogil:
    cdef int32_t did = eng_owned_downtrack(e, pid, out_ssrc)
    if did < 0:
        e.c[C_RTCP_FOREIGN_SSRC] += 1
        return
    cdef Downtrack *t = &e.dts[did]
    cdef Source *s = &e.sources[t.sid]
    cdef int32_t iid
    e.ds[did * N_DT_FIELDS + D_PLI_IN] += 1
    if not s.switchable:
        eng_request_keyframe(e, t.sid, now, pid)
        return
    # Only the layer(s) this viewer decodes: a keyframe costs the other layers' viewers.
    iid = eng_layer_iid(e, s, t.cur_layer if t.cur_layer >= 0 else t.tgt_layer)
    if iid >= 0 and eng_layer_pli(e, &e.ingress[iid], now):
        eng_push_event(e, EV_PLI_, t.sid, e.ingress[iid].ssrc, pid)
    elif iid >= 0:
        e.c[C_PLI_COALESCED] += 1
        e.ss[t.sid * N_SRC_FIELDS + S_PLI_COALESCED] += 1


cdef int eng_request_keyframe(Engine e, int32_t sid, double now, int32_t requester) noexcept nogil:
    """PLI to the publisher, at most one per pli_interval per source. 1 if sent."""
    cdef Source *s = &e.sources[sid]
    cdef uint8_t *out
    cdef int i, k = 0
    cdef Ingress *g
    if s.ningress == 0:
        return 0                        # nothing received yet: no SSRC to ask
    if now - s.last_pli < e.pli_interval:
        e.c[C_PLI_COALESCED] += 1
        e.ss[sid * N_SRC_FIELDS + S_PLI_COALESCED] += 1
        return 0
    out = eng_rtcp_reserve(e, s.pid, 12 * s.ningress)
    if out == NULL:
        return 0
    for i in range(s.ningress):
        g = &e.ingress[s.ingress[i]]
        if not g.is_rtx:
            build_pli_into(out + 12 * k, e.node_ssrc, g.ssrc)
            g.last_pli = now
            k += 1
    eng_rtcp_shrink(e, 12 * s.ningress, 12 * k)
    s.last_pli = now
    e.c[C_PLI_SENT] += 1
    e.ss[sid * N_SRC_FIELDS + S_PLI_SENT] += 1
    eng_push_event(e, EV_PLI_, sid, e.ingress[s.ingress[0]].ssrc if s.ningress else 0, requester)
    return 1


cdef void eng_fill_block(Engine e, Ingress *g, ReportBlock *b, double now) noexcept nogil:
    cdef int64_t ext_max = <int64_t>g.cycles + g.max_seq
    cdef int64_t expected = ext_max - g.base_seq + 1
    cdef int64_t lost = expected - g.received
    cdef int64_t exp_int = expected - g.expected_prior
    cdef int64_t rcv_int = g.received - g.received_prior
    cdef int64_t lost_int = exp_int - rcv_int
    g.expected_prior = expected
    g.received_prior = g.received
    if lost > 0x7FFFFF:
        lost = 0x7FFFFF
    elif lost < -0x800000:
        lost = -0x800000
    b.ssrc = g.ssrc
    b.fraction = <uint8_t>((lost_int << 8) // exp_int) if exp_int > 0 and lost_int > 0 else 0
    b.lost = <int32_t>lost
    b.highest = <uint32_t>ext_max
    b.jitter = <uint32_t>g.jitter
    b.lsr = g.sr_ntp_mid
    b.dlsr = <uint32_t>((now - g.sr_time) * 65536.0) if g.sr_time > 0 else 0


cdef void eng_send_reports(Engine e, double now) noexcept nogil:
    cdef int32_t sid, did, i, nb
    cdef Source *s
    cdef Downtrack *t
    cdef ReportBlock blocks[8]
    cdef uint8_t *out
    cdef Py_ssize_t used
    cdef uint64_t ntp = ntp_from_unix(now + e.wallclock_offset)
    cdef Ingress *g
    for sid in range(e.max_sources):
        s = &e.sources[sid]
        if not s.alive:
            continue
        # SR (from the node SSRC, no media) to the publisher with a block per SSRC it
        # sends us: its report on our SR gives the uplink RTT (LSR/DLSR).
        nb = 0
        for i in range(s.ningress):
            g = &e.ingress[s.ingress[i]]
            if g.started:
                eng_fill_block(e, g, &blocks[nb], now)
                e.ss[sid * N_SRC_FIELDS + S_LOST] = blocks[nb].lost if not g.is_rtx else e.ss[sid * N_SRC_FIELDS + S_LOST]
                if not g.is_rtx:
                    e.ss[sid * N_SRC_FIELDS + S_JITTER] = blocks[nb].jitter
                    e.ss[sid * N_SRC_FIELDS + S_HIGHEST_SEQ] = blocks[nb].highest
                nb += 1
        if nb:
            out = eng_rtcp_reserve(e, s.pid, 28 + 24 * nb + sdes_size(3))
            if out != NULL:
                used = build_sr_into(out, e.node_ssrc, ntp, 0, 0, 0, blocks, nb)
                used += build_sdes_into(out + used, e.node_ssrc, b"sfu", 3)
                eng_rtcp_shrink(e, 28 + 24 * nb + sdes_size(3), used)
            if e.peers[s.pid].rtt > 0:
                e.ss[sid * N_SRC_FIELDS + S_RTT_US] = <int64_t>(e.peers[s.pid].rtt * 1e6)
        # SR to each viewer about the stream it receives.
        for i in range(s.ndts):
            did = s.dts[i]
            t = &e.dts[did]
            if not t.started:
                continue
            out = eng_rtcp_reserve(e, t.pid, 28 + sdes_size(3))
            if out == NULL:
                continue
            used = build_sr_into(
                out, t.out_ssrc, ntp,
                t.last_out_ts + <uint32_t>((now - t.last_out_time) * s.clock_rate),
                t.sr_packets, t.sr_octets, NULL, 0)
            used += build_sdes_into(out + used, t.out_ssrc, b"sfu", 3)
            eng_rtcp_shrink(e, 28 + sdes_size(3), used)
            e.ds[did * N_DT_FIELDS + D_SR_SENT] += 1

# GCC estimator, part 2 (part 1, bwe.pxi: state, send records, delay-based detector, acked
# rate): AIMD rate control, loss-based control, probe clusters, transport-cc feedback parsing
# and the read-outs the engine uses.

# ---- AIMD, link capacity, loss-based ---------------------------------------------------------

cdef inline double _bwe_cap_dev_kbps(const Bwe *b) noexcept nogil:
    return sqrt(b.cap_var * b.cap_kbps)


cdef void _bwe_cap_update(Bwe *b, double sample_kbps) noexcept nogil:
    cdef double err
    if not b.cap_valid:
        b.cap_valid = True
        b.cap_kbps = sample_kbps
    else:
        b.cap_kbps = 0.95 * b.cap_kbps + 0.05 * sample_kbps
    err = b.cap_kbps - sample_kbps
    b.cap_var = 0.95 * b.cap_var + 0.05 * err * err / (b.cap_kbps if b.cap_kbps > 1.0 else 1.0)
    if b.cap_var < 0.4:
        b.cap_var = 0.4
    elif b.cap_var > 2.5:
        b.cap_var = 2.5


cdef double _bwe_additive(const Bwe *b, double dt) noexcept nogil:
    """About one packet per response time: the slow probing near a known capacity."""
    cdef double frame_bits = b.delay_bps / 30.0
    cdef double ppf = ceil(frame_bits / (1200.0 * 8.0))
    cdef double pkt_bits, rate
    if ppf < 1.0:
        ppf = 1.0
    pkt_bits = frame_bits / ppf
    rate = pkt_bits / (b.rtt + 0.1)
    if rate < 4000.0:
        rate = 4000.0
    return rate * dt


cdef void _bwe_aimd(Bwe *b, double now) noexcept nogil:
    cdef double acked = b.acked_bps, interval, dec, limit, inc, dt
    if b.state == BWE_OVERUSING:
        interval = b.rtt
        if interval < 0.01:
            interval = 0.01
        elif interval > 0.2:
            interval = 0.2
        if (b.rc_last_change >= 0 and now - b.rc_last_change < interval
                and not (acked > 0 and acked < 0.5 * b.delay_bps)):
            return
        dec = BWE_BETA * (acked if acked > 0 else b.delay_bps)
        if dec > b.delay_bps and b.cap_valid:
            dec = BWE_BETA * b.cap_kbps * 1000.0
        if dec < b.delay_bps:
            b.delay_bps = _bwe_clamp(b, dec)
        if acked > 0:
            if b.cap_valid and acked / 1000.0 < b.cap_kbps - 3.0 * _bwe_cap_dev_kbps(b):
                b.cap_valid = False
            _bwe_cap_update(b, acked / 1000.0)
        b.rc_state = BWE_RC_HOLD
        b.rc_last_change = now
        return
    if b.state == BWE_UNDERUSING:
        b.rc_state = BWE_RC_HOLD                 # let the queue drain
        return
    if b.rc_state == BWE_RC_HOLD:
        b.rc_state = BWE_RC_INCREASE
        b.rc_last_change = now
    if acked <= 0:
        return                                   # nothing delivered yet: no evidence for more
    if b.cap_valid and acked / 1000.0 > b.cap_kbps + 3.0 * _bwe_cap_dev_kbps(b):
        b.cap_valid = False                      # the link got faster: search again
    limit = 1.5 * acked + 10000.0                # an idle sender cannot inflate the estimate
    if b.delay_bps < limit:
        dt = now - b.rc_last_change
        if dt < 0:
            dt = 0
        if b.cap_valid:
            inc = _bwe_additive(b, dt)
        else:
            if dt > 1.0:
                dt = 1.0
            inc = b.delay_bps * (pow(1.08, dt) - 1.0)
            if inc < 1000.0:
                inc = 1000.0
        b.delay_bps = b.delay_bps + inc
        if b.delay_bps > limit:
            b.delay_bps = limit
        b.delay_bps = _bwe_clamp(b, b.delay_bps)
    b.rc_last_change = now


cdef void _bwe_loss_update(Bwe *b, double now) noexcept nogil:
    cdef double frac, dt
    if b.batch_total >= BWE_LOSS_BATCH:
        frac = <double>b.batch_lost / b.batch_total
        if b.have_loss:
            b.loss = (1.0 - BWE_LOSS_ALPHA) * b.loss + BWE_LOSS_ALPHA * frac
        else:
            b.loss = frac
            b.have_loss = True
        b.batch_lost = 0
        b.batch_total = 0
    dt = 0.0 if b.last_loss_update < 0 else now - b.last_loss_update
    if dt > 1.0:
        dt = 1.0
    if dt < 0.0:
        dt = 0.0
    b.last_loss_update = now
    if b.loss < BWE_LOSS_LOW:
        b.loss_bps = b.loss_bps * pow(1.08, dt) + 1000.0 * dt
    elif b.loss > BWE_LOSS_HIGH and now - b.last_loss_decrease >= 0.3 + b.rtt:
        b.loss_bps *= 1.0 - 0.5 * b.loss
        b.last_loss_decrease = now
    if b.loss_bps > b.delay_bps:
        b.loss_bps = b.delay_bps                 # the loss-based bound never exceeds delay-based
    b.loss_bps = _bwe_clamp(b, b.loss_bps)


# ---- probe clusters --------------------------------------------------------------------------

cdef inline void _bwe_probe_ack(Bwe *b, const BweSent *e, double arr) noexcept nogil:
    cdef BweProbe *p = &b.probes[e.probe & (BWE_PROBES - 1)]
    if p.id != e.probe:
        return
    if p.acked == 0 or e.send_time < p.min_send:
        p.min_send = e.send_time
    if p.acked == 0 or e.send_time >= p.max_send:
        p.max_send = e.send_time
        p.size_max_send = e.size
    if p.acked == 0 or arr < p.min_arr:
        p.min_arr = arr
        p.size_min_arr = e.size
    if p.acked == 0 or arr > p.max_arr:
        p.max_arr = arr
    p.acked += 1
    p.acked_bytes += e.size
    p.dirty = True


cdef void _bwe_probes_eval(Bwe *b, double now) noexcept nogil:
    cdef BweProbe *p
    cdef double send_span, arr_span, send_rate, recv_rate, result, est
    cdef int i
    for i in range(BWE_PROBES):
        p = &b.probes[i]
        if p.id < 0 or not p.dirty:
            continue
        p.dirty = False
        if p.acked < BWE_PROBE_MIN_PKTS or p.acked * 5 < p.sent * 4:
            continue
        send_span = p.max_send - p.min_send
        arr_span = p.max_arr - p.min_arr
        if send_span <= 0 or arr_span <= 0 or send_span > 1.0 or arr_span > 1.0:
            continue
        send_rate = (p.acked_bytes - p.size_max_send) * 8.0 / send_span
        recv_rate = (p.acked_bytes - p.size_min_arr) * 8.0 / arr_span
        if recv_rate > 2.0 * send_rate:
            continue                             # arrivals bunched by the network: no evidence
        if not p.counted:
            p.counted = True
            b.probes_done += 1
        if recv_rate < 0.9 * send_rate:
            # the link capped the probe: what came through is the capacity
            result = 0.95 * recv_rate
            b.probe_bps = result
            b.delay_bps = _bwe_clamp(b, result)
        else:
            result = send_rate if send_rate < recv_rate else recv_rate
            b.probe_bps = result
            if b.state == BWE_OVERUSING:
                continue
            est = _bwe_clamp(b, result)
            if est > b.delay_bps:
                b.delay_bps = est
        if b.loss < BWE_LOSS_HIGH and b.loss_bps < b.delay_bps:
            b.loss_bps = b.delay_bps
        b.rc_last_change = now


# ---- feedback ----------------------------------------------------------------------------------

cdef int _bwe_walk(Bwe *b, const uint8_t *fci, Py_ssize_t n, bint apply, int64_t base64,
                   double ref_s, double now, int *newly_acked) noexcept nogil:
    """Walk the status chunks. Validate only (apply=False: returns the delta bytes the statuses
    need, or -1), or apply each status to the send history (apply=True)."""
    cdef int count = rd16(fci + 2), got = 0, j, k, sym = 0, run, chunk
    cdef Py_ssize_t off = 8, doff = 0, need = 0
    cdef int64_t ticks = 0, seq
    cdef int nsym
    cdef int syms[14]
    cdef BweSent *e
    cdef double arr = 0.0
    if apply:
        # the deltas start after the last chunk (validated already): find it first
        while got < count:
            chunk = rd16(fci + off)
            off += 2
            if not (chunk & 0x8000):
                run = chunk & 0x1FFF
                got += run if run < count - got else count - got
            elif not (chunk & 0x4000):
                got += 14 if 14 < count - got else count - got
            else:
                got += 7 if 7 < count - got else count - got
        doff = off
        off = 8
        got = 0
    while got < count:
        if off + 2 > n:
            return -1
        chunk = rd16(fci + off)
        off += 2
        if not (chunk & 0x8000):
            sym = (chunk >> 13) & 0x3
            run = chunk & 0x1FFF
            k = run if run < count - got else count - got
            if k > 0 and sym == 3:
                return -1
            if not apply:
                need += k * (2 if sym == 2 else sym)
                got += k
                continue
            nsym = -1                             # a run: every status is `sym`
        elif not (chunk & 0x4000):
            k = 14 if 14 < count - got else count - got
            for j in range(k):
                syms[j] = (chunk >> (13 - j)) & 0x1
            nsym = k
        else:
            k = 7 if 7 < count - got else count - got
            for j in range(k):
                syms[j] = (chunk >> (12 - 2 * j)) & 0x3
                if syms[j] == 3:
                    return -1
            nsym = k
        if not apply:
            for j in range(k):
                need += 2 if syms[j] == 2 else syms[j]
            got += k
            continue
        for j in range(k):
            if nsym >= 0:
                sym = syms[j]
            seq = base64 + got + j
            if sym == 1:
                ticks += fci[doff]
                doff += 1
            elif sym == 2:
                ticks += <int16_t>rd16(fci + doff)
                doff += 2
            if seq < 0 or seq >= b.next_seq:
                continue                          # never sent
            e = &b.ring[seq & (BWE_RING - 1)]
            if e.seq != seq:
                continue                          # too old: the slot was reused
            if sym == 0:
                if e.state == BWE_SENT:
                    e.state = BWE_LOST
                    b.packets_lost += 1
                    b.batch_lost += 1
                    b.batch_total += 1
                continue
            if e.state == BWE_ACKED_ST:
                continue                          # overlapping feedback: acked once
            if e.state == BWE_LOST:
                # late arrival after a "not received": undo the loss
                b.packets_lost -= 1
                if b.batch_lost > 0:
                    b.batch_lost -= 1
            else:
                b.batch_total += 1
            e.state = BWE_ACKED_ST
            b.packets_acked += 1
            newly_acked[0] += 1
            arr = ref_s + ticks * 0.00025
            _bwe_arrival(b, arr, e.size)
            if e.probe >= 0:
                _bwe_probe_ack(b, e, arr)
            _bwe_delay_packet(b, e.send_time, arr, now)
        got += k
    if not apply:
        if off + need > n:
            return -1
        return <int>need
    return 0


cdef int bwe_on_feedback(Bwe *b, const uint8_t *fci, Py_ssize_t n, double now,
                         double rtt) noexcept nogil:
    """One transport-cc FCI (after the 12-byte RTPFB header). 0, or -1 if malformed (then only
    the malformed counter changes)."""
    cdef uint16_t base
    cdef uint32_t ref
    cdef int64_t base64, d
    cdef int newly = 0
    if fci == NULL or n < 8 or rd16(fci + 2) == 0:
        b.malformed += 1
        return -1
    if _bwe_walk(b, fci, n, False, 0, 0.0, now, &newly) < 0:
        b.malformed += 1
        return -1
    b.feedbacks += 1
    if rtt > 0:
        b.rtt = rtt
    base = rd16(fci)
    base64 = b.next_seq - <uint16_t>(<uint16_t>b.next_seq - base)
    ref = rd24(fci + 4)
    if not b.have_ref:
        b.have_ref = True
        b.ref64 = ref
    else:
        d = <int64_t>((ref - b.last_ref) & 0xFFFFFF)
        if d >= 0x800000:
            d -= 0x1000000
        b.ref64 += d
    b.last_ref = ref
    if b.last_ack_now >= 0 and now - b.last_ack_now > BWE_STREAM_TIMEOUT_S:
        _bwe_reset_delay(b)
    _bwe_walk(b, fci, n, True, base64, b.ref64 * 0.064, now, &newly)
    if newly > 0:
        b.last_ack_now = now
        _bwe_update_acked(b)
        _bwe_aimd(b, now)
        _bwe_probes_eval(b, now)
    _bwe_loss_update(b, now)
    return 0


# ---- read-outs for the engine ----------------------------------------------------------------

cdef inline double bwe_estimate(const Bwe *b) noexcept nogil:
    """Target send rate (bit/s): min(delay-based, loss-based), within [min_bps, max_bps]."""
    return _bwe_clamp(b, b.delay_bps if b.delay_bps < b.loss_bps else b.loss_bps)


cdef inline double bwe_acked_bps(const Bwe *b) noexcept nogil:
    return b.acked_bps


cdef inline double bwe_loss(const Bwe *b) noexcept nogil:
    return b.loss


cdef inline int bwe_state(const Bwe *b) noexcept nogil:
    return b.state


cdef inline double bwe_slope(const Bwe *b) noexcept nogil:
    return b.trend


cdef inline int bwe_probes(const Bwe *b) noexcept nogil:
    return b.probes_done


cdef inline double bwe_probe_bps(const Bwe *b) noexcept nogil:
    return b.probe_bps

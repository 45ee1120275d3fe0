# Send-side bandwidth estimation for one viewer: the GCC family (draft-ietf-rmcat-gcc-02, with
# the constants libwebrtc ships). Transport-wide seq stamping, transport-cc feedback decoding
# (draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1), inter-arrival groups ->
# trendline -> adaptive overuse detector -> AIMD, a loss-based bound and probe clusters.
# Plain C: one malloc per viewer (bwe_alloc), nothing per packet or feedback, no GIL needed.
# Times: `now` is the local clock in seconds; arrival times are on the receiver's clock
# (reference time + deltas) and only ever compared with each other.

from libc.math cimport pow, sqrt, ceil

cdef enum:
    BWE_RING = 1024              # send history entries (power of two)
    BWE_ACKED = 1024             # acked-rate window entries (power of two; when full the
                                 # window is simply shorter: the rate uses the stored span)
    BWE_TREND_WIN = 20           # trendline window (groups)
    BWE_PROBES = 8               # probe clusters remembered (power of two)
    BWE_NORMAL = 0
    BWE_OVERUSING = 1
    BWE_UNDERUSING = 2
    BWE_RC_HOLD = 0
    BWE_RC_INCREASE = 1
    BWE_RC_DECREASE = 2
    BWE_SENT = 0                 # send-ring entry states
    BWE_LOST = 1                 # reported "not received" (may still arrive later)
    BWE_ACKED_ST = 2             # reported received: counted once, never again

cdef double BWE_GROUP_S = 0.005          # inter-arrival group: packets sent within 5 ms
cdef double BWE_BURST_S = 0.005
cdef double BWE_BURST_MAX_S = 0.1
cdef double BWE_OFFSET_RESET_S = 3.0     # receiver clock jumped: restart the groups
cdef double BWE_STREAM_TIMEOUT_S = 2.0   # no acks for this long: restart delay state
cdef double BWE_SMOOTHING = 0.9
cdef double BWE_THRESHOLD_GAIN = 4.0
cdef double BWE_K_UP = 0.0087
cdef double BWE_K_DOWN = 0.039
cdef double BWE_THR_INIT = 12.5
cdef double BWE_THR_MIN = 6.0
cdef double BWE_THR_MAX = 600.0
cdef double BWE_MAX_ADAPT_OFFSET = 15.0
cdef double BWE_OVERUSE_TIME_MS = 10.0
cdef double BWE_BETA = 0.85
cdef double BWE_ACK_WINDOW_S = 0.25      # short, so a capacity drop shows within ~250 ms
cdef double BWE_LOSS_LOW = 0.02
cdef double BWE_LOSS_HIGH = 0.10
cdef int BWE_LOSS_BATCH = 20             # packets per loss sample
cdef double BWE_LOSS_ALPHA = 0.3
cdef int BWE_PROBE_MIN_PKTS = 5


cdef struct BweSent:
    int64_t seq                  # unwrapped transport-wide seq of this slot; -1 = empty
    double send_time
    uint16_t size
    int16_t probe                # cluster id or -1
    uint8_t state


cdef struct BweArrival:
    double arrival
    uint32_t size


cdef struct BweProbe:
    int id                       # -1 = free slot
    int sent
    int acked
    double acked_bytes
    double min_send
    double max_send
    double min_arr
    double max_arr
    uint16_t size_max_send       # excluded from the send rate (its bytes leave after the span)
    uint16_t size_min_arr        # excluded from the receive rate (arrived at the span start)
    bint counted
    bint dirty


cdef struct Bwe:
    BweSent *ring
    BweArrival *arr
    double min_bps
    double max_bps
    double rtt
    int64_t next_seq
    # feedback reference time (24 bits of 64 ms) unwrapped
    bint have_ref
    uint32_t last_ref
    int64_t ref64
    double last_ack_now          # local time of the last feedback that acked something (-1)
    # inter-arrival groups
    bint cur_valid
    bint prev_valid
    double cur_first_send
    double cur_send
    double cur_first_arr
    double cur_complete
    double cur_sys
    double prev_send
    double prev_complete
    double prev_sys
    int reordered
    # trendline
    int num_deltas
    bint have_first_arr
    double first_arr_ms
    double acc_delay
    double smoothed
    double hist_x[20]
    double hist_y[20]
    int hist_n
    int hist_head
    double trend
    double prev_trend
    # overuse detector
    double threshold
    double time_over_using
    int overuse_counter
    int state
    double thr_last_ms
    # AIMD
    double delay_bps
    int rc_state
    double rc_last_change        # local time of the last rate change (-1)
    bint cap_valid
    double cap_kbps
    double cap_var
    # loss-based
    double loss_bps
    double loss
    bint have_loss
    int batch_lost
    int batch_total
    double last_loss_update
    double last_loss_decrease
    # acked rate over the last BWE_ACK_WINDOW_S of arrivals
    int arr_head
    int arr_count
    double arr_bytes
    double arr_newest
    double arr_first
    bint arr_any
    double acked_bps             # 0 = not known yet
    # probes
    BweProbe probes[8]
    int probe_next
    int probes_done
    double probe_bps
    # counters
    uint64_t feedbacks
    uint64_t packets_acked
    uint64_t packets_lost
    uint64_t malformed


cdef inline double _bwe_clamp(const Bwe *b, double bps) noexcept nogil:
    if bps < b.min_bps:
        return b.min_bps
    if bps > b.max_bps:
        return b.max_bps
    return bps


cdef inline void _bwe_reset_delay(Bwe *b) noexcept nogil:
    """Forget groups and trendline (clock jump, reordering storm, stream restart)."""
    b.cur_valid = False
    b.prev_valid = False
    b.reordered = 0
    b.num_deltas = 0
    b.have_first_arr = False
    b.acc_delay = 0.0
    b.smoothed = 0.0
    b.hist_n = 0
    b.hist_head = 0
    b.trend = 0.0
    b.prev_trend = 0.0
    b.time_over_using = -1.0
    b.overuse_counter = 0
    b.state = BWE_NORMAL


cdef int bwe_alloc(Bwe *b, double start_bps, double min_bps, double max_bps) noexcept nogil:
    """Initialise *b (its memory is the caller's). Returns -1 when out of memory."""
    cdef int i
    memset(b, 0, sizeof(Bwe))
    b.ring = <BweSent *>malloc(BWE_RING * sizeof(BweSent))
    b.arr = <BweArrival *>malloc(BWE_ACKED * sizeof(BweArrival))
    if b.ring == NULL or b.arr == NULL:
        free(b.ring)
        free(b.arr)
        b.ring = NULL
        b.arr = NULL
        return -1
    for i in range(BWE_RING):
        b.ring[i].seq = -1
        b.ring[i].state = BWE_ACKED_ST
    if min_bps < 1000.0:
        min_bps = 1000.0
    if max_bps < min_bps:
        max_bps = min_bps
    b.min_bps = min_bps
    b.max_bps = max_bps
    b.rtt = 0.1
    b.last_ack_now = -1.0
    _bwe_reset_delay(b)
    b.threshold = BWE_THR_INIT
    b.thr_last_ms = -1.0
    b.delay_bps = _bwe_clamp(b, start_bps)
    b.loss_bps = b.delay_bps
    b.rc_state = BWE_RC_HOLD
    b.rc_last_change = -1.0
    b.cap_var = 0.4
    b.last_loss_update = -1.0
    b.last_loss_decrease = -1.0e9
    for i in range(BWE_PROBES):
        b.probes[i].id = -1
    return 0


cdef void bwe_free(Bwe *b) noexcept nogil:
    free(b.ring)
    free(b.arr)
    b.ring = NULL
    b.arr = NULL


cdef uint16_t bwe_on_send(Bwe *b, Py_ssize_t size, int probe_cluster, double now) noexcept nogil:
    """Record one outgoing packet; returns the transport-wide seq to stamp on it."""
    cdef int64_t seq = b.next_seq
    cdef BweSent *e = &b.ring[seq & (BWE_RING - 1)]
    cdef BweProbe *p
    b.next_seq += 1
    e.seq = seq
    e.send_time = now
    e.size = <uint16_t>(size if 0 <= size <= 0xFFFF else (0 if size < 0 else 0xFFFF))
    e.state = BWE_SENT
    e.probe = -1
    if 0 <= probe_cluster <= 0x7FFF:
        p = &b.probes[probe_cluster & (BWE_PROBES - 1)]
        if p.id == probe_cluster:
            e.probe = <int16_t>probe_cluster
            p.sent += 1
    return <uint16_t>(seq & 0xFFFF)


cdef int bwe_probe_new(Bwe *b, double now) noexcept nogil:
    """Start a probe cluster; tag the packets sent for it with the returned id."""
    cdef int cid = b.probe_next
    cdef BweProbe *p = &b.probes[cid & (BWE_PROBES - 1)]
    b.probe_next = (b.probe_next + 1) & 0x7FFF
    memset(p, 0, sizeof(BweProbe))
    p.id = cid
    return cid


# ---- delay-based: inter-arrival groups, trendline, overuse detector ---------------------------

cdef void _bwe_detect(Bwe *b, double trend, double ts_delta_ms, double now_ms) noexcept nogil:
    cdef double mt, amt, k, dt
    if b.num_deltas < 2:
        b.state = BWE_NORMAL
        return
    mt = (b.num_deltas if b.num_deltas < 60 else 60) * trend * BWE_THRESHOLD_GAIN
    if mt > b.threshold:
        if b.time_over_using < 0:
            b.time_over_using = ts_delta_ms / 2.0
        else:
            b.time_over_using += ts_delta_ms
        b.overuse_counter += 1
        if b.time_over_using > BWE_OVERUSE_TIME_MS and b.overuse_counter > 1:
            if trend >= b.prev_trend:
                b.time_over_using = 0.0
                b.overuse_counter = 0
                b.state = BWE_OVERUSING
    elif mt < -b.threshold:
        b.time_over_using = -1.0
        b.overuse_counter = 0
        b.state = BWE_UNDERUSING
    else:
        b.time_over_using = -1.0
        b.overuse_counter = 0
        b.state = BWE_NORMAL
    b.prev_trend = trend
    # adaptive threshold: follows the trend slowly, ignores spikes far above it
    if b.thr_last_ms < 0:
        b.thr_last_ms = now_ms
    amt = mt if mt >= 0 else -mt
    if amt > b.threshold + BWE_MAX_ADAPT_OFFSET:
        b.thr_last_ms = now_ms
        return
    k = BWE_K_DOWN if amt < b.threshold else BWE_K_UP
    dt = now_ms - b.thr_last_ms
    if dt > 100.0:
        dt = 100.0
    if dt < 0.0:
        dt = 0.0
    b.threshold += k * (amt - b.threshold) * dt
    if b.threshold < BWE_THR_MIN:
        b.threshold = BWE_THR_MIN
    elif b.threshold > BWE_THR_MAX:
        b.threshold = BWE_THR_MAX
    b.thr_last_ms = now_ms


cdef void _bwe_trendline(Bwe *b, double recv_delta_ms, double send_delta_ms,
                         double arr_ms) noexcept nogil:
    cdef double xa = 0.0, ya = 0.0, num = 0.0, den = 0.0, trend
    cdef int i
    if b.num_deltas < 1000:
        b.num_deltas += 1
    if not b.have_first_arr:
        b.have_first_arr = True
        b.first_arr_ms = arr_ms
    b.acc_delay += recv_delta_ms - send_delta_ms
    b.smoothed = BWE_SMOOTHING * b.smoothed + (1.0 - BWE_SMOOTHING) * b.acc_delay
    b.hist_x[b.hist_head] = arr_ms - b.first_arr_ms
    b.hist_y[b.hist_head] = b.smoothed
    b.hist_head = (b.hist_head + 1) % BWE_TREND_WIN
    if b.hist_n < BWE_TREND_WIN:
        b.hist_n += 1
    trend = b.prev_trend
    if b.hist_n == BWE_TREND_WIN:
        for i in range(BWE_TREND_WIN):
            xa += b.hist_x[i]
            ya += b.hist_y[i]
        xa /= BWE_TREND_WIN
        ya /= BWE_TREND_WIN
        for i in range(BWE_TREND_WIN):
            num += (b.hist_x[i] - xa) * (b.hist_y[i] - ya)
            den += (b.hist_x[i] - xa) * (b.hist_x[i] - xa)
        if den != 0.0:
            trend = num / den
    b.trend = trend
    _bwe_detect(b, trend, send_delta_ms, arr_ms)


cdef inline bint _bwe_new_group(const Bwe *b, double send, double arr) noexcept nogil:
    cdef double arr_delta = arr - b.cur_complete
    cdef double send_delta = send - b.cur_send
    if send_delta == 0.0:
        return False
    # a burst delivered faster than it was sent (queue draining) belongs to the same group
    if (arr_delta - send_delta < 0.0 and arr_delta <= BWE_BURST_S
            and arr - b.cur_first_arr < BWE_BURST_MAX_S):
        return False
    return send - b.cur_first_send > BWE_GROUP_S


cdef void _bwe_delay_packet(Bwe *b, double send, double arr, double now) noexcept nogil:
    cdef double send_delta, arr_delta
    if not b.cur_valid:
        b.cur_valid = True
        b.cur_first_send = send
        b.cur_send = send
        b.cur_first_arr = arr
        b.cur_complete = arr
        b.cur_sys = now
        return
    if send < b.cur_first_send:
        return                                   # reordered behind the current group
    if _bwe_new_group(b, send, arr):
        if b.prev_valid:
            send_delta = b.cur_send - b.prev_send
            arr_delta = b.cur_complete - b.prev_complete
            if arr_delta - (b.cur_sys - b.prev_sys) >= BWE_OFFSET_RESET_S:
                _bwe_reset_delay(b)
                return
            if arr_delta < 0.0:
                b.reordered += 1
                if b.reordered >= 3:
                    _bwe_reset_delay(b)
                return
            b.reordered = 0
            _bwe_trendline(b, arr_delta * 1000.0, send_delta * 1000.0, arr * 1000.0)
        b.prev_valid = True
        b.prev_send = b.cur_send
        b.prev_complete = b.cur_complete
        b.prev_sys = b.cur_sys
        b.cur_first_send = send
        b.cur_send = send
        b.cur_first_arr = arr
    elif send > b.cur_send:
        b.cur_send = send
    b.cur_complete = arr
    b.cur_sys = now


# ---- acked rate ------------------------------------------------------------------------------

cdef void _bwe_arrival(Bwe *b, double arr, uint16_t size) noexcept nogil:
    cdef BweArrival *tail
    if b.arr_count == BWE_ACKED:
        tail = &b.arr[(b.arr_head - b.arr_count) & (BWE_ACKED - 1)]
        b.arr_bytes -= tail.size
        b.arr_count -= 1
    b.arr[b.arr_head].arrival = arr
    b.arr[b.arr_head].size = size
    b.arr_head = (b.arr_head + 1) & (BWE_ACKED - 1)
    b.arr_count += 1
    b.arr_bytes += size
    if not b.arr_any:
        b.arr_any = True
        b.arr_first = arr
        b.arr_newest = arr
    elif arr > b.arr_newest:
        b.arr_newest = arr
    while b.arr_count > 1:
        tail = &b.arr[(b.arr_head - b.arr_count) & (BWE_ACKED - 1)]
        if tail.arrival >= b.arr_newest - BWE_ACK_WINDOW_S:
            break
        b.arr_bytes -= tail.size
        b.arr_count -= 1


cdef void _bwe_update_acked(Bwe *b) noexcept nogil:
    cdef BweArrival *tail
    cdef double span, hist, denom
    if b.arr_count < 3:
        return
    tail = &b.arr[(b.arr_head - b.arr_count) & (BWE_ACKED - 1)]
    span = b.arr_newest - tail.arrival
    hist = b.arr_newest - b.arr_first
    if hist > BWE_ACK_WINDOW_S:
        hist = BWE_ACK_WINDOW_S
    # bytes after the oldest packet over the span they took; a burst in an otherwise idle
    # window is spread over most of the window so it cannot inflate the rate
    denom = span
    if b.arr_count < BWE_ACKED and denom < 0.8 * hist:
        denom = 0.8 * hist
    if denom < 0.02:
        return
    b.acked_bps = (b.arr_bytes - tail.size) * 8.0 / denom


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

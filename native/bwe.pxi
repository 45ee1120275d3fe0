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

# Benchmark load and floor: the blaster, its paced drive loop, and the kernel-floor
# forwarder (see bench_base.pxi).

cdef class UdpBlaster:
    """Load generator: RTP packets of a fixed size to one destination with sendmmsg.

    Each packet carries the CLOCK_MONOTONIC send time (taken just before the sendmmsg
    call) so a UdpSink can compute one-way latency on the same host.
    """
    # Allocated here.
    cdef object _sock
    cdef unsigned char *_pkts
    cdef mmsghdr *_msgs
    cdef iovec *_iov
    cdef sockaddr_in _dst
    # State.
    cdef int _fd
    cdef readonly int size
    cdef unsigned int _ssrc
    cdef unsigned int _seq
    cdef unsigned int _ts
    cdef readonly unsigned long long sent
    cdef readonly unsigned long long errors
    cdef int _stop  # set from another thread by stop_drive(); read by bench_drive's loop

    def __init__(self, str host, int port, int size=1100, unsigned int ssrc=0x5EB0BE1,
                 int payload_type=96, str bind_host="127.0.0.1"):
        cdef int i, k
        cdef unsigned char *p
        if size < BENCH_MIN_SIZE + 12 or size > BENCH_SLOT:
            raise ValueError(f"size must be in [{BENCH_MIN_SIZE + 12}, {BENCH_SLOT}]")
        if payload_type < 0 or payload_type > 127:
            raise ValueError("payload_type must be 0..127")
        self.size = size
        self._ssrc = ssrc
        self._sock = bench_udp_socket(bind_host, 0)
        self._fd = self._sock.fileno()
        bench_fill_addr(&self._dst, host, port)
        self._pkts = <unsigned char *>calloc(BENCH_BATCH, size)
        self._msgs = <mmsghdr *>calloc(BENCH_BATCH, sizeof(mmsghdr))
        self._iov = <iovec *>calloc(BENCH_BATCH, sizeof(iovec))
        if not self._pkts or not self._msgs or not self._iov:
            raise MemoryError()
        for i in range(BENCH_BATCH):
            p = self._pkts + i * size
            for k in range(size):
                p[k] = <unsigned char>(k * 7 + 3)
            p[0] = 0x80
            p[1] = 0x80 | payload_type  # marker: every packet is a whole frame
            p[8] = (ssrc >> 24) & 0xFF
            p[9] = (ssrc >> 16) & 0xFF
            p[10] = (ssrc >> 8) & 0xFF
            p[11] = ssrc & 0xFF
            # VP8 payload descriptor (S=1, PID 0) + keyframe tag (P=0, show_frame,
            # first partition 100 bytes) + start code + 640x360: gated engines forward it.
            memcpy(p + 12, b"\x10\x90\x0c\x00\x9d\x01\x2a\x80\x02\x68\x01\x00", 12)
            memcpy(p + 12 + BENCH_MAGIC_OFF, BENCH_MAGIC, 8)
            self._iov[i].iov_base = p
            self._iov[i].iov_len = size
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
            self._msgs[i].msg_hdr.msg_name = &self._dst
            self._msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)

    def __dealloc__(self):
        free(self._pkts)
        free(self._msgs)
        free(self._iov)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def stop_drive(self) -> None:
        """Make a bench_drive running on another thread stop sending now (it still drains
        for its ``drain`` time)."""
        self._stop = 1

    def set_destination(self, str host, int port) -> None:
        bench_fill_addr(&self._dst, host, port)

    def close(self) -> None:
        self._sock.close()

    cdef int _send(self, int count) noexcept nogil:
        # Stamp up to one batch and send it; returns how many the kernel took.
        cdef int i, k, r
        cdef unsigned char *p
        cdef unsigned int seq, ts
        cdef unsigned long long now
        if count > BENCH_BATCH:
            count = BENCH_BATCH
        now = <unsigned long long>bench_real_ns()
        for i in range(count):
            p = self._pkts + i * self.size
            seq = self._seq + i
            ts = self._ts + 3000 * i  # one frame per packet, 30 fps at 90 kHz
            p[2] = (seq >> 8) & 0xFF
            p[3] = seq & 0xFF
            p[4] = (ts >> 24) & 0xFF
            p[5] = (ts >> 16) & 0xFF
            p[6] = (ts >> 8) & 0xFF
            p[7] = ts & 0xFF
            for k in range(8):
                p[12 + BENCH_TS_OFF + k] = (now >> (8 * k)) & 0xFF
            for k in range(4):
                p[12 + BENCH_SEQ_OFF + k] = (seq >> (8 * k)) & 0xFF
        r = sendmmsg(self._fd, self._msgs, count, MSG_DONTWAIT)
        if r < 0:
            self.errors += 1
            return 0
        self._seq += r
        self._ts += 3000 * r
        self.sent += r
        return r

    def send(self, int count) -> int:
        """Send count packets now (in batches of 64); returns how many were sent."""
        cdef int done = 0, r
        with nogil:
            while done < count:
                r = self._send(count - done)
                if r <= 0:
                    break
                done += r
        return done


cdef inline double bench_uniform(unsigned long long *state) noexcept nogil:
    # xorshift64*: cheap jitter, no libc rand state shared with anyone.
    cdef unsigned long long x = state[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    state[0] = x
    return <double>((x * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0)


cdef inline void bench_arm(int tfd, long long when_ns) noexcept nogil:
    cdef bench_itimerspec its
    its.it_interval.tv_sec = 0
    its.it_interval.tv_nsec = 0
    its.it_value.tv_sec = when_ns // 1000000000
    its.it_value.tv_nsec = when_ns % 1000000000
    bench_timerfd_settime(tfd, BENCH_TFD_TIMER_ABSTIME, &its, NULL)


cdef long long bench_drive_loop(UdpBlaster blaster, UdpSink sink, double rate,
                                long long dur_ns, long long drain_ns, int burst) noexcept nogil:
    cdef long long t0 = bench_now_ns(), now, sent = 0, next_fire = 0
    cdef long long t_end = t0 + dur_ns, t_stop = t_end + drain_ns
    cdef double interval = 0.0
    cdef int tfd = -1, fired = 0, r, timeout, per_fire = 1, rounds
    cdef unsigned long long expirations, rng = 0x9E3779B97F4A7C15ULL ^ <unsigned long long>t0
    cdef bint sending = True, paced = rate > 0
    if paced:
        # One-shot timer, rearmed with jitter U(0.5, 1.5) x the mean interval: a strictly
        # periodic sender phase-locks with the kernel tick, which then samples the
        # forwarder at the same point of every packet and skews its user/system split.
        # Above 20k packets/s several packets go per timer fire (>= 50 µs apart on average).
        per_fire = <int>(rate * 50e-6 + 0.5)
        if per_fire < 1:
            per_fire = 1
        interval = per_fire * 1e9 / rate
        tfd = bench_timerfd_create(CLOCK_MONOTONIC, BENCH_TFD_NONBLOCK | BENCH_TFD_CLOEXEC)
        if tfd < 0:
            return -1
        next_fire = t0 + <long long>(interval * (0.5 + bench_uniform(&rng)))
        bench_arm(tfd, next_fire)
        bench_epoll_add(sink._epfd, tfd, BENCH_TIMER_TAG)
    while True:
        now = bench_now_ns()
        if sending and (now >= t_end or blaster._stop):
            sending = False
            t_stop = now + drain_ns
        if not sending:
            if now >= t_stop:
                break
            timeout = <int>((t_stop - now) // 1000000) + 1
        elif paced:
            timeout = <int>((t_end - now) // 1000000) + 1
        else:
            timeout = 0
        fired = 0
        sink._wait(timeout, &fired)
        if fired:
            bench_read(tfd, &expirations, 8)
        if not sending:
            continue
        if paced:
            # Catch up on missed fires a few at a time so the sinks keep being drained.
            rounds = 0
            now = bench_now_ns()
            while now >= next_fire and rounds < 16:
                r = blaster._send(per_fire)
                if r > 0:
                    sent += r
                next_fire += <long long>(interval * (0.5 + bench_uniform(&rng)))
                rounds += 1
            bench_arm(tfd, next_fire)
        else:
            r = burst
            while r > 0:
                fired = blaster._send(r)
                if fired <= 0:
                    break
                sent += fired
                r -= fired
    if tfd >= 0:
        bench_epoll_ctl(sink._epfd, BENCH_EPOLL_CTL_DEL, tfd, NULL)
        bench_close(tfd)
    return sent


def bench_drive(UdpBlaster blaster not None, UdpSink sink not None, double rate,
                double duration, double drain=0.2, int burst=64) -> int:
    """Send at ``rate`` packets/s for ``duration`` s while draining the sink, then keep
    draining for ``drain`` s. rate <= 0 means unpaced: ``burst`` packets per loop round,
    alternating with draining the sink (a burst bigger than what the forwarder handles
    while the sink drains keeps the forwarder's queue from ever running empty).
    Runs without the GIL on the calling thread; returns the packets sent."""
    cdef long long sent
    if duration < 0 or drain < 0 or burst < 1:
        raise ValueError("duration and drain must be >= 0, burst >= 1")
    blaster._stop = 0
    with nogil:
        sent = bench_drive_loop(blaster, sink, rate, <long long>(duration * 1e9),
                                <long long>(drain * 1e9), burst)
    if sent < 0:
        raise OSError(errno, "timerfd_create")
    return sent


cdef class FloorForwarder:
    """The kernel floor: recvmmsg, then one sendmmsg entry per destination per packet.

    No parsing, no rewriting, no copies (every copy points at the received slot), so its
    CPU per forwarded packet is what the syscalls and the loopback delivery cost.
    """
    # Allocated here.
    cdef object _sock
    cdef unsigned char *_buf
    cdef mmsghdr *_in
    cdef iovec *_in_iov
    cdef iovec *_out_iov
    cdef mmsghdr *_out
    cdef sockaddr_in *_dst
    # State.
    cdef int _fd
    cdef readonly int ndest
    cdef readonly unsigned long long received
    cdef readonly unsigned long long sent
    cdef readonly unsigned long long send_errors
    cdef readonly unsigned long long wakeups

    def __init__(self, list dests, str host="127.0.0.1", int port=0):
        cdef int i
        if not dests:
            raise ValueError("need at least one destination")
        self.ndest = len(dests)
        self._sock = bench_udp_socket(host, port, blocking=True)  # recv uses MSG_DONTWAIT
        self._fd = self._sock.fileno()
        self._buf = <unsigned char *>calloc(BENCH_BATCH, BENCH_SLOT)
        self._in = <mmsghdr *>calloc(BENCH_BATCH, sizeof(mmsghdr))
        self._in_iov = <iovec *>calloc(BENCH_BATCH, sizeof(iovec))
        self._out_iov = <iovec *>calloc(BENCH_BATCH, sizeof(iovec))
        self._out = <mmsghdr *>calloc(BENCH_OUT_MAX, sizeof(mmsghdr))
        self._dst = <sockaddr_in *>calloc(self.ndest, sizeof(sockaddr_in))
        if (not self._buf or not self._in or not self._in_iov or not self._out_iov
                or not self._out or not self._dst):
            raise MemoryError()
        for i, (h, p) in enumerate(dests):
            bench_fill_addr(&self._dst[i], h, p)
        for i in range(BENCH_BATCH):
            self._in_iov[i].iov_base = self._buf + i * BENCH_SLOT
            self._in_iov[i].iov_len = BENCH_SLOT
            self._in[i].msg_hdr.msg_iov = &self._in_iov[i]
            self._in[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self._buf)
        free(self._in)
        free(self._in_iov)
        free(self._out_iov)
        free(self._out)
        free(self._dst)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    cdef void _flush(self, int k) noexcept nogil:
        cdef int off = 0, r
        while off < k:
            r = sendmmsg(self._fd, self._out + off, k - off, 0)
            if r < 0:
                if errno == EINTR:
                    continue
                self.send_errors += 1
                off += 1  # skip the message that failed, like a forwarder would
            else:
                self.sent += r
                off += r

    cdef int _forward(self) noexcept nogil:
        # Drain the socket, but go back to epoll after a budget of copies so the stop fd
        # is noticed within milliseconds even when the input never runs dry.
        cdef int r, i, d, k, budget = 8192
        cdef mmsghdr *m
        while budget > 0:
            r = recvmmsg(self._fd, self._in, BENCH_BATCH, MSG_DONTWAIT, NULL)
            if r <= 0:
                return 0
            self.received += r
            k = 0
            for i in range(r):
                self._out_iov[i].iov_base = self._in_iov[i].iov_base
                self._out_iov[i].iov_len = self._in[i].msg_len
                for d in range(self.ndest):
                    m = &self._out[k]
                    m.msg_hdr.msg_name = &self._dst[d]
                    m.msg_hdr.msg_namelen = sizeof(sockaddr_in)
                    m.msg_hdr.msg_iov = &self._out_iov[i]
                    m.msg_hdr.msg_iovlen = 1
                    k += 1
                    if k == BENCH_OUT_MAX:
                        self._flush(k)
                        k = 0
            if k:
                self._flush(k)
            if r < BENCH_BATCH:
                return 0
            budget -= r * self.ndest
        return 0

    def run(self, int stop_fd) -> None:
        """Forward until stop_fd becomes readable (data or EOF); the caller reads it."""
        cdef int epfd, nev, i
        cdef bint stop = False
        cdef bench_epoll_event evs[2]
        epfd = bench_epoll_create1(BENCH_EPOLL_CLOEXEC)
        if epfd < 0:
            raise OSError(errno, "epoll_create1")
        if bench_epoll_add(epfd, self._fd, 0) < 0 or bench_epoll_add(epfd, stop_fd, 1) < 0:
            bench_close(epfd)
            raise OSError(errno, "epoll_ctl")
        with nogil:
            while not stop:
                nev = bench_epoll_wait(epfd, evs, 2, -1)
                self.wakeups += 1
                for i in range(nev):
                    if evs[i].data.u32 == 1:
                        stop = True
                    else:
                        self._forward()
        bench_close(epfd)

    def counters(self) -> dict:
        return {"received": self.received, "sent": self.sent,
                "send_errors": self.send_errors, "wakeups": self.wakeups}

# Benchmark sink: N subscriber sockets drained by one native loop (see bench_base.pxi).

cdef class UdpSink:
    """N subscriber sockets drained by one epoll + recvmmsg loop.

    Counts datagrams per socket, and for bench packets records receive - send time in a
    histogram (1 µs buckets to 50 ms, then 1 ms to 10 s; C arrays, nothing allocated per
    packet). Anything else (RTCP, foreign
    datagrams) is counted as ``other``.
    """
    # Allocated here.
    cdef object _socks
    cdef int *_fds
    cdef long long *_count
    cdef long long *_hist
    cdef unsigned char *_buf
    cdef mmsghdr *_msgs
    cdef iovec *_iov
    cdef bench_epoll_event *_events
    cdef unsigned char *_ctrl
    # State.
    cdef readonly int n
    cdef int _epfd
    cdef long long _total, _other, _bench, _over, _lat_sum, _lat_max, _no_kernel_ts

    def __cinit__(self):
        self._epfd = -1

    def __init__(self, int n, str host="127.0.0.1"):
        cdef int i
        if n < 1:
            raise ValueError("a sink needs at least one socket")
        self.n = n
        self._socks = [bench_udp_socket(host, 0) for _ in range(n)]
        self._fds = <int *>calloc(n, sizeof(int))
        self._count = <long long *>calloc(n, sizeof(long long))
        self._hist = <long long *>calloc(BENCH_HIST, sizeof(long long))
        self._buf = <unsigned char *>calloc(BENCH_BATCH, BENCH_SLOT)
        self._msgs = <mmsghdr *>calloc(BENCH_BATCH, sizeof(mmsghdr))
        self._iov = <iovec *>calloc(BENCH_BATCH, sizeof(iovec))
        self._events = <bench_epoll_event *>calloc(256, sizeof(bench_epoll_event))
        self._ctrl = <unsigned char *>calloc(BENCH_BATCH, BENCH_CTRL)
        if (not self._fds or not self._count or not self._hist or not self._buf
                or not self._msgs or not self._iov or not self._events or not self._ctrl):
            raise MemoryError()
        for s in self._socks:
            # Kernel receive timestamps (CLOCK_REALTIME) on every datagram.
            s.setsockopt(bench_socket_mod.SOL_SOCKET, <int>BENCH_SO_TIMESTAMPNS, 1)
        for i in range(BENCH_BATCH):
            self._iov[i].iov_base = self._buf + i * BENCH_SLOT
            self._iov[i].iov_len = BENCH_SLOT
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._epfd = bench_epoll_create1(BENCH_EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise OSError(errno, "epoll_create1")
        for i in range(n):
            self._fds[i] = self._socks[i].fileno()
            if bench_epoll_add(self._epfd, self._fds[i], i) < 0:
                raise OSError(errno, "epoll_ctl")

    def __dealloc__(self):
        if self._epfd >= 0:
            bench_close(self._epfd)
        free(self._fds)
        free(self._count)
        free(self._hist)
        free(self._buf)
        free(self._msgs)
        free(self._iov)
        free(self._events)
        free(self._ctrl)

    @property
    def ports(self) -> list:
        return [s.getsockname()[1] for s in self._socks]

    def close(self) -> None:
        for s in self._socks:
            s.close()

    cdef inline void _account(self, const unsigned char *p, unsigned int n,
                              long long now) noexcept nogil:
        cdef unsigned int hdr, ext
        cdef unsigned long long sent = 0
        cdef long long lat
        cdef int k
        self._total += 1
        # RTP v2, not RTCP (PT 72..76 with the marker bit folded in), room for our fields.
        if n < BENCH_MIN_SIZE or (p[0] >> 6) != 2 or 72 <= (p[1] & 0x7F) <= 76:
            self._other += 1
            return
        hdr = 12 + 4 * (p[0] & 0x0F)
        if p[0] & 0x10:
            if hdr + 4 > n:
                self._other += 1
                return
            ext = (<unsigned int>p[hdr + 2] << 8) | p[hdr + 3]
            hdr += 4 + 4 * ext
        if hdr + 32 > n or memcmp(p + hdr + BENCH_MAGIC_OFF, BENCH_MAGIC, 8) != 0:
            self._other += 1
            return
        for k in range(8):
            sent |= (<unsigned long long>p[hdr + BENCH_TS_OFF + k]) << (8 * k)
        lat = now - <long long>sent
        if lat < 0:
            lat = 0
        self._bench += 1
        self._lat_sum += lat
        if lat > self._lat_max:
            self._lat_max = lat
        if lat // 1000 < BENCH_HIST_US:
            self._hist[lat // 1000] += 1
        elif lat // 1000000 - 50 + BENCH_HIST_US < BENCH_HIST:
            self._hist[lat // 1000000 - 50 + BENCH_HIST_US] += 1
        else:
            self._over += 1

    cdef int _drain_one(self, int idx) noexcept nogil:
        # One batch per ready socket per round (epoll is level-triggered, the rest comes
        # next round): a sink with a deep backlog must not starve the blaster sharing this
        # loop. The receive time is read once per recvmmsg batch.
        cdef int r, i
        cdef long long now
        cdef bench_cmsghdr *c
        cdef timespec *ts
        cdef long long fallback
        for i in range(BENCH_BATCH):
            self._msgs[i].msg_hdr.msg_control = self._ctrl + i * BENCH_CTRL
            self._msgs[i].msg_hdr.msg_controllen = BENCH_CTRL
        r = recvmmsg(self._fds[idx], self._msgs, BENCH_BATCH, MSG_DONTWAIT, NULL)
        if r <= 0:
            return 0
        fallback = bench_real_ns()
        for i in range(r):
            now = fallback
            c = BENCH_CMSG_FIRSTHDR(&self._msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == BENCH_SOL_SOCKET and c.cmsg_type == BENCH_SCM_TIMESTAMPNS:
                    ts = <timespec *>BENCH_CMSG_DATA(c)
                    now = <long long>ts.tv_sec * 1000000000 + ts.tv_nsec
                    break
                c = BENCH_CMSG_NXTHDR(&self._msgs[i].msg_hdr, c)
            if now == fallback:
                self._no_kernel_ts += 1
            self._account(self._buf + i * BENCH_SLOT, self._msgs[i].msg_len, now)
        self._count[idx] += r
        return r

    cdef int _wait(self, int timeout_ms, int *timer_fired) noexcept nogil:
        # One epoll round; drains every ready socket. Reports a tagged timer separately.
        cdef int nev, i, got = 0
        cdef unsigned int tag
        nev = bench_epoll_wait(self._epfd, self._events, 256, timeout_ms)
        for i in range(nev):
            tag = self._events[i].data.u32
            if tag == BENCH_TIMER_TAG:
                timer_fired[0] = 1
            elif tag < <unsigned int>self.n:
                got += self._drain_one(tag)
        return got

    def poll(self, int timeout_ms=0) -> int:
        """Wait up to timeout_ms for datagrams, then read up to one batch (64) from each
        ready socket; returns how many datagrams were read."""
        cdef int fired = 0, got
        with nogil:
            got = self._wait(timeout_ms, &fired)
        return got

    def reset(self) -> None:
        """Zero the counters and the histogram (start of a measurement window)."""
        cdef int i
        for i in range(self.n):
            self._count[i] = 0
        for i in range(BENCH_HIST):
            self._hist[i] = 0
        self._total = self._other = self._bench = self._over = 0
        self._lat_sum = self._lat_max = 0
        self._no_kernel_ts = 0

    def counts(self) -> list:
        """Datagrams received per socket (index-aligned with ports)."""
        return [self._count[i] for i in range(self.n)]

    def stats(self) -> dict:
        return {"total": self._total, "other": self._other, "bench": self._bench,
                "hist_over": self._over, "lat_sum_ns": self._lat_sum,
                "lat_max_ns": self._lat_max, "no_kernel_ts": self._no_kernel_ts}

    def histogram(self) -> bytes:
        """Latency histogram as native-endian int64 counts: bucket i < 50000 is
        [i, i+1) µs, bucket 50000 + j is [50 + j, 51 + j) ms (up to 10 s)."""
        return (<char *>self._hist)[:BENCH_HIST * sizeof(long long)]



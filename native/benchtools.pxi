# Benchmark helpers (floor forwarder, sinks, blaster); owned by the bench author.
#
# Included by _native.pyx, so it shares the module namespace with the engine. To never clash
# with the engine's externs, every C name used here is re-declared under a bench_ prefix
# (mapped to the real symbol with a cname string) and nothing is cimported. Only bench/ and
# tests/test_benchtools.py use these; none of it is on the node's data path.
#
# Packet format written by UdpBlaster and understood by UdpSink (RTP, then a VP8 keyframe
# header so an engine that gates on keyframes forwards it, then the bench fields):
#   RTP header (12 bytes, marker set) | VP8 descriptor 0x10 | VP8 keyframe tag + start code
#   payload[12:20] = b"SFUBENCH"  payload[20:28] = CLOCK_REALTIME send time, ns, little endian
# (realtime because the sink compares it with the kernel's SO_TIMESTAMPNS receive stamp,
# which is taken when the packet is queued to the sink socket, so a sink that drains late
# does not inflate the latency it reports)
#   payload[28:32] = blaster sequence number (32 bits, little endian)

cdef extern from "<stdlib.h>" nogil:
    void *bench_calloc "calloc"(size_t nmemb, size_t size)
    void bench_free "free"(void *p)

cdef extern from "<string.h>" nogil:
    void *bench_memcpy "memcpy"(void *dst, const void *src, size_t n)
    int bench_memcmp "memcmp"(const void *a, const void *b, size_t n)

cdef extern from "<errno.h>" nogil:
    int bench_errno "errno"
    enum:
        BENCH_EINTR "EINTR"

cdef extern from "<time.h>" nogil:
    ctypedef struct bench_timespec "struct timespec":
        long tv_sec
        long tv_nsec
    int bench_clock_gettime "clock_gettime"(int clk, bench_timespec *ts)
    enum:
        BENCH_CLOCK_MONOTONIC "CLOCK_MONOTONIC"
        BENCH_CLOCK_REALTIME "CLOCK_REALTIME"

cdef extern from "<unistd.h>" nogil:
    long bench_read "read"(int fd, void *buf, size_t n)
    int bench_close "close"(int fd)

cdef extern from "<sys/uio.h>" nogil:
    ctypedef struct bench_iovec "struct iovec":
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef struct bench_msghdr "struct msghdr":
        void *msg_name
        unsigned int msg_namelen
        bench_iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ctypedef struct bench_mmsghdr "struct mmsghdr":
        bench_msghdr msg_hdr
        unsigned int msg_len
    int bench_recvmmsg "recvmmsg"(int fd, bench_mmsghdr *vec, unsigned int vlen, int flags,
                                  bench_timespec *timeout)
    int bench_sendmmsg "sendmmsg"(int fd, bench_mmsghdr *vec, unsigned int vlen, int flags)
    ctypedef struct bench_cmsghdr "struct cmsghdr":
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    bench_cmsghdr *BENCH_CMSG_FIRSTHDR "CMSG_FIRSTHDR"(bench_msghdr *msg)
    bench_cmsghdr *BENCH_CMSG_NXTHDR "CMSG_NXTHDR"(bench_msghdr *msg, bench_cmsghdr *c)
    unsigned char *BENCH_CMSG_DATA "CMSG_DATA"(bench_cmsghdr *c)
    enum:
        BENCH_MSG_DONTWAIT "MSG_DONTWAIT"
        BENCH_SOL_SOCKET "SOL_SOCKET"
        BENCH_SCM_TIMESTAMPNS "SCM_TIMESTAMPNS"
        BENCH_SO_TIMESTAMPNS "SO_TIMESTAMPNS"

cdef extern from "<netinet/in.h>" nogil:
    ctypedef struct bench_in_addr "struct in_addr":
        unsigned int s_addr
    ctypedef struct bench_sockaddr_in "struct sockaddr_in":
        unsigned short sin_family
        unsigned short sin_port
        bench_in_addr sin_addr
    unsigned short bench_htons "htons"(unsigned short v)
    enum:
        BENCH_AF_INET "AF_INET"

cdef extern from "<arpa/inet.h>" nogil:
    int bench_inet_pton "inet_pton"(int af, const char *src, void *dst)

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union bench_epoll_data "epoll_data_t":
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    ctypedef struct bench_epoll_event "struct epoll_event":
        unsigned int events
        bench_epoll_data data
    int bench_epoll_create1 "epoll_create1"(int flags)
    int bench_epoll_ctl "epoll_ctl"(int epfd, int op, int fd, bench_epoll_event *ev)
    int bench_epoll_wait "epoll_wait"(int epfd, bench_epoll_event *evs, int maxevents,
                                      int timeout)
    enum:
        BENCH_EPOLLIN "EPOLLIN"
        BENCH_EPOLL_CTL_ADD "EPOLL_CTL_ADD"
        BENCH_EPOLL_CTL_DEL "EPOLL_CTL_DEL"
        BENCH_EPOLL_CLOEXEC "EPOLL_CLOEXEC"

cdef extern from "<sys/timerfd.h>" nogil:
    ctypedef struct bench_itimerspec "struct itimerspec":
        bench_timespec it_interval
        bench_timespec it_value
    int bench_timerfd_create "timerfd_create"(int clk, int flags)
    int bench_timerfd_settime "timerfd_settime"(int fd, int flags, const bench_itimerspec *new,
                                                bench_itimerspec *old)
    enum:
        BENCH_TFD_NONBLOCK "TFD_NONBLOCK"
        BENCH_TFD_CLOEXEC "TFD_CLOEXEC"
        BENCH_TFD_TIMER_ABSTIME "TFD_TIMER_ABSTIME"

import socket as bench_socket_mod

cdef enum:
    BENCH_BATCH = 64          # datagrams per recvmmsg / blaster sendmmsg
    BENCH_OUT_MAX = 1024      # sendmmsg vlen limit (UIO_MAXIOV)
    BENCH_SLOT = 2048         # receive slot size, > any datagram we send
    BENCH_HIST_US = 50000     # latency histogram: 1 µs buckets up to 50 ms,
    BENCH_HIST = 50000 + 9950  # then 1 ms buckets from 50 ms up to 10 s
    BENCH_MAGIC_OFF = 12      # offsets inside the RTP payload (see header comment)
    BENCH_TS_OFF = 20
    BENCH_SEQ_OFF = 28
    BENCH_MIN_SIZE = 12 + 32
    BENCH_TIMER_TAG = 0x7FFFFFFF  # epoll tag of the pacing timer (sockets use 0..n-1)
    BENCH_CTRL = 64           # control buffer per datagram (one SCM_TIMESTAMPNS)

cdef const char *BENCH_MAGIC = b"SFUBENCH"
BENCH_SOCKBUF = 4 * 1024 * 1024


cdef inline long long bench_now_ns() noexcept nogil:
    cdef bench_timespec ts
    bench_clock_gettime(BENCH_CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline long long bench_real_ns() noexcept nogil:
    cdef bench_timespec ts
    bench_clock_gettime(BENCH_CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


def bench_realtime_ns() -> int:
    """CLOCK_REALTIME in ns: the clock the blaster stamps and SO_TIMESTAMPNS uses."""
    return bench_real_ns()


def bench_monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock the blaster stamps (same as time.monotonic_ns)."""
    return bench_now_ns()


cdef int bench_fill_addr(bench_sockaddr_in *out, str host, int port) except -1:
    cdef bytes b = host.encode("ascii")
    if port < 0 or port > 65535:
        raise ValueError(f"bad port {port}")
    out.sin_family = BENCH_AF_INET
    out.sin_port = bench_htons(<unsigned short>port)
    if bench_inet_pton(BENCH_AF_INET, b, &out.sin_addr) != 1:
        raise ValueError(f"not an IPv4 address: {host!r}")
    return 0


def bench_udp_socket(str host="127.0.0.1", int port=0, bint blocking=False):
    """A bound UDP socket with big buffers (loopback bursts overflow the default 208 KiB)."""
    s = bench_socket_mod.socket(bench_socket_mod.AF_INET, bench_socket_mod.SOCK_DGRAM)
    for opt in (bench_socket_mod.SO_RCVBUF, bench_socket_mod.SO_SNDBUF):
        s.setsockopt(bench_socket_mod.SOL_SOCKET, opt, BENCH_SOCKBUF)
    s.bind((host, port))
    s.setblocking(blocking)
    return s


cdef inline int bench_epoll_add(int epfd, int fd, unsigned int tag) noexcept nogil:
    cdef bench_epoll_event ev
    ev.events = BENCH_EPOLLIN
    ev.data.u64 = 0
    ev.data.u32 = tag
    return bench_epoll_ctl(epfd, BENCH_EPOLL_CTL_ADD, fd, &ev)


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
    cdef bench_mmsghdr *_msgs
    cdef bench_iovec *_iov
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
        self._fds = <int *>bench_calloc(n, sizeof(int))
        self._count = <long long *>bench_calloc(n, sizeof(long long))
        self._hist = <long long *>bench_calloc(BENCH_HIST, sizeof(long long))
        self._buf = <unsigned char *>bench_calloc(BENCH_BATCH, BENCH_SLOT)
        self._msgs = <bench_mmsghdr *>bench_calloc(BENCH_BATCH, sizeof(bench_mmsghdr))
        self._iov = <bench_iovec *>bench_calloc(BENCH_BATCH, sizeof(bench_iovec))
        self._events = <bench_epoll_event *>bench_calloc(256, sizeof(bench_epoll_event))
        self._ctrl = <unsigned char *>bench_calloc(BENCH_BATCH, BENCH_CTRL)
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
            raise OSError(bench_errno, "epoll_create1")
        for i in range(n):
            self._fds[i] = self._socks[i].fileno()
            if bench_epoll_add(self._epfd, self._fds[i], i) < 0:
                raise OSError(bench_errno, "epoll_ctl")

    def __dealloc__(self):
        if self._epfd >= 0:
            bench_close(self._epfd)
        bench_free(self._fds)
        bench_free(self._count)
        bench_free(self._hist)
        bench_free(self._buf)
        bench_free(self._msgs)
        bench_free(self._iov)
        bench_free(self._events)
        bench_free(self._ctrl)

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
        if hdr + 32 > n or bench_memcmp(p + hdr + BENCH_MAGIC_OFF, BENCH_MAGIC, 8) != 0:
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
        cdef bench_timespec *ts
        cdef long long fallback
        for i in range(BENCH_BATCH):
            self._msgs[i].msg_hdr.msg_control = self._ctrl + i * BENCH_CTRL
            self._msgs[i].msg_hdr.msg_controllen = BENCH_CTRL
        r = bench_recvmmsg(self._fds[idx], self._msgs, BENCH_BATCH, BENCH_MSG_DONTWAIT, NULL)
        if r <= 0:
            return 0
        fallback = bench_real_ns()
        for i in range(r):
            now = fallback
            c = BENCH_CMSG_FIRSTHDR(&self._msgs[i].msg_hdr)
            while c != NULL:
                if c.cmsg_level == BENCH_SOL_SOCKET and c.cmsg_type == BENCH_SCM_TIMESTAMPNS:
                    ts = <bench_timespec *>BENCH_CMSG_DATA(c)
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


cdef class UdpBlaster:
    """Load generator: RTP packets of a fixed size to one destination with sendmmsg.

    Each packet carries the CLOCK_MONOTONIC send time (taken just before the sendmmsg
    call) so a UdpSink can compute one-way latency on the same host.
    """
    # Allocated here.
    cdef object _sock
    cdef unsigned char *_pkts
    cdef bench_mmsghdr *_msgs
    cdef bench_iovec *_iov
    cdef bench_sockaddr_in _dst
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
        self._pkts = <unsigned char *>bench_calloc(BENCH_BATCH, size)
        self._msgs = <bench_mmsghdr *>bench_calloc(BENCH_BATCH, sizeof(bench_mmsghdr))
        self._iov = <bench_iovec *>bench_calloc(BENCH_BATCH, sizeof(bench_iovec))
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
            bench_memcpy(p + 12, b"\x10\x90\x0c\x00\x9d\x01\x2a\x80\x02\x68\x01\x00", 12)
            bench_memcpy(p + 12 + BENCH_MAGIC_OFF, BENCH_MAGIC, 8)
            self._iov[i].iov_base = p
            self._iov[i].iov_len = size
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
            self._msgs[i].msg_hdr.msg_name = &self._dst
            self._msgs[i].msg_hdr.msg_namelen = sizeof(bench_sockaddr_in)

    def __dealloc__(self):
        bench_free(self._pkts)
        bench_free(self._msgs)
        bench_free(self._iov)

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
        r = bench_sendmmsg(self._fd, self._msgs, count, BENCH_MSG_DONTWAIT)
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
        tfd = bench_timerfd_create(BENCH_CLOCK_MONOTONIC, BENCH_TFD_NONBLOCK | BENCH_TFD_CLOEXEC)
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
        raise OSError(bench_errno, "timerfd_create")
    return sent


cdef class FloorForwarder:
    """The kernel floor: recvmmsg, then one sendmmsg entry per destination per packet.

    No parsing, no rewriting, no copies (every copy points at the received slot), so its
    CPU per forwarded packet is what the syscalls and the loopback delivery cost.
    """
    # Allocated here.
    cdef object _sock
    cdef unsigned char *_buf
    cdef bench_mmsghdr *_in
    cdef bench_iovec *_in_iov
    cdef bench_iovec *_out_iov
    cdef bench_mmsghdr *_out
    cdef bench_sockaddr_in *_dst
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
        self._buf = <unsigned char *>bench_calloc(BENCH_BATCH, BENCH_SLOT)
        self._in = <bench_mmsghdr *>bench_calloc(BENCH_BATCH, sizeof(bench_mmsghdr))
        self._in_iov = <bench_iovec *>bench_calloc(BENCH_BATCH, sizeof(bench_iovec))
        self._out_iov = <bench_iovec *>bench_calloc(BENCH_BATCH, sizeof(bench_iovec))
        self._out = <bench_mmsghdr *>bench_calloc(BENCH_OUT_MAX, sizeof(bench_mmsghdr))
        self._dst = <bench_sockaddr_in *>bench_calloc(self.ndest, sizeof(bench_sockaddr_in))
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
        bench_free(self._buf)
        bench_free(self._in)
        bench_free(self._in_iov)
        bench_free(self._out_iov)
        bench_free(self._out)
        bench_free(self._dst)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    cdef void _flush(self, int k) noexcept nogil:
        cdef int off = 0, r
        while off < k:
            r = bench_sendmmsg(self._fd, self._out + off, k - off, 0)
            if r < 0:
                if bench_errno == BENCH_EINTR:
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
        cdef bench_mmsghdr *m
        while budget > 0:
            r = bench_recvmmsg(self._fd, self._in, BENCH_BATCH, BENCH_MSG_DONTWAIT, NULL)
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
                    m.msg_hdr.msg_namelen = sizeof(bench_sockaddr_in)
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
            raise OSError(bench_errno, "epoll_create1")
        if bench_epoll_add(epfd, self._fd, 0) < 0 or bench_epoll_add(epfd, stop_fd, 1) < 0:
            bench_close(epfd)
            raise OSError(bench_errno, "epoll_ctl")
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

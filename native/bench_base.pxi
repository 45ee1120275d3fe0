# Benchmark helpers, part 1: externs and shared helpers (bench_sink.pxi, bench_load.pxi follow).
#
# Included by _native.pyx after net.pxi, whose socket/time/libc externs it uses; its own names
# carry a bench_ prefix. Only bench/ and tests/test_benchtools.py use these; none of it is on
# the node's data path.
#
# Packet format written by UdpBlaster and understood by UdpSink (RTP, then a VP8 keyframe
# header so an engine that gates on keyframes forwards it, then the bench fields):
#   RTP header (12 bytes, marker set) | VP8 descriptor 0x10 | VP8 keyframe tag + start code
#   payload[12:20] = b"SFUBENCH"  payload[20:28] = CLOCK_REALTIME send time, ns, little endian
# (realtime because the sink compares it with the kernel's SO_TIMESTAMPNS receive stamp,
# which is taken when the packet is queued to the sink socket, so a sink that drains late
# does not inflate the latency it reports)
#   payload[28:32] = blaster sequence number (32 bits, little endian)

# The socket, time and libc externs come from net.pxi (same module); only what the engine
# does not use is declared here.
cdef extern from "<unistd.h>" nogil:
    long bench_read "read"(int fd, void *buf, size_t n)
    int bench_close "close"(int fd)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef struct bench_cmsghdr "struct cmsghdr":
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    bench_cmsghdr *BENCH_CMSG_FIRSTHDR "CMSG_FIRSTHDR"(msghdr *msg)
    bench_cmsghdr *BENCH_CMSG_NXTHDR "CMSG_NXTHDR"(msghdr *msg, bench_cmsghdr *c)
    unsigned char *BENCH_CMSG_DATA "CMSG_DATA"(bench_cmsghdr *c)
    enum:
        BENCH_SOL_SOCKET "SOL_SOCKET"
        BENCH_SCM_TIMESTAMPNS "SCM_TIMESTAMPNS"
        BENCH_SO_TIMESTAMPNS "SO_TIMESTAMPNS"

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
        timespec it_interval
        timespec it_value
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
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline long long bench_real_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


def bench_realtime_ns() -> int:
    """CLOCK_REALTIME in ns: the clock the blaster stamps and SO_TIMESTAMPNS uses."""
    return bench_real_ns()


def bench_monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock the blaster stamps (same as time.monotonic_ns)."""
    return bench_now_ns()


cdef int bench_fill_addr(sockaddr_in *out, str host, int port) except -1:
    cdef bytes b = host.encode("ascii")
    if port < 0 or port > 65535:
        raise ValueError(f"bad port {port}")
    out.sin_family = AF_INET
    out.sin_port = htons(<unsigned short>port)
    if inet_pton(AF_INET, b, &out.sin_addr) != 1:
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



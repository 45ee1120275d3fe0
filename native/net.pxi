# Socket externs: recvmmsg/sendmmsg and IPv4 addresses. Python.h defines _GNU_SOURCE,
# which glibc needs to declare the *mmsg calls.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.errno cimport errno, EAGAIN, EINTR
cdef extern from "<errno.h>":
    int EWOULDBLOCK

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const void *addr, socklen_t alen)
    int MSG_DONTWAIT
    int MSG_TRUNC
    int AF_INET

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t rd24(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | p[3])

cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF

cdef inline void wr24(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 16) & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = v & 0xFF

cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF

cdef inline uint64_t addr_key(const sockaddr_in *a) noexcept nogil:
    # IPv4 address and port, both in network order, packed into one map key.
    return (<uint64_t>a.sin_addr.s_addr << 16) | a.sin_port


cdef int parse_ipv4(str host, int port, sockaddr_in *out) except -1:
    cdef bytes b = host.encode("ascii")
    if port < 0 or port > 65535:
        raise ValueError(f"port {port} out of range")
    memset(out, 0, sizeof(sockaddr_in))
    out.sin_family = AF_INET
    out.sin_port = htons(<uint16_t>port)
    if inet_pton(AF_INET, b, &out.sin_addr) != 1:
        raise ValueError(f"not an IPv4 address: {host!r}")
    return 0


cdef str format_ipv4(uint32_t s_addr):
    cdef char buf[32]
    cdef in_addr a
    a.s_addr = s_addr
    inet_ntop(AF_INET, &a, buf, 32)
    return (<bytes>buf).decode("ascii")

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC
    int CLOCK_REALTIME


cdef inline double monotonic_now() noexcept nogil:
    """Seconds on CLOCK_MONOTONIC: the clock of time.monotonic() and asyncio's loop."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

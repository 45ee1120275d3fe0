# Benchmark load, RTP over QUIC: a paced native publisher for bench/quic.py's latency phase.
#
# The Python publisher (aioquic, paced by the event loop's 1 ms timers) sends in bursts, and
# the bursts queue in the node and show up as its latency. QuicBlaster sends each packet on
# time from a timerfd loop without the GIL, sealing it as a 1-RTT short-header packet with
# one DATAGRAM frame (flow id || RTP) with the engine's own sealing code (quic_crypto.pxi),
# on the publisher QuicLink's socket (another source address would look like a migration)
# with the client's 1-RTT send keys. The link must send nothing meanwhile: the two share
# the packet number space (next_pn hands it back).
#
# Packet format (bench/quic_clients.py's media_packet / read_stamp): RTP (12 bytes, marker,
# no CSRC or extension) | VP8 descriptor + keyframe header (12 bytes) | CLOCK_REALTIME ns of
# the send (int64 little endian, taken right before sealing) | filler.

cdef enum:
    BQ_STAMP_OFF = 24          # RTP header 12 + VP8 keyframe header 12
    BQ_MIN_SIZE = 12 + 12 + 8
    BQ_MAX_SIZE = 1400


cdef class QuicBlaster:
    """Paced RoQ publisher: RTP packets sealed as QUIC DATAGRAM frames at send time.

    fd: the publisher QuicLink's UDP socket (not owned: the caller keeps it open);
    host, port: the node's QUIC address. set_keys() before the first send."""
    # Allocated here.
    cdef QuicPeer *_q
    cdef uint8_t *_rtp
    cdef uint8_t *_out
    cdef object _direct_sock
    # Passed by argument.
    cdef bytes _prefix        # the RoQ flow id (varint), after the DATAGRAM frame type
    # State.
    cdef int _fd
    cdef int _direct_fd
    cdef sockaddr_in _dst
    cdef sockaddr_in _direct_dst
    cdef readonly int size
    cdef uint32_t _seq
    cdef uint32_t _ts
    cdef uint64_t _next_pn
    cdef readonly unsigned long long sent
    cdef readonly unsigned long long direct_sent
    cdef readonly unsigned long long errors
    cdef readonly unsigned long long skipped   # pacing slots given up (see drive)
    cdef int _stop  # set from another thread by stop(); read by drive's loop

    def __init__(self, int fd, str host, int port, int size=1100, unsigned int ssrc=0x5EB0BE3,
                 int payload_type=96, bytes prefix=b"\x00", unsigned int seq=0,
                 unsigned int ts=0):
        cdef int k
        if size < BQ_MIN_SIZE or size > BQ_MAX_SIZE:
            raise ValueError(f"size must be in [{BQ_MIN_SIZE}, {BQ_MAX_SIZE}]")
        if payload_type < 0 or payload_type > 127:
            raise ValueError("payload_type must be 0..127")
        if len(prefix) > QUIC_MAX_PREFIX:
            raise ValueError("prefix must be at most 16 bytes")
        if fd < 0:
            raise ValueError("fd must be an open socket")
        self._fd = fd
        self._direct_fd = -1
        self.size = size
        self._seq = seq & 0xFFFF
        self._ts = ts
        bench_fill_addr(&self._dst, host, port)
        self._rtp = <uint8_t *>calloc(1, BQ_MAX_SIZE)
        self._out = <uint8_t *>calloc(1, QUIC_SEAL_SLOT)
        if self._rtp == NULL or self._out == NULL:
            raise MemoryError()
        self._rtp[0] = 0x80
        self._rtp[1] = 0x80 | payload_type  # marker: every packet is a whole frame
        wr32(self._rtp + 8, ssrc)
        memcpy(self._rtp + 12, b"\x10\x90\x0c\x00\x9d\x01\x2a\x80\x02\x68\x01\x00", 12)
        for k in range(size - BQ_STAMP_OFF - 8):
            self._rtp[BQ_STAMP_OFF + 8 + k] = <uint8_t>(k * 7 + 3)
        self._prefix = prefix

    def __dealloc__(self):
        quic_free(self._q)
        free(self._rtp)
        free(self._out)

    def set_keys(self, const uint8_t[::1] key not None, const uint8_t[::1] iv not None,
                 const uint8_t[::1] hp not None, const uint8_t[::1] dcid not None,
                 int key_phase, next_pn) -> None:
        """The client's 1-RTT send keys (aioquic's), the node's connection id, and the first
        packet number to use."""
        cdef QuicPeer *q
        cdef Py_ssize_t n = len(self._prefix)
        if not 0 <= next_pn <= QUIC_MAX_PN:
            raise ValueError("next_pn must be 0..2**62-1")
        q = quic_new(key, iv, hp, dcid, key_phase)
        q.pre[0] = QUIC_FRAME_DATAGRAM
        if n:
            memcpy(q.pre + 1, <const char *>self._prefix, n)
        q.pre_len = <uint8_t>(1 + n)
        quic_free(self._q)
        self._q = q
        self._next_pn = <uint64_t>next_pn

    @property
    def next_pn(self) -> int:
        """The packet number the next packet gets (hand it back to aioquic)."""
        return self._next_pn

    def set_next_pn(self, pn) -> None:
        """Skip ahead to pn (what the link used meanwhile); never back: a packet number
        used twice under the same key would reuse an AES-GCM nonce."""
        if not 0 <= pn <= QUIC_MAX_PN:
            raise ValueError("pn must be 0..2**62-1")
        if pn < self._next_pn:
            raise ValueError(f"pn {pn} is below the next packet number {self._next_pn}")
        self._next_pn = <uint64_t>pn

    @property
    def seq(self) -> int:
        """The RTP sequence number of the next packet."""
        return self._seq

    def set_direct(self, str host, int port) -> None:
        """Also send each packet's RTP bytes (same stamp) as plain UDP to host:port, from a
        socket of its own, right after the QUIC copy left."""
        if self._direct_sock is None:
            self._direct_sock = bench_udp_socket("127.0.0.1", 0)
            self._direct_fd = self._direct_sock.fileno()
        bench_fill_addr(&self._direct_dst, host, port)

    def stop(self) -> None:
        """Make a drive() running on another thread return now."""
        self._stop = 1

    def close(self) -> None:
        if self._direct_sock is not None:
            self._direct_sock.close()
            self._direct_sock = None
            self._direct_fd = -1

    cdef int _send_one(self) noexcept nogil:
        # 1 sent, 0 failed (sealing or sendto; counted in errors).
        cdef uint8_t *p = self._rtp
        cdef iovec v
        cdef Py_ssize_t got
        cdef unsigned long long now
        cdef int k
        if self._q == NULL or self._next_pn > QUIC_MAX_PN:
            self.errors += 1
            return 0
        wr16(p + 2, <uint16_t>self._seq)
        wr32(p + 4, self._ts)
        now = <unsigned long long>bench_real_ns()
        for k in range(8):
            p[BQ_STAMP_OFF + k] = (now >> (8 * k)) & 0xFF
        v.iov_base = p
        v.iov_len = self.size
        got = quic_seal(self._q, self._next_pn, self._q.pre, self._q.pre_len, &v, 1, self._out)
        if got < 0:
            self.errors += 1
            return 0
        # The number is spent once sealed, sent or not.
        self._next_pn += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts += 3000  # one frame per packet, 30 fps at 90 kHz
        if sendto(self._fd, self._out, got, MSG_DONTWAIT, &self._dst, sizeof(sockaddr_in)) < 0:
            self.errors += 1
            return 0
        self.sent += 1
        if self._direct_fd >= 0 and sendto(self._direct_fd, p, self.size, MSG_DONTWAIT,
                                           &self._direct_dst, sizeof(sockaddr_in)) >= 0:
            self.direct_sent += 1
        return 1

    def send(self, int count) -> int:
        """Send count packets back to back now; returns how many left."""
        cdef int i, done = 0
        if self._q == NULL:
            raise RuntimeError("set_keys() first")
        with nogil:
            for i in range(count):
                done += self._send_one()
        return done

    def drive(self, double rate, double duration, int catch_up=4, bint jitter=True) -> int:
        """Send at `rate` packets/s for `duration` s, one packet per timerfd expiry, without
        the GIL (call it on a thread). Intervals are U(0.5, 1.5) x the mean with `jitter`
        (a strictly periodic sender phase-locks with the node's tick), else exact. Woken
        late, it sends at most `catch_up` packets back to back and gives up the other due
        slots (counted in `skipped`): a burst would queue in the node. Returns the packets
        sent."""
        cdef long long sent
        if self._q == NULL:
            raise RuntimeError("set_keys() first")
        if rate <= 0 or rate > 200000 or duration < 0 or catch_up < 1:
            raise ValueError("rate must be in (0, 200000], duration >= 0, catch_up >= 1")
        self._stop = 0
        with nogil:
            sent = bench_quic_drive_loop(self, rate, <long long>(duration * 1e9), catch_up,
                                         jitter)
        if sent < 0:
            raise OSError(errno, "timerfd_create")
        return sent


cdef long long bench_quic_drive_loop(QuicBlaster b, double rate, long long dur_ns,
                                     int catch_up, bint jitter) noexcept nogil:
    cdef long long t0 = bench_now_ns(), now, sent = 0, next_fire, due
    cdef long long t_end = t0 + dur_ns
    cdef double interval = 1e9 / rate
    cdef unsigned long long expirations, rng = 0x9E3779B97F4A7C15ULL ^ <unsigned long long>t0
    cdef int tfd = bench_timerfd_create(CLOCK_MONOTONIC, BENCH_TFD_CLOEXEC)  # blocking reads
    if tfd < 0:
        return -1
    next_fire = t0 + <long long>(interval * ((0.5 + bench_uniform(&rng)) if jitter else 1.0))
    while not b._stop and next_fire < t_end:
        bench_arm(tfd, next_fire)
        bench_read(tfd, &expirations, 8)  # EINTR: the slots are recounted below anyway
        now = bench_now_ns()
        due = 0
        while next_fire <= now and next_fire < t_end:
            due += 1
            next_fire += <long long>(interval * ((0.5 + bench_uniform(&rng)) if jitter
                                                 else 1.0))
        if due > catch_up:
            b.skipped += due - catch_up
            due = catch_up
        while due > 0:
            sent += b._send_one()
            due -= 1
    bench_close(tfd)
    return sent

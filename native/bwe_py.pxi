# Python wrapper of the native bandwidth estimator (bwe.pxi), for tests and tools only: the
# engine embeds a Bwe per viewer and calls the C functions directly.


cdef class GccEstimator:
    """One viewer's GCC estimator driven from Python (sizes in bytes, times in seconds)."""
    cdef Bwe b
    cdef bint ready

    def __cinit__(self):
        self.ready = False

    def __init__(self, double start_bps=1e6, double min_bps=5e4, double max_bps=5e7):
        if not (0 < min_bps <= max_bps) or start_bps <= 0:
            raise ValueError("need 0 < min_bps <= max_bps and start_bps > 0")
        if self.ready:
            bwe_free(&self.b)
            self.ready = False
        if bwe_alloc(&self.b, start_bps, min_bps, max_bps) < 0:
            raise MemoryError()
        self.ready = True

    def __dealloc__(self):
        if self.ready:
            bwe_free(&self.b)

    cdef inline int _check(self) except -1:
        if not self.ready:
            raise RuntimeError("GccEstimator not initialised")
        return 0

    def sent(self, Py_ssize_t size, double now, int probe=-1):
        """Record a packet leaving now; returns the transport-wide seq to stamp on it."""
        self._check()
        if not 0 <= size <= 0xFFFF:
            raise ValueError("size must be 0..65535")
        return bwe_on_send(&self.b, size, probe, now)

    def feedback(self, const uint8_t[::1] fci not None, double now, double rtt=0.05):
        """Apply one transport-cc FCI (RTCP bytes after the 12-byte header); False if malformed."""
        self._check()
        if fci.shape[0] == 0:
            return bwe_on_feedback(&self.b, NULL, 0, now, rtt) == 0
        return bwe_on_feedback(&self.b, &fci[0], fci.shape[0], now, rtt) == 0

    def new_probe(self, double now):
        """Start a probe cluster; pass the id as `probe` to sent()."""
        self._check()
        return bwe_probe_new(&self.b, now)

    @property
    def estimate(self):
        return bwe_estimate(&self.b)

    @property
    def delay_bps(self):
        return self.b.delay_bps

    @property
    def loss_bps(self):
        return self.b.loss_bps

    @property
    def acked_bps(self):
        return bwe_acked_bps(&self.b)

    @property
    def loss(self):
        return bwe_loss(&self.b)

    @property
    def state(self):
        return bwe_state(&self.b)

    @property
    def slope(self):
        return bwe_slope(&self.b)

    @property
    def threshold(self):
        return self.b.threshold

    @property
    def probes(self):
        return bwe_probes(&self.b)

    @property
    def probe_bps(self):
        return bwe_probe_bps(&self.b)

    @property
    def malformed(self):
        return self.b.malformed

    @property
    def feedbacks(self):
        return self.b.feedbacks

    @property
    def packets_acked(self):
        return self.b.packets_acked

    @property
    def packets_lost(self):
        return self.b.packets_lost

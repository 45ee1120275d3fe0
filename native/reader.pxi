# The transport adapter's read callback, in C: uvloop calls it on every readable event, so
# keeping it out of Python bytecode saves a Python frame per wakeup. It reads the clock
# (time stays injected into the engine) and calls back into Python only for events.

cdef class UdpReader:
    cdef Engine engine
    cdef int tid
    cdef object on_events
    cdef public unsigned long long wakeups

    def __init__(self, Engine engine not None, int tid, on_events not None):
        if tid < 0 or tid >= 16 or engine.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        self.engine = engine
        self.tid = tid
        self.on_events = on_events

    def __call__(self):
        cdef Engine e = self.engine
        cdef int tid = self.tid
        if e.fds[tid] < 0:
            return
        self.wakeups += 1
        with nogil:
            eng_on_readable(e, tid, monotonic_now())
        if e.ev_count or e.ev_overflow:
            self.on_events()

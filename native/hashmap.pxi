# Open-addressing map uint64 -> int32 (linear probing, backward-shift delete).
# Capacity is a power of two at least twice the entry limit, so probes stay short.

cdef struct U64Map:
    uint64_t *keys
    int32_t *vals      # -1 = empty
    uint32_t mask
    uint32_t count


cdef inline uint32_t _mix(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= <uint64_t>0xff51afd7ed558ccd
    k ^= k >> 33
    return <uint32_t>k


cdef int map_init(U64Map *m, uint32_t min_entries) except -1:
    cdef uint32_t cap = 16
    while cap < min_entries * 2:
        cap <<= 1
    m.keys = <uint64_t*>calloc(cap, sizeof(uint64_t))
    m.vals = <int32_t*>malloc(cap * sizeof(int32_t))
    if m.keys == NULL or m.vals == NULL:
        raise MemoryError()
    memset(m.vals, 0xFF, cap * sizeof(int32_t))
    m.mask = cap - 1
    m.count = 0
    return 0


cdef void map_free(U64Map *m) noexcept nogil:
    free(m.keys)
    free(m.vals)
    m.keys = NULL
    m.vals = NULL


cdef inline int32_t map_get(const U64Map *m, uint64_t key) noexcept nogil:
    cdef uint32_t i = _mix(key) & m.mask
    while m.vals[i] >= 0:
        if m.keys[i] == key:
            return m.vals[i]
        i = (i + 1) & m.mask
    return -1


cdef int map_put(U64Map *m, uint64_t key, int32_t val) noexcept nogil:
    """Insert or replace. Returns 0 (caller keeps count below capacity / 2)."""
    cdef uint32_t i = _mix(key) & m.mask
    while m.vals[i] >= 0:
        if m.keys[i] == key:
            m.vals[i] = val
            return 0
        i = (i + 1) & m.mask
    m.keys[i] = key
    m.vals[i] = val
    m.count += 1
    return 0


cdef void map_del(U64Map *m, uint64_t key) noexcept nogil:
    cdef uint32_t i = _mix(key) & m.mask
    cdef uint32_t j, home
    while m.vals[i] >= 0:
        if m.keys[i] == key:
            break
        i = (i + 1) & m.mask
    else:
        return
    m.vals[i] = -1
    m.count -= 1
    # Backward-shift the following cluster so lookups never stop early.
    j = (i + 1) & m.mask
    while m.vals[j] >= 0:
        home = _mix(m.keys[j]) & m.mask
        if ((j - home) & m.mask) >= ((j - i) & m.mask):
            m.keys[i] = m.keys[j]
            m.vals[i] = m.vals[j]
            m.vals[j] = -1
            i = j
        j = (j + 1) & m.mask

# RTP over QUIC egress (issue 6): every datagram queued to a peer marked QUIC leaves as one
# 1-RTT short-header packet with one DATAGRAM frame (prefix || datagram), sealed in the
# flush (quic_crypto.pxi). aioquic owns the handshake, keys and the rest of the connection;
# the packet number space is shared with it through quic_next_pn / set_quic_next_pn.
# The Engine's Python methods are thin wrappers in engine.pxi (a class body cannot include).

cdef void eng_quic_seal_batch(Engine e) noexcept nogil:
    """Seal the batch's entries to QUIC peers in place, before sendmmsg. Entries that do not
    fit or fail are removed (the batch is compacted, so per-peer accounting stays right)."""
    cdef int k, w = 0
    cdef size_t j
    cdef QuicPeer *q
    cdef msghdr *m
    cdef Py_ssize_t size, limit, got
    cdef uint8_t *out
    if e.n_quic == 0:
        return
    for k in range(e.tx_count):
        q = e.peers[e.tx_pid[k]].quic
        if q != NULL:
            m = &e.tx_hdrs[k].msg_hdr
            size = 0
            for j in range(m.msg_iovlen):
                size += m.msg_iov[j].iov_len
            limit = q.max_packet if q.max_packet < QUIC_SEAL_SLOT else QUIC_SEAL_SLOT
            if size + quic_overhead(q) > limit:
                e.c[C_QUIC_TOO_BIG] += 1
                continue
            if q.next_pn > QUIC_MAX_PN:
                e.c[C_QUIC_SEAL_ERRORS] += 1    # PN space exhausted: the peer must re-key
                continue
            # Region k of the seal buffer belongs to original entry k.
            out = e.quic_out + <size_t>k * QUIC_SEAL_SLOT
            got = quic_seal(q, q.next_pn, q.pre, q.pre_len, m.msg_iov, m.msg_iovlen, out)
            if got < 0:
                e.c[C_QUIC_SEAL_ERRORS] += 1
                continue
            q.next_pn += 1
            m.msg_iov[0].iov_base = out
            m.msg_iov[0].iov_len = got
            m.msg_iovlen = 1
            e.c[C_QUIC_SEALED] += 1
        if w != k:
            e.tx_hdrs[w] = e.tx_hdrs[k]
            e.tx_pid[w] = e.tx_pid[k]
        w += 1
    e.tx_count = w


cdef void eng_quic_clear(Engine e, Peer *p) noexcept nogil:
    """Back to plain UDP egress (remove_peer, clear_peer_quic, dealloc)."""
    if p.quic != NULL:
        quic_free(p.quic)
        p.quic = NULL
        e.n_quic -= 1


cdef QuicPeer *eng_quic_of(Engine e, int pid) except NULL:
    cdef Peer *p = e._peer(pid)
    if p.quic == NULL:
        raise ValueError(f"peer {pid} has no QUIC egress (set_peer_quic)")
    return p.quic


cdef int eng_set_peer_quic(Engine e, int pid, const uint8_t[::1] key, const uint8_t[::1] iv,
                           const uint8_t[::1] hp, const uint8_t[::1] dcid,
                           const uint8_t[::1] prefix, object next_pn, int key_phase,
                           int max_packet) except -1:
    cdef Peer *p = e._peer(pid)
    cdef QuicPeer *q
    if key is None or iv is None or hp is None or dcid is None or prefix is None:
        raise ValueError("key, iv, hp, dcid and prefix are required")
    if prefix.shape[0] > QUIC_MAX_PREFIX:
        raise ValueError("prefix must be at most 16 bytes")
    if not 1200 <= max_packet <= 65527:
        raise ValueError("max_packet must be 1200..65527")
    if not 0 <= next_pn <= QUIC_MAX_PN:
        raise ValueError("next_pn must be 0..2**62-1")
    if e.quic_out == NULL:
        # 2 MiB, only on engines that serve QUIC viewers.
        e.quic_out = <uint8_t*>malloc(<size_t>EGRESS_MAX * QUIC_SEAL_SLOT)
        if e.quic_out == NULL:
            raise MemoryError("cannot allocate the QUIC seal buffer")
    q = quic_new(key, iv, hp, dcid, key_phase)
    q.pre[0] = QUIC_FRAME_DATAGRAM
    if prefix.shape[0]:
        memcpy(q.pre + 1, &prefix[0], prefix.shape[0])
    q.pre_len = <uint8_t>(1 + prefix.shape[0])
    q.max_packet = max_packet
    q.next_pn = <uint64_t>next_pn
    eng_flush(e)        # anything already queued goes out under the old state
    eng_quic_clear(e, p)
    p.quic = q
    e.n_quic += 1
    return 0


cdef int eng_set_quic_next_pn(Engine e, int pid, object pn) except -1:
    cdef QuicPeer *q = eng_quic_of(e, pid)
    if not 0 <= pn <= QUIC_MAX_PN:
        raise ValueError("pn must be 0..2**62-1")
    if pn < q.next_pn:
        # A packet number used again under the same key would reuse an AES-GCM nonce.
        raise ValueError(f"pn {pn} is below the next packet number {q.next_pn}")
    q.next_pn = <uint64_t>pn
    return 0


cdef Py_ssize_t eng_quic_max_payload(Engine e, int pid) except -1:
    cdef QuicPeer *q = eng_quic_of(e, pid)
    cdef Py_ssize_t limit = q.max_packet if q.max_packet < QUIC_SEAL_SLOT else QUIC_SEAL_SLOT
    return limit - quic_overhead(q)

# The Engine: the only Python-visible class of the data path (design.md section 2).
# Configure methods validate and raise ValueError; data-path methods never raise on
# network input. Packet work happens in engine_rtp.pxi / engine_rtcp.pxi.

cimport numpy as cnp
import numpy as np

cnp.import_array()

DEF_MAX_TRANSPORTS = 16


cdef class Engine:
    # Passed by argument.
    cdef int32_t max_peers, max_sources, max_ingress, max_downtracks, pool_slots, batch
    cdef int32_t event_ring
    cdef uint32_t node_ssrc
    cdef double rtcp_interval, pli_interval
    cdef double stun_rate, stun_burst, stun_tokens, stun_last
    cdef double data_rate, data_burst
    cdef double nack_delay, nack_max_age, nack_rtt_default, history_video, history_audio
    cdef int32_t nack_max_tries
    # Allocated by this.
    cdef Peer *peers
    cdef Source *sources
    cdef Ingress *ingress
    cdef Downtrack *dts
    cdef int32_t *free_peers
    cdef int32_t *free_sources
    cdef int32_t *free_ingress
    cdef int32_t *free_dts
    cdef int32_t n_free_peers, n_free_sources, n_free_ingress, n_free_dts
    cdef U64Map addr_map      # IPv4 address:port -> peer
    cdef U64Map ssrc_map      # ingress SSRC -> ingress handle
    cdef U64Map out_map       # downtrack out SSRC -> downtrack handle
    cdef int fds[16]
    cdef uint8_t *pool
    cdef uint16_t *refcnt
    cdef int32_t *free_slots
    cdef int32_t n_free_slots
    cdef mmsghdr *rx_hdrs
    cdef iovec *rx_iov
    cdef sockaddr_in *rx_addr
    cdef int32_t *rx_slot
    cdef mmsghdr *tx_hdrs
    cdef iovec *tx_iov
    cdef uint8_t *tx_fixed
    cdef int32_t *tx_pid
    cdef int tx_count
    cdef int tx_tid
    cdef uint8_t *rtcp_out
    cdef Py_ssize_t rtcp_used
    cdef int64_t *ev
    cdef int32_t ev_head, ev_count
    cdef uint8_t *ev_data
    cdef int32_t ev_data_head, ev_data_count
    cdef uint16_t *ev_data_len
    cdef int64_t ev_overflow
    cdef int32_t *deferred           # slots to release after the next flush
    cdef int32_t n_deferred
    cdef int32_t *nack_list          # ingresses with holes to NACK
    cdef int32_t n_nack_list
    cdef double next_nack, next_expire
    cdef uint8_t *rs_scratch         # images for uplink SFU-RS recovery
    cdef uint8_t *rs_parity          # parity rows of the block being closed
    cdef uint8_t *rs_prefix
    cdef uint8_t *ulp_scratch        # viewers' copies of a block for its ULPFEC
    cdef RtpView scratch_view
    cdef int32_t n_probing           # participants with a padding probe running
    cdef uint8_t *quic_out           # QUIC sealed packets, EGRESS_MAX x QUIC_SEAL_SLOT (lazy)
    cdef int32_t n_quic              # peers with QUIC egress
    cdef double next_probe
    # Others.
    cdef uint64_t rng
    cdef double wallclock_offset
    cdef double next_rtcp
    cdef int64_t *c
    cdef int64_t *ss
    cdef int64_t *ds
    cdef int64_t *ps
    cdef public object counters
    cdef public object source_stats
    cdef public object downtrack_stats
    cdef public object peer_stats

    def __cinit__(self, *, int max_peers=4096, int max_sources=4096, int max_downtracks=65536,
                  int pool_slots=16384, int batch=64, int event_ring=8192,
                  unsigned int node_ssrc=1, double rtcp_interval=1.0,
                  double pli_interval=0.3, double stun_rate=2000.0,
                  unsigned long long seed=0x9E3779B97F4A7C15,
                  double history_video=2.0, double history_audio=1.0,
                  double nack_delay=0.005, int nack_max_tries=10, double nack_max_age=1.0,
                  double nack_rtt_default=0.1):
        cdef int i
        if not (1 <= max_peers <= 1 << 20 and 1 <= max_sources <= 1 << 20
                and 1 <= max_downtracks <= 1 << 22):
            raise ValueError("max_peers/max_sources/max_downtracks out of range")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}")
        if pool_slots < 2 * batch:
            raise ValueError("pool_slots must be at least 2 * batch")
        if event_ring < 16:
            raise ValueError("event_ring must be at least 16")
        if rtcp_interval <= 0 or pli_interval < 0:
            raise ValueError("rtcp_interval must be > 0 and pli_interval >= 0")
        if stun_rate < 0:
            raise ValueError("stun_rate must be >= 0 (0 = unlimited)")
        if not (0 < history_video <= 30 and 0 < history_audio <= 30):
            raise ValueError("history_video/history_audio must be in (0, 30] seconds")
        if not (0 <= nack_delay <= 1 and 1 <= nack_max_tries <= 255 and 0 < nack_max_age <= 30
                and 0 < nack_rtt_default <= 5):
            raise ValueError("nack_delay 0..1 s, nack_max_tries 1..255, nack_max_age (0, 30] s, "
                             "nack_rtt_default (0, 5] s")
        self.history_video = history_video
        self.history_audio = history_audio
        self.nack_delay = nack_delay
        self.nack_max_tries = nack_max_tries
        self.nack_max_age = nack_max_age
        self.nack_rtt_default = nack_rtt_default
        self.next_nack = 1e300
        self.next_probe = 1e300
        self.next_expire = 0.0
        self.max_peers = max_peers
        self.max_sources = max_sources
        self.max_ingress = max_sources * MAX_INGRESS
        self.max_downtracks = max_downtracks
        self.pool_slots = pool_slots
        self.batch = batch
        self.event_ring = event_ring
        self.node_ssrc = node_ssrc
        self.rtcp_interval = rtcp_interval
        self.pli_interval = pli_interval
        # STUN goes up to Python (an HMAC each): a token bucket keeps a flood of it from
        # starving everyone's media. Burst: a quarter second of the rate, at least 64.
        self.stun_rate = stun_rate
        self.stun_burst = max(64.0, stun_rate / 4)
        self.stun_tokens = self.stun_burst
        self.stun_last = -1.0
        self.data_rate = 200.0
        self.data_burst = 400.0
        self.rng = seed or 1
        self.peers = <Peer*>calloc(max_peers, sizeof(Peer))
        self.sources = <Source*>calloc(max_sources, sizeof(Source))
        self.ingress = <Ingress*>calloc(self.max_ingress, sizeof(Ingress))
        self.dts = <Downtrack*>calloc(max_downtracks, sizeof(Downtrack))
        self.free_peers = <int32_t*>malloc(max_peers * sizeof(int32_t))
        self.free_sources = <int32_t*>malloc(max_sources * sizeof(int32_t))
        self.free_ingress = <int32_t*>malloc(self.max_ingress * sizeof(int32_t))
        self.free_dts = <int32_t*>malloc(max_downtracks * sizeof(int32_t))
        self.pool = <uint8_t*>malloc(<size_t>pool_slots * SLOT_SIZE)
        self.refcnt = <uint16_t*>calloc(pool_slots, sizeof(uint16_t))
        self.free_slots = <int32_t*>malloc(pool_slots * sizeof(int32_t))
        self.rx_hdrs = <mmsghdr*>calloc(MAX_BATCH, sizeof(mmsghdr))
        self.rx_iov = <iovec*>calloc(MAX_BATCH, sizeof(iovec))
        self.rx_addr = <sockaddr_in*>calloc(MAX_BATCH, sizeof(sockaddr_in))
        self.rx_slot = <int32_t*>calloc(MAX_BATCH, sizeof(int32_t))
        self.tx_hdrs = <mmsghdr*>calloc(EGRESS_MAX, sizeof(mmsghdr))
        self.tx_iov = <iovec*>calloc(2 * EGRESS_MAX, sizeof(iovec))
        self.tx_fixed = <uint8_t*>calloc(EGRESS_MAX, HDR_CAP)
        self.tx_pid = <int32_t*>calloc(EGRESS_MAX, sizeof(int32_t))
        self.rtcp_out = <uint8_t*>malloc(RTCP_OUT_SIZE)
        self.ev = <int64_t*>calloc(event_ring * 5, sizeof(int64_t))
        self.ev_data = <uint8_t*>malloc(EVENT_DATA_SLOTS * EVENT_DATA_SIZE)
        self.ev_data_len = <uint16_t*>calloc(EVENT_DATA_SLOTS, sizeof(uint16_t))
        self.deferred = <int32_t*>calloc(EGRESS_MAX, sizeof(int32_t))
        self.nack_list = <int32_t*>calloc(self.max_ingress, sizeof(int32_t))
        self.rs_scratch = <uint8_t*>malloc(2 * RS_MAX_K * SLOT_SIZE)
        self.rs_parity = <uint8_t*>malloc(RS_MAX_M * SLOT_SIZE)
        self.rs_prefix = <uint8_t*>calloc(RS_MAX_K, 8)
        self.ulp_scratch = <uint8_t*>malloc(ULP_MAX_K * SLOT_SIZE)
        if (self.deferred == NULL or self.nack_list == NULL or self.rs_scratch == NULL
                or self.rs_parity == NULL or self.rs_prefix == NULL or self.ulp_scratch == NULL):
            raise MemoryError("cannot allocate engine tables")
        if (self.peers == NULL or self.sources == NULL or self.ingress == NULL
                or self.dts == NULL or self.free_peers == NULL or self.free_sources == NULL
                or self.free_ingress == NULL or self.free_dts == NULL or self.pool == NULL
                or self.refcnt == NULL or self.free_slots == NULL or self.rx_hdrs == NULL
                or self.rx_iov == NULL or self.rx_addr == NULL or self.rx_slot == NULL
                or self.tx_hdrs == NULL or self.tx_iov == NULL or self.tx_fixed == NULL
                or self.tx_pid == NULL or self.rtcp_out == NULL or self.ev == NULL
                or self.ev_data == NULL or self.ev_data_len == NULL):
            raise MemoryError("cannot allocate engine tables")
        map_init(&self.addr_map, max_peers)
        map_init(&self.ssrc_map, self.max_ingress)
        map_init(&self.out_map, max_downtracks)
        # Free lists hand out low handles first.
        for i in range(max_peers):
            self.free_peers[i] = max_peers - 1 - i
        self.n_free_peers = max_peers
        for i in range(max_sources):
            self.free_sources[i] = max_sources - 1 - i
        self.n_free_sources = max_sources
        for i in range(self.max_ingress):
            self.free_ingress[i] = self.max_ingress - 1 - i
        self.n_free_ingress = self.max_ingress
        for i in range(max_downtracks):
            self.free_dts[i] = max_downtracks - 1 - i
        self.n_free_dts = max_downtracks
        for i in range(pool_slots):
            self.free_slots[i] = pool_slots - 1 - i
        self.n_free_slots = pool_slots
        for i in range(16):
            self.fds[i] = -1
        self.tx_tid = -1
        self.counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self.source_stats = np.zeros((max_sources, N_SRC_FIELDS), dtype=np.int64)
        self.downtrack_stats = np.zeros((max_downtracks, N_DT_FIELDS), dtype=np.int64)
        self.peer_stats = np.zeros((max_peers, N_PEER_FIELDS), dtype=np.int64)
        self.c = <int64_t*>cnp.PyArray_DATA(self.counters)
        self.ss = <int64_t*>cnp.PyArray_DATA(self.source_stats)
        self.ds = <int64_t*>cnp.PyArray_DATA(self.downtrack_stats)
        self.ps = <int64_t*>cnp.PyArray_DATA(self.peer_stats)
        self.next_rtcp = 0.0

    def __dealloc__(self):
        cdef int i
        if self.sources != NULL:
            for i in range(self.max_sources):
                free(self.sources[i].dts)
        if self.ingress != NULL:
            for i in range(self.max_ingress):
                eng_hist_free(self, &self.ingress[i])
        if self.dts != NULL:
            for i in range(self.max_downtracks):
                free(self.dts[i].om)
                free(self.dts[i].om_in)
        if self.peers != NULL:
            for i in range(self.max_peers):
                if self.peers[i].bwe != NULL:
                    bwe_free(self.peers[i].bwe)
                    free(self.peers[i].bwe)
                eng_quic_clear(self, &self.peers[i])
        free(self.quic_out)
        free(self.deferred); free(self.nack_list); free(self.rs_scratch); free(self.rs_parity)
        free(self.rs_prefix); free(self.ulp_scratch)
        map_free(&self.addr_map)
        map_free(&self.ssrc_map)
        map_free(&self.out_map)
        free(self.peers); free(self.sources); free(self.ingress); free(self.dts)
        free(self.free_peers); free(self.free_sources); free(self.free_ingress)
        free(self.free_dts); free(self.pool); free(self.refcnt); free(self.free_slots)
        free(self.rx_hdrs); free(self.rx_iov); free(self.rx_addr); free(self.rx_slot)
        free(self.tx_hdrs); free(self.tx_iov); free(self.tx_fixed); free(self.tx_pid)
        free(self.rtcp_out); free(self.ev); free(self.ev_data); free(self.ev_data_len)

    # ---- validation helpers -------------------------------------------------------
    cdef Peer *_peer(self, int pid) except NULL:
        if pid < 0 or pid >= self.max_peers or not self.peers[pid].alive:
            raise ValueError(f"no such peer handle {pid}")
        return &self.peers[pid]

    cdef Source *_source(self, int sid) except NULL:
        if sid < 0 or sid >= self.max_sources or not self.sources[sid].alive:
            raise ValueError(f"no such source handle {sid}")
        return &self.sources[sid]

    cdef Downtrack *_downtrack(self, int did) except NULL:
        if did < 0 or did >= self.max_downtracks or not self.dts[did].alive:
            raise ValueError(f"no such downtrack handle {did}")
        return &self.dts[did]

    cdef uint32_t _rand32(self) noexcept nogil:
        # xorshift64*: deterministic per seed, good enough for start offsets.
        self.rng ^= self.rng >> 12
        self.rng ^= self.rng << 25
        self.rng ^= self.rng >> 27
        return <uint32_t>((self.rng * <uint64_t>0x2545F4914F6CDD1D) >> 32)

    # ---- configure ----------------------------------------------------------------
    def add_udp(self, int fd):
        cdef int tid
        if fd < 0:
            raise ValueError("fd must be a non-negative file descriptor")
        for tid in range(16):
            if self.fds[tid] < 0:
                self.fds[tid] = fd
                return tid
        raise ValueError("too many transports (max 16)")

    def remove_transport(self, int tid):
        cdef int pid
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        eng_flush(self)
        for pid in range(self.max_peers):
            if self.peers[pid].alive and self.peers[pid].tid == tid:
                self.remove_peer(pid)
        self.fds[tid] = -1

    def set_wallclock_offset(self, double offset):
        self.wallclock_offset = offset

    def add_peer(self, int tid):
        cdef int pid
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        if self.n_free_peers == 0:
            raise ValueError("peer table full")
        self.n_free_peers -= 1
        pid = self.free_peers[self.n_free_peers]
        memset(&self.peers[pid], 0, sizeof(Peer))
        self.peers[pid].alive = 1
        self.peers[pid].tid = tid
        self.peers[pid].first_dt = -1
        self.peers[pid].data_last = -1.0
        memset(self.ps + pid * N_PEER_FIELDS, 0, N_PEER_FIELDS * sizeof(int64_t))
        return pid

    def bind_peer(self, int pid, str host, int port):
        cdef Peer *p = self._peer(pid)
        cdef sockaddr_in a
        cdef uint64_t key
        cdef int32_t other
        parse_ipv4(host, port, &a)
        key = addr_key(&a)
        other = map_get(&self.addr_map, key)
        if other >= 0 and other != pid:
            raise ValueError(f"address {host}:{port} is bound to another peer")
        if p.bound and p.key == key:
            return False
        moved = bool(p.bound)
        if p.bound:
            map_del(&self.addr_map, p.key)
            self.ps[pid * N_PEER_FIELDS + P_MOVES] += 1
        p.addr = a
        p.key = key
        p.bound = 1
        map_put(&self.addr_map, key, pid)
        return moved

    def unbind_peer(self, int pid):
        cdef Peer *p = self._peer(pid)
        if p.bound:
            map_del(&self.addr_map, p.key)
            p.bound = 0

    def remove_peer(self, int pid):
        cdef Peer *p = self._peer(pid)
        cdef int i
        while p.nsources > 0:   # publishers are few; viewers skip this scan
            for i in range(self.max_sources):
                if self.sources[i].alive and self.sources[i].pid == pid:
                    self.remove_source(i)
                    break
        while p.first_dt >= 0:
            self.remove_downtrack(p.first_dt)
        if p.bound:
            map_del(&self.addr_map, p.key)
        eng_flush(self)   # queued messages may point at this peer's address
        eng_quic_clear(self, p)
        if p.bwe != NULL:
            bwe_free(p.bwe)
            free(p.bwe)
            p.bwe = NULL
        p.probe_until = 0
        p.alive = 0
        p.bound = 0
        self.free_peers[self.n_free_peers] = pid
        self.n_free_peers += 1

    def add_source(self, int pid, int kind, int clock_rate):
        cdef int sid
        cdef Source *s
        self._peer(pid)
        if kind != KIND_AUDIO_ and kind != KIND_VIDEO_:
            raise ValueError("kind must be KIND_AUDIO or KIND_VIDEO")
        if not 1000 <= clock_rate <= 1000000:
            raise ValueError("clock_rate must be 1000..1000000 Hz")
        if self.n_free_sources == 0:
            raise ValueError("source table full")
        self.n_free_sources -= 1
        sid = self.free_sources[self.n_free_sources]
        s = &self.sources[sid]
        free(s.dts)
        memset(s, 0, sizeof(Source))
        s.alive = 1
        s.pid = pid
        s.kind = kind
        s.clock_rate = clock_rate
        s.last_pli = -1e18
        s.nack = 1
        self.peers[pid].nsources += 1
        memset(self.ss + sid * N_SRC_FIELDS, 0, N_SRC_FIELDS * sizeof(int64_t))
        return sid

    def add_ingress(self, int sid, unsigned int ssrc, int payload_type, unsigned int rtx_ssrc=0,
                    int layer=0, int rtx_payload_type=-1, unsigned int fec_ssrc=0,
                    int fec_payload_type=-1, int ulpfec_payload_type=-1):
        """One SSRC (a simulcast layer) of a source, with its optional RTX and SFU-RS FEC streams."""
        cdef Source *s = self._source(sid)
        cdef int need = 1 + (1 if rtx_ssrc else 0) + (1 if fec_ssrc else 0)
        cdef int iid, rid, i
        cdef uint32_t x
        if not 0 <= payload_type <= 127:
            raise ValueError("payload_type must be 0..127")
        if not -1 <= rtx_payload_type <= 127 or not -1 <= fec_payload_type <= 127:
            raise ValueError("rtx_payload_type/fec_payload_type must be 0..127 (or -1 = any)")
        if not -1 <= ulpfec_payload_type <= 127 or ulpfec_payload_type == payload_type:
            raise ValueError("ulpfec_payload_type must be 0..127 and differ from payload_type "
                             "(or -1 = none)")
        if not 0 <= layer <= 7:
            raise ValueError("layer must be 0..7")
        if ssrc == 0 or ssrc == rtx_ssrc or ssrc == fec_ssrc or (rtx_ssrc and rtx_ssrc == fec_ssrc):
            raise ValueError("ssrc must be non-zero and differ from rtx_ssrc and fec_ssrc")
        for x in (ssrc, rtx_ssrc, fec_ssrc):
            if x and (map_get(&self.ssrc_map, x) >= 0 or map_get(&self.out_map, x) >= 0):
                raise ValueError(f"SSRC {x} is already in use on this node")
        if s.ningress + need > MAX_INGRESS:
            raise ValueError(f"at most {MAX_INGRESS} SSRCs per source")
        for i in range(s.ningress):
            if (self.ingress[s.ingress[i]].role == ROLE_MEDIA
                    and self.ingress[s.ingress[i]].layer == layer):
                raise ValueError(f"layer {layer} already has an SSRC")
        iid = eng_new_ingress(self, sid, ssrc, payload_type, ROLE_MEDIA, layer)
        if layer > 0:
            s.switchable = 1
        if ulpfec_payload_type >= 0:
            self.ingress[iid].ulp_in_pt = ulpfec_payload_type
        if s.kind == KIND_VIDEO_:
            eng_hist_alloc(self, &self.ingress[iid], 2048, self.history_video)
        else:
            eng_hist_alloc(self, &self.ingress[iid], 256, self.history_audio)
        if rtx_ssrc:
            rid = eng_new_ingress(self, sid, rtx_ssrc,
                                  ANY_PT if rtx_payload_type < 0 else rtx_payload_type,
                                  ROLE_RTX, layer)
            self.ingress[rid].media = iid
        if fec_ssrc:
            rid = eng_new_ingress(self, sid, fec_ssrc,
                                  ANY_PT if fec_payload_type < 0 else fec_payload_type,
                                  ROLE_FEC, layer)
            self.ingress[rid].media = iid
            self.ingress[iid].fec_iid = rid
            eng_hist_alloc(self, &self.ingress[rid], 256, self.history_video)

    def set_source_recovery(self, int sid, bint nack=True, int fec_k=0):
        """Uplink NACKs on/off for this source, and the SFU-RS block length for its viewers."""
        cdef Source *s = self._source(sid)
        cdef int i
        if not 0 <= fec_k <= RS_MAX_K:
            raise ValueError(f"fec_k must be 0..{RS_MAX_K}")
        s.nack = nack
        s.fec_k = fec_k
        for i in range(s.ndts):
            if self.dts[s.dts[i]].fec_m:
                self.ds[s.dts[i] * N_DT_FIELDS + D_FEC_K] = fec_k

    def set_downtrack_recovery(self, int did, bint nack=True, unsigned int rtx_ssrc=0,
                               int rtx_payload_type=0, unsigned int fec_ssrc=0,
                               int fec_payload_type=0, int fec_m=0, int ulpfec_k=0,
                               int ulpfec_payload_type=116):
        """How this viewer is repaired: NACK answers (RTX on rtx_ssrc, else plain resends),
        SFU-RS parity rows per block (fec_m, 0 = none) on fec_ssrc, and in-band ULPFEC
        (one XOR packet per ulpfec_k media packets in the media stream, for third-party
        receivers; fixed from the first packet on)."""
        cdef Downtrack *t = self._downtrack(did)
        cdef uint32_t x
        if not 0 <= ulpfec_k <= ULP_MAX_K or not 0 <= ulpfec_payload_type <= 127:
            raise ValueError(f"ulpfec_k must be 0..{ULP_MAX_K} and ulpfec_payload_type 0..127")
        if ulpfec_k != t.ulp_k and t.started:
            raise ValueError("ulpfec_k can only change before the viewer's first packet "
                             "(it shapes the viewer's sequence numbers)")
        if not 0 <= rtx_payload_type <= 127 or not 0 <= fec_payload_type <= 127:
            raise ValueError("payload types must be 0..127")
        if not 0 <= fec_m <= RS_MAX_M:
            raise ValueError(f"fec_m must be 0..{RS_MAX_M}")
        if fec_m and not fec_ssrc:
            raise ValueError("fec_m > 0 needs a fec_ssrc")
        for x in (rtx_ssrc, fec_ssrc):
            if x and (x == t.out_ssrc or map_get(&self.ssrc_map, x) >= 0
                      or map_get(&self.out_map, x) >= 0):
                raise ValueError(f"SSRC {x} is already in use on this node")
        if rtx_ssrc and rtx_ssrc == fec_ssrc:
            raise ValueError("rtx_ssrc and fec_ssrc must differ")
        if ulpfec_k and self.peers[t.pid].tw_id:
            raise ValueError("in-band ULPFEC cannot go to a participant with transport-wide "
                             "seq stamping (the extension changes the bytes it protects)")
        if ulpfec_k and t.mode == DT_SWITCHED:
            # ULPFEC protects the viewer's seq space as one run: such a viewer keeps the
            # layer it starts on, every temporal layer, constant deltas.
            t.mode = DT_PINNED
            free(t.om)
            free(t.om_in)
            t.om = NULL
            t.om_in = NULL
        t.nack = nack
        if rtx_ssrc != t.rtx_ssrc:
            t.rtx_seq = <uint16_t>self._rand32()
        t.rtx_ssrc = rtx_ssrc
        t.rtx_pt = rtx_payload_type
        if fec_ssrc != t.fec_ssrc:
            t.fec_seq = <uint16_t>self._rand32()
        t.fec_ssrc = fec_ssrc
        t.fec_pt = fec_payload_type
        t.fec_m = fec_m
        t.ulp_k = ulpfec_k
        t.ulp_pt = ulpfec_payload_type
        self.ds[did * N_DT_FIELDS + D_FEC_M] = fec_m
        self.ds[did * N_DT_FIELDS + D_FEC_K] = self.sources[t.sid].fec_k if fec_m else 0
        eng_update_blk_m(self, t.sid)

    def set_source_media(self, int sid, str codec="other", int temporal_layers=1,
                         int layers=1, bint gop_cache=True):
        """Codec (keyframe/temporal probes), declared temporal and spatial layer counts
        (more than one of either makes its viewers switch layers; set before the first
        downtrack), and whether new viewers start from the latest held keyframe."""
        cdef Source *s = self._source(sid)
        cdef int c = CODECS.get(codec.lower(), -1)
        if c < 0:
            raise ValueError(f"codec must be one of {sorted(CODECS)}")
        if not 1 <= temporal_layers <= 4 or not 1 <= layers <= 8:
            raise ValueError("temporal_layers must be 1..4 and layers 1..8")
        if s.ndts and bool(s.switchable) != (temporal_layers > 1 or layers > 1):
            raise ValueError("layer counts are fixed once the source has downtracks")
        s.codec = c
        s.nlayers = layers
        s.switchable = 1 if (temporal_layers > 1 or layers > 1) and s.kind == KIND_VIDEO_ else 0
        s.gop_cache = gop_cache

    def set_peer_transport_cc(self, int pid, int twcc_ext_id=0, int rid_ext_id=0,
                              double start_bps=1e6, double min_bps=5e4, double max_bps=5e7):
        """Stamp a transport-wide seq (one-byte extension twcc_ext_id, 0 = off) on every
        packet to this participant and estimate its downlink from its feedback; learn
        its simulcast SSRCs from the RtpStreamId extension rid_ext_id (0 = off)."""
        cdef Peer *p = self._peer(pid)
        cdef int32_t did
        if not 0 <= twcc_ext_id <= 14 or not 0 <= rid_ext_id <= 14:
            raise ValueError("extension ids must be 1..14 (0 = off)")
        if twcc_ext_id and twcc_ext_id == rid_ext_id:
            raise ValueError("twcc_ext_id and rid_ext_id must differ")
        if not 0 < min_bps <= start_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= start_bps <= max_bps")
        did = p.first_dt
        while twcc_ext_id and did >= 0:
            if self.dts[did].ulp_k:
                raise ValueError("the participant receives in-band ULPFEC, which cannot be "
                                 "combined with transport-wide seq stamping")
            did = self.dts[did].peer_next
        p.rid_id = rid_ext_id
        p.tw_id = twcc_ext_id
        if twcc_ext_id and p.bwe == NULL:
            p.bwe = <Bwe*>calloc(1, sizeof(Bwe))
            if p.bwe == NULL or bwe_alloc(p.bwe, start_bps, min_bps, max_bps) < 0:
                free(p.bwe)
                p.bwe = NULL
                raise MemoryError("cannot allocate the bandwidth estimator")
            p.bwe_reported = start_bps
            self.ps[pid * N_PEER_FIELDS + P_BWE_BPS] = <int64_t>start_bps

    def set_downtrack_layer(self, int did, int layer, int temporal, double now):
        """Which spatial layer (0 = lowest, -1 = pause) and temporal layers (0..3, 3 = all)
        this viewer should get. A spatial switch waits for a keyframe of the new layer
        (one coalesced PLI asks for it); a temporal one happens at the next frame boundary
        where the decoder can follow. A viewer not started yet starts from the GOP cache.
        Returns True if a keyframe is awaited."""
        cdef Downtrack *t = self._downtrack(did)
        cdef Source *s = &self.sources[t.sid]
        cdef int32_t iid
        if not -1 <= layer <= 7 or not 0 <= temporal <= 3:
            raise ValueError("layer must be -1..7 and temporal 0..3")
        if s.nlayers and layer >= s.nlayers:
            raise ValueError(f"layer {layer} is not declared (the source has {s.nlayers})")
        t.tgt_tid = temporal
        self.ds[did * N_DT_FIELDS + D_TARGET_TEMPORAL] = temporal
        self.ds[did * N_DT_FIELDS + D_TARGET_LAYER] = layer
        if t.mode == DT_PINNED:
            if not t.started and layer >= 0:
                t.tgt_layer = layer
                if s.kind == KIND_VIDEO_:
                    eng_dt_replay_gop(self, did, now)
            return False
        t.tgt_layer = layer
        if layer < 0 or layer == t.cur_layer:
            return False
        self.ds[did * N_DT_FIELDS + D_SWITCH_REQ_US] = <int64_t>(now * 1e6)
        if t.cur_layer < 0 and t.out_top < 0:
            eng_dt_replay_gop(self, did, now)
        else:
            iid = eng_layer_iid(self, s, layer)
            if iid >= 0:
                eng_layer_pli(self, &self.ingress[iid], now)
                eng_flush(self)
        return t.cur_layer != layer

    def probe(self, int pid, double bps, double duration, double now):
        """Send padding at bps for duration seconds on one of the participant's RTX SSRCs
        so its estimator can see whether the link carries more. False if it cannot."""
        cdef Peer *p = self._peer(pid)
        if not (1e4 <= bps <= 1e9 and 0 < duration <= 2):
            raise ValueError("probe needs 1e4 <= bps <= 1e9 and 0 < duration <= 2 s")
        if p.bwe == NULL or not p.bound or eng_probe_downtrack(self, p) < 0:
            return False
        p.probe_bps = bps
        p.probe_until = now + duration
        p.probe_next = now
        p.probe_cluster = bwe_probe_new(p.bwe, now)
        self.n_probing += 1
        self.next_probe = now
        return True

    def bwe(self, int pid):
        """The participant's downlink estimate (None without transport-wide feedback)."""
        cdef Peer *p = self._peer(pid)
        if p.bwe == NULL:
            return None
        return {"estimate_bps": bwe_estimate(p.bwe), "acked_bps": bwe_acked_bps(p.bwe),
                "loss": bwe_loss(p.bwe), "delay_state": bwe_state(p.bwe), "probes": bwe_probes(p.bwe),
                "probe_bps": bwe_probe_bps(p.bwe),
                "feedbacks": self.ps[pid * N_PEER_FIELDS + P_TWCC_FB],
                "probe_packets": self.ps[pid * N_PEER_FIELDS + P_PROBE_PACKETS]}

    def layer_bytes(self, int sid):
        """Per media layer: (layer, ssrc, bytes per VP8 temporal layer 0..3, seconds since
        its last keyframe or -1), for rate measurement by the allocator."""
        cdef Source *s = self._source(sid)
        cdef Ingress *g
        cdef int i
        out = []
        for i in range(s.ningress):
            g = &self.ingress[s.ingress[i]]
            if g.role == ROLE_MEDIA:
                out.append((g.layer, g.ssrc, [g.tid_bytes[0], g.tid_bytes[1], g.tid_bytes[2],
                                              g.tid_bytes[3]], g.key_time))
        return out

    def remove_source(self, int sid):
        cdef Source *s = self._source(sid)
        cdef int i, iid, j
        while s.ndts > 0:
            self.remove_downtrack(s.dts[s.ndts - 1])
        eng_flush(self)
        for i in range(s.ningress):
            iid = s.ingress[i]
            eng_hist_free(self, &self.ingress[iid])
            for j in range(self.n_nack_list):
                if self.nack_list[j] == iid:
                    self.n_nack_list -= 1
                    self.nack_list[j] = self.nack_list[self.n_nack_list]
                    break
            map_del(&self.ssrc_map, self.ingress[iid].ssrc)
            self.ingress[iid].alive = 0
            self.free_ingress[self.n_free_ingress] = iid
            self.n_free_ingress += 1
        eng_flush(self)     # runs the history's deferred releases
        s.ningress = 0
        s.alive = 0
        self.peers[s.pid].nsources -= 1
        free(s.dts)
        s.dts = NULL
        s.cap = 0
        self.free_sources[self.n_free_sources] = sid
        self.n_free_sources += 1

    def add_downtrack(self, int sid, int pid, unsigned int out_ssrc, int out_pt):
        cdef Source *s = self._source(sid)
        cdef Downtrack *d
        cdef int did
        cdef int32_t *grown
        cdef int i
        self._peer(pid)
        if not 0 <= out_pt <= 127:
            raise ValueError("out_pt must be 0..127")
        if out_ssrc == 0 or map_get(&self.out_map, out_ssrc) >= 0 or map_get(&self.ssrc_map, out_ssrc) >= 0:
            raise ValueError(f"out_ssrc {out_ssrc} is zero or already in use on this node")
        if self.n_free_dts == 0:
            raise ValueError("downtrack table full")
        if s.ndts == s.cap:
            grown = <int32_t*>realloc(s.dts, (s.cap * 2 + 8) * sizeof(int32_t))
            if grown == NULL:
                raise MemoryError()
            s.dts = grown
            s.cap = s.cap * 2 + 8
        self.n_free_dts -= 1
        did = self.free_dts[self.n_free_dts]
        d = &self.dts[did]
        memset(d, 0, sizeof(Downtrack))
        d.alive = 1
        d.sid = sid
        d.pid = pid
        d.out_ssrc = out_ssrc
        d.out_pt = out_pt
        d.nack = 1
        d.iid = -1
        d.cur_layer = -1
        d.tgt_layer = -1
        d.prev_layer = -1
        d.cur_tid = 3
        d.tgt_tid = 3
        d.out_top = -1
        d.last_pic = -1
        d.last_tl0 = -1
        d.drop_pic = -1
        d.paused_layer = -1
        if s.switchable:
            d.om = <OutEntry*>calloc(OM_VIDEO, sizeof(OutEntry))
            d.om_in = <int64_t*>malloc(OM_VIDEO * sizeof(int64_t))
            if d.om == NULL or d.om_in == NULL:
                free(d.om)
                free(d.om_in)
                d.om = NULL
                d.om_in = NULL
                raise MemoryError()
            for i in range(OM_VIDEO):
                d.om_in[i] = -1
            d.mode = DT_SWITCHED     # nothing flows until set_downtrack_layer
        s.dts[s.ndts] = did
        s.ndts += 1
        d.peer_prev = -1
        d.peer_next = self.peers[pid].first_dt
        if d.peer_next >= 0:
            self.dts[d.peer_next].peer_prev = did
        self.peers[pid].first_dt = did
        map_put(&self.out_map, out_ssrc, did)
        memset(self.ds + did * N_DT_FIELDS, 0, N_DT_FIELDS * sizeof(int64_t))
        self.ss[sid * N_SRC_FIELDS + S_DOWNTRACKS] = s.ndts
        return did

    def remove_downtrack(self, int did):
        cdef Downtrack *d = self._downtrack(did)
        cdef Source *s = &self.sources[d.sid]
        cdef int i
        for i in range(s.ndts):
            if s.dts[i] == did:
                s.dts[i] = s.dts[s.ndts - 1]
                s.ndts -= 1
                break
        self.ss[d.sid * N_SRC_FIELDS + S_DOWNTRACKS] = s.ndts
        if d.peer_prev >= 0:
            self.dts[d.peer_prev].peer_next = d.peer_next
        else:
            self.peers[d.pid].first_dt = d.peer_next
        if d.peer_next >= 0:
            self.dts[d.peer_next].peer_prev = d.peer_prev
        map_del(&self.out_map, d.out_ssrc)
        free(d.om)
        free(d.om_in)
        d.om = NULL
        d.om_in = NULL
        d.alive = 0
        d.fec_m = 0
        eng_update_blk_m(self, d.sid)
        self.free_dts[self.n_free_dts] = did
        self.n_free_dts += 1

    # ---- QUIC egress (issue 6): implemented in engine_quic.pxi ----------------------
    def set_peer_transport(self, int pid, int tid):
        """Send pid's egress through transport tid from now on (a participant that joined
        on the UDP port and connects over QUIC)."""
        cdef Peer *p = self._peer(pid)
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        eng_flush(self)   # queued messages were grouped by the old transport
        p.tid = tid

    def set_peer_quic(self, int pid, *, key, iv, hp, dcid, prefix, next_pn, int key_phase=0,
                      int max_packet=1200):
        """Seal all egress to pid as QUIC 1-RTT packets (one DATAGRAM frame each)."""
        eng_set_peer_quic(self, pid, key, iv, hp, dcid, prefix, next_pn, key_phase, max_packet)

    def clear_peer_quic(self, int pid):
        self._peer(pid)
        eng_flush(self)
        eng_quic_clear(self, &self.peers[pid])

    def quic_next_pn(self, int pid):
        return eng_quic_of(self, pid).next_pn

    def set_quic_next_pn(self, int pid, pn):
        eng_set_quic_next_pn(self, pid, pn)

    def quic_max_payload(self, int pid):
        return eng_quic_max_payload(self, pid)

    def live(self):
        return {
            "peers": self.max_peers - self.n_free_peers,
            "bound_addresses": self.addr_map.count,
            "sources": self.max_sources - self.n_free_sources,
            "ssrcs": self.max_ingress - self.n_free_ingress,
            "downtracks": self.max_downtracks - self.n_free_dts,
            "slots_in_use": self.pool_slots - self.n_free_slots,
            "pending_events": self.ev_count,
        }

    # ---- data path ----------------------------------------------------------------
    def on_readable(self, int tid, double now):
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            return 0
        cdef Py_ssize_t got
        with nogil:
            got = eng_on_readable(self, tid, now)
        return got

    def ingest(self, int tid, const uint8_t[::1] data not None, str host, int port, double now):
        cdef sockaddr_in a
        cdef int32_t slot
        cdef Py_ssize_t n = data.shape[0]
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        parse_ipv4(host, port, &a)
        self.c[C_RX_DATAGRAMS] += 1
        self.c[C_RX_BYTES] += n
        if n > SLOT_SIZE or self.n_free_slots == 0:
            self.c[C_DROP_NO_SLOT if n <= SLOT_SIZE else C_DROP_MALFORMED] += 1
            return
        self.n_free_slots -= 1
        slot = self.free_slots[self.n_free_slots]
        self.refcnt[slot] = 1
        if n:
            memcpy(self.pool + <size_t>slot * SLOT_SIZE, &data[0], n)
        with nogil:
            eng_process(self, tid, slot, n, &a, now)
            if now >= self.next_nack:
                self.next_nack = eng_nack_sweep(self, now)
            eng_flush(self)
            eng_release(self, slot)

    def on_tick(self, double now):
        """Timers: RTCP reports, NACK retries, history expiry. Returns the next deadline."""
        if now >= self.next_rtcp:
            eng_send_reports(self, now)
            eng_flush(self)
            self.next_rtcp = now + self.rtcp_interval
        if now >= self.next_nack:
            self.next_nack = eng_nack_sweep(self, now)
            eng_flush(self)
        if now >= self.next_expire:
            eng_hist_expire(self, now)
            eng_flush(self)
            self.next_expire = now + 0.1
        if now >= self.next_probe:
            self.next_probe = eng_probe_step(self, now)
        return min(self.next_rtcp, self.next_nack, self.next_expire, self.next_probe)

    def send_to(self, int tid, const uint8_t[::1] data not None, str host, int port):
        cdef sockaddr_in a
        cdef ssize_t r
        if tid < 0 or tid >= 16 or self.fds[tid] < 0:
            raise ValueError(f"no such transport {tid}")
        parse_ipv4(host, port, &a)
        eng_flush(self)
        r = sendto(self.fds[tid], &data[0] if data.shape[0] else NULL, data.shape[0],
                   MSG_DONTWAIT, &a, sizeof(sockaddr_in))
        if r < 0:
            self.c[C_DROP_SEND_EAGAIN if errno == EAGAIN else C_DROP_SEND_ERROR] += 1
            return False
        self.c[C_TX_DATAGRAMS] += 1
        self.c[C_TX_BYTES] += r
        return True

    def request_keyframe(self, int sid, double now):
        self._source(sid)
        r = eng_request_keyframe(self, sid, now, -1)
        eng_flush(self)
        return bool(r)

    # ---- co-streaming (issue 5) ------------------
    def set_data_limits(self, double rate, double burst):
        """Per-participant token bucket for SFUD data packets: rate per second, burst."""
        cdef int pid
        if not (0 < rate <= 1e6 and 1 <= burst <= 1e7):
            raise ValueError("data rate must be in (0, 1e6] per second and burst in [1, 1e7]")
        self.data_rate = rate
        self.data_burst = burst
        for pid in range(self.max_peers):
            if self.peers[pid].alive and self.peers[pid].data_tokens > burst:
                self.peers[pid].data_tokens = burst

    def send_datagram(self, pids, const uint8_t[::1] data not None):
        """The same datagram to every bound peer in pids, through the egress batch."""
        cdef Py_ssize_t n = data.shape[0], i
        cdef const int64_t[::1] ids
        cdef int64_t pid
        cdef uint8_t *out
        cdef int sent = 0
        if not 1 <= n <= 1500:
            raise ValueError("a datagram must be 1..1500 bytes")
        try:
            arr = np.ascontiguousarray(pids, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError("pids must be a sequence of ints") from exc
        if arr.ndim != 1:
            raise ValueError("pids must be one-dimensional")
        ids = arr
        for i in range(ids.shape[0]):
            pid = ids[i]
            if pid < 0 or pid >= self.max_peers or not self.peers[pid].alive:
                continue
            out = eng_aux_reserve(self, <int32_t>pid, n)
            if out == NULL:
                continue        # not bound
            memcpy(out, &data[0], n)
            sent += 1
        eng_flush(self)
        self.c[C_DATA_OUT] += sent
        return sent

    def set_source_audio_level(self, int sid, int ext_id):
        """Accumulate the RFC 6464 audio level (extension ext_id, 0 = off) of sid's packets."""
        cdef Source *s = self._source(sid)
        if not 0 <= ext_id <= 14:
            raise ValueError("ext_id must be 1..14 (0 = off)")
        s.al_id = ext_id
        s.al_count = 0
        s.al_sum = 0
        s.al_voiced = 0

    def audio_levels(self):
        """(sid, count, level_sum, voiced) per source with levels since the last call;
        resets them."""
        cdef list out = []
        cdef int sid
        cdef Source *s
        for sid in range(self.max_sources):
            s = &self.sources[sid]
            if s.alive and s.al_count:
                out.append((sid, s.al_count, s.al_sum, s.al_voiced))
                s.al_count = 0
                s.al_sum = 0
                s.al_voiced = 0
        return out

    def set_source_muted(self, int sid, bint muted, double now=0.0):
        """Server-side mute: nothing of sid received while muted reaches any viewer; at
        unmute the viewers' seqs continue and (video) a keyframe is requested upstream.
        now: the caller's clock, for PLI coalescing."""
        self._source(sid)
        eng_set_muted(self, sid, muted, now)

    def source_clock(self, int sid):
        """Per started media layer: (layer, RTP timestamp of its newest packet, arrival
        time of that packet, last SR NTP timestamp (64-bit), last SR RTP timestamp)."""
        cdef Source *s = self._source(sid)
        cdef Ingress *g
        cdef int i
        out = []
        for i in range(s.ningress):
            g = &self.ingress[s.ingress[i]]
            if g.role == ROLE_MEDIA and g.started:
                out.append((g.layer, g.last_ts, g.last_arrival, g.sr_ntp, g.sr_rtp))
        return out

    @property
    def pending_events(self):
        return self.ev_count

    def drain_events(self):
        cdef list out = []
        cdef int64_t *e
        cdef int32_t k
        while self.ev_count > 0:
            e = self.ev + 5 * self.ev_head
            k = <int32_t>e[0]
            if k == EV_DATA_:
                out.append((EV_DATA, e[1], e[2],
                            (<char*>self.ev_data + EVENT_DATA_SIZE * e[4])[:self.ev_data_len[e[4]]]))
                self.ev_data_head = (self.ev_data_head + 1) % EVENT_DATA_SLOTS
                self.ev_data_count -= 1
            elif k == EV_STUN_:
                out.append((EV_STUN, e[1], format_ipv4(<uint32_t>e[2]), e[3],
                            (<char*>self.ev_data + EVENT_DATA_SIZE * e[4])[:self.ev_data_len[e[4]]]))
                self.ev_data_head = (self.ev_data_head + 1) % EVENT_DATA_SLOTS
                self.ev_data_count -= 1
            else:
                out.append((k, e[1], e[2], e[3]))
            self.ev_head = (self.ev_head + 1) % self.event_ring
            self.ev_count -= 1
        if self.ev_overflow:
            out.append((EV_OVERFLOW, self.ev_overflow, 0, 0))
            self.ev_overflow = 0
        return out

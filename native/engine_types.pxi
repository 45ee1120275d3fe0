# Native state of the engine. Structs hold no Python objects; handles index arrays.

cdef enum:
    KIND_AUDIO_ = 0
    KIND_VIDEO_ = 1

KIND_AUDIO = 0
KIND_VIDEO = 1

cdef enum:
    EV_STUN_ = 1
    EV_PLI_ = 2
    EV_BYE_ = 3
    EV_RR_ = 4
    EV_OVERFLOW_ = 5
    EV_LAYER_ = 6
    EV_BWE_ = 7
    EV_RID_ = 8
    EV_DATA_ = 9

EV_STUN = 1
EV_PLI = 2
EV_BYE = 3
EV_RR = 4
EV_OVERFLOW = 5
EV_LAYER = 6
EV_BWE = 7
EV_RID = 8
EV_DATA = 9

cdef enum:
    DT_PINNED = 0            # constant-delta rewrite: one layer, every packet (and ULPFEC viewers)
    DT_SWITCHED = 1          # simulcast/temporal: one layer at a time, seq map in a ring
    OM_FREE = 0
    OM_SENT = 1
    OM_RESERVED = 2          # a hole in the layer's seqs: its viewer seq is kept for the repair
    OM_PADDED = 3            # the repair arrived but the viewer must not get it: padding instead
    OM_VIDEO = 1024          # ring entries (viewer seqs remembered) per switched downtrack
    PAD_BYTES = 240          # padding per probe packet (RTP padding count is one byte)

# Global counters. Every received datagram ends in exactly one of rx_rtp, rx_rtcp,
# rx_stun or an ingress drop_* reason (accounting invariant checked by tests).
COUNTER_NAMES = (
    "rx_datagrams", "rx_bytes", "rx_rtp", "rx_rtcp", "rx_stun",
    "tx_datagrams", "tx_bytes", "forwarded", "rtcp_sent",
    "pli_sent", "pli_coalesced", "pli_in", "fir_in", "nack_in", "remb_in", "twcc_in",
    "sr_in", "rr_in", "bye_in", "rtcp_unknown", "rtcp_foreign_ssrc",
    "drop_malformed", "drop_unbound", "drop_not_rtp", "drop_unknown_ssrc",
    "drop_ssrc_not_owned", "drop_payload_type", "drop_no_slot",
    "drop_send_eagain", "drop_send_error", "drop_event_overflow",
    "recv_batches", "recv_errors", "drop_event_queue", "recv_no_slot", "drop_stun_rate",
    "drop_duplicate", "rtx_in", "fec_in", "nack_sent", "rtx_sent", "resend_sent", "resend_miss",
    "fec_sent", "recovered_rtx", "recovered_fec", "unrecovered", "hist_evicted",
    "layer_switches", "keyframes_in", "twcc_stamped", "twcc_unstamped", "twcc_fb_malformed",
    "padding_sent", "gop_sent", "rid_reported", "rtx_throttled",
    "data_in", "data_rate_limited", "data_malformed", "data_out", "muted_drops",
    "data_queue_full",
    "quic_sealed", "quic_too_big", "quic_seal_errors",
)

cdef enum:
    C_RX_DATAGRAMS = 0
    C_RX_BYTES
    C_RX_RTP
    C_RX_RTCP
    C_RX_STUN
    C_TX_DATAGRAMS
    C_TX_BYTES
    C_FORWARDED
    C_RTCP_SENT
    C_PLI_SENT
    C_PLI_COALESCED
    C_PLI_IN
    C_FIR_IN
    C_NACK_IN
    C_REMB_IN
    C_TWCC_IN
    C_SR_IN
    C_RR_IN
    C_BYE_IN
    C_RTCP_UNKNOWN
    C_RTCP_FOREIGN_SSRC
    C_DROP_MALFORMED
    C_DROP_UNBOUND
    C_DROP_NOT_RTP
    C_DROP_UNKNOWN_SSRC
    C_DROP_SSRC_NOT_OWNED
    C_DROP_PAYLOAD_TYPE
    C_DROP_NO_SLOT
    C_DROP_SEND_EAGAIN
    C_DROP_SEND_ERROR
    C_DROP_EVENT_OVERFLOW
    C_RECV_BATCHES
    C_RECV_ERRORS
    C_DROP_EVENT_QUEUE
    C_RECV_NO_SLOT
    C_DROP_STUN_RATE
    C_DROP_DUPLICATE
    C_RTX_IN
    C_FEC_IN
    C_NACK_SENT
    C_RTX_SENT
    C_RESEND_SENT
    C_RESEND_MISS
    C_FEC_SENT
    C_RECOVERED_RTX
    C_RECOVERED_FEC
    C_UNRECOVERED
    C_HIST_EVICTED
    C_LAYER_SWITCHES
    C_KEYFRAMES_IN
    C_TWCC_STAMPED
    C_TWCC_UNSTAMPED
    C_TWCC_FB_MALFORMED
    C_PADDING_SENT
    C_GOP_SENT
    C_RID_REPORTED
    C_RTX_THROTTLED
    C_DATA_IN
    C_DATA_RATE_LIMITED
    C_DATA_MALFORMED
    C_DATA_OUT
    C_MUTED_DROPS
    C_DATA_QUEUE_FULL
    C_QUIC_SEALED
    C_QUIC_TOO_BIG
    C_QUIC_SEAL_ERRORS
    N_COUNTERS

# lost: RFC 3550 cumulative loss on the uplink before recovery; missing: holes seen;
# unrecovered: holes given up on after NACK and FEC (loss after recovery).
SOURCE_FIELDS = ("packets", "bytes", "lost", "jitter", "pli_sent", "pli_coalesced",
                 "downtracks", "highest_seq", "missing", "nack_sent", "recovered_rtx",
                 "recovered_fec", "recovered_late", "unrecovered", "duplicates", "rtt_us",
                 "rtx_in", "fec_in", "muted_drops")
cdef enum:
    S_PACKETS = 0
    S_BYTES
    S_LOST
    S_JITTER
    S_PLI_SENT
    S_PLI_COALESCED
    S_DOWNTRACKS
    S_HIGHEST_SEQ
    S_MISSING
    S_NACK_SENT
    S_RECOVERED_RTX
    S_RECOVERED_FEC
    S_RECOVERED_LATE
    S_UNRECOVERED
    S_DUPLICATES
    S_RTT_US
    S_RTX_IN
    S_FEC_IN
    S_MUTED_DROPS
    N_SRC_FIELDS

DOWNTRACK_FIELDS = ("packets", "bytes", "rr_count", "rr_fraction_lost", "rr_cumulative_lost",
                    "rr_jitter", "rr_highest_seq", "rtt_us", "pli_in", "nack_in", "remb_bps",
                    "sr_sent", "nack_seqs", "nack_runs", "rtx_sent", "rtx_bytes", "resend_miss",
                    "fec_sent", "fec_bytes", "fec_k", "fec_m", "layer", "target_layer",
                    "temporal", "target_temporal", "switches", "dropped_temporal", "padding_sent",
                    "gop_sent", "switch_requested_us")
cdef enum:
    D_PACKETS = 0
    D_BYTES
    D_RR_COUNT
    D_RR_FRACTION
    D_RR_CUM_LOST
    D_RR_JITTER
    D_RR_HIGHEST
    D_RTT_US
    D_PLI_IN
    D_NACK_IN
    D_REMB_BPS
    D_SR_SENT
    D_NACK_SEQS
    D_NACK_RUNS
    D_RTX_SENT
    D_RTX_BYTES
    D_RESEND_MISS
    D_FEC_SENT
    D_FEC_BYTES
    D_FEC_K
    D_FEC_M
    D_LAYER
    D_TARGET_LAYER
    D_TEMPORAL
    D_TARGET_TEMPORAL
    D_SWITCHES
    D_DROPPED_TEMPORAL
    D_PADDING_SENT
    D_GOP_SENT
    D_SWITCH_REQ_US
    N_DT_FIELDS

PEER_FIELDS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drop_ssrc_not_owned",
               "drop_malformed", "moves", "bwe_bps", "acked_bps", "twcc_fb", "probe_packets",
               "bwe_loss_ppm", "bwe_state", "data_in")
cdef enum:
    P_RX_PACKETS = 0
    P_RX_BYTES
    P_TX_PACKETS
    P_TX_BYTES
    P_DROP_NOT_OWNED
    P_DROP_MALFORMED
    P_MOVES
    P_BWE_BPS
    P_ACKED_BPS
    P_TWCC_FB
    P_PROBE_PACKETS
    P_BWE_LOSS_PPM
    P_BWE_STATE
    P_DATA_IN
    N_PEER_FIELDS


cdef struct OutEntry:
    int64_t in_ext
    int64_t out_ext
    uint32_t ts_off
    uint16_t pid_off
    uint8_t tl0_off
    uint8_t ii               # layer
    uint8_t state


cdef struct Peer:
    int32_t tid
    uint8_t alive
    uint8_t bound
    # Transport-wide congestion control toward this participant (engine_layers.pxi); next to
    # the address because every copy sent to it reads them.
    uint8_t tw_id            # one-byte extension id stamped on everything sent to it (0 = off)
    uint8_t rid_id           # RtpStreamId extension id of its simulcast packets (0 = none)
    sockaddr_in addr
    Bwe *bwe
    double probe_until       # padding probe in progress: end, cluster, rate, next packet
    int32_t probe_cluster
    uint64_t key
    int32_t nsources         # sources it publishes
    double rtt               # uplink RTT (s) from SR/RR or NACK->RTX; 0 = unknown
    int32_t first_dt         # head of its downtracks' list (-1 = none), so leaving is O(own)
    double bwe_reported      # estimate in the last EV_BWE
    double bwe_report_time
    double probe_bps
    double probe_next
    double rtx_tokens        # retransmission budget (bytes) when the estimate is known
    double rtx_refill
    uint32_t rid_ssrc[4]     # RID events are not repeated for these unknown SSRCs (200 ms)
    double rid_time[4]
    double data_tokens       # SFUD data packets it may still send (token bucket)
    double data_last         # last refill (< 0 = never: starts with a full burst)
    QuicPeer *quic           # egress sealed as QUIC 1-RTT packets (engine_quic.pxi); NULL = UDP


cdef struct Ingress:
    # Passed by argument.
    int32_t sid
    uint32_t ssrc
    uint8_t payload_type
    uint8_t is_rtx
    uint8_t layer
    # Codec state: the latest keyframe start (GOP cache: a new viewer starts there),
    # bytes per VP8 temporal layer (allocation), last PLI asked for this SSRC.
    int64_t key_ext
    int64_t mute_lo, mute_hi # extended seqs ever marked H_MUTED: [mute_lo, mute_hi)
    int64_t key_floor        # keyframes below this (before a mute) never start the GOP cache
    double key_time
    double last_pli
    int64_t tid_bytes[4]
    uint64_t sr_ntp          # the last SR: NTP time and RTP timestamp (aligns layers)
    uint32_t sr_rtp
    uint32_t last_ts         # RTP timestamp and arrival of the highest seq (source_clock)
    double last_arrival
    # State (RFC 3550 A.1/A.3/A.8 receive statistics).
    uint8_t alive
    uint8_t started
    uint16_t max_seq
    uint32_t cycles
    uint32_t base_seq
    int64_t received
    int64_t expected_prior
    int64_t received_prior
    double jitter
    int64_t last_transit
    uint8_t have_transit
    uint32_t sr_ntp_mid      # middle 32 bits of the last SR's NTP time (LSR)
    double sr_time           # when that SR arrived (0 = never)
    # Recovery. role: media, RTX (repairs `media`) or SFU-RS FEC (repairs `media`).
    uint8_t role
    int32_t media            # ingress repaired by this one (RTX/FEC), else itself
    # History ring indexed by extended seq & (h_cap - 1): the packet's slot while held,
    # or NACK state while missing. Window [h_lo, h_hi) of extended seqs.
    int32_t h_cap
    int32_t *h_slot
    int64_t *h_ext
    double *h_time           # arrival (held) or detection (missing)
    double *h_due            # next NACK (missing)
    double *h_nack           # when the last NACK for it went out (RTT samples)
    uint16_t *h_len
    uint8_t *h_state
    uint8_t *h_tries
    int64_t h_lo
    int64_t h_hi
    double h_age
    int32_t nmissing
    int64_t miss_lo          # no missing entry below this (where NACK sweeps start)
    uint8_t pending          # listed in the engine's NACK work list
    # Downlink SFU-RS block being collected: [blk_base, blk_base + blk_k).
    int64_t blk_base
    uint8_t blk_k
    uint8_t blk_m            # max parity rows any downtrack of this ingress wants
    uint8_t ulp_in_pt        # in-band ULPFEC payload type accepted on this SSRC (ANY_PT = none)
    int32_t fec_iid          # its SFU-RS ingress (-1 = none)
    int64_t fb_media[16]     # recent uplink SFU-RS blocks: first media ext seq,
    int64_t fb_fec[16]       # ... FEC ext seq of row 0,
    uint8_t fb_k[16]         # ... and k (0 = unused slot)
    int32_t fb_pos


cdef struct Source:
    # Passed by argument.
    int32_t pid
    uint8_t kind
    uint32_t clock_rate
    # Allocated by this.
    int32_t *dts             # downtrack handles fed by this source
    int32_t ndts
    int32_t cap
    # Others.
    uint8_t alive
    int32_t ningress
    int32_t ingress[12]
    uint8_t codec            # CODEC_* (keyframe and temporal-layer probes)
    uint8_t switchable       # several layers or temporal layers: viewers use DT_SWITCHED
    uint8_t gop_cache        # start new viewers at the latest keyframe still held
    uint8_t nlayers          # declared spatial layers (0 = not declared)
    uint8_t muted            # server-side mute: nothing received now reaches a viewer
    uint8_t al_id            # RFC 6464 audio level extension id (0 = not parsed)
    double last_pli
    uint8_t nack             # NACK the publisher for holes
    uint8_t inband_fec       # the publisher sends in-band ULPFEC (its holes may be FEC)
    uint8_t fec_k            # SFU-RS block length for downlink FEC
    int64_t al_count         # audio level accumulators since the last audio_levels()
    int64_t al_sum
    int64_t al_voiced
    uint8_t mute_seen        # was ever muted: packets older than the history are dropped


cdef struct Downtrack:
    # Hot (read or written for every forwarded copy) first, so a copy touches few cache lines.
    int32_t sid
    int32_t pid
    uint32_t out_ssrc
    uint8_t out_pt
    uint8_t alive
    uint8_t started
    uint8_t mode             # DT_PINNED or DT_SWITCHED
    # Layer selection (engine_layers.pxi); layers are the ingress `layer` numbers.
    int8_t cur_layer         # layer forwarded now (-1 = none yet, or paused)
    int8_t tgt_layer         # layer wanted (-1 = paused; DT_PINNED: -1 = the first one seen)
    uint8_t cur_tid          # highest temporal layer forwarded now (3 = all)
    uint8_t tgt_tid
    int32_t iid              # ingress last forwarded (NACKs are answered from its history)
    uint32_t last_out_ts
    double last_out_time
    uint32_t sr_packets
    uint32_t sr_octets
    int64_t last_in          # highest extended seq of cur_layer handled
    int64_t out_top          # highest viewer seq (extended) given out
    OutEntry *om             # viewer seq -> (layer, ext seq, offsets), DT_SWITCHED only
    int64_t *om_in           # ext seq of a hole -> its reserved viewer seq (same ring size)
    uint32_t ts_off          # out ts = in ts + ts_off for cur_layer
    uint16_t pid_off         # VP8 PictureID / TL0PICIDX offsets for cur_layer
    uint8_t tl0_off
    int16_t last_tl0         # last TL0PICIDX / PictureID sent (-1 = none)
    int32_t last_pic
    int32_t drop_pic         # PictureID of the last frame dropped (compacted once)
    int64_t seg_in           # first ext seq of the current constant-offset run (FEC needs one)
    # DT_PINNED: out = in + delta (mod 2^16 / 2^32); fixed at the first forwarded packet.
    uint16_t seq_delta
    uint32_t ts_delta
    # Links in the receiving peer's list of downtracks.
    int32_t peer_prev
    int32_t peer_next
    # Switch bookkeeping.
    int8_t prev_layer        # layer before the last switch (its late repairs become padding)
    int8_t paused_layer      # layer forwarded before a pause (its late repairs still go)
    int64_t prev_last_in
    # Recovery toward this viewer (set by sfu/recovery.py through set_downtrack_recovery).
    uint8_t nack             # answer NACKs at all
    uint32_t rtx_ssrc        # 0 = plain resends
    uint8_t rtx_pt
    uint16_t rtx_seq
    uint32_t fec_ssrc
    uint8_t fec_pt
    uint8_t fec_m            # SFU-RS parity rows per block (0 = no FEC)
    uint16_t fec_seq
    # In-band ULPFEC (RFC 5109 as GStreamer's rtpulpfecdec wants it): one FEC packet after
    # every ulp_k media packets, same SSRC, taking a seq in the media seq space. Media
    # index i (from the viewer's first packet) goes out as ulp_out0 + i + i // ulp_k.
    uint8_t ulp_k
    uint8_t ulp_pt
    uint8_t ulp_started
    uint16_t ulp_out0
    int64_t ulp_origin       # extended seq of media index 0
    int64_t ulp_block        # next block to close
    int64_t ulp_top          # highest media index forwarded
    # DT_PINNED across a server mute (engine_costream.pxi): the viewer's seqs continue, so
    # the delta changes at pin_seg_ext (first packet after unmute, viewer seq pin_seg_out);
    # packets from pin_prev_ext up to it keep pin_prev_delta (late repairs, NACKs).
    uint8_t pin_rebase       # muted: rebase at the next new packet, to viewer seq pin_rebase_out
    uint16_t pin_rebase_out
    int64_t pin_unmute_ext    # first ext after the muted stretch (rebase point)
    uint16_t pin_seg_out
    uint16_t pin_prev_delta
    int64_t pin_seg_ext
    int64_t pin_prev_ext
    # The same for a ULPFEC viewer: media index ulp_next goes to the first packet after the
    # unmute; indices from ulp_prev_seg_i up to ulp_seg_i keep ulp_prev_origin.
    int64_t ulp_next
    int64_t ulp_seg_i
    int64_t ulp_prev_seg_i
    int64_t ulp_prev_origin

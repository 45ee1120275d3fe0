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

EV_STUN = 1
EV_PLI = 2
EV_BYE = 3
EV_RR = 4
EV_OVERFLOW = 5

# Global counters. Every received datagram ends in exactly one of rx_rtp, rx_rtcp,
# rx_stun or an ingress drop_* reason (accounting invariant checked by tests).
COUNTER_NAMES = (
    "rx_datagrams", "rx_bytes", "rx_rtp", "rx_rtcp", "rx_stun",
    "tx_datagrams", "tx_bytes", "forwarded", "rtcp_sent",
    "pli_sent", "pli_coalesced", "pli_in", "fir_in", "nack_in", "remb_in", "twcc_in",
    "sr_in", "rr_in", "bye_in", "rtcp_unknown", "rtcp_foreign_ssrc",
    "drop_malformed", "drop_unbound", "drop_not_rtp", "drop_unknown_ssrc",
    "drop_ssrc_not_owned", "drop_payload_type", "drop_rtx_unsupported", "drop_no_slot",
    "drop_send_eagain", "drop_send_error", "drop_event_overflow",
    "recv_batches", "recv_errors", "drop_event_queue", "recv_no_slot", "drop_stun_rate",
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
    C_DROP_RTX_UNSUPPORTED
    C_DROP_NO_SLOT
    C_DROP_SEND_EAGAIN
    C_DROP_SEND_ERROR
    C_DROP_EVENT_OVERFLOW
    C_RECV_BATCHES
    C_RECV_ERRORS
    C_DROP_EVENT_QUEUE
    C_RECV_NO_SLOT
    C_DROP_STUN_RATE
    N_COUNTERS

SOURCE_FIELDS = ("packets", "bytes", "lost", "jitter", "pli_sent", "pli_coalesced",
                 "downtracks", "highest_seq")
cdef enum:
    S_PACKETS = 0
    S_BYTES
    S_LOST
    S_JITTER
    S_PLI_SENT
    S_PLI_COALESCED
    S_DOWNTRACKS
    S_HIGHEST_SEQ
    N_SRC_FIELDS

DOWNTRACK_FIELDS = ("packets", "bytes", "rr_count", "rr_fraction_lost", "rr_cumulative_lost",
                    "rr_jitter", "rr_highest_seq", "rtt_us", "pli_in", "nack_in", "remb_bps",
                    "sr_sent")
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
    N_DT_FIELDS

PEER_FIELDS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drop_ssrc_not_owned",
               "drop_malformed", "moves")
cdef enum:
    P_RX_PACKETS = 0
    P_RX_BYTES
    P_TX_PACKETS
    P_TX_BYTES
    P_DROP_NOT_OWNED
    P_DROP_MALFORMED
    P_MOVES
    N_PEER_FIELDS


cdef struct Peer:
    int32_t tid
    uint8_t alive
    uint8_t bound
    sockaddr_in addr
    uint64_t key
    int32_t nsources         # sources it publishes
    int32_t first_dt         # head of its downtracks' list (-1 = none), so leaving is O(own)


cdef struct Ingress:
    # Passed by argument.
    int32_t sid
    uint32_t ssrc
    uint8_t payload_type
    uint8_t is_rtx
    uint8_t layer
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
    int32_t ingress[8]
    double last_pli


cdef struct Downtrack:
    # Passed by argument.
    int32_t sid
    int32_t pid
    uint32_t out_ssrc
    uint8_t out_pt
    # Links in the receiving peer's list of downtracks.
    int32_t peer_prev
    int32_t peer_next
    # State: out = in + delta (mod 2^16 / 2^32); fixed at the first forwarded packet.
    uint8_t alive
    uint8_t started
    uint16_t seq_delta
    uint32_t ts_delta
    uint32_t last_out_ts
    double last_out_time
    uint32_t sr_packets
    uint32_t sr_octets

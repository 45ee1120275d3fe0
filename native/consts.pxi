# Sizes of the preallocated native structures.
cdef enum:
    SLOT_SIZE = 2048          # one received datagram (MTU plus headroom)
    MAX_BATCH = 256           # recvmmsg batch upper bound
    EGRESS_MAX = 1024         # messages per sendmmsg flush (UIO_MAXIOV)
    RTCP_OUT_SIZE = 262144    # scratch for RTCP, RTX and FEC the node builds between flushes
    ANY_PT = 255              # ingress accepts any payload type
    MAX_INGRESS = 12          # SSRCs per source (3 layers x media, RTX, FEC)
    EVENT_DATA_SIZE = 1500    # bytes kept per datagram event (STUN)
    EVENT_DATA_SLOTS = 1024
    HDR_CAP = 128             # rewritten header (+ext, +VP8 descriptor) per egress packet
    COPY_BUDGET = 8192        # forwarded copies per on_readable call (~30 ms at 4 us each)

cdef double NTP_EPOCH_OFFSET = 2208988800.0  # seconds 1900-01-01 .. 1970-01-01

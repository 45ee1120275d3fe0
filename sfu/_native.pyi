"""Type stub for the private Cython extension built from native/.

The engine is sans-I/O with respect to time: every data-path call takes ``now``
(seconds, monotonic, float). Handles are plain ints; the engine holds no Python
objects for them. Configure calls raise ``ValueError`` on bad arguments; data-path
calls never raise on network input (bad packets are dropped and counted).
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Media kinds for add_source.
KIND_AUDIO: int  # 0
KIND_VIDEO: int  # 1

# Event kinds returned by Engine.drain_events(); each event is a tuple whose first
# item is the kind:
EV_STUN: int  # (EV_STUN, tid, host: str, port: int, datagram: bytes)
EV_PLI: int  # (EV_PLI, sid, publisher_ssrc, requester_pid)  keyframe request sent upstream
EV_BYE: int  # (EV_BYE, pid, ssrc)  RTCP BYE from a bound peer for an SSRC it owns
EV_RR: int  # (EV_RR, did, fraction_lost_256, cumulative_lost, jitter)  viewer receiver report
EV_OVERFLOW: int  # (EV_OVERFLOW, dropped_events, 0, 0)  ring was full
EV_LAYER: int  # (EV_LAYER, did, layer (-1 = paused), temporal)  a viewer's layer switched
EV_BWE: int  # (EV_BWE, pid, estimate_bps, acked_bps)  a viewer's estimate moved (>5 %/0.5 s)
EV_RID: int  # (EV_RID, pid, ssrc, rid as big-endian ASCII in an int)  undeclared SSRC with RID
EV_DATA: int  # (EV_DATA, pid, subtype 0..31, payload: bytes)  RTCP APP "SFUD" from a bound peer

# Names of the columns of the counter arrays, index-aligned.
COUNTER_NAMES: tuple[str, ...]
SOURCE_FIELDS: tuple[str, ...]
DOWNTRACK_FIELDS: tuple[str, ...]
PEER_FIELDS: tuple[str, ...]

class Engine:
    counters: npt.NDArray[np.int64]  # global counters (view, no copy), see COUNTER_NAMES
    source_stats: npt.NDArray[np.int64]  # [sid, field] view, see SOURCE_FIELDS
    downtrack_stats: npt.NDArray[np.int64]  # [did, field] view, see DOWNTRACK_FIELDS
    peer_stats: npt.NDArray[np.int64]  # [pid, field] view, see PEER_FIELDS

    def __init__(
        self,
        *,
        max_peers: int = 4096,
        max_sources: int = 4096,
        max_downtracks: int = 65536,
        pool_slots: int = 16384,  # 2 KiB slots shared by in-flight packets and histories
        batch: int = 64,
        event_ring: int = 8192,
        node_ssrc: int = 1,
        rtcp_interval: float = 1.0,
        pli_interval: float = 0.3,
        stun_rate: float = 2000.0,  # STUN datagrams/s handed to Python (0 = unlimited)
        seed: int = ...,
        history_video: float = 2.0,  # seconds a video packet stays for retransmission
        history_audio: float = 1.0,
        nack_delay: float = 0.005,  # reorder wait before the first NACK to a publisher
        nack_max_tries: int = 10,
        nack_max_age: float = 1.0,  # give up on a hole after this long (then a PLI)
        nack_rtt_default: float = 0.1,  # uplink RTT until SR/RR or NACK->RTX measure it
    ) -> None: ...
    # -- configure (raise ValueError) --
    def add_udp(self, fd: int) -> int:
        """Register a bound non-blocking UDP socket fd; returns a transport id."""
    def remove_transport(self, tid: int) -> None: ...
    def set_wallclock_offset(self, offset: float) -> None:
        """wallclock - now, used for NTP timestamps in sender reports."""
    def add_peer(self, tid: int) -> int:
        """A participant's media endpoint on transport tid; unbound until bind_peer."""
    def bind_peer(self, pid: int, host: str, port: int) -> bool:
        """Bind (or move) pid to host:port (IPv4). Returns True if the address changed.
        Raises ValueError if another peer holds that address."""
    def unbind_peer(self, pid: int) -> None: ...
    def remove_peer(self, pid: int) -> None:
        """Frees the peer, its sources and every downtrack to or from it."""
    def add_source(self, pid: int, kind: int, clock_rate: int) -> int:
        """A published track owned by pid; returns a source id."""
    def add_ingress(self, sid: int, ssrc: int, payload_type: int, rtx_ssrc: int = 0,
                    layer: int = 0, rtx_payload_type: int = -1, fec_ssrc: int = 0,
                    fec_payload_type: int = -1, ulpfec_payload_type: int = -1) -> None:
        """Declare an SSRC the source's owner sends, with its optional RTX (RFC 4588) and
        SFU-RS FEC streams (payload type -1 = any), and the payload type of in-band ULPFEC
        it may carry on the media SSRC (-1 = none). Media SSRCs get a retransmission
        history; holes in them are NACKed to the owner and repaired from RTX or FEC
        before fan-out. Raises ValueError if an SSRC is already in use on this node."""
    def set_source_recovery(self, sid: int, nack: bool = True, fec_k: int = 0) -> None:
        """Uplink NACKs on/off, and the SFU-RS block length (media packets per block,
        0..64) used for this source's viewers' FEC."""
    def set_downtrack_recovery(self, did: int, nack: bool = True, rtx_ssrc: int = 0,
                               rtx_payload_type: int = 0, fec_ssrc: int = 0,
                               fec_payload_type: int = 0, fec_m: int = 0, ulpfec_k: int = 0,
                               ulpfec_payload_type: int = 116) -> None:
        """Answer this viewer's NACKs (as RTX on rtx_ssrc, or plain resends when 0), send it
        fec_m SFU-RS parity packets (0..16) per source block on fec_ssrc, and in-band ULPFEC
        (one packet per ulpfec_k media packets, in the media seq space; fixed once the viewer
        got its first packet, ValueError after)."""
    def set_source_media(self, sid: int, codec: str = "other", temporal_layers: int = 1,
                         layers: int = 1, gop_cache: bool = True) -> None:
        """codec: vp8 | h264 | opus | other (keyframe / temporal-layer probes). More than one
        spatial or temporal layer makes its viewers switch layers (DT_SWITCHED: seq map,
        PictureID rewrite); fixed once it has downtracks. gop_cache: new viewers start at the
        latest held keyframe."""
    def set_peer_transport_cc(self, pid: int, twcc_ext_id: int = 0, rid_ext_id: int = 0,
                              start_bps: float = 1e6, min_bps: float = 5e4,
                              max_bps: float = 5e7) -> None:
        """Stamp a transport-wide seq (one-byte extension id, 0 = off) on every packet to
        pid and run the GCC estimator on its transport-cc feedback; learn its simulcast
        SSRCs from the RtpStreamId extension rid_ext_id (EV_RID)."""
    def set_downtrack_layer(self, did: int, layer: int, temporal: int, now: float) -> bool:
        """Target spatial layer (-1 = pause) and temporal layers (0..3) of a viewer. Spatial
        switches wait for a keyframe of the target (one coalesced PLI); a viewer not started
        yet starts from the GOP cache. True if a keyframe is awaited."""
    def probe(self, pid: int, bps: float, duration: float, now: float) -> bool:
        """Padding at bps for duration (≤ 2 s) on one of pid's RTX SSRCs, tagged as a probe
        cluster for its estimator. False without TWCC, an RTX SSRC or an address."""
    def bwe(self, pid: int) -> dict[str, float] | None:
        """estimate_bps, acked_bps, loss, delay_state (0 normal, 1 over, 2 under), probes,
        probe_bps, feedbacks, probe_packets; None without TWCC."""
    def layer_bytes(self, sid: int) -> list[tuple[int, int, list[int], float]]:
        """Per media layer: (layer, ssrc, cumulative bytes per VP8 TID 0..3, time of its
        last keyframe (0 = none))."""
    def remove_source(self, sid: int) -> None:
        """Frees the source, its SSRCs and its downtracks."""
    def add_downtrack(self, sid: int, pid: int, out_ssrc: int, out_pt: int) -> int:
        """Forward sid to pid, rewriting SSRC, payload type, sequence number and timestamp.
        out_ssrc must be unique on this node (ValueError otherwise)."""
    def remove_downtrack(self, did: int) -> None: ...
    def live(self) -> dict[str, int]:
        """Live native objects: peers, sources, ssrcs, downtracks, slots_in_use."""
    # -- co-streaming (issue 5) --
    def set_data_limits(self, rate: float, burst: float) -> None:
        """Per-participant token bucket for incoming SFUD data packets (default 200/s,
        burst 400); over the limit they are dropped and counted (data_rate_limited).
        ValueError unless 0 < rate <= 1e6 and 1 <= burst <= 1e7."""
    def send_datagram(self, pids: Sequence[int] | npt.NDArray[np.integer], data: bytes) -> int:
        """Queue the same datagram (1..1500 bytes, else ValueError) to every bound peer in
        pids through the egress batch (sendmmsg), flushed before returning. Unknown and
        unbound pids are skipped. Returns the number queued (counter data_out)."""
    def set_source_audio_level(self, sid: int, ext_id: int) -> None:
        """Accumulate the RFC 6464 audio level (one- or two-byte header extension ext_id
        1..14 holding one octet; 0 = off) of the source's media packets (not RTX/FEC
        repairs, duplicates or packets dropped by a mute). Resets its accumulators."""
    def audio_levels(self) -> list[tuple[int, int, int, int]]:
        """(sid, count, level_sum, voiced) per source with count > 0 since the last call;
        level in -dBov (0 loudest, 127 silence), voiced = packets with the V bit. Resets."""
    def set_source_muted(self, sid: int, muted: bool, now: float = 0.0) -> None:
        """Server-enforced mute. Nothing received while muted reaches any viewer (media,
        RTX answers, GOP replay, FEC; counted as muted_drops); a viewer added meanwhile gets
        nothing until unmute. On unmute viewers' seqs continue (+1 from their last; a
        switched viewer resumes at the next keyframe, like after a pause; a viewer with
        in-band ULPFEC continues its media index, the FEC block across the mute protecting
        the packets on both sides), and for video a keyframe is requested upstream
        (not coalesced; EV_PLI with requester -1). now: caller's clock for PLI coalescing.
        Idempotent."""
    def source_clock(self, sid: int) -> list[tuple[int, int, float, int, int]]:
        """Per started media layer: (layer, RTP timestamp of its newest packet (highest
        seq), arrival time of that packet (the `now` it came with), last SR NTP timestamp
        (64-bit), last SR RTP timestamp); SR fields 0 before the first SR."""
    # -- RTP over QUIC egress (issue 6): the engine seals 1-RTT packets itself --
    def set_peer_transport(self, pid: int, tid: int) -> None: ...
    def set_peer_quic(self, pid: int, *, key: bytes, iv: bytes, hp: bytes, dcid: bytes,
                      prefix: bytes, next_pn: int, key_phase: int = 0,
                      max_packet: int = 1200) -> None:
        """Enable (or re-key) QUIC egress to pid: every datagram queued to it leaves as one
        QUIC short-header packet (RFC 9000 17.3.1, 4-byte packet number, DCID dcid) carrying
        one DATAGRAM frame (type 0x30, RFC 9221) with data prefix || datagram, protected per
        RFC 9001 section 5 with AES-128-GCM or AES-256-GCM (key 16 or 32 bytes; hp as long
        as key, iv 12 bytes). On a key update pass the new key, iv and key_phase but the
        first hp (RFC 9001 section 6). ValueError on bad lengths (dcid <= 20, prefix <= 16,
        max_packet 1200..65527, next_pn 0..2**62-1); RuntimeError if libcrypto cannot be
        loaded. Larger datagrams than quic_max_payload are dropped (counter quic_too_big)."""
    def clear_peer_quic(self, pid: int) -> None:
        """Back to plain UDP egress to pid (no-op if it was not QUIC)."""
    def quic_next_pn(self, pid: int) -> int:
        """The next packet number the engine will use (shared with aioquic: read it into
        the connection before aioquic sends). ValueError if pid is not QUIC."""
    def set_quic_next_pn(self, pid: int, pn: int) -> None:
        """Write back aioquic's next packet number after it sent. ValueError if pn is below
        the current one (a packet number used twice would reuse an AES-GCM nonce)."""
    def quic_max_payload(self, pid: int) -> int:
        """Largest datagram that still fits: min(max_packet, 2048) - (1 + len(dcid) + 4 +
        1 + len(prefix) + 16)."""
    # -- data path (never raises on network input) --
    def on_readable(self, tid: int, now: float) -> int:
        """recvmmsg/sendmmsg until the socket is drained or a budget is used; returns
        the number of datagrams read."""
    def ingest(self, tid: int, data: bytes, host: str, port: int, now: float) -> None:
        """Process one datagram that did not come through recvmmsg (tests, QUIC)."""
    def on_tick(self, now: float) -> float:
        """Run timers (RTCP reports, NACK retries, history expiry); returns the next
        deadline (same clock as now)."""
    def send_to(self, tid: int, data: bytes, host: str, port: int) -> bool:
        """Send one control datagram (e.g. a STUN response) on transport tid."""
    def request_keyframe(self, sid: int, now: float) -> bool:
        """Send a (coalesced) PLI to the source's publisher; False if coalesced."""
    def drain_events(self) -> list[tuple[object, ...]]: ...
    @property
    def pending_events(self) -> int: ...

# -- helpers for tests and the client library (allocate Python objects; not hot path) --
def parse_rtp(data: bytes) -> dict[str, object]:
    """Parse an RTP packet; raises ValueError naming the defect for malformed input.
    Keys: version, padding, extension, csrc_count, marker, payload_type,
    sequence_number, timestamp, ssrc, csrcs, ext_profile, extensions
    ({id: bytes}), header_size, payload_size, padding_size."""
def rtp_extension(data: bytes, ext_id: int) -> bytes | None:
    """Lazily find one header extension element by id (one- or two-byte form)."""
def build_rtp(payload_type: int, sequence_number: int, timestamp: int, ssrc: int,
              payload: bytes, marker: bool = False, csrcs: list[int] | None = None,
              extensions: dict[int, bytes] | None = None, padding: int = 0) -> bytes: ...
def parse_rtcp(data: bytes) -> list[dict[str, object]]:
    """Parse a compound RTCP packet; raises ValueError for malformed input.
    Each dict has 'type' in {'sr','rr','sdes','bye','nack','pli','fir','remb','twcc',
    'app','unknown'} and the fields of that packet."""
def build_sr(ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int,
             reports: list[dict[str, int]] | None = None) -> bytes: ...
def build_rr(ssrc: int, reports: list[dict[str, int]]) -> bytes: ...
def build_sdes(ssrc: int, cname: str) -> bytes: ...
def build_bye(ssrcs: list[int], reason: str = "") -> bytes: ...
def build_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes: ...
def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes: ...
def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes: ...
def build_remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes: ...
def build_twcc(sender_ssrc: int, media_ssrc: int, base_seq: int, ref_time: int,
               fb_count: int, deltas: list[int | None]) -> bytes:
    """deltas: per packet from base_seq, receive delta in 250 µs units or None (lost)."""

def probe_media(codec: str, payload: bytes) -> dict[str, object]:
    """The node's codec probe of one RTP payload: key, start, desc_len, sync, tid,
    tl0picidx, picture_id, picture_id_bits (VP8 descriptor; H.264 IDR/SPS)."""

# -- GCC send-side bandwidth estimator (native/bwe.pxi; the engine embeds one per viewer).
#    Test wrapper: sizes in bytes, times in seconds, rates in bit/s --
class GccEstimator:
    def __init__(self, start_bps: float = 1e6, min_bps: float = 5e4,
                 max_bps: float = 5e7) -> None: ...
    def sent(self, size: int, now: float, probe: int = -1) -> int:
        """Record a packet leaving now; returns the 16-bit transport-wide seq to stamp."""
    def feedback(self, fci: bytes, now: float, rtt: float = 0.05) -> bool:
        """transport-cc FCI (after the 12-byte RTPFB header); False if malformed."""
    def new_probe(self, now: float) -> int: ...
    @property
    def estimate(self) -> float: ...
    @property
    def delay_bps(self) -> float: ...
    @property
    def loss_bps(self) -> float: ...
    @property
    def acked_bps(self) -> float: ...
    @property
    def loss(self) -> float: ...
    @property
    def state(self) -> int: ...  # 0 normal, 1 overusing, 2 underusing
    @property
    def slope(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def probes(self) -> int: ...
    @property
    def probe_bps(self) -> float: ...
    @property
    def malformed(self) -> int: ...
    @property
    def feedbacks(self) -> int: ...
    @property
    def packets_acked(self) -> int: ...
    @property
    def packets_lost(self) -> int: ...

class QuicSealer:
    """The engine's QUIC 1-RTT packet protection on its own (tests, benchmarks)."""

    def __init__(self, key: bytes, iv: bytes, hp: bytes, dcid: bytes,
                 key_phase: int = 0) -> None: ...
    def seal(self, pn: int, payload: bytes) -> bytes:
        """The whole protected short-header packet carrying payload (frames, as given)."""
    def seal_many(self, pn: int, payload: bytes, count: int) -> int:
        """Seal payload count times with packet numbers pn.. and discard (benchmark)."""
    def copy_many(self, payload: bytes, count: int) -> int:
        """memcpy payload count times (the benchmark's baseline)."""

class UdpReader:
    """Native ``loop.add_reader`` callback: ``engine.on_readable(tid, time.monotonic())``
    without a Python frame; calls ``on_events()`` only when events are pending."""

    wakeups: int
    def __init__(self, engine: Engine, tid: int, on_events: object) -> None: ...
    def __call__(self) -> None: ...

# -- ULPFEC (RFC 5109, level 0, no RED): used by loss recovery; see native/fec.pxi --
def ulpfec_encode(media_packets: list[bytes], fec_pt: int, seq: int, ts: int,
                  ssrc: int) -> bytes: ...
def ulpfec_parse(fec_rtp: bytes) -> dict[str, object]: ...
def ulpfec_recover(fec_rtp: bytes, received: dict[int, bytes],
                   media_ssrc: int | None = None) -> bytes | None: ...

class UlpfecEncoder:
    fec_pt: int
    ssrc: int
    max_group: int
    def __init__(self, fec_pt: int, ssrc: int, max_group: int = 10, seq: int = 0) -> None: ...
    @property
    def next_seq(self) -> int: ...
    def add(self, media_packet: bytes) -> list[bytes]: ...
    def flush(self) -> list[bytes]: ...

# -- Jitter buffer (native/jitter.pxi): used by the client library and recording taps --
ACCEPTED: int
DUPLICATE: int
LATE: int
MALFORMED: int

class JitterBuffer:
    """Reorders RTP, adapts its playout delay to arrival jitter (percentile, clamped) and
    assembles frames (VP8/H264/opus); time is injected (``now``, seconds)."""

    def __init__(self, clock_rate: int, codec: str, capacity: int = 1024,
                 min_delay: float = 0.02, max_delay: float = 0.5,
                 percentile: float = 0.95, late_wait: float = 0.0) -> None:
        """late_wait: how much longer an incomplete video frame holds playout (a repair
        may still come) before it is released incomplete."""
    def insert(self, packet: bytes, now: float, recovered: bool = False) -> int: ...
    def pop(self, now: float) -> list[tuple[int, bool, list[bytes], bool]]:
        """Due frames in order: (timestamp, keyframe, payloads, complete)."""
    def missing(self, now: float) -> list[int]: ...
    @property
    def target_delay(self) -> float: ...
    @property
    def keyframe_needed(self) -> bool: ...
    @property
    def capacity(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
# -- SFU-RS burst FEC (Reed-Solomon over GF(2^8)); see docs/fec-burst.md, native/rsfec*.pxi --
# masks are the wire value everywhere: bit 63 - i set = packet base_seq + i present
def rs_encode(media_packets: list[bytes | None], k: int, m: int, base_seq: int, fec_pt: int,
              fec_seq: int, fec_ssrc: int, rows: int | None = None) -> list[bytes]: ...
def rs_parse(fec_rtp: bytes) -> dict[str, object]: ...
def rs_decode(fec_packets: list[bytes], received: dict[int, bytes],
              media_pt: int) -> list[bytes]: ...

class RsEncoder:
    fec_pt: int
    fec_ssrc: int
    def __init__(self, fec_pt: int, fec_ssrc: int, k: int, m: int, seq: int = 0) -> None: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def m(self) -> int: ...
    def set_rate(self, k: int, m: int) -> None: ...
    def add(self, media_rtp: bytes) -> list[bytes]: ...
    def flush(self) -> list[bytes]: ...

class RsDecoder:
    media_pt: int
    media_ssrc: int
    window: int
    def __init__(self, media_pt: int, media_ssrc: int, window: int = 64) -> None: ...
    def add_media(self, rtp: bytes) -> list[bytes]: ...
    def add_fec(self, fec_rtp: bytes) -> list[bytes]: ...
    def stats(self) -> dict[str, int]: ...

# test hooks for the C level (tests/test_rsfec.py, bench/bench_fec.py)
def _rs_simd(enable: bool | None = None) -> bool: ...
def _rs_gf_tables() -> tuple[bytes, bytes, bytes, bytes, bytes]: ...
def _rs_parity_rows(prefixes: bytes, bodies: list[bytes | None], mask: int, k: int, row0: int,
                    nrows: int, L: int) -> bytes | None: ...
def _rs_recover(k: int, mask: int, imgs: list[bytes | None], rows: list[int],
                parity: list[bytes], L: int) -> dict[int, bytes] | None: ...
class QuicAckFilter:
    """Recognises a QUIC peer's authenticated ACK-only 1-RTT packets natively, so the node
    can drop them without aioquic's receive path (see native/quic_open.pxi).

    key, iv, hp: the PEER's send keys (our receive direction, derive_key_iv_hp of
    ``conn._cryptos[Epoch.ONE_RTT].recv``), AES-128/256-GCM by key length. After a key
    update pass the new key and iv but the FIRST hp (RFC 9001 section 6: header protection
    keys do not change). dcid_len: length of OUR connection ids (aioquic: 8).
    ValueError on bad lengths, key_phase not 0/1; RuntimeError if libcrypto is missing."""

    key_phase: int
    def __init__(self, key: bytes, iv: bytes, hp: bytes, dcid_len: int,
                 key_phase: int = 0) -> None: ...
    def ack_only(self, data: bytes, expected_pn: int) -> int:
        """The full packet number (>= 0) if data is exactly one short-header packet that
        authenticates, is in key_phase, has reserved bits 0 and holds only ACK / PADDING
        frames (at least one ACK, at most 256 ranges each, at most 1500 bytes); else -1
        (hand it to aioquic). Never raises on the bytes. expected_pn: aioquic's
        ``_spaces[Epoch.ONE_RTT].expected_packet_number`` (0..2**62, ValueError otherwise);
        data must be bytes (TypeError otherwise)."""


"""QUIC media transport: RTP over QUIC (RoQ) and WebTransport sessions, on one UDP port.

aioquic runs the handshake, the streams, ACKs and path validation (sans-I/O, in Python).
Media does not go through it:

- Inbound DATAGRAM frames (and RoQ stream packets) are handed to ``Engine.ingest`` as if
  they had arrived on the participant's bound address, so forwarding, simulcast and loss
  recovery are the UDP path's.
- Outbound, the engine seals every packet to a QUIC participant itself (1-RTT short header,
  one DATAGRAM frame, AES-GCM with the keys aioquic negotiated) and sends it with sendmmsg
  on this socket. Python only keeps the engine's copy of the keys, the peer connection id,
  the validated address and the packet number in step with aioquic (``_sync``).

Authentication: a RoQ client's first bidirectional stream carries an ``auth`` frame (see
``roq.py``); a WebTransport client puts ``room``, ``participant`` and ``token`` in the
CONNECT URL. Until the token checks out, datagrams are dropped and counted and the engine
peer is not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DatagramReceived, H3Event, HeadersReceived
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.crypto import derive_key_iv_hp
from aioquic.tls import CipherSuite, Epoch

from sfu import _native
from sfu.errors import BadRequest, Conflict, InternalError, SfuError, Unauthorized
from sfu.transports import roq
from sfu.transports.cert import NodeCertificate
from sfu.transports.udp import set_buffers

if TYPE_CHECKING:
    from sfu.rooms import Participant, RoomManager

log = logging.getLogger("sfu.quic")

WT_PATH = "/sfu"
# Seconds; we advertise 25 ms (aioquic's max_ack_delay). Each ACK costs aioquic's Python
# send path (~0.1 ms); a 2-4 Mbit/s host keeps well under its initial window in 20 ms.
ACK_DELAY = 0.02
COUNTER_KEYS = ("quic_connections", "quic_sessions", "quic_auth_failed", "quic_unauth_drops",
                "quic_bad_flow", "quic_bad_frames", "quic_stream_packets", "quic_datagrams_in",
                "quic_moved", "quic_rekeyed", "quic_closed", "quic_acks_filtered",
                "quic_conflict", "quic_to_udp")


def server_configuration(cert: NodeCertificate, max_datagram: int,
                         idle_timeout: float) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[roq.ALPN, *H3_ALPN],
        max_datagram_frame_size=65536, max_datagram_size=max_datagram,
        idle_timeout=idle_timeout,
        # The engine seals with AES-GCM; ChaCha20 would need a second native cipher.
        cipher_suites=[CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384])
    config.certificate = cert.certificate
    config.private_key = cert.private_key
    return config


class QuicTransport:
    """The QUIC server socket, shared by all sessions; the engine sends on it too."""

    def __init__(self, engine: _native.Engine, cert: NodeCertificate, host: str, port: int,
                 *, max_datagram: int = 1452, idle_timeout: float = 30.0) -> None:
        self.engine = engine
        self.cert = cert
        self.host, self.port = host, port
        self.max_datagram = max_datagram
        self.idle_timeout = idle_timeout
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self.sessions: dict[int, QuicSession] = {}  # engine pid -> its live session
        self.tid = -1
        self.rooms: RoomManager | None = None
        self.drain: Callable[[], None] = lambda: None  # engine events, after an ingest batch
        self._server: QuicServer | None = None
        self._drain_pending = False
        self._renew_timer: asyncio.TimerHandle | None = None

    async def start(self, rooms: RoomManager, drain: Callable[[], None]) -> None:
        self.rooms, self.drain = rooms, drain
        rooms.hooks.append(self._on_room_change)
        config = server_configuration(self.cert, self.max_datagram, self.idle_timeout)
        _, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Server(configuration=config, create_protocol=self._new_session),
            local_addr=(self.host, self.port))
        self._server = server
        transport = cast(asyncio.DatagramTransport, server._transport)
        sock = cast(socket.socket, transport.get_extra_info("socket"))
        set_buffers(sock)  # ~4 MiB as on the UDP port: bursts survive a busy loop
        self.port = sock.getsockname()[1]
        self.tid = self.engine.add_udp(sock.fileno())  # egress only: Python reads the socket
        self._check_certificate()

    def _check_certificate(self) -> None:
        """A generated certificate is renewed two days before it runs out (browsers accept
        it by hash only while it is valid for under 14 days); new sessions get the new one,
        the page's config.json its hash."""
        if self.cert.due_for_renewal():
            self.renew_certificate()
        self._renew_timer = asyncio.get_running_loop().call_later(3600.0,
                                                                  self._check_certificate)

    def renew_certificate(self) -> None:
        from sfu.transports.cert import self_signed
        self.cert = self_signed(self.cert.hosts)
        if self._server is not None:
            self._server._configuration.certificate = self.cert.certificate
            self._server._configuration.private_key = self.cert.private_key
        log.info("QUIC certificate renewed: sha-256 %s, valid until %s", self.cert.sha256.hex(),
                 self.cert.not_after.isoformat())

    def _new_session(self, *args: Any, **kwargs: Any) -> QuicSession:
        self.counters["quic_connections"] += 1
        return QuicSession(self, *args, **kwargs)

    def close(self) -> None:
        if self._renew_timer is not None:
            self._renew_timer.cancel()
        for session in list(self.sessions.values()):
            session.detach()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.tid >= 0:
            self.engine.remove_transport(self.tid)
            self.tid = -1

    def _on_room_change(self, what: str, _room_id: str, subject: Any) -> None:
        if what == "detaching":  # left, kicked or room closed: before its peer is freed
            session = self.sessions.get(subject.pid)
            if session is not None:
                session.close_for("participant left")
        elif what == "bound":
            session = self.sessions.get(subject.pid)
            if session is not None and subject.address != session.address:
                # A STUN binding (or participant.connect) took over: media goes by UDP now.
                self.counters["quic_to_udp"] += 1
                session.close_for("participant moved to UDP")

    def schedule_drain(self) -> None:
        """Engine events (RR, data messages) are drained once per loop turn, not per packet."""
        if not self._drain_pending and self.engine.pending_events:
            self._drain_pending = True
            asyncio.get_running_loop().call_soon(self._run_drain)

    def _run_drain(self) -> None:
        self._drain_pending = False
        self.drain()

    def authenticate(self, room: Any, participant: Any, token: Any) -> Participant:
        """The participant whose token this is; SfuError (unauthorized/not_found) if not."""
        if not all(isinstance(x, str) for x in (room, participant, token)):
            raise Unauthorized("auth needs string room, participant and token")
        assert self.rooms is not None
        p = self.rooms.participant(room, participant)
        if not hmac.compare_digest(p.token.encode(), token.encode()):
            raise Unauthorized(f"bad token for participant {participant!r}")
        return p


class _Server(QuicServer):
    """aioquic's server with a shortcut for 1-RTT packets: their connection is found by the
    destination CID straight from the bytes (aioquic parses a header object first, ~5 us per
    packet; an unknown short-header packet is dropped either way)."""

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if data and not data[0] & 0x80:  # type: ignore[operator]
            protocol = self._protocols.get(
                data[1:1 + self._configuration.connection_id_length])  # type: ignore[index]
            if protocol is not None:
                protocol.datagram_received(data, addr)
            return
        super().datagram_received(data, addr)


class QuicSession(QuicConnectionProtocol):
    """One QUIC connection: a RoQ session or an HTTP/3 connection with a WebTransport
    session. Owns the binding of one participant's engine peer while it lives."""

    def __init__(self, owner: QuicTransport, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        quic._ack_delay = ACK_DELAY
        self.owner = owner
        self.engine = owner.engine
        self.participant: Participant | None = None
        self.pid = -1
        self.kind = ""  # "roq" or "webtransport" once ALPN is known
        self.flow_id = roq.DEFAULT_FLOW_ID
        self.prefix = b""
        self.address: tuple[str, int] | None = None  # what the engine peer is bound to
        self._h3: H3Connection | None = None
        self._wt_session: int | None = None
        self._control = roq.FrameReader(roq.MAX_CONTROL_FRAME)
        self._control_stream: int | None = None
        self._media_streams: dict[int, roq.RoqStreamReader] = {}
        self._keys: tuple[Any, ...] | None = None  # what the engine was last given
        # Header protection keeps the first 1-RTT key across key updates (RFC 9001 §6).
        self._hp: bytes | None = None
        self._rx_hp: bytes | None = None
        self._rx_keys: tuple[Any, ...] | None = None
        self._ack_filter: Any = None  # _native.QuicAckFilter for the peer's ACK-only packets
        self._only_media = False  # the packet being received carried only DATAGRAM frames
        # The client's own path limit (RoQ auth frame): we never send it larger packets.
        self.client_max_datagram = owner.max_datagram

    # -- aioquic hooks ---------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            self._on_event(event)
        except SfuError as exc:  # a typed refusal: tell the peer, keep the node running
            self._refuse(exc)
        except roq.RoqError as exc:
            self.owner.counters["quic_bad_frames"] += 1
            self._quic.close(error_code=0x1, reason_phrase=f"bad frame: {exc}"[:200])
        except Exception as exc:  # a bug must cost this session, not the node's loop
            log.exception("QUIC session %s failed", self.participant and
                          self.participant.participant_id)
            self.detach()
            self._refuse(InternalError(f"{type(exc).__name__}: {exc}"))

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # A viewer's ACK-only packets carry nothing aioquic needs while it has no packet of
        # its own in flight (the engine's datagrams are not in its loss recovery): check and
        # drop them natively instead of paying aioquic's Python receive path for each.
        quic, f = self._quic, self._ack_filter
        if (f is not None and self.pid >= 0 and len(data) <= 256
                and not data[0] & 0x80  # type: ignore[operator]
                and quic._state is QuicConnectionState.CONNECTED
                and addr == quic._network_paths[0].addr):
            space = quic._spaces[Epoch.ONE_RTT]
            if not space.ack_eliciting_in_flight:
                pn = f.ack_only(data, space.expected_packet_number)
                if pn >= 0:
                    if pn >= space.expected_packet_number:
                        space.expected_packet_number = pn + 1
                    quic._close_at = self._loop.time() + quic._idle_timeout()
                    self.owner.counters["quic_acks_filtered"] += 1
                    return
        quic.receive_datagram(cast(bytes, data), addr, now=self._loop.time())
        self._only_media = True
        self._process_events()
        # A packet of media or ACKs alone leaves aioquic nothing to send at once (its own
        # ACK waits for the ACK timer): skip the transmit pass unless the timer must fire
        # sooner (a timer that moved later fires early and re-arms). Anything else (stream
        # data, a new path, a close) goes through the full transmit.
        path = quic._network_paths[0]
        if self._only_media and self.pid >= 0 and not quic._close_pending \
                and addr == path.addr and path.is_validated and self._timer_at is not None:
            timer = quic.get_timer()
            if timer is not None and timer >= self._timer_at:
                return
        self.transmit()

    def transmit(self) -> None:
        if self.pid >= 0 and self.owner.sessions.get(self.pid) is not self:
            self.pid = -1  # its peer was handed on (left, replaced): no engine state is ours
        if self.pid < 0:
            super().transmit()
            return
        # One packet-number space for aioquic and the engine: take the engine's next
        # number before aioquic builds packets, hand aioquic's back after.
        quic = self._quic
        quic._packet_number = max(quic._packet_number, self.engine.quic_next_pn(self.pid))
        super().transmit()
        self.engine.set_quic_next_pn(self.pid, quic._packet_number)
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        self.detach()
        super().connection_lost(exc)

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, event: events.QuicEvent) -> None:
        counters = self.owner.counters
        if not isinstance(event, events.DatagramFrameReceived):
            self._only_media = False
        if isinstance(event, events.DatagramFrameReceived) and self.kind == "roq":
            self._roq_datagram(event.data)
        elif isinstance(event, events.ProtocolNegotiated):
            if event.alpn_protocol == roq.ALPN:
                self.kind = "roq"
            else:
                self.kind = "webtransport"
                self._h3 = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, events.HandshakeCompleted):
            self._hp, self._rx_hp = self._header_key("send"), self._header_key("recv")
        elif isinstance(event, events.ConnectionTerminated):
            counters["quic_closed"] += 1
            self.detach()
        elif self.kind == "roq" and isinstance(event, events.StreamDataReceived):
            self._roq_stream(event.stream_id, event.data)
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._on_h3(h3_event)

    def _roq_datagram(self, data: bytes) -> None:
        counters = self.owner.counters
        if self.pid < 0 or self.address is None:
            counters["quic_unauth_drops"] += 1
            return
        try:
            flow, off = roq.decode_varint(data)
        except roq.RoqError:
            counters["quic_bad_frames"] += 1
            return
        if flow != self.flow_id:
            counters["quic_bad_flow"] += 1
            return
        counters["quic_datagrams_in"] += 1
        self._ingest(data[off:])

    def _ingest(self, packet: bytes) -> None:
        assert self.address is not None
        # The bound address, not the packet's: a packet from a path still being validated
        # belongs to this participant all the same (the connection id says so).
        self.engine.ingest(self.owner.tid, packet, self.address[0], self.address[1],
                           time.monotonic())
        self.owner.schedule_drain()

    def _roq_stream(self, stream_id: int, data: bytes) -> None:
        client_bidi = stream_id & 0x3 == 0
        client_uni = stream_id & 0x3 == 2
        if client_bidi and (self._control_stream is None or self._control_stream == stream_id):
            self._control_stream = stream_id
            for body in self._control.feed(data):
                self._on_control(roq.decode_control(body))
        elif client_uni:
            if self.pid < 0:
                self.owner.counters["quic_unauth_drops"] += 1
                return
            reader = self._media_streams.setdefault(stream_id, roq.RoqStreamReader())
            for packet in reader.feed(data):
                if reader.flow_id != self.flow_id:
                    self.owner.counters["quic_bad_flow"] += 1
                    continue
                self.owner.counters["quic_stream_packets"] += 1
                self._ingest(packet)
        else:
            self.owner.counters["quic_bad_frames"] += 1

    def _on_control(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "auth":
            if self.participant is None:
                raise BadRequest("the first control frame must be 'auth'")
            raise BadRequest(f"unknown control frame type {msg['type']!r}")
        if self.participant is not None:
            raise BadRequest("already authenticated")
        flow = msg.get("flow_id", roq.DEFAULT_FLOW_ID)
        if not isinstance(flow, int) or not 0 <= flow < 1 << 62:
            raise BadRequest("flow_id must be an integer 0..2^62-1")
        size = msg.get("max_datagram", self.owner.max_datagram)
        if not isinstance(size, int) or not 1200 <= size <= 65527:
            raise BadRequest("max_datagram must be an integer 1200..65527")
        p = self._auth(msg.get("room"), msg.get("participant"), msg.get("token"))
        self.client_max_datagram = size
        self.flow_id = flow
        self._attach(p, roq.encode_varint(flow))
        assert self.address is not None and self._control_stream is not None
        self._quic.send_stream_data(self._control_stream, roq.control_frame({
            "type": "ok", "participant": p.participant_id, "flow_id": flow,
            "address": f"{self.address[0]}:{self.address[1]}",
            "max_payload": self.max_payload}))

    def _auth(self, room: Any, participant: Any, token: Any) -> Participant:
        try:
            return self.owner.authenticate(room, participant, token)
        except SfuError:
            self.owner.counters["quic_auth_failed"] += 1
            raise

    # -- WebTransport ----------------------------------------------------------------------

    def _on_h3(self, event: H3Event) -> None:
        assert self._h3 is not None
        if isinstance(event, HeadersReceived):
            self._on_connect(event)
        elif isinstance(event, DatagramReceived):
            if event.stream_id != self._wt_session or self.pid < 0:
                self.owner.counters["quic_unauth_drops"] += 1
                return
            self.owner.counters["quic_datagrams_in"] += 1
            self._ingest(event.data)

    def _on_connect(self, event: HeadersReceived) -> None:
        assert self._h3 is not None
        headers = dict(event.headers)
        target = urlsplit(headers.get(b":path", b"").decode("utf-8", "replace"))
        if (headers.get(b":method") != b"CONNECT" or headers.get(b":protocol") != b"webtransport"
                or target.path != WT_PATH or self._wt_session is not None):
            self._reply(event.stream_id, 404 if target.path != WT_PATH else 400)
            return
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        try:
            p = self._auth(query.get("room"), query.get("participant"), query.get("token"))
        except SfuError as exc:
            self._reply(event.stream_id, 404 if exc.code == "not_found" else 403)
            return
        self._wt_session = event.stream_id
        self._reply(event.stream_id, 200)
        # HTTP datagrams (RFC 9297) start with the quarter stream id of their session.
        self._attach(p, roq.encode_varint(event.stream_id // 4))

    def _reply(self, stream_id: int, status: int) -> None:
        assert self._h3 is not None
        headers = [(b":status", str(status).encode())]
        if status == 200:
            headers.append((b"sec-webtransport-http3-draft", b"draft02"))
        self._h3.send_headers(stream_id, headers, end_stream=status != 200)
        self.transmit()

    # -- the engine peer -------------------------------------------------------------------

    def _attach(self, p: Participant, prefix: bytes) -> None:
        owner = self.owner
        assert owner.rooms is not None
        quic = self._quic
        if quic._remote_max_datagram_frame_size is None:
            raise BadRequest("the client must accept DATAGRAM frames (RFC 9221 "
                             "max_datagram_frame_size)")
        if self._packet_limit() < 1200:
            raise BadRequest("the client's max_datagram_frame_size is too small for media")
        # Media goes only to an address that proved it is there (RFC 9000 §9.3): a path
        # aioquic promoted but has not validated yet waits for _sync.
        path = next((n for n in quic._network_paths if n.is_validated), None)
        if path is None:
            raise BadRequest("the connection's path is not validated yet")
        old = owner.sessions.get(p.pid)
        if old is not None and old is not self:  # a reconnect replaces the old session
            old.close_for("replaced by a new session")
        address = (str(path.addr[0]), int(path.addr[1]))
        # Bind first: a Conflict (another participant holds this address) refuses the
        # session before any engine state points at it.
        owner.rooms.bind(p, *address)
        self.participant, self.pid, self.prefix = p, p.pid, prefix
        self.address = address
        owner.sessions[p.pid] = self
        owner.counters["quic_sessions"] += 1
        self.engine.set_peer_transport(p.pid, owner.tid)
        self._keys = None
        self._sync()

    def detach(self) -> None:
        """Stop sealing for this participant and give its peer back to the UDP port (its
        tracks stay; a new session or a STUN binding takes over)."""
        owner = self.owner
        if self.pid < 0:
            return
        pid, self.pid = self.pid, -1
        if owner.sessions.get(pid) is not self:
            return
        del owner.sessions[pid]
        # aioquic may still send (its close): past every number the engine sealed with these
        # keys, or an AES-GCM nonce would repeat.
        with contextlib.suppress(ValueError):
            self._quic._packet_number = max(self._quic._packet_number,
                                            self.engine.quic_next_pn(pid))
        p = owner.rooms.by_pid.get(pid) if owner.rooms is not None else None
        if p is not None and p is self.participant:
            self.engine.clear_peer_quic(pid)
            assert owner.rooms is not None
            self.engine.set_peer_transport(pid, owner.rooms.tid)
            if p.address == self.address:  # not re-bound elsewhere (a STUN binding) meanwhile
                self.engine.unbind_peer(pid)
                p.address = None

    def close_for(self, reason: str) -> None:
        """Detach and close the connection (participant left, replaced, moved to UDP)."""
        self.detach()
        self._quic.close(error_code=0x0, reason_phrase=reason)
        self.transmit()

    @property
    def max_payload(self) -> int:
        """The largest RTP/RTCP packet that fits one datagram to this peer."""
        return self.engine.quic_max_payload(self.pid) if self.pid >= 0 else 0

    def _packet_limit(self) -> int:
        quic = self._quic
        limit = min(quic._max_datagram_size, self.client_max_datagram)
        frame = quic._remote_max_datagram_frame_size
        if frame is not None:  # the frame (type + data) must fit the peer's limit too
            limit = min(limit, frame + roq.SHORT_HEADER_MAX + roq.AEAD_TAG)
        return limit

    def _sync(self) -> None:
        """Keep the engine's copy of keys, peer CID and address equal to aioquic's."""
        quic = self._quic
        crypto = quic._cryptos.get(Epoch.ONE_RTT)
        send = crypto.send if crypto is not None else None
        if send is None or not send.is_valid() or send.cipher_suite is None:
            return
        keys = (send.secret, send.key_phase, quic._peer_cid.cid)
        if keys != self._keys:
            key, iv, _hp = derive_key_iv_hp(cipher_suite=send.cipher_suite, secret=send.secret,
                                            version=send.version)
            if self._hp is None:
                self._hp = _hp
            if self._keys is not None and keys[:2] != self._keys[:2]:
                self.owner.counters["quic_rekeyed"] += 1
            self.engine.set_peer_quic(self.pid, key=key, iv=iv, hp=self._hp,
                                      dcid=quic._peer_cid.cid,
                                      prefix=self.prefix, next_pn=quic._packet_number,
                                      key_phase=send.key_phase, max_packet=self._packet_limit())
            self._keys = keys
        recv = crypto.recv if crypto is not None else None
        if recv is not None and recv.is_valid() and recv.cipher_suite is not None:
            rx = (recv.secret, recv.key_phase, len(quic.host_cid))
            if rx != self._rx_keys and hasattr(_native, "QuicAckFilter"):
                key, iv, hp = derive_key_iv_hp(cipher_suite=recv.cipher_suite,
                                               secret=recv.secret, version=recv.version)
                if self._rx_hp is None:
                    self._rx_hp = hp
                self._ack_filter = _native.QuicAckFilter(key, iv, self._rx_hp, len(quic.host_cid),
                                                         recv.key_phase)
                self._rx_keys = rx
        path = quic._network_paths[0]
        addr = (str(path.addr[0]), int(path.addr[1]))
        # Send media to a new address only once aioquic has validated it (RFC 9000 §9.3:
        # no amplification towards an address that did not prove it is there).
        if addr != self.address and path.is_validated and self.participant is not None:
            assert self.owner.rooms is not None
            previous, self.address = self.address, addr
            try:
                self.owner.rooms.bind(self.participant, *addr)
            except Conflict as exc:  # the new address belongs to another participant
                self.address = previous
                self.owner.counters["quic_conflict"] += 1
                self._refuse(exc)
                return
            self.owner.counters["quic_moved"] += 1

    def _header_key(self, direction: str) -> bytes | None:
        crypto = self._quic._cryptos.get(Epoch.ONE_RTT)
        ctx = getattr(crypto, direction) if crypto is not None else None
        if ctx is None or not ctx.is_valid() or ctx.cipher_suite is None:
            return None
        return derive_key_iv_hp(cipher_suite=ctx.cipher_suite, secret=ctx.secret,
                                version=ctx.version)[2]

    def _refuse(self, exc: SfuError) -> None:
        """A typed error to the client (RoQ: on the control stream) and the connection
        closed; other sessions never notice."""
        if self.kind == "roq" and self._control_stream is not None:
            self._quic.send_stream_data(self._control_stream, roq.control_frame(
                {"type": "error", "code": exc.code, "message": str(exc)}), end_stream=True)
        self._quic.close(error_code=0x100 if exc.code == "unauthorized" else 0x101,
                         reason_phrase=f"{exc.code}: {exc}"[:200])

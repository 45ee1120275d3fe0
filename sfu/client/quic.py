"""The client side of RTP over QUIC: one aioquic connection to the node's QUIC port.

``QuicLink`` drives a sans-I/O ``QuicConnection`` on its own UDP socket, so that it can
rebind the socket to a new port mid-stream (what a phone does when it moves from Wi-Fi to
4G; the node follows through QUIC connection migration) and send a whole burst of packets
with one pass over aioquic. Media goes as DATAGRAM frames (``flow id || packet``); a packet
that must not be lost (keyframes) or that does not fit the path's datagram size goes on the
RoQ stream instead, so nothing is ever queued that aioquic could not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import register_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE

from sfu.transports import roq

log = logging.getLogger(__name__)

ACK_DELAY = 0.02  # seconds (we advertise aioquic's 25 ms max_ack_delay)


MEDIA_WINDOW_FLOOR = 64  # packets


class MediaCongestionControl(RenoCongestionControl):
    """NewReno whose window never falls below MEDIA_WINDOW_FLOOR packets. The media's rate is
    the RTP layer's business (as over UDP; the node's NACK/RTX and FEC repair losses). Plain
    NewReno under 10 % random loss shrinks to a few packets per RTT and holds RTP back until
    its repairs miss their playout time."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._floor = MEDIA_WINDOW_FLOOR * max_datagram_size

    def _hold_floor(self) -> None:
        if self.congestion_window < self._floor:
            self.congestion_window = self._floor

    def on_packets_lost(self, *, now: float, packets: Any) -> None:
        super().on_packets_lost(now=now, packets=packets)
        self._hold_floor()

    def on_persistent_congestion(self) -> None:
        super().on_persistent_congestion()
        self._hold_floor()


register_congestion_control("sfu-media", MediaCongestionControl)


class QuicRefused(ConnectionRefusedError):
    """The node refused the session (``code`` is the node's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class QuicLink:
    def __init__(self, node: tuple[str, int], *, max_datagram: int = 1452,
                 flow_id: int = roq.DEFAULT_FLOW_ID, server_name: str = "localhost",
                 cafile: str | None = None, rcvbuf: int = 2 << 20,
                 keepalive: float = 10.0) -> None:
        self.node = node
        self.flow_id = flow_id
        self.prefix = roq.encode_varint(flow_id)
        config = QuicConfiguration(is_client=True, alpn_protocols=[roq.ALPN],
                                   max_datagram_frame_size=65536,
                                   max_datagram_size=max_datagram, server_name=server_name,
                                   congestion_control_algorithm="sfu-media")
        if cafile is None:
            # The node's certificate is self-signed by default; the token, not the
            # certificate, authenticates the session on loopback and in tests.
            config.verify_mode = ssl.CERT_NONE
        else:
            config.load_verify_locations(cafile)
        self.quic = QuicConnection(configuration=config)
        self.quic._ack_delay = ACK_DELAY
        self.on_datagram: Callable[[bytes], None] = lambda data: None
        self.stats = {"datagrams_out": 0, "stream_packets_out": 0, "datagrams_in": 0,
                      "bad_flow": 0, "rebinds": 0}
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush: asyncio.Handle | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._control_id: int | None = None
        self._control = roq.FrameReader(roq.MAX_CONTROL_FRAME)
        self._control_reply: asyncio.Future[dict[str, Any]] | None = None
        self._media_stream: int | None = None
        # A viewer waiting for a host receives nothing and would send nothing: the node
        # closes idle connections (30 s), so ping when nothing else went out for this long.
        self.keepalive = keepalive
        self._keepalive: asyncio.TimerHandle | None = None
        self._sent_since_ping = False
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, timeout: float = 5.0, local_host: str = "127.0.0.1") -> None:
        self._loop = asyncio.get_running_loop()
        self._open_socket(local_host)
        self._handshake = self._loop.create_future()
        self.quic.connect(self.node, now=self._loop.time())
        self._transmit()
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake), timeout)
        except TimeoutError:
            self.close()
            raise TimeoutError(f"no QUIC handshake with {self.node} in {timeout}s") from None
        self._keepalive = self._loop.call_later(self.keepalive, self._on_keepalive)

    async def authenticate(self, room: str, participant: str, token: str,
                           timeout: float = 5.0) -> dict[str, Any]:
        """Present the participant's token; returns the node's ``ok`` frame (address,
        max_payload). QuicRefused if the node says no."""
        assert self._loop is not None
        self._control_id = self.quic.get_next_available_stream_id()
        self._control_reply = self._loop.create_future()
        self.quic.send_stream_data(self._control_id, roq.control_frame({
            "type": "auth", "room": room, "participant": participant, "token": token,
            "flow_id": self.flow_id, "max_datagram": self.quic._max_datagram_size}))
        self._transmit()
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._control_reply), timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer to QUIC auth from {self.node} in {timeout}s") \
                from None
        if reply.get("type") != "ok":
            raise QuicRefused(str(reply.get("code", "unknown")), str(reply.get("message", "")))
        return reply

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.quic.close()
            self._transmit()
        for handle in (self._timer, self._flush, self._keepalive):
            if handle is not None:
                handle.cancel()
        self._close_socket()
        for fut in (self._handshake, self._control_reply):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("QUIC link closed"))

    def rebind(self, local_host: str = "127.0.0.1") -> tuple[str, int]:
        """Move to a new UDP socket (new local port), as after a network change. The node
        sees packets of the same connection from a new address, validates the path and
        sends there from then on."""
        self._close_socket()
        self._open_socket(local_host)
        self.stats["rebinds"] += 1
        # Probe at once so the node learns the new path without waiting for media.
        self.quic.send_ping(0)
        self._transmit()
        return self.local_address

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def max_payload(self) -> int:
        """The largest packet that still goes out as one DATAGRAM frame."""
        overhead = (1 + len(self.quic._peer_cid.cid) + PACKET_NUMBER_SEND_SIZE + roq.AEAD_TAG
                    + 1 + 2 + len(self.prefix))  # frame type, length varint, flow id
        limit = self.quic._max_datagram_size
        frame_limit = self.quic._remote_max_datagram_frame_size
        payload = limit - overhead
        if frame_limit is not None:
            payload = min(payload, frame_limit - 3 - len(self.prefix))
        return payload

    # -- sending ---------------------------------------------------------------------------

    def send(self, packet: bytes, reliable: bool = False) -> None:
        """One RTP/RTCP packet: a datagram, or the RoQ stream when reliable or too big."""
        if self.closed:
            return
        if reliable or len(packet) > self.max_payload:
            if self._media_stream is None:
                self._media_stream = self.quic.get_next_available_stream_id(
                    is_unidirectional=True)
                self.quic.send_stream_data(self._media_stream, self.prefix)
            self.quic.send_stream_data(self._media_stream, roq.stream_packet(packet))
            self.stats["stream_packets_out"] += 1
        else:
            self.quic.send_datagram_frame(self.prefix + packet)
            self.stats["datagrams_out"] += 1
        self._sent_since_ping = True
        if self._flush is None and self._loop is not None:
            # Everything sent in this loop turn leaves in one pass over aioquic.
            self._flush = self._loop.call_soon(self._transmit)

    # -- socket and aioquic plumbing -------------------------------------------------------

    def _open_socket(self, local_host: str) -> None:
        assert self._loop is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.bind((local_host, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _close_socket(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_readable(self) -> None:
        sock, loop = self._sock, self._loop
        assert loop is not None
        got = 0
        while sock is not None and got < 256:
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors surface here; the connection decides
                log.debug("quic recv: %s", exc)
                break
            got += 1
            self.quic.receive_datagram(data, addr, now=loop.time())
        self._process_events()
        self._transmit()

    def _process_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.DatagramFrameReceived):
                self._on_datagram_frame(event.data)
            elif isinstance(event, events.StreamDataReceived):
                if event.stream_id == self._control_id:
                    self._on_control(event.data)
            elif isinstance(event, events.HandshakeCompleted):
                if self._handshake is not None and not self._handshake.done():
                    self._handshake.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error {event.error_code:#x}"
                for fut in (self._handshake, self._control_reply):
                    if fut is not None and not fut.done():
                        code, _, message = reason.partition(": ")
                        fut.set_exception(QuicRefused(code, message) if message
                                          else ConnectionError(f"QUIC closed: {reason}"))
                self.closed = True

    def _on_datagram_frame(self, data: bytes) -> None:
        try:
            flow, off = roq.decode_varint(data)
        except roq.RoqError:
            self.stats["bad_flow"] += 1
            return
        if flow != self.flow_id:
            self.stats["bad_flow"] += 1
            return
        self.stats["datagrams_in"] += 1
        self.on_datagram(data[off:])

    def _on_control(self, data: bytes) -> None:
        try:
            for body in self._control.feed(data):
                msg = roq.decode_control(body)
                if self._control_reply is not None and not self._control_reply.done():
                    self._control_reply.set_result(msg)
        except roq.RoqError as exc:
            log.warning("bad control frame from node: %s", exc)

    def _transmit(self) -> None:
        self._flush = None
        loop = self._loop
        if loop is None:
            return
        sock = self._sock
        for data, addr in self.quic.datagrams_to_send(now=loop.time()):
            if sock is None:
                break
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break  # the socket buffer is full: QUIC's own recovery resends streams
            except OSError as exc:
                log.debug("quic send: %s", exc)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None and not self.closed:
            self._timer = loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_keepalive(self) -> None:
        if self.closed or self._loop is None:
            return
        if not self._sent_since_ping:
            self.quic.send_ping(0)
            self._transmit()
        self._sent_since_ping = False
        self._keepalive = self._loop.call_later(self.keepalive, self._on_keepalive)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        self.quic.handle_timer(now=self._loop.time())
        self._process_events()
        self._transmit()


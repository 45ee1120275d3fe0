"""The client's media endpoint: UDP with a STUN binding, or RTP over QUIC.

A client talks to the node on one UDP socket connected to the node's media port: a
STUN Binding Request authenticated with the participant's ICE credentials binds the
socket's address to the participant (design.md §3), then RTP and RTCP flow on it.
Datagrams are demultiplexed on the first byte (RFC 7983) and, for RTP vs RTCP, on the
payload type byte (RFC 5761 §4: 192..223 is RTCP). With ``use_quic`` the same packets ride
a QUIC connection to the node's QUIC port instead (``sfu.client.quic``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from sfu import _native, data_wire, stun

__all__ = ["PollTimer", "RtpEndpoint", "ntp_now", "parse_hostport", "parse_rtcp_counted",
           "random_ssrc", "use_transport"]

log = logging.getLogger(__name__)

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
VIDEO_CLOCK = 90_000


def ntp_now(wall: float | None = None) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of the wall clock."""
    t = time.time() if wall is None else wall
    return int((t + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def random_ssrc() -> int:
    while True:
        ssrc = int.from_bytes(os.urandom(4), "big")
        if ssrc:
            return ssrc


def _dicts(packet: dict[str, object], key: str) -> list[dict[str, int]]:
    """A list-of-dicts field of a parse_rtcp result, typed for the checker."""
    return cast(list[dict[str, int]], packet.get(key, []))


class _RtcpErrorCount(Protocol):
    rtcp_errors: int


def parse_rtcp_counted(data: bytes, stats: _RtcpErrorCount) -> list[dict[str, object]]:
    """The packets of an RTCP compound; a malformed one counts in ``stats.rtcp_errors`` and
    yields none (bad network input never raises into the event loop)."""
    try:
        return _native.parse_rtcp(data)
    except ValueError:
        stats.rtcp_errors += 1
        return []


def use_transport(endpoint: RtpEndpoint, transport: str, joined: dict[str, Any], room: str,
                  participant: str, via: tuple[str, int] | None = None) -> None:
    """Point an endpoint at the node's QUIC port when ``transport == "quic"`` (or at
    ``via``, a proxy in front of it)."""
    if transport == "quic":
        if not joined.get("quic"):
            raise ValueError("the node has no QUIC port (participant.join gave no 'quic')")
        endpoint.use_quic(via or parse_hostport(joined["quic"]), room, participant,
                          joined["token"])
    elif transport != "udp":
        raise ValueError(f"transport must be 'udp' or 'quic', not {transport!r}")


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class PollTimer:
    """Calls ``callback()`` at the earliest time asked for (``time.monotonic()`` seconds),
    at the latest ``interval`` after the last call: NACKs leave when they are due, not on
    the next tick of a fixed timer."""

    def __init__(self, callback: Callable[[], float | None], interval: float = 0.005) -> None:
        self._callback = callback
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._closed = False

    def at(self, t: float | None) -> None:
        """Make sure the callback runs no later than ``t`` (None: the regular interval)."""
        if self._closed:
            return
        now = time.monotonic()
        t = now + self.interval if t is None else min(t, now + self.interval)
        if self._handle is not None:
            if self._at <= t:
                return
            self._handle.cancel()
        self._at = t
        self._handle = asyncio.get_running_loop().call_later(max(0.0, t - now), self._fire)

    def _fire(self) -> None:
        self._handle = None
        try:
            nxt = self._callback()
        finally:
            self.at(nxt)

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _ConnectedUdp:
    """A non-blocking UDP socket connected to the node, read on the loop's reader callback.

    asyncio's selector transport reads one datagram per loop iteration; with several
    endpoints decoding video in one loop, the packets of a burst then get arrival times
    spread over many iterations and miss their playout deadline. Reading up to
    ``RECV_BATCH`` datagrams per wake-up keeps arrival times close to the kernel's.
    """

    RECV_BATCH = 64

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 proto: RtpEndpoint) -> None:
        self._loop = loop
        self._sock = sock
        self._proto = proto
        self._closing = False
        self.send_errors = 0
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(self.RECV_BATCH):
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable and the like
                self._proto.error_received(exc)
                continue
            self._proto.datagram_received(data, self._proto.node)

    def sendto(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError:  # full buffer or ICMP error: the datagram is lost, as UDP may be
            self.send_errors += 1

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def get_extra_info(self, name: str) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return None


class RtpEndpoint(asyncio.DatagramProtocol):
    """A UDP socket connected to the node, bound to a participant with STUN."""

    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str) -> None:
        self.node = node
        self.ufrag = ufrag
        self.pwd = pwd
        self.transport: _ConnectedUdp | None = None
        self.mapped: tuple[str, int] | None = None  # our address as the node sees it
        self.garbage = 0  # datagrams we could not classify or parse
        self._stun_waiters: dict[bytes, asyncio.Future[stun.StunMessage]] = {}
        self.pli_interval = 0.3  # at most one PLI per this long (RFC 4585 §3.5.1 spirit)
        self._last_pli = -1e9
        self.data_channel: Any = None  # sfu.client.data.DataChannel: gets SFUD APP packets
        self.quic: Any = None  # sfu.client.quic.QuicLink once open() ran with use_quic()
        self._quic_login: tuple[tuple[str, int], str, str, str] | None = None

    def use_quic(self, node: tuple[str, int], room: str, participant: str, token: str) -> None:
        """Carry RTP/RTCP over QUIC (RoQ) to the node's QUIC port instead of plain UDP; the
        participant's token, not STUN, binds the connection (call before ``open``)."""
        self._quic_login = (node, room, participant, token)

    async def open(self, local_host: str = "127.0.0.1", rcvbuf: int = 2 << 20) -> None:
        loop = asyncio.get_running_loop()
        if self._quic_login is not None:
            from sfu.client.quic import QuicLink  # lazy: UDP-only clients skip aioquic
            link = QuicLink(self._quic_login[0], rcvbuf=rcvbuf)
            link.on_datagram = lambda data: self.datagram_received(data, self.node)
            await link.connect(local_host=local_host)
            self.quic = link
            return
        family = socket.AF_INET6 if ":" in self.node[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Many endpoints share one loop (tests, demo); while PyAV decodes for one of
            # them the others' packets queue in the kernel. The default ~200 KiB buffer
            # overflows after a short stall on a busy machine, so ask for more (the kernel
            # caps it at net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((local_host if family == socket.AF_INET else "::1", 0))
            sock.connect(self.node)
        except BaseException:
            sock.close()
            raise
        self.transport = _ConnectedUdp(loop, sock, self)

    def send_pli(self, sender_ssrc: int, media_ssrc: int, force: bool = False) -> bool:
        """Ask for a keyframe of media_ssrc unless a PLI went out less than
        ``pli_interval`` ago (or force). True if one was sent."""
        now = time.monotonic()
        if not media_ssrc or (not force and now - self._last_pli < self.pli_interval):
            return False
        self._last_pli = now
        self.send(_native.build_pli(sender_ssrc, media_ssrc))
        return True

    @property
    def local_address(self) -> tuple[str, int]:
        if self.quic is not None:
            return self.quic.local_address  # type: ignore[no-any-return]
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the node may not be up yet; STUN retries.
        log.debug("udp error: %s", exc)

    def send(self, data: bytes, reliable: bool = False) -> None:
        """One datagram to the node; over QUIC, ``reliable`` puts it on the RoQ stream."""
        if self.quic is not None:
            self.quic.send(data, reliable)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)

    def close(self) -> None:
        if self.quic is not None:
            self.quic.close()
        if self.transport is not None:
            self.transport.close()
        for fut in self._stun_waiters.values():
            if not fut.done():
                fut.cancel()

    async def bind(self, timeout: float = 5.0, retry: float = 0.1) -> tuple[str, int]:
        """Send Binding Requests until the node answers with a valid success response.

        Requests are retransmitted with backoff (``retry`` doubling up to 0.8 s) and an
        answer to any of them counts, so a link whose RTT exceeds ``retry`` still binds."""
        if self.quic is not None:
            assert self._quic_login is not None
            _node, room, participant, token = self._quic_login
            reply = await self.quic.authenticate(room, participant, token, timeout)
            self.mapped = parse_hostport(str(reply["address"]))
            return self.mapped
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[stun.StunMessage] = loop.create_future()
        tids: list[bytes] = []
        try:
            while True:
                tid = os.urandom(12)
                tids.append(tid)
                self._stun_waiters[tid] = fut
                self.send(stun.binding_request(self.ufrag, self.pwd, tid))
                wait = min(retry, max(0.0, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), wait)
                if fut.done():
                    break
                if loop.time() >= deadline:
                    raise TimeoutError(
                        f"no STUN binding response from {self.node} in {timeout}s")
                retry = min(2 * retry, 0.8)
        finally:
            for tid in tids:
                self._stun_waiters.pop(tid, None)
            if not fut.done():
                fut.cancel()
        msg = fut.result()
        if msg.msg_type != stun.BINDING_SUCCESS:
            raise ConnectionRefusedError(f"STUN binding rejected: {msg.error_code()}")
        mapped = msg.xor_mapped_address()
        if mapped is None:
            raise ConnectionError("STUN success without XOR-MAPPED-ADDRESS")
        self.mapped = mapped
        return mapped

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data:
            return
        first = data[0]
        if first < 4:
            self._on_stun(data)
        elif 128 <= first < 192 and len(data) >= 2:
            if 192 <= data[1] <= 223:
                if self.data_channel is not None and data_wire.has_sfud(data):
                    self.data_channel.on_packet(data)
                self.on_rtcp(data)
            else:
                self.on_rtp(data)
        else:
            self.garbage += 1

    def _on_stun(self, data: bytes) -> None:
        try:
            msg = stun.parse(data)
        except ValueError:
            self.garbage += 1
            return
        fut = self._stun_waiters.get(msg.transaction_id)
        if fut is None or fut.done():
            return
        # Success responses are authenticated with our password (RFC 8489 §9.1.4);
        # errors carry no integrity (see stun.binding_error), so they are taken as is.
        if msg.msg_type == stun.BINDING_SUCCESS and not stun.verify_integrity(
            data, self.pwd.encode()
        ):
            self.garbage += 1
            return
        fut.set_result(msg)

    async def rebind(self, timeout: float = 2.0) -> tuple[str, int]:
        """Move to a new local port mid-stream, as a phone does on a network change.
        Over UDP a STUN binding from the new address moves the participant (packets sent
        before it lands are NACKed and repaired); over QUIC, connection migration does."""
        if self.quic is not None:
            return self.quic.rebind()  # type: ignore[no-any-return]
        old = self.transport
        await self.open()
        if old is not None:
            old.close()
        return await self.bind(timeout)

    async def open_bind_call(self, control: Any, bind_timeout: float, method: str,
                             **params: Any) -> Any:
        """Open the socket, bind with STUN, then make one control call (the publish or
        subscribe this endpoint is for); the socket is closed if any step fails."""
        await self.open()
        try:
            await self.bind(bind_timeout)
            return await control.call(method, **params)
        except BaseException:
            self.close()
            raise

    def on_rtp(self, data: bytes) -> None:
        self.garbage += 1  # endpoints that receive media override this

    def on_rtcp(self, data: bytes) -> None:
        pass

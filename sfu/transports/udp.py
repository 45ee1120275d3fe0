"""UDP media transport: one socket for every participant, read by the native engine.

Python only wires the fd into the loop (``add_reader``), drives the engine timers and
handles the few datagrams the engine hands up: STUN Binding Requests, which authenticate a
participant and bind its address (ICE-lite, design.md §3). Events are drained once per
read batch or tick, never per packet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu import _native, stun
from sfu.errors import Conflict

if TYPE_CHECKING:
    from sfu.rooms import RoomManager

log = logging.getLogger("sfu.udp")

SOCKET_BUFFER = 4 * 1024 * 1024
MIN_TICK = 0.005
MAX_TICK = 1.0
COUNTER_KEYS = ("stun_bound", "stun_moved", "stun_rejected", "stun_malformed", "stun_ignored",
                "stun_conflict", "pli_events", "bye_events", "rr_events", "event_overflows")


def set_buffers(sock: socket.socket) -> None:
    """Ask for ~4 MiB socket buffers so bursts survive a busy loop. The plain options are
    capped by net.core.[rw]mem_max; the *FORCE variants (CAP_NET_ADMIN) are not."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    log.debug("udp buffers: rcv %d snd %d",
              sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
              sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


class UdpTransport:
    def __init__(self, engine: _native.Engine, loop: asyncio.AbstractEventLoop, host: str,
                 port: int) -> None:
        self.engine = engine
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            set_buffers(self.sock)
            self.sock.setblocking(False)
            self.sock.bind((host, port))
            self.tid = engine.add_udp(self.sock.fileno())
        except BaseException:
            self.sock.close()
            raise
        self.host, self.port = self.sock.getsockname()[:2]
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self._rooms: RoomManager | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.wallclock_offset = time.time() - time.monotonic()
        # Called with the downtrack handle of each receiver-report block (recovery policy).
        self.on_receiver_report: Callable[[int], None] | None = None
        # Simulcast: EV_LAYER (did, layer, temporal), EV_BWE (pid, estimate, acked),
        # EV_RID (pid, ssrc, rid packed in an int) -> handler(*event[1:4]).
        self.handlers: dict[int, Callable[[int, int, int], None]] = {}

    def start(self, rooms: RoomManager) -> None:
        self._rooms = rooms
        # Sender reports carry NTP wallclock; the engine only sees CLOCK_MONOTONIC
        # (time.monotonic(), which the native reader also uses).
        self.wallclock_offset = time.time() - time.monotonic()
        self.engine.set_wallclock_offset(self.wallclock_offset)
        # The read callback is native (no Python frame per wakeup); Python runs only to
        # drain events.
        self._reader = _native.UdpReader(self.engine, self.tid, self._drain)
        self.loop.add_reader(self.sock.fileno(), self._reader)
        self._on_tick()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.engine.remove_transport(self.tid)
        self.sock.close()

    # -- loop callbacks --------------------------------------------------------------------

    def _on_tick(self) -> None:
        now = time.monotonic()
        deadline = self.engine.on_tick(now)
        if self.engine.pending_events:
            self._drain()
        deadline = min(max(deadline, now + MIN_TICK), now + MAX_TICK)
        if not self._closed:
            self._timer = self.loop.call_later(deadline - now, self._on_tick)

    def _drain(self) -> None:
        for event in self.engine.drain_events():
            kind = event[0]
            try:
                if kind == _native.EV_STUN:
                    _, _tid, host, port, data = event
                    if isinstance(host, str) and isinstance(port, int) \
                            and isinstance(data, bytes):
                        self._on_stun(host, port, data)
                elif kind == _native.EV_PLI:
                    self.counters["pli_events"] += 1
                    log.debug("PLI sent upstream: source %s ssrc %s for peer %s", *event[1:4])
                elif kind == _native.EV_BYE:
                    self.counters["bye_events"] += 1
                elif kind == _native.EV_RR:
                    self.counters["rr_events"] += 1  # the numbers are in downtrack_stats
                    if self.on_receiver_report is not None:
                        self.on_receiver_report(int(event[1]))
                    if _native.EV_RR in self.handlers:
                        self.handlers[_native.EV_RR](int(event[1]), 0, 0)
                elif kind == _native.EV_DATA:
                    if kind in self.handlers:  # (EV_DATA, pid, subtype, payload bytes)
                        self.handlers[kind](int(event[1]), int(event[2]), event[3])
                elif kind in self.handlers:
                    self.handlers[kind](int(event[1]), int(event[2]), int(event[3]))
                elif kind == _native.EV_OVERFLOW:
                    self.counters["event_overflows"] += 1
                    log.warning("engine event ring overflowed: %s events lost", event[1])
            except Exception:  # one bad event must not stop the drain or the reader
                log.exception("error handling engine event %r", event[:2])

    # -- STUN (ICE-lite binding) -----------------------------------------------------------

    def _on_stun(self, host: str, port: int, data: bytes) -> None:
        try:
            msg = stun.parse(data)
        except ValueError:
            self.counters["stun_malformed"] += 1
            return
        if msg.msg_type != stun.BINDING_REQUEST:
            # Indications are keepalives; responses are not expected by a lite agent.
            self.counters["stun_ignored"] += 1
            return
        if stun.has_fingerprint(msg) and not stun.verify_fingerprint(data):
            self.counters["stun_rejected"] += 1  # RFC 8489 §14.7: silently discard
            return
        username = msg.username() or ""
        ufrag = username.split(":", 1)[0]
        p = self._rooms.by_ufrag.get(ufrag) if self._rooms is not None and ufrag else None
        if p is None or not stun.verify_integrity(data, p.ice_pwd.encode()):
            self.counters["stun_rejected"] += 1
            self._send(stun.binding_error(msg, 401, "Unauthorized"), host, port)
            return
        assert self._rooms is not None
        try:
            outcome = self._rooms.bind(p, host, port)
        except Conflict:
            self.counters["stun_conflict"] += 1
            self._send(stun.binding_error(msg, 400, "Address in use"), host, port)
            return
        if outcome != "same":
            self.counters["stun_" + outcome] += 1
        self._send(stun.binding_success(msg, host, port, p.ice_pwd), host, port)

    def _send(self, data: bytes, host: str, port: int) -> None:
        if not self._closed:
            self.engine.send_to(self.tid, data, host, port)

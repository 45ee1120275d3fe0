"""Control socket server: msgpack requests in, responses and ordered events out.

One ``_Connection`` (an asyncio Protocol) per client on a Unix stream socket and,
optionally, on loopback TCP with a shared secret. Requests are dispatched to the node's
``call``; ``auth`` and ``events.subscribe`` are handled here. A broken or hostile client
only ever loses its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Collection
from typing import Any, cast

from msgpack import OutOfData

from sfu.control.protocol import (
    FEED_CHUNK,
    SERVER_METHODS,
    ControlLimits,
    MessageId,
    Request,
    error_response,
    make_unpacker,
    message_id,
    pack,
    parse_request,
    parse_rooms_filter,
    response,
)
from sfu.errors import BadRequest, InternalError, SfuError
from sfu.events import Event, EventBus

log = logging.getLogger("sfu.control")

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class _Connection(asyncio.Protocol):
    """One control client. All methods run on the event loop thread."""

    def __init__(self, server: ControlServer, needs_auth: bool) -> None:
        self._server = server
        self._limits = server.limits
        self._unpacker = make_unpacker(server.limits)
        self._authenticated = not needs_auth
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._in_flight = 0
        self._eof = False  # the client shut down its sending side
        self._fed = 0  # bytes fed to the unpacker so far
        self._msg_start = 0  # stream offset where the message being decoded starts
        self._unsubscribe: Callable[[], None] | None = None
        self.peer = "?"

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if not self._server._register(self):
            self._fail(None, "limit", "too many control connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._drop_subscription()
        self._server._unregister(self)

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        limit = self._limits.max_message_size
        # Slicing keeps the unpacker buffer within one message + one slice (protocol.py).
        for start in range(0, len(view), FEED_CHUNK):
            if self._closing:
                return
            chunk = view[start:start + FEED_CHUNK]
            try:
                self._unpacker.feed(chunk)
            except Exception:  # BufferFull: cannot happen with the accounting below
                self._fail(None, "limit", f"message exceeds {limit} bytes")
                return
            self._fed += len(chunk)
            self._drain_messages()
            # The unpacker parses incrementally and frees consumed bytes, so its own
            # max_buffer_size does not bound one message: count bytes ourselves.
            if not self._closing and self._fed - self._msg_start > limit:
                self._fail(None, "limit", f"message exceeds {limit} bytes")
                return

    def eof_received(self) -> bool | None:
        # A half-closed client (`nc -N`, shell pipes) still gets its pending answers.
        self._eof = True
        return self._in_flight > 0 and not self._closing

    # -- message handling --

    def _drain_messages(self) -> None:
        while not self._closing:
            try:
                message = self._unpacker.unpack()
            except OutOfData:
                return
            except Exception as exc:  # FormatError, StackError, ValueError, Unicode...
                log.info("control %s: undecodable input (%s: %s), closing",
                         self.peer, type(exc).__name__, exc)
                if "exceeds max" in str(exc):  # msgpack's max_*_len: a length header > limit
                    self._fail(None, "limit", f"message exceeds "
                               f"{self._limits.max_message_size} bytes ({exc})")
                else:
                    self._fail(None, "bad_request",
                               f"undecodable message: {type(exc).__name__}")
                return
            end = self._unpacker.tell()
            size, self._msg_start = end - self._msg_start, end
            if size > self._limits.max_message_size:
                self._fail(message_id(message, self._limits), "limit",
                           f"message of {size} bytes exceeds "
                           f"{self._limits.max_message_size} bytes")
                return
            self._handle(message)

    def _handle(self, message: object) -> None:
        try:
            request = parse_request(message, self._limits)
        except SfuError as exc:
            if not self._authenticated:
                self._fail(message_id(message, self._limits), "unauthorized",
                           "authenticate first with method 'auth'")
                return
            self._reply_error(message_id(message, self._limits), exc.code, str(exc))
            return
        if not self._authenticated:
            self._authenticate(request)
            return
        if request.method == "auth":
            self._send(response(request.id, {}))
        elif request.method == "events.subscribe":
            self._subscribe(request)
        elif (self._server.methods is not None
              and request.method not in self._server.methods):
            valid = ", ".join(sorted(self._server.methods | SERVER_METHODS))
            self._reply_error(request.id, "bad_request",
                              f"unknown method '{request.method}' (valid: {valid})")
        elif self._in_flight >= self._limits.max_in_flight:
            self._reply_error(request.id, "limit",
                              f"more than {self._limits.max_in_flight} requests in flight")
        else:
            self._in_flight += 1
            self._server._spawn(self._dispatch(request))

    def _authenticate(self, request: Request) -> None:
        secret = request.params.get("secret")
        expected = self._server.secret
        if (request.method == "auth" and isinstance(secret, str) and expected is not None
                and hmac.compare_digest(secret.encode(), expected.encode())):
            self._authenticated = True
            self._send(response(request.id, {}))
            return
        log.warning("control %s: authentication failed, closing", self.peer)
        self._fail(request.id, "unauthorized",
                   "wrong secret" if request.method == "auth"
                   else "authenticate first with method 'auth'")

    def _subscribe(self, request: Request) -> None:
        try:
            rooms = parse_rooms_filter(request.params)
        except BadRequest as exc:
            self._reply_error(request.id, exc.code, str(exc))
            return
        # Reply first so the result precedes every event on this connection.
        self._send(response(request.id, {}))
        self._drop_subscription()
        if not self._closing:
            self._unsubscribe = self._server.bus.subscribe(rooms, self._on_event)

    def _drop_subscription(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event: Event) -> None:
        # Called synchronously from EventBus.publish: never raise into the publisher.
        try:
            self._send(event)
        except Exception:
            log.exception("control %s: cannot send event %r", self.peer, event.get("event"))

    async def _dispatch(self, request: Request) -> None:
        try:
            result = await self._server.call(request.method, request.params)
            if result is not None and not isinstance(result, dict):
                raise TypeError(f"{request.method} returned {type(result).__name__}")
            reply = response(request.id, result)
        except SfuError as exc:
            reply = error_response(request.id, exc.code, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("control: %s failed", request.method)
            reply = error_response(request.id, InternalError.code,
                                   f"internal error in {request.method}: "
                                   f"{type(exc).__name__}")
        finally:
            self._in_flight -= 1
        self._send(reply)
        if self._eof and self._in_flight == 0 and self._transport is not None:
            self._closing = True
            self._transport.close()

    # -- output --

    def _send(self, message: dict[str, Any]) -> None:
        if self._closing or self._transport is None:
            return
        try:
            data = pack(message)
        except Exception as exc:
            log.exception("control %s: unencodable message", self.peer)
            msg_id = message.get("id") if "event" not in message else None
            if msg_id is None:
                return
            data = pack(error_response(msg_id, "internal",
                                       f"result could not be encoded: {type(exc).__name__}"))
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > self._limits.max_write_buffer:
            log.warning("control %s: not reading (%d bytes unsent), dropping connection",
                        self.peer, self._transport.get_write_buffer_size())
            self._abort()

    def _reply_error(self, msg_id: MessageId, code: str, text: str) -> None:
        self._send(error_response(msg_id, code, text))

    def _fail(self, msg_id: MessageId, code: str, text: str) -> None:
        """Send a last error, then close this connection once it has been flushed."""
        self._send(error_response(msg_id, code, text))
        self._closing = True
        self._drop_subscription()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self._closing = True
        self._drop_subscription()
        if self._transport is not None:
            self._transport.abort()


class ControlServer:
    """Listeners plus the live connections; created by ``start_control_server``."""

    def __init__(self, call: Call, bus: EventBus, secret: str | None, limits: ControlLimits,
                 methods: Collection[str] | None) -> None:
        self.call = call
        self.bus = bus
        self.secret = secret
        self.limits = limits
        self.methods: frozenset[str] | None = None if methods is None else frozenset(methods)
        self.path: str | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _register(self, conn: _Connection) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            return False
        self._connections.add(conn)
        return True

    def _unregister(self, conn: _Connection) -> None:
        self._connections.discard(conn)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        sock = _bind_unix(path)
        try:
            st = os.stat(path)
            self._inode = (st.st_dev, st.st_ino)
            server = await loop.create_unix_server(lambda: _Connection(self, False), sock=sock)
        except BaseException:
            sock.close()
            raise
        self.path = path
        self._servers.append(server)

    async def _listen_tcp(self, host: str, port: int) -> None:
        if self.secret is None:
            raise ValueError("a TCP control listener needs a shared secret")
        try:
            if not ipaddress.ip_address(host).is_loopback:
                log.warning("control TCP listener on non-loopback address %s", host)
        except ValueError:
            log.warning("control TCP listener on host name %r (expected loopback)", host)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self, True), host, port)
        self.tcp_address = server.sockets[0].getsockname()[:2]
        self._servers.append(server)

    def close(self) -> None:
        """Stop listening, drop every connection and cancel unanswered requests."""
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn._abort()
        for task in list(self._tasks):
            task.cancel()
        if self.path is not None and self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # do not unlink a successor's socket
                    os.unlink(self.path)
            self._inode = None

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _bind_unix(path: str) -> socket.socket:
    """Bind a Unix stream socket at ``path`` with mode 0600, creating the parent dir.

    A stale socket file (nobody listening) is replaced; a live one is an error.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by a node that died
        else:
            raise OSError(errno.EADDRINUSE, f"a node is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask makes the socket 0600 from the moment it exists (no window before chmod).
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    return sock


async def start_control_server(
    call: Call,
    bus: EventBus,
    path: str | None,
    tcp: tuple[str, int] | None = None,
    secret: str | None = None,
    limits: ControlLimits | None = None,
    *,
    methods: Collection[str] | None = None,
) -> ControlServer:
    """Listen on ``path`` (Unix socket) and/or ``tcp`` (needs ``secret``).

    ``methods``: if given, requests for other methods (besides ``auth`` and
    ``events.subscribe``) are refused here with ``bad_request``; otherwise ``call``
    is expected to raise ``BadRequest`` for unknown methods.
    """
    if path is None and tcp is None:
        raise ValueError("the control server needs a Unix socket path or a TCP address")
    if tcp is not None and not secret:
        raise ValueError("a TCP control listener needs a shared secret")
    server = ControlServer(call, bus, secret, limits or ControlLimits(), methods)
    try:
        if path is not None:
            await server._listen_unix(path)
        if tcp is not None:
            await server._listen_tcp(*tcp)
    except BaseException:
        server.close()
        raise
    return server


__all__ = ["Call", "ControlServer", "start_control_server"]

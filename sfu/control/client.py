"""Typed asyncio client for the control protocol (what an embedding service uses).

    async with await Client.connect_unix("./run/sfu.sock") as node:
        await node.room_create("r1")
        await node.subscribe_events(["r1"])
        async for event in node.events():
            ...

Concurrent calls are matched to responses by id; errors come back as the typed
``sfu.errors`` exceptions; a lost connection fails pending calls with ConnectionError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from msgpack import OutOfData

from sfu.control.protocol import ControlLimits, make_unpacker, pack
from sfu.errors import SfuError, error_for_code

log = logging.getLogger("sfu.control.client")

# Results such as stats.get or room.snapshot of a big room can exceed a request's size.
CLIENT_LIMITS = ControlLimits(max_message_size=64 << 20, max_depth=64)
_READ_SIZE = 64 * 1024
_CLOSED = object()  # sentinel queued when the connection ends


class Client:
    """One control connection. Build it with ``connect_unix`` or ``connect_tcp``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_events: int = 65536) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._max_events = max_events
        self._error: ConnectionError | None = None  # why the connection ended, if not by us
        self._closed = False
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect_unix(cls, path: str = "./run/sfu.sock") -> Client:
        reader, writer = await asyncio.open_unix_connection(path, limit=_READ_SIZE)
        return cls(reader, writer)

    @classmethod
    async def connect_tcp(cls, host: str, port: int, secret: str) -> Client:
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
        client = cls(reader, writer)
        try:
            await client.call("auth", secret=secret)
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    # -- core --

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one request and wait for its result; raises the typed SfuError."""
        if self._closed:
            raise ConnectionError("control client is closed")
        if self._error is not None:
            raise ConnectionError(str(self._error))
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            self._writer.write(pack({"id": msg_id, "method": method, "params": params}))
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                # The node closed on us; its last message (read next) usually says why.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), 1.0)
                raise ConnectionError(str(self._error or exc)) from exc
            return await future
        finally:
            self._pending.pop(msg_id, None)

    async def subscribe_events(self, rooms: list[str] | None = None) -> None:
        """Start (or re-filter) the event stream; read it with ``events()``."""
        await self.call("events.subscribe", rooms=rooms)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events in arrival order. Ends after ``close()``; raises ConnectionError if lost."""
        while True:
            item = await self._events.get()
            if item is _CLOSED:
                self._events.put_nowait(_CLOSED)  # wake any other reader too
                if self._error is not None and not self._closed:
                    raise ConnectionError(str(self._error))
                return
            assert isinstance(item, dict)
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    # -- reading --

    async def _read_loop(self) -> None:
        unpacker = make_unpacker(CLIENT_LIMITS)
        reason = ConnectionError("control connection closed by the node")
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                unpacker.feed(data)
                while True:
                    try:
                        message = unpacker.unpack()
                    except OutOfData:
                        break
                    self._dispatch(message)
        except asyncio.CancelledError:
            reason = ConnectionError("control client is closed")
            raise
        except _ConnectionEnded as exc:
            reason = ConnectionError(str(exc))
        except (ConnectionError, OSError) as exc:
            reason = ConnectionError(f"control connection lost: {exc}")
        except Exception as exc:  # undecodable data from the node
            log.exception("control client: bad data from node")
            reason = ConnectionError(f"bad data from node: {type(exc).__name__}: {exc}")
        finally:
            self._finish(reason)

    def _dispatch(self, message: object) -> None:
        if not isinstance(message, dict):
            raise _ConnectionEnded(f"node sent a {type(message).__name__}, not a map")
        if "event" in message:
            if self._events.qsize() >= self._max_events:
                raise _ConnectionEnded(f"more than {self._max_events} unread events")
            self._events.put_nowait(message)
            return
        msg_id = message.get("id")
        error = message.get("error")
        if msg_id is None:
            # A connection-level error (bad input, limit, auth): the node closes next.
            if isinstance(error, dict):
                raise _ConnectionEnded(f"node closed the connection: "
                                       f"{error.get('code')}: {error.get('message')}")
            return
        future = self._pending.get(msg_id) if isinstance(msg_id, int) else None
        if future is None or future.done():
            return  # the caller gave up (cancelled) before the answer came
        if isinstance(error, dict):
            future.set_exception(_typed_error(error))
        else:
            result = message.get("result")
            future.set_result(result if isinstance(result, dict) else {})

    def _finish(self, reason: ConnectionError) -> None:
        if not self._closed:
            self._error = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(str(reason)))
        self._events.put_nowait(_CLOSED)
        if not self._writer.is_closing():
            self._writer.close()

    # -- typed v1 methods (design.md §4) --

    async def node_info(self) -> dict[str, Any]:
        return await self.call("node.info")

    async def room_create(self, room: str, **options: Any) -> dict[str, Any]:
        return await self.call("room.create", room=room, **options)

    async def room_close(self, room: str) -> dict[str, Any]:
        return await self.call("room.close", room=room)

    async def room_list(self) -> dict[str, Any]:
        return await self.call("room.list")

    async def room_snapshot(self, room: str) -> dict[str, Any]:
        return await self.call("room.snapshot", room=room)

    async def participant_join(self, room: str, participant: str,
                               role: str = "audience", **options: Any) -> dict[str, Any]:
        return await self.call("participant.join", room=room, participant=participant,
                               role=role, **options)

    async def participant_connect(self, room: str, participant: str,
                                  remote: str) -> dict[str, Any]:
        return await self.call("participant.connect", room=room, participant=participant,
                               remote=remote)

    async def participant_leave(self, room: str, participant: str) -> dict[str, Any]:
        return await self.call("participant.leave", room=room, participant=participant)

    async def track_publish(self, room: str, participant: str, kind: str, codec: str,
                            payload_type: int, clock_rate: int,
                            layers: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        return await self.call("track.publish", room=room, participant=participant,
                               kind=kind, codec=codec, payload_type=payload_type,
                               clock_rate=clock_rate, layers=layers, **options)

    async def track_unpublish(self, room: str, participant: str,
                              track: str) -> dict[str, Any]:
        return await self.call("track.unpublish", room=room, participant=participant,
                               track=track)

    async def track_subscribe(self, room: str, participant: str, track: str,
                              **options: Any) -> dict[str, Any]:
        return await self.call("track.subscribe", room=room, participant=participant,
                               track=track, **options)

    async def track_unsubscribe(self, room: str, participant: str,
                                subscription: str) -> dict[str, Any]:
        return await self.call("track.unsubscribe", room=room, participant=participant,
                               subscription=subscription)

    async def stats_get(self, room: str | None = None,
                        participant: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("room", room), ("participant", participant))
                  if v is not None}
        return await self.call("stats.get", **params)


class _ConnectionEnded(Exception):
    """Internal: the read loop must stop; the message says why."""


def _typed_error(error: dict[str, Any]) -> SfuError:
    return error_for_code(str(error.get("code", "internal")), str(error.get("message", "")))

"""Control server + typed client over real Unix and loopback TCP sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import uvloop

from sfu.control import Client, ControlLimits, ControlServer, start_control_server
from sfu.control.protocol import pack
from sfu.errors import BadRequest, Conflict, LimitExceeded, NotFound, Unauthorized
from sfu.events import EventBus

SECRET = "s3cret-for-tests"


class Dispatcher:
    """A tiny real `call` for the server (Node itself is tested elsewhere)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.rooms: set[str] = set()
        self.running = 0
        self.max_running = 0

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "room.create":
            room = params.get("room")
            if not isinstance(room, str):
                raise BadRequest("'room' must be a string")
            if room in self.rooms:
                raise Conflict(f"room {room!r} already exists")
            self.rooms.add(room)
            self.bus.publish(room, "room.created", {"room": room})
            return {"room": room}
        if method == "room.close":
            room = params.get("room")
            if room not in self.rooms:
                raise NotFound(f"room {room!r} does not exist")
            self.rooms.discard(room)
            self.bus.publish(room, "room.closed", {"room": room})
            return None
        if method == "room.list":
            return {"rooms": sorted(self.rooms)}
        if method == "test.sleep":
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await asyncio.sleep(params["seconds"])
            finally:
                self.running -= 1
            return {"tag": params["tag"]}
        if method == "test.crash":
            raise RuntimeError("boom")
        if method == "test.unencodable":
            return {"value": object()}
        if method == "test.limit":
            raise LimitExceeded("too many rooms (max 1)")
        raise BadRequest(f"unknown method '{method}'")


@asynccontextmanager
async def serving(limits: ControlLimits | None = None, tcp: bool = False,
                  methods: list[str] | None = None,
                  ) -> AsyncIterator[tuple[ControlServer, Dispatcher, str]]:
    directory = tempfile.mkdtemp(prefix="sfus", dir="/tmp")  # short: AF_UNIX path limit
    path = os.path.join(directory, "run", "sfu.sock")
    bus = EventBus()
    dispatcher = Dispatcher(bus)
    server = await start_control_server(dispatcher.call, bus, path,
                                        ("127.0.0.1", 0) if tcp else None,
                                        SECRET if tcp else None, limits, methods=methods)
    try:
        yield server, dispatcher, path
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run on the stdlib loop and on uvloop (what `sfu serve` uses)."""
    async def bounded() -> None:
        await asyncio.wait_for(test(), 20)

    asyncio.run(bounded())
    uvloop.run(bounded())


async def raw_exchange(reader: asyncio.StreamReader, count: int) -> list[Any]:
    """Read ``count`` messages (fewer if the connection closes)."""
    unpacker = msgpack.Unpacker(raw=False)
    out: list[Any] = []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            break
        unpacker.feed(data)
        out.extend(unpacker)
    return out


# -- error mapping --

def test_typed_errors_round_trip_through_the_client() -> None:
    async def body() -> None:
        async with serving() as (_, _, path), await Client.connect_unix(path) as client:
            assert await client.room_create("r1") == {"room": "r1"}
            with pytest.raises(Conflict, match="room 'r1' already exists"):
                await client.room_create("r1")
            with pytest.raises(NotFound, match="room 'r9' does not exist"):
                await client.room_close("r9")
            with pytest.raises(BadRequest, match="'room' must be a string"):
                await client.call("room.create", room=5)
            with pytest.raises(LimitExceeded, match="too many rooms"):
                await client.call("test.limit")
            with pytest.raises(BadRequest, match="unknown method 'nope.nope'"):
                await client.call("nope.nope")
            assert await client.room_close("r1") == {}  # None result → {}
            assert await client.room_list() == {"rooms": []}

    run(body)


def test_internal_errors_never_crash_the_server() -> None:
    async def body() -> None:
        async with serving() as (_, _, path), await Client.connect_unix(path) as client:
            for method in ("test.crash", "test.unencodable"):
                with pytest.raises(Exception) as info:
                    await client.call(method)
                assert getattr(info.value, "code", None) == "internal"
            assert "RuntimeError" in str(await _error_of(client, "test.crash"))
            assert await client.room_create("after") == {"room": "after"}

    run(body)


async def _error_of(client: Client, method: str) -> Exception:
    try:
        await client.call(method)
    except Exception as exc:
        return exc
    raise AssertionError(f"{method} did not fail")


def test_known_method_list_refuses_unknown_methods_before_call() -> None:
    async def body() -> None:
        async with serving(methods=["room.list"]) as (_, _, path), \
                await Client.connect_unix(path) as client:
            with pytest.raises(BadRequest) as info:
                await client.call("room.create", room="r1")
            message = str(info.value)
            assert message.startswith("unknown method 'room.create'")
            assert "events.subscribe" in message and "room.list" in message
            assert await client.room_list() == {"rooms": []}

    run(body)


# -- concurrency --

def test_concurrent_calls_are_matched_by_id() -> None:
    async def body() -> None:
        async with serving() as (_, dispatcher, path), \
                await Client.connect_unix(path) as client:
            # Later calls finish first, so responses arrive in reverse order.
            calls = [client.call("test.sleep", seconds=0.02 * (10 - i), tag=f"t{i}")
                     for i in range(10)]
            results = await asyncio.gather(*calls, client.room_list())
            assert [r["tag"] for r in results[:10]] == [f"t{i}" for i in range(10)]
            assert results[10] == {"rooms": []}
            assert dispatcher.max_running == 10  # really concurrent, not serialized

    run(body)


def test_string_ids_and_out_of_order_responses_on_the_wire() -> None:
    async def body() -> None:
        async with serving() as (_, _, path):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(pack({"id": "slow", "method": "test.sleep",
                               "params": {"seconds": 0.2, "tag": "a"}}))
            writer.write(pack({"id": 2, "method": "room.list"}))
            replies = await raw_exchange(reader, 2)
            assert replies == [{"id": 2, "result": {"rooms": []}},
                               {"id": "slow", "result": {"tag": "a"}}]
            writer.close()

    run(body)


def test_in_flight_limit_per_connection() -> None:
    async def body() -> None:
        async with serving(ControlLimits(max_in_flight=2)) as (_, _, path), \
                await Client.connect_unix(path) as client:
            slow = [asyncio.ensure_future(client.call("test.sleep", seconds=0.3, tag=str(i)))
                    for i in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(LimitExceeded, match="2 requests in flight"):
                await client.call("test.sleep", seconds=0, tag="x")
            assert [r["tag"] for r in await asyncio.gather(*slow)] == ["0", "1"]
            assert await client.call("test.sleep", seconds=0, tag="y") == {"tag": "y"}

    run(body)


def test_connection_limit() -> None:
    async def body() -> None:
        async with serving(ControlLimits(max_connections=1)) as (server, _, path), \
                await Client.connect_unix(path) as first:
            second = await Client.connect_unix(path)
            with pytest.raises(ConnectionError, match="too many control connections"):
                await second.room_list()
            await second.close()
            assert await first.room_list() == {"rooms": []}

    run(body)


# -- events --

def test_events_carry_per_room_seq_and_respect_the_filter() -> None:
    async def body() -> None:
        async with serving() as (_, _, path), await Client.connect_unix(path) as actor, \
                await Client.connect_unix(path) as watcher_all, \
                await Client.connect_unix(path) as watcher_r1:
            await watcher_all.subscribe_events()
            await watcher_r1.subscribe_events(["r1"])
            await actor.room_create("r1")
            await actor.room_create("r2")
            await actor.room_close("r1")
            await actor.room_create("r1")
            seen_all = [await anext(watcher_all.events()) for _ in range(4)]
            assert [(e["event"], e["room"], e["seq"]) for e in seen_all] == [
                ("room.created", "r1", 1), ("room.created", "r2", 1),
                ("room.closed", "r1", 2), ("room.created", "r1", 3)]
            assert seen_all[0]["data"] == {"room": "r1"}
            seen_r1 = [await anext(watcher_r1.events()) for _ in range(3)]
            assert [e["seq"] for e in seen_r1] == [1, 2, 3]
            assert {e["room"] for e in seen_r1} == {"r1"}
            # A second subscribe replaces the filter.
            await watcher_r1.subscribe_events(["r2"])
            await actor.room_close("r2")
            await actor.room_close("r1")
            event = await anext(watcher_r1.events())
            assert (event["event"], event["room"], event["seq"]) == ("room.closed", "r2", 2)
            # The r1 close (seq 4) must not arrive; prove with a later r2 event.
            await actor.room_create("r2")
            event = await anext(watcher_r1.events())
            assert (event["room"], event["seq"]) == ("r2", 3)

    run(body)


def test_subscribe_result_precedes_events_and_bad_filter_is_refused() -> None:
    async def body() -> None:
        async with serving() as (server, _, path):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(pack({"id": 1, "method": "events.subscribe",
                               "params": {"rooms": "r1"}}))
            writer.write(pack({"id": 2, "method": "events.subscribe", "params": {}}))
            writer.write(pack({"id": 3, "method": "room.create", "params": {"room": "r1"}}))
            replies = await raw_exchange(reader, 4)
            assert replies[0]["id"] == 1 and replies[0]["error"]["code"] == "bad_request"
            assert replies[1] == {"id": 2, "result": {}}
            assert {"event": "room.created", "room": "r1", "seq": 1,
                    "data": {"room": "r1"}} in replies[2:]
            assert {"id": 3, "result": {"room": "r1"}} in replies[2:]
            writer.close()
            await asyncio.sleep(0.05)
            server.bus.publish("r1", "room.closed", {})  # no listener left: must not raise
            assert server.connections == 0

    run(body)


def test_slow_event_consumer_is_dropped_others_keep_receiving() -> None:
    async def body() -> None:
        limits = ControlLimits(max_write_buffer=256 * 1024)
        async with serving(limits) as (server, _, path), \
                await Client.connect_unix(path) as good:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(pack({"id": 1, "method": "events.subscribe", "params": {}}))
            await asyncio.sleep(0.05)  # never read from `reader` after this
            await good.subscribe_events()
            assert server.connections == 2
            blob = b"x" * 16384
            received = 0
            for i in range(200):  # 3.2 MB, far beyond kernel buffers + 256 KiB
                server.bus.publish("r1", "blob.sent", {"i": i, "blob": blob})
                while received <= i:  # keep the good consumer drained
                    event = await anext(good.events())
                    assert event["data"]["i"] == received and event["seq"] == received + 1
                    received += 1
            assert server.connections == 1  # the slow one was dropped
            # What the kernel still holds, then EOF (a live connection would time out).
            with pytest.raises(ConnectionError):
                while await asyncio.wait_for(reader.read(1 << 20), 2):
                    pass
                raise ConnectionError("EOF")
            writer.close()

    run(body)


# -- TCP + auth --

def test_tcp_requires_auth_with_the_shared_secret() -> None:
    async def body() -> None:
        async with serving(tcp=True) as (server, _, _):
            assert server.tcp_address is not None
            host, port = server.tcp_address
            async with await Client.connect_tcp(host, port, SECRET) as client:
                assert await client.room_create("r1") == {"room": "r1"}
            with pytest.raises(Unauthorized, match="wrong secret"):
                await Client.connect_tcp(host, port, "wrong")
            # Anything but auth first: unauthorized, then closed.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(pack({"id": 1, "method": "room.list"}))
            writer.write(pack({"id": 2, "method": "auth", "params": {"secret": SECRET}}))
            replies = await raw_exchange(reader, 2)
            assert replies == [{"id": 1, "error": {
                "code": "unauthorized", "message": "authenticate first with method 'auth'"}}]
            writer.close()
            # A malformed first message is unauthorized too.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(msgpack.packb([1, 2]))
            replies = await raw_exchange(reader, 2)
            assert len(replies) == 1 and replies[0]["error"]["code"] == "unauthorized"
            writer.close()

    run(body)


def test_tcp_needs_a_secret() -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="secret"):
            await start_control_server(Dispatcher(EventBus()).call, EventBus(), None,
                                       ("127.0.0.1", 0), None)

    run(body)


# -- socket file handling --

def test_unix_socket_mode_parent_dir_stale_and_live_sockets() -> None:
    async def body() -> None:
        async with serving() as (server, _, path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            with pytest.raises(OSError, match="already listening"):
                await start_control_server(Dispatcher(EventBus()).call, EventBus(), path)
            async with await Client.connect_unix(path) as client:
                assert await client.room_list() == {"rooms": []}
        assert not os.path.exists(path)  # unlinked on close

        directory = tempfile.mkdtemp(prefix="sfus", dir="/tmp")
        stale = os.path.join(directory, "sfu.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(stale)
        sock.close()  # a socket file nobody listens on, as after a crash
        bus = EventBus()
        server = await start_control_server(Dispatcher(bus).call, bus, stale)
        async with await Client.connect_unix(stale) as client:
            assert await client.room_list() == {"rooms": []}
        server.close()
        await server.wait_closed()
        with open(stale, "w") as f:
            f.write("not a socket")
        with pytest.raises(FileExistsError):
            await start_control_server(Dispatcher(bus).call, bus, stale)
        shutil.rmtree(directory)

    run(body)


# -- client lifecycle --

def test_pending_calls_fail_with_connection_error_when_the_node_goes_away() -> None:
    async def body() -> None:
        async with serving() as (server, _, path):
            client = await Client.connect_unix(path)
            await client.subscribe_events()
            pending = asyncio.ensure_future(client.call("test.sleep", seconds=5, tag="z"))
            await asyncio.sleep(0.05)
            server.close()
            with pytest.raises(ConnectionError):
                await pending
            with pytest.raises(ConnectionError):
                await client.room_list()
            with pytest.raises(ConnectionError):
                await anext(client.events())
            await client.close()

    run(body)


def test_client_close_ends_event_iteration_and_refuses_calls() -> None:
    async def body() -> None:
        async with serving() as (_, _, path):
            client = await Client.connect_unix(path)
            await client.subscribe_events()

            async def collect() -> list[dict[str, Any]]:
                return [event async for event in client.events()]

            collector = asyncio.ensure_future(collect())
            await client.room_create("r1")
            await asyncio.sleep(0.05)
            await client.close()
            events = await collector
            assert [e["event"] for e in events] == ["room.created"]
            with pytest.raises(ConnectionError, match="closed"):
                await client.room_list()

    run(body)


def test_connect_to_missing_socket_raises() -> None:
    async def body() -> None:
        with pytest.raises(OSError):
            await Client.connect_unix("/tmp/definitely-not-here/sfu.sock")

    run(body)


# -- through the real Node --

def test_client_drives_a_real_node_over_the_control_socket() -> None:
    from sfu.config import NodeConfig
    from sfu.server import start_node

    async def body() -> None:
        directory = tempfile.mkdtemp(prefix="sfun", dir="/tmp")
        path = os.path.join(directory, "run", "sfu.sock")
        config = NodeConfig(udp_host="127.0.0.1", udp_port=0, control_path=path,
                            control_tcp=("127.0.0.1", 0), secret=SECRET)
        running = await start_node(config)
        try:
            async with await Client.connect_unix(path) as client:
                await client.subscribe_events(["live1"])
                info = await client.node_info()
                assert info["udp"] == running.udp and info["rooms"] == 0
                assert await client.room_create("live1") == {"room": "live1"}
                joined = await client.participant_join("live1", "host1", "host")
                assert joined["participant"] == "host1" and joined["ice_ufrag"]
                track = await client.track_publish("live1", "host1", "video", "VP8", 96,
                                                   90000, [{"rid": "h", "ssrc": 1111}])
                await client.participant_join("live1", "v1", "audience")
                sub = await client.track_subscribe("live1", "v1", track["track"])
                assert sub["payload_type"] == 96 and sub["ssrc"] != 1111
                snapshot = await client.room_snapshot("live1")
                names = [(await anext(client.events()))["event"] for _ in range(5)]
                assert names == ["room.created", "participant.joined", "track.published",
                                 "participant.joined", "subscription.created"]
                assert snapshot["seq"] == 5
                with pytest.raises(NotFound):
                    await client.room_snapshot("nope")
                with pytest.raises(BadRequest, match="unknown method"):
                    await client.call("room.explode", room="live1")
                await client.room_close("live1")
                event = await anext(client.events())
                assert event["event"] == "room.closed" and event["seq"] > 5
                assert (await client.room_list())["rooms"] == []
            control = running.control
            assert control is not None and control.tcp_address is not None
            with pytest.raises(Unauthorized):
                await Client.connect_tcp(*control.tcp_address, "wrong")
            async with await Client.connect_tcp(*control.tcp_address, SECRET) as tcp:
                assert (await tcp.node_info())["node_id"] == config.node_id
        finally:
            await running.close()
            shutil.rmtree(directory, ignore_errors=True)

    run(body)

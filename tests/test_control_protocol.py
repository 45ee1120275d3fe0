"""Control protocol: request validation and wire limits against a real Unix-socket server."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
import uvloop

from sfu.control.protocol import (
    ControlLimits,
    depth_exceeds,
    make_unpacker,
    message_id,
    pack,
    parse_request,
)
from sfu.control.server import ControlServer, start_control_server
from sfu.errors import BadRequest, LimitExceeded, NotFound
from sfu.events import EventBus

LIMITS = ControlLimits(max_message_size=4096, max_depth=8)


def nested(depth: int) -> object:
    """A value whose maps/arrays nest ``depth`` levels (1 = a flat list)."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


# -- pure validation --

@pytest.mark.parametrize(
    "message, error, text",
    [
        pytest.param([1, 2], BadRequest, "must be a map", id="array"),
        pytest.param(7, BadRequest, "must be a map", id="int"),
        pytest.param("room.list", BadRequest, "must be a map", id="str"),
        pytest.param({"method": "room.list"}, BadRequest, "lacks 'id'", id="no-id"),
        pytest.param({"id": True, "method": "x"}, BadRequest, "'id'", id="bool-id"),
        pytest.param({"id": 1.5, "method": "x"}, BadRequest, "'id'", id="float-id"),
        pytest.param({"id": [1], "method": "x"}, BadRequest, "'id'", id="list-id"),
        pytest.param({"id": "x" * 129, "method": "x"}, BadRequest, "'id'", id="long-id"),
        pytest.param({"id": 1}, BadRequest, "lacks 'method'", id="no-method"),
        pytest.param({"id": 1, "method": 5}, BadRequest, "'method'", id="int-method"),
        pytest.param({"id": 1, "method": ""}, BadRequest, "'method'", id="empty-method"),
        pytest.param({"id": 1, "method": "x", "params": [1]}, BadRequest, "'params'",
                     id="list-params"),
        pytest.param({"id": 1, "method": "x", "params": {1: 2}}, BadRequest, "param names",
                     id="int-param-key"),
        pytest.param({"id": 1, "method": "x", "params": {"a": nested(8)}}, LimitExceeded,
                     "deeper than 8", id="too-deep"),
    ],
)
def test_parse_request_rejects(message: object, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        parse_request(message, LIMITS)


def test_parse_request_accepts_int_and_str_ids_and_missing_params() -> None:
    req = parse_request({"id": 7, "method": "room.create", "params": {"room": "r1"}}, LIMITS)
    assert (req.id, req.method, req.params) == (7, "room.create", {"room": "r1"})
    req = parse_request({"id": "abc", "method": "room.list"}, LIMITS)
    assert (req.id, req.params) == ("abc", {})
    req = parse_request({"id": 0, "method": "room.list", "params": None}, LIMITS)
    assert req.params == {}
    # Exactly at the depth limit: top map (1) + params (2) + 6 lists = 8.
    parse_request({"id": 1, "method": "x", "params": {"a": nested(6)}}, LIMITS)


def test_message_id_only_echoes_usable_ids() -> None:
    assert message_id({"id": 3}, LIMITS) == 3
    assert message_id({"id": "q"}, LIMITS) == "q"
    assert message_id({"id": 1.0}, LIMITS) is None
    assert message_id({"id": False}, LIMITS) is None
    assert message_id([1], LIMITS) is None


def test_depth_walk_is_iterative() -> None:
    assert not depth_exceeds(nested(32), 32)
    assert depth_exceeds(nested(33), 32)
    assert depth_exceeds({"a": {"b": {"c": 1}}}, 2)
    assert not depth_exceeds({"a": {"b": 1}}, 2)
    assert depth_exceeds(nested(50_000), 32)  # no RecursionError


def test_limits_validate_and_unpacker_round_trips() -> None:
    with pytest.raises(ValueError):
        ControlLimits(max_in_flight=0)
    unpacker = make_unpacker(LIMITS)
    unpacker.feed(pack({"id": 1, "method": "m", "params": {"b": b"\x00\xff", "s": "é"}}))
    assert unpacker.unpack() == {"id": 1, "method": "m", "params": {"b": b"\x00\xff", "s": "é"}}


# -- wire limits against a real server --

async def _call(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    if method == "room.list":
        return {"rooms": []}
    if method == "room.close":
        raise NotFound(f"room {params.get('room')!r} does not exist")
    raise BadRequest(f"unknown method '{method}'")


class Conn:
    """A raw control connection speaking msgpack by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=False)

    opened: list[Conn] = []  # closed by with_server, whatever the test did

    @classmethod
    async def open(cls, path: str) -> Conn:
        conn = cls(*await asyncio.open_unix_connection(path))
        cls.opened.append(conn)
        return conn

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> Any:
        """Next message, or None at EOF."""
        while True:
            for message in self.unpacker:
                return message
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                return None
            self.unpacker.feed(data)

    async def request(self, msg_id: Any, method: str, **params: Any) -> Any:
        await self.send(pack({"id": msg_id, "method": method, "params": params}))
        return await self.recv()

    def close(self) -> None:
        self.writer.close()


def with_server(test: Callable[[ControlServer, str], Awaitable[None]],
                limits: ControlLimits = LIMITS) -> None:
    directory = tempfile.mkdtemp(prefix="sfuc", dir="/tmp")  # short: AF_UNIX path limit
    path = os.path.join(directory, "run", "sfu.sock")

    async def main() -> None:
        server = await start_control_server(_call, EventBus(), path, limits=limits)
        try:
            await asyncio.wait_for(test(server, path), 20)
        finally:
            for conn in Conn.opened:
                conn.close()
            Conn.opened.clear()
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(main())
        uvloop.run(main())  # the loop `sfu serve` uses
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def assert_alive(path: str) -> None:
    conn = await Conn.open(path)
    assert await conn.request(1, "room.list") == {"id": 1, "result": {"rooms": []}}
    conn.close()


def test_oversized_message_gets_limit_error_and_only_that_connection_closes() -> None:
    async def body(server: ControlServer, path: str) -> None:
        other = await Conn.open(path)
        conn = await Conn.open(path)
        reply = await conn.request(5, "room.list", blob="x" * 5000)
        # The id is echoed only if the whole message arrived before the check.
        assert reply["id"] in (5, None) and reply["error"]["code"] == "limit"
        assert "exceeds 4096 bytes" in reply["error"]["message"]
        assert await conn.recv() is None  # closed
        assert await other.request(2, "room.list") == {"id": 2, "result": {"rooms": []}}
        other.close()

    with_server(body)


STR100 = b"\xd9\x64" + b"s" * 100  # one 102-byte msgpack str


@pytest.mark.parametrize(
    "pieces",
    [
        # 4000 strings of 102 bytes: every header is within msgpack's own limits and the
        # unpacker consumes it incrementally, so only the server's byte count stops it.
        pytest.param([b"\xdc\x0f\xa0"] + [STR100 * 5] * 9, id="streamed-array"),
        pytest.param([b"\xdd\x7f\xff\xff\xff"], id="huge-array-header"),
        pytest.param([b"\xdb\x7f\xff\xff\xff", b"s" * 4000, b"s" * 200], id="huge-str"),
    ],
)
def test_endless_message_is_cut_off_at_the_limit(pieces: list[bytes]) -> None:
    async def body(server: ControlServer, path: str) -> None:
        conn = await Conn.open(path)
        for piece in pieces:  # the last piece is the one that crosses 4 KiB
            await conn.send(piece)
            await asyncio.sleep(0.002)
        reply = await conn.recv()
        assert reply["id"] is None and reply["error"]["code"] == "limit"
        assert reply["error"]["message"].startswith("message exceeds 4096 bytes")
        assert await conn.recv() is None
        await assert_alive(path)

    with_server(body)


def test_too_deep_message_is_refused_but_connection_stays() -> None:
    async def body(server: ControlServer, path: str) -> None:
        conn = await Conn.open(path)
        reply = await conn.request(9, "room.list", filter=nested(20))
        assert reply["id"] == 9 and reply["error"]["code"] == "limit"
        assert await conn.request(10, "room.list") == {"id": 10, "result": {"rooms": []}}
        conn.close()

    with_server(body)


def test_deeper_than_msgpack_stack_closes_only_that_connection() -> None:
    async def body(server: ControlServer, path: str) -> None:
        other = await Conn.open(path)
        conn = await Conn.open(path)
        await conn.send(b"\x91" * 3000 + b"\x00")  # 3000 nested one-element arrays
        reply = await conn.recv()
        assert reply["id"] is None and reply["error"]["code"] in ("bad_request", "limit")
        assert await conn.recv() is None
        assert (await other.request(1, "room.list"))["result"] == {"rooms": []}
        other.close()

    with_server(body)


@pytest.mark.parametrize(
    "message, echoed_id",
    [
        pytest.param([1, 2, 3], None, id="array"),
        pytest.param("hello", None, id="string"),
        pytest.param({"id": 4, "params": {}}, 4, id="no-method"),
        pytest.param({"id": 2.5, "method": "room.list"}, None, id="float-id"),
        pytest.param({"id": 6, "method": "room.list", "params": "x"}, 6, id="str-params"),
    ],
)
def test_invalid_request_gets_bad_request_and_connection_stays(message: object,
                                                               echoed_id: object) -> None:
    async def body(server: ControlServer, path: str) -> None:
        conn = await Conn.open(path)
        await conn.send(msgpack.packb(message))
        reply = await conn.recv()
        assert reply["id"] == echoed_id and reply["error"]["code"] == "bad_request"
        assert await conn.request(11, "room.list") == {"id": 11, "result": {"rooms": []}}
        conn.close()

    with_server(body)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xc1" * 8, id="never-used-byte"),
        pytest.param(b"\xa3\xff\xfe\xfd", id="invalid-utf8"),
        pytest.param(b"\x81\x91\x01\x02", id="unhashable-key"),
        pytest.param(b"\x92\x01\xc1GET / HTTP/1.1", id="bad-byte-inside-array"),
    ],
)
def test_garbage_closes_only_that_connection(garbage: bytes) -> None:
    async def body(server: ControlServer, path: str) -> None:
        other = await Conn.open(path)
        conn = await Conn.open(path)
        await conn.send(garbage)
        reply = await conn.recv()
        assert reply["id"] is None and reply["error"]["code"] == "bad_request"
        assert "undecodable" in reply["error"]["message"]
        assert await conn.recv() is None
        assert (await other.request(1, "room.list"))["result"] == {"rooms": []}
        other.close()
        await assert_alive(path)

    with_server(body)


def test_pipelined_and_byte_by_byte_framing() -> None:
    async def body(server: ControlServer, path: str) -> None:
        conn = await Conn.open(path)
        await conn.send(b"".join(pack({"id": i, "method": "room.list"}) for i in range(20)))
        ids = {(await conn.recv())["id"] for _ in range(20)}
        assert ids == set(range(20))
        for byte in pack({"id": "slow", "method": "room.close", "params": {"room": "r9"}}):
            await conn.send(bytes([byte]))
        reply = await conn.recv()
        assert reply == {"id": "slow", "error": {"code": "not_found",
                                                 "message": "room 'r9' does not exist"}}
        conn.close()

    with_server(body)


def test_half_closed_client_still_gets_its_answers() -> None:
    async def body(server: ControlServer, path: str) -> None:
        conn = await Conn.open(path)
        await conn.send(pack({"id": 1, "method": "room.list"}) +
                        pack({"id": 2, "method": "room.close", "params": {"room": "x"}}))
        conn.writer.write_eof()  # like `nc -N` / a shell pipe: no more requests
        replies = [await conn.recv(), await conn.recv()]
        assert {r["id"] for r in replies} == {1, 2}
        assert await conn.recv() is None  # then the server closes

    with_server(body)


def test_seeded_mutations_never_break_the_server() -> None:
    rng = random.Random(20261126)
    valid = pack({"id": 1, "method": "room.close",
                  "params": {"room": "r1", "list": [1, 2.5, None, True, b"\x00"],
                             "map": {"a": {"b": "c"}}}})
    blobs: list[bytes] = []
    for _ in range(150):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        blobs.append(bytes(data))

    async def body(server: ControlServer, path: str) -> None:
        for blob in blobs:
            conn = await Conn.open(path)
            await conn.send(blob + pack({"id": "probe", "method": "room.list"}))
            conn.writer.write_eof()
            # Whatever came back must be well-formed replies, then EOF.
            while (reply := await conn.recv()) is not None:
                assert set(reply) == {"id", "result"} or set(reply["error"]) == {"code",
                                                                                 "message"}
            conn.close()
        await assert_alive(path)
        for _ in range(50):
            if server.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.connections == 0  # nothing leaked

    with_server(body)

"""Control protocol v1 wire format (design.md §4): a stream of msgpack maps.

Pure functions and small value types shared by the server and the client; no I/O here.

    request   {"id": 7, "method": "room.create", "params": {...}}
    response  {"id": 7, "result": {...}}
    error     {"id": 7, "error": {"code": "not_found", "message": "..."}}
    event     {"event": "participant.joined", "room": "r1", "seq": 42, "data": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from sfu.errors import BadRequest, LimitExceeded

# Every v1 method of the contract; later issues add theirs in the same `entity.verb` form.
V1_METHODS: tuple[str, ...] = (
    "node.info",
    "room.create",
    "room.close",
    "room.list",
    "room.snapshot",
    "participant.join",
    "participant.connect",
    "participant.leave",
    "track.publish",
    "track.subscribe",
    "track.unsubscribe",
    "events.subscribe",
    "stats.get",
)
# Handled by the control server itself, never passed to the node's `call`.
SERVER_METHODS: frozenset[str] = frozenset({"auth", "events.subscribe"})

# Feed the unpacker in slices no larger than this, so its buffer never needs more than
# one maximal message plus one slice (see `ControlLimits.buffer_size`).
FEED_CHUNK = 64 * 1024

MessageId = int | str | None


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """Per-connection limits of the control socket. Defaults suit a single node."""

    max_message_size: int = 1 << 20  # bytes of one encoded message
    max_depth: int = 32  # nesting of maps/arrays; the top-level map is depth 1
    max_in_flight: int = 64  # requests dispatched but not yet answered, per connection
    max_write_buffer: int = 8 << 20  # unsent bytes before a slow reader is dropped
    max_connections: int = 256  # concurrent connections across all listeners
    max_id_len: int = 128  # string ids longer than this are rejected

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_depth", "max_in_flight", "max_write_buffer",
                     "max_connections", "max_id_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def buffer_size(self) -> int:
        """Unpacker buffer: a partial message just under the limit plus one feed slice."""
        return self.max_message_size + FEED_CHUNK


def make_unpacker(limits: ControlLimits) -> msgpack.Unpacker:
    """An Unpacker that can never allocate more than about one message worth of memory.

    msgpack's own per-object limits are set explicitly (issue #503: implicit limits
    surprised people); exceeding any of them raises ValueError, which callers treat as
    an undecodable stream.
    """
    size = limits.max_message_size
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=False,  # non-str keys are reported as bad_request, not as garbage
        max_buffer_size=limits.buffer_size,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=size,
    )


def pack(message: dict[str, Any]) -> bytes:
    """Encode one message; raises TypeError/ValueError for values msgpack cannot encode."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def depth_exceeds(obj: object, max_depth: int) -> bool:
    """True if maps/arrays nest deeper than ``max_depth`` (iterative: no recursion limit)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                return True
            for key, value in item.items():
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(item, list | tuple):
            if depth > max_depth:
                return True
            stack.extend((value, depth + 1) for value in item)
    return False


def _valid_id(value: object, limits: ControlLimits) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; never a sensible id
        return False
    if isinstance(value, int):
        return -(1 << 63) <= value < (1 << 64)
    return isinstance(value, str) and len(value) <= limits.max_id_len


def message_id(message: object, limits: ControlLimits) -> MessageId:
    """The id to echo in an error about ``message``: its own if usable, else None."""
    if isinstance(message, dict):
        value = message.get("id")
        if _valid_id(value, limits):
            return value  # type: ignore[return-value]
    return None


@dataclass(frozen=True, slots=True)
class Request:
    id: int | str
    method: str
    params: dict[str, Any]


def parse_request(message: object, limits: ControlLimits) -> Request:
    """Validate one decoded message as a request.

    Raises BadRequest / LimitExceeded; the caller answers with ``message_id(message)``.
    """
    if not isinstance(message, dict):
        raise BadRequest(f"message must be a map, got {type(message).__name__}")
    if depth_exceeds(message, limits.max_depth):
        raise LimitExceeded(f"message nests deeper than {limits.max_depth} levels")
    if "id" not in message:
        raise BadRequest("request lacks 'id'")
    msg_id = message["id"]
    if not _valid_id(msg_id, limits):
        raise BadRequest(
            f"'id' must be an integer or a string of at most {limits.max_id_len} characters"
        )
    method = message.get("method")
    if method is None:
        raise BadRequest("request lacks 'method'")
    if not isinstance(method, str) or not method:
        raise BadRequest("'method' must be a non-empty string")
    params = message.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be a map")
    for key in params:
        if not isinstance(key, str):
            raise BadRequest(f"param names must be strings, got {type(key).__name__}")
    return Request(msg_id, method, params)


def response(msg_id: int | str, result: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": msg_id, "result": {} if result is None else result}


def error_response(msg_id: MessageId, code: str, message: str) -> dict[str, Any]:
    return {"id": msg_id, "error": {"code": code, "message": message}}


def parse_rooms_filter(params: dict[str, Any]) -> list[str] | None:
    """``events.subscribe`` params: ``rooms`` is a list of room names or null (all rooms)."""
    rooms = params.get("rooms")
    if rooms is None:
        return None
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise BadRequest("'rooms' must be a list of room names or null")
    return list(rooms)

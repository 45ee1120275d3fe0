"""Per-room ordered event bus: every event of a room gets the next ``seq`` (first is 1)."""

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Listener = Callable[[Event], None]


class EventBus:
    """Assigns per-room sequence numbers and fans events out to listeners synchronously."""

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}
        self._listeners: dict[int, tuple[frozenset[str] | None, Listener]] = {}
        self._next_token = 1

    def last_seq(self, room: str) -> int:
        """The seq of the last event emitted for ``room`` (0 if none)."""
        return self._seq.get(room, 0)

    def publish(self, room: str, name: str, data: dict[str, Any]) -> Event:
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        event: Event = {"event": name, "room": room, "seq": seq, "data": data}
        for rooms, listener in list(self._listeners.values()):
            if rooms is None or room in rooms:
                listener(event)
        return event

    def subscribe(self, rooms: list[str] | None, listener: Listener) -> Callable[[], None]:
        """Register ``listener`` for ``rooms`` (None = all); returns an unsubscribe function."""
        token = self._next_token
        self._next_token += 1
        self._listeners[token] = (None if rooms is None else frozenset(rooms), listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

"""Client side of data messages: comments and likes up, the room's batches down.

Priority messages (orders, gifts, host messages) carry a room-wide contiguous index ``pi``
and are delivered strictly in that order: after a gap the later ones are held back and the
gap is NACKed (first after ``NACK_DELAY_S``, then every ``NACK_RETRY_S``, ``NACK_TRIES``
times); a gap still open ``NACK_RETRY_S`` after the last NACK is given up (counted ``lost``)
so delivery goes on. Every batch carries ``hp``, the room's highest index, which reveals a
lost last message (tail gap). Other messages are delivered on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sfu import data_wire as wire

if TYPE_CHECKING:
    from sfu.client.publisher import RtpEndpoint

__all__ = ["DataChannel", "DataStats"]

NACK_DELAY_S = 0.03
NACK_RETRY_S = 0.1
NACK_TRIES = 5
MAX_MISSING = 1024  # a longer outage gives up the oldest indices at once

Message = dict[str, Any]


@dataclass(slots=True)
class DataStats:
    received: int = 0  # messages in batches, duplicates included
    packets: int = 0  # SFUD packets received
    nacks_sent: int = 0  # NACK packets
    nacked: int = 0  # indices asked for
    duplicates: int = 0
    out_of_order: int = 0  # priority messages that arrived after a gap (held back)
    lost: int = 0  # priority indices given up
    malformed: int = 0


class DataChannel:
    """Data messages over an ``RtpEndpoint``'s socket (it hands us the SFUD packets).

    ``first_pi``: the index expected first (1 for a client present from the room's start);
    None takes it from the first batch (its lowest ``pi``, or ``hp + 1``).
    """

    def __init__(self, endpoint: RtpEndpoint, *, first_pi: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        endpoint.data_channel = self
        self.clock = clock
        self.messages: list[Message] = []  # everything received, in arrival order
        self.priority: list[Message] = []  # priority messages, strictly in pi order
        self.likes_total = 0
        self.viewer_count: int | None = None
        self.state: dict[str, Any] | None = None
        self.on_message: Callable[[Message], None] | None = None
        self.on_state: Callable[[dict[str, Any]], None] | None = None
        self.counters = DataStats()
        self._next_pi = first_pi  # next index to deliver
        self._top = 0 if first_pi is None else first_pi - 1  # highest index known to exist
        self._held: dict[int, Message | None] = {}  # pi -> message (None: given up)
        self._missing: dict[int, list[float | int]] = {}  # pi -> [due, tries]
        self._parts: dict[int, dict[int, dict[str, Any]]] = {}  # STATE v -> part -> map
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def ssrc(self) -> int:
        return int(getattr(self.endpoint, "ssrc", 0) or 0)

    # -- up --------------------------------------------------------------------------------

    def send_comment(self, text: str, extra: dict[str, Any] | None = None) -> None:
        if not text or len(text) > wire.MAX_TEXT:
            raise ValueError(f"a comment is 1..{wire.MAX_TEXT} characters")
        self.endpoint.send(wire.build_msg(self.ssrc, "comment", text=text, extra=extra))

    def send_like(self, n: int = 1) -> None:
        if not 1 <= n <= 100:
            raise ValueError("likes per packet: 1..100")
        self.endpoint.send(wire.build_msg(self.ssrc, "like", count=n))

    def set_cap(self, n: int) -> None:
        """Ask for at most ``n`` comments per second (0..100)."""
        if not 0 <= n <= wire.MAX_CAP:
            raise ValueError(f"cap: 0..{wire.MAX_CAP}")
        self.endpoint.send(wire.build_settings(self.ssrc, n))

    # -- down ------------------------------------------------------------------------------

    def on_packet(self, data: bytes) -> None:
        """An RTCP datagram holding SFUD packets (from ``RtpEndpoint.datagram_received``)."""
        try:
            packets = wire.parse_app(data)
        except ValueError:
            self.counters.malformed += 1
            return
        now = self.clock()
        for subtype, _ssrc, payload in packets:
            self.counters.packets += 1
            try:
                if subtype == wire.BATCH:
                    self._on_batch(*wire.decode_batch(payload), now)
                elif subtype == wire.STATE:
                    self._on_state(wire.decode_state(payload))
                else:
                    self.counters.malformed += 1
            except ValueError:
                self.counters.malformed += 1
        self._arm()

    def _on_state(self, state: dict[str, Any]) -> None:
        v = state["v"]
        if self.state is not None and v <= self.state["v"]:
            return  # resends are idempotent
        parts = state.get("parts")
        if parts is not None:  # a big state in parts: apply once all of them are here
            got = self._parts.setdefault(v, {})
            got[state["part"]] = state
            if len(got) < parts:
                for old in [k for k in self._parts if k < v]:
                    del self._parts[old]
                return
            state = {k: val for k, val in got[0].items() if k not in ("part", "parts")}
            state["subs"] = [s for i in range(parts) for s in got[i].get("subs", [])]
            self._parts = {k: p for k, p in self._parts.items() if k > v}
        self.state = state
        if self.on_state is not None:
            self.on_state(state)

    def _on_batch(self, hp: int, msgs: list[Message], now: float) -> None:
        if self._next_pi is None:
            pis = [m["pi"] for m in msgs if "pi" in m]
            self._next_pi = min(pis) if pis else hp + 1
            self._top = self._next_pi - 1
        for m in msgs:
            self.counters.received += 1
            pi = m.get("pi")
            if pi is None:
                self._accept(m)
                self._plain(m)
            else:
                self._on_priority(pi, m, now)
        self._extend(hp, now)  # tail gap: the room has sent more than we have seen
        self._advance()

    def _accept(self, m: Message) -> None:
        self.messages.append(m)

    def _plain(self, m: Message) -> None:
        kind = m["k"]
        if kind == "like":
            total = (m.get("x") or {}).get("total")
            if type(total) is int:
                self.likes_total = max(self.likes_total, total)
        elif kind == "viewer_count" and type(m.get("n")) is int:
            self.viewer_count = m["n"]
        if self.on_message is not None:
            self.on_message(m)

    def _on_priority(self, pi: int, m: Message, now: float) -> None:
        assert self._next_pi is not None
        if pi < self._next_pi or self._held.get(pi) is not None:
            self.counters.duplicates += 1
            return
        self._accept(m)
        self._missing.pop(pi, None)
        if pi != self._next_pi:
            self.counters.out_of_order += 1
        self._extend(pi - 1, now)
        self._held[pi] = m
        self._top = max(self._top, pi)

    def _extend(self, upto: int, now: float) -> None:
        """Every index in (top, upto] is missing: NACK it after the delay."""
        if upto <= self._top:
            return
        first = max(self._top + 1, upto - MAX_MISSING + 1)
        for pi in range(self._top + 1, first):  # too far behind: give up at once
            self._give_up(pi)
        for pi in range(first, upto + 1):
            self._missing[pi] = [now + NACK_DELAY_S, 0]
        self._top = upto

    def _give_up(self, pi: int) -> None:
        self._missing.pop(pi, None)
        self._held[pi] = None
        self.counters.lost += 1

    def _advance(self) -> None:
        assert self._next_pi is not None
        while self._next_pi in self._held:
            m = self._held.pop(self._next_pi)
            self._next_pi += 1
            if m is not None:
                self.priority.append(m)
                if self.on_message is not None:
                    self.on_message(m)

    # -- NACK timer ------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> float | None:
        """Send due NACKs, give up exhausted gaps; returns the next deadline (or None).
        Runs by itself on the running loop; callable directly without one."""
        now = self.clock() if now is None else now
        ask: list[int] = []
        for pi, entry in list(self._missing.items()):
            due, tries = entry
            if due > now:
                continue
            if tries >= NACK_TRIES:
                self._give_up(pi)
            else:
                ask.append(pi)
                entry[0], entry[1] = now + NACK_RETRY_S, int(tries) + 1
        for i in range(0, len(ask), wire.MAX_NACK):
            chunk = ask[i:i + wire.MAX_NACK]
            self.endpoint.send(wire.build_nack(self.ssrc, chunk))
            self.counters.nacks_sent += 1
            self.counters.nacked += len(chunk)
        if self._next_pi is not None:
            self._advance()
        return min((float(e[0]) for e in self._missing.values()), default=None)

    def _arm(self) -> None:
        due = min((float(e[0]) for e in self._missing.values()), default=None)
        if due is None:
            return
        if self._timer is not None and self._timer_at <= due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the owner calls poll()
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = loop.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.poll()
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(AttributeError):
            if self.endpoint.data_channel is self:
                self.endpoint.data_channel = None

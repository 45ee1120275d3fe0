"""Data messages of a node: the room's atmosphere (comments, likes, gifts, orders, counts).

Sans-I/O: the node feeds ``on_datagram`` from the engine's ``EV_DATA`` events, calls ``tick``
every interval, and ``send(pids, datagram)`` is ``Engine.send_datagram``. Message classes
(docs/data.md "Classes"):

- priority (orders, gifts, host messages, ...): the room's next ``pi``, one BATCH to every
  member at once, kept in a log (2048 / 60 s) that answers the clients' NACKs;
- sampled (comments): buffered for the interval, then each viewer gets at most ``cap`` per
  second, sampled uniformly. Viewers are grouped by cap, so an interval costs one packet
  build per distinct cap, whatever the audience size or the comment rate;
- aggregated (likes, viewer count): one message per interval, sent with every group's batch.
"""

from __future__ import annotations

import random
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfu import data_wire as wire
from sfu.errors import BadRequest, LimitExceeded, NotFound
from sfu.events import EventBus

__all__ = ["AGGREGATED_KINDS", "KINDS", "PRIORITY_KINDS", "SAMPLED_KINDS", "DataHub"]

PRIORITY_KINDS = frozenset({"order", "gift", "product", "link_live", "faq_answer", "system",
                            "announcement"})
SAMPLED_KINDS = frozenset({"comment", "custom"})
AGGREGATED_KINDS = frozenset({"like", "viewer_count"})
KINDS = PRIORITY_KINDS | SAMPLED_KINDS | AGGREGATED_KINDS
PARTICIPANT_KINDS = frozenset({"comment", "like"})
MEMBER_ROLES = frozenset({"host", "cohost", "audience"})
SENDER_ROLES = MEMBER_ROLES | {"service", "assistant"}

LOG_SIZE = 2048  # priority messages kept per room for NACKs
LOG_AGE_S = 60.0
STATE_RESEND_S = (0.5, 1.5)
SLACK = 0.1  # of a comment: timer jitter, carried as debt (the long-run rate stays the cap)
MAX_PENDING = 4096  # sampled comments buffered per interval (more are dropped, counted)
MAX_LIKES_PER_PACKET = 100
MAX_COUNT = (1 << 53) - 1
# Per participant (token buckets: rate per second, burst).
COMMENT_RATE, COMMENT_BURST = 5.0, 10.0
LIKE_RATE, LIKE_BURST = 20.0, 20.0
NACK_RATE, NACK_BURST = 200.0, 400.0  # priority messages resent per second: no amplifier

Send = Callable[[Sequence[int], bytes], int]


def _take(tokens: float, at: float, now: float, rate: float, burst: float) -> tuple[float, bool]:
    """Refill a token bucket from ``at`` to ``now``; (tokens left, whether one was taken)."""
    tokens = min(burst, tokens + max(0.0, now - at) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, True
    return tokens, False


@dataclass(slots=True, eq=False)
class _Member:
    # A few slots per viewer: 2,000-viewer rooms stay small.
    pid: int
    participant: str
    role: str
    room: _Room
    cap: int | None = None  # SETTINGS; None: the room's default
    c_tok: float = COMMENT_BURST
    c_at: float = 0.0
    l_tok: float = LIKE_BURST
    l_at: float = 0.0
    n_tok: float = NACK_BURST
    n_at: float = 0.0


@dataclass(slots=True, eq=False)
class _Room:
    name: str
    interval_s: float
    default_cap: int
    created: float
    members: dict[int, _Member] = field(default_factory=dict)
    # Derived from members when ``dirty``: pids of everyone, and per effective cap.
    dirty: bool = True
    all_pids: array[int] = field(default_factory=lambda: array("i"))
    groups: dict[int, array[int]] = field(default_factory=dict)
    credit: dict[int, float] = field(default_factory=dict)  # per cap: comments owed
    last_flush: float = 0.0
    next_flush: float = 0.0
    pending: list[bytes] = field(default_factory=list)  # packed sampled messages, seq order
    likes: int = 0
    likes_total: int = 0
    viewer_count: int | None = None
    viewer_dirty: bool = False
    hp: int = 0  # last priority index assigned
    log: deque[tuple[float, bytes]] = field(default_factory=deque)
    log_base: int = 1  # pi of log[0]
    echo_hp_until: float = -1.0  # empty batches carry hp for a while after a priority message
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("messages", "priority", "comments", "comments_dropped", "likes_in", "aggregates",
         "batches", "datagrams", "nack_resent"), 0))


class DataHub:
    """Data messages of every room of a node (see the module docstring)."""

    def __init__(self, bus: EventBus, send: Send, node_ssrc: int, *, interval_s: float = 0.2,
                 default_cap: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.01 <= interval_s <= 5.0:
            raise BadRequest("interval_s must be within 0.01..5 s")
        if not 0 <= default_cap <= wire.MAX_CAP:
            raise BadRequest(f"default_cap must be within 0..{wire.MAX_CAP}")
        self.bus = bus
        self._send = send
        self.node_ssrc = node_ssrc & 0xFFFF_FFFF
        self.interval_s = interval_s
        self.default_cap = default_cap
        self.clock = clock
        self.on_comment: Callable[[str, str, str, str], None] | None = None
        self._rooms: dict[str, _Room] = {}
        self._members: dict[int, _Member] = {}
        # pid -> (STATE packets, resend times)
        self._state: dict[int, tuple[list[bytes], list[float]]] = {}
        self._rng = random.Random()
        self._counters: dict[str, int] = dict.fromkeys(
            ("data_in", "malformed", "unknown_peer", "kind_dropped", "rate_limited",
             "comments_overflow", "nacks_in", "nack_resent", "nack_limited", "settings",
             "priority_sent", "batches_built", "datagrams_out", "state_sent", "hook_errors"),
            0)

    # -- rooms and members ---------------------------------------------------------------

    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            if not isinstance(room, str) or not room:
                raise BadRequest("room must be a non-empty string")
            now = self.clock()
            r = _Room(room, self.interval_s, self.default_cap, now, last_flush=now,
                      next_flush=now + self.interval_s)
            self._rooms[room] = r
        return r

    def configure_room(self, room: str, *, interval_ms: int | None = None,
                       comment_cap: int | None = None) -> dict[str, int]:
        """Set the room's aggregation interval (20..5000 ms, honoured at ``tick``
        granularity) and default comment cap (0..100 per second); returns both."""
        if interval_ms is not None and (type(interval_ms) is not int
                                        or not 20 <= interval_ms <= 5000):
            raise BadRequest("interval_ms must be an integer within 20..5000")
        if comment_cap is not None and (type(comment_cap) is not int
                                        or not 0 <= comment_cap <= wire.MAX_CAP):
            raise BadRequest(f"comment_cap must be an integer within 0..{wire.MAX_CAP}")
        r = self._room(room)
        if interval_ms is not None:
            r.interval_s = interval_ms / 1000
            r.next_flush = r.last_flush + r.interval_s
        if comment_cap is not None and comment_cap != r.default_cap:
            r.default_cap = comment_cap
            r.dirty = True
        return {"interval_ms": round(r.interval_s * 1000), "comment_cap": r.default_cap}

    def add_member(self, room: str, pid: int, participant: str, role: str) -> None:
        """``pid`` (the engine's peer handle) receives the room's data messages."""
        if role not in MEMBER_ROLES:
            raise BadRequest(f"role must be one of {sorted(MEMBER_ROLES)}")
        if type(pid) is not int or not isinstance(participant, str):
            raise BadRequest("pid must be an int and participant a string")
        r = self._room(room)
        if pid in self._members:
            self.remove_member(self._members[pid].room.name, pid)
        m = _Member(pid, participant, role, r)
        r.members[pid] = m
        self._members[pid] = m
        r.dirty = True

    def set_role(self, room: str, pid: int, role: str) -> None:
        if role not in MEMBER_ROLES:
            raise BadRequest(f"role must be one of {sorted(MEMBER_ROLES)}")
        m = self._members.get(pid)
        if m is None or m.room.name != room:
            raise NotFound(f"pid {pid} is not a data member of room {room!r}")
        m.role = role

    def remove_member(self, room: str, pid: int) -> None:
        """Idempotent."""
        m = self._members.get(pid)
        if m is None or m.room.name != room:
            return
        del self._members[pid]
        m.room.members.pop(pid, None)
        m.room.dirty = True
        self._state.pop(pid, None)

    def close_room(self, room: str) -> None:
        r = self._rooms.pop(room, None)
        if r is None:
            return
        for pid in r.members:
            self._members.pop(pid, None)
            self._state.pop(pid, None)

    # -- messages in -----------------------------------------------------------------------

    def send(self, room: str, kind: str, *, sender: str | None = None, role: str = "service",
             text: str | None = None, count: int | None = None,
             extra: dict[str, Any] | None = None, media: dict[str, Any] | None = None,
             priority: bool | None = None) -> dict[str, Any]:
        """``data.send``: validate, then post. Returns ``{"seq", "pi"?}``; aggregated kinds
        return ``{"seq": None, "aggregated": True}`` (their seq comes with the interval's
        ``data.aggregate`` event)."""
        if kind not in KINDS:
            raise BadRequest(f"kind must be one of {sorted(KINDS)}")
        if role not in SENDER_ROLES:
            raise BadRequest(f"role must be one of {sorted(SENDER_ROLES)}")
        if sender is not None and (not isinstance(sender, str) or len(sender) > wire.MAX_ID):
            raise BadRequest("sender must be a participant id string")
        if text is not None and (not isinstance(text, str) or len(text) > wire.MAX_TEXT):
            raise BadRequest(f"text must be a string of at most {wire.MAX_TEXT} characters")
        if count is not None and (type(count) is not int or not 0 <= count <= MAX_COUNT):
            raise BadRequest("count must be a non-negative integer")
        if priority is not None and not isinstance(priority, bool):
            raise BadRequest("priority must be a boolean")
        if extra is not None:
            try:
                wire.check_extra(extra)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        if media is not None:
            media = _check_media(media)
        now = self.clock()
        r = self._room(room)
        if kind in AGGREGATED_KINDS:
            if priority or text is not None or extra is not None or media is not None:
                raise BadRequest(f"{kind} takes only a count")
            if count is None:
                raise BadRequest(f"{kind} needs a count")
            if kind == "like":
                r.likes += count
                r.likes_total += count
            else:
                r.viewer_count, r.viewer_dirty = count, True
            return {"seq": None, "aggregated": True}
        forced = kind in PRIORITY_KINDS or role == "host"
        if priority is False and forced:
            raise BadRequest(f"{kind} from {role} is always priority")
        if kind == "comment" and not text:
            raise BadRequest("a comment needs text")
        try:
            return self._post(r, kind, sender, role, text, count, extra, media,
                              forced or bool(priority), now)
        except wire.WireError as exc:
            if "cannot be encoded" in str(exc):
                raise BadRequest(str(exc)) from None
            raise LimitExceeded(str(exc)) from None

    def _post(self, r: _Room, kind: str, sender: str | None, role: str, text: str | None,
              count: int | None, extra: dict[str, Any] | None, media: dict[str, Any] | None,
              priority: bool, now: float) -> dict[str, Any]:
        """Give the message its seq (and pi), publish it, send or buffer it."""
        if not priority and len(r.pending) >= MAX_PENDING:
            self._counters["comments_overflow"] += 1
            r.stats["comments_dropped"] += 1
            return {"seq": None, "dropped": True}
        # publish() numbers synchronously: the seq is known before listeners run, so the
        # event carries the exact map the clients get.
        q = self.bus.last_seq(r.name) + 1
        msg: dict[str, Any] = {"q": q, "k": kind, "f": sender, "r": role}
        if priority:
            msg["pi"] = r.hp + 1
        if text is not None:
            msg["t"] = text
        if count is not None:
            msg["n"] = count
        if extra is not None:
            msg["x"] = extra
        if media is not None:
            msg["media"] = media
        msg["at"] = int(now * 1000)
        packed = wire.pack_message(msg)  # WireError before anything is numbered
        event = self.bus.publish(r.name, "data.message", msg)
        if event["seq"] != q:  # defensive; cannot happen with a synchronous bus
            msg["q"] = event["seq"]
            packed = wire.pack_message(msg)
        r.stats["messages"] += 1
        out: dict[str, Any] = {"seq": msg["q"]}
        if priority:
            r.hp += 1
            out["pi"] = r.hp
            self._log(r, packed, now)
            self._ensure_groups(r)
            for pkt in wire.build_batches(self.node_ssrc, r.hp, (packed,)):
                self._out(r, r.all_pids, pkt)
            r.stats["priority"] += 1
            self._counters["priority_sent"] += 1
            r.echo_hp_until = now + 1.0
        else:
            r.pending.append(packed)
            r.stats["comments"] += 1
        if kind == "comment" and text and role != "assistant" and self.on_comment is not None:
            try:
                self.on_comment(r.name, sender or "", role, text)
            except Exception:  # a hook bug must not drop the datagram path
                self._counters["hook_errors"] += 1
        return out

    def _log(self, r: _Room, packed: bytes, now: float) -> None:
        r.log.append((now, packed))
        while len(r.log) > LOG_SIZE:
            r.log.popleft()
            r.log_base += 1

    def on_datagram(self, pid: int, subtype: int, payload: bytes, now: float) -> None:
        """An SFUD packet of a bound peer (``EV_DATA``). Never raises: drops are counted."""
        c = self._counters
        c["data_in"] += 1
        m = self._members.get(pid)
        if m is None:
            c["unknown_peer"] += 1
            return
        try:
            if subtype == wire.MSG:
                self._on_msg(m, wire.decode_msg(payload), now)
            elif subtype == wire.NACK:
                self._on_nack(m, wire.decode_nack(payload), now)
            elif subtype == wire.SETTINGS:
                cap = wire.decode_settings(payload).get("cap")
                c["settings"] += 1
                if cap is not None and cap != m.cap:
                    m.cap = cap
                    m.room.dirty = True
            else:
                c["malformed"] += 1
        except ValueError:  # WireError, or an over-size message built from it
            c["malformed"] += 1

    def _on_msg(self, m: _Member, msg: dict[str, Any], now: float) -> None:
        c = self._counters
        kind = msg["k"]
        if kind not in PARTICIPANT_KINDS:
            c["kind_dropped"] += 1
            return
        r = m.room
        if kind == "like":
            n = msg.get("n", 1)
            if not 1 <= n <= MAX_LIKES_PER_PACKET or "t" in msg or "x" in msg:
                c["malformed"] += 1
                return
            m.l_tok, ok = _take(m.l_tok, m.l_at, now, LIKE_RATE, LIKE_BURST)
            m.l_at = now
            if not ok:
                c["rate_limited"] += 1
                return
            r.likes += n
            r.likes_total += n
            r.stats["likes_in"] += n
            return
        text = msg.get("t")
        if not text or "n" in msg:
            c["malformed"] += 1
            return
        m.c_tok, ok = _take(m.c_tok, m.c_at, now, COMMENT_RATE, COMMENT_BURST)
        m.c_at = now
        if not ok:
            c["rate_limited"] += 1
            return
        self._post(r, "comment", m.participant, m.role, text, None, msg.get("x"), None,
                   m.role == "host", now)

    def _on_nack(self, m: _Member, pis: list[int], now: float) -> None:
        c = self._counters
        c["nacks_in"] += 1
        r = m.room
        found: list[bytes] = []
        oldest = now - LOG_AGE_S
        for pi in sorted(set(pis)):
            i = pi - r.log_base
            if 0 <= i < len(r.log) and r.log[i][0] >= oldest:
                m.n_tok, ok = _take(m.n_tok, m.n_at, now, NACK_RATE, NACK_BURST)
                m.n_at = now
                if not ok:
                    c["nack_limited"] += 1
                    break
                found.append(r.log[i][1])
        if not found:
            return
        c["nack_resent"] += len(found)
        r.stats["nack_resent"] += len(found)
        for pkt in wire.build_batches(self.node_ssrc, r.hp, found):
            self._out(r, (m.pid,), pkt)

    # -- STATE -----------------------------------------------------------------------------

    def send_state(self, pid: int, state: dict[str, Any]) -> None:
        """Unicast the full STATE to ``pid`` now, again at +0.5 s and +1.5 s (``tick``);
        a newer state replaces the pending resends. A state too big for one datagram goes
        in parts (its ``subs`` split); ``LimitExceeded`` if even that cannot fit."""
        if not isinstance(state, dict) or type(state.get("v")) is not int:
            raise BadRequest("state must be a map with an integer 'v'")
        try:
            pkts = wire.build_state(self.node_ssrc, state)
        except ValueError as exc:
            raise LimitExceeded(str(exc)) from None
        except Exception as exc:  # not serialisable
            raise BadRequest(f"state is not serialisable: {exc}") from None
        now = self.clock()
        self._state[pid] = (pkts, [now + d for d in STATE_RESEND_S])
        self._send_state(pid, pkts)

    def _send_state(self, pid: int, pkts: list[bytes]) -> None:
        self._counters["state_sent"] += 1
        for pkt in pkts:
            self._counters["datagrams_out"] += self._send((pid,), pkt)

    # -- the interval ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Resend due STATEs, flush every room whose interval is over."""
        for pid, (pkts, due) in list(self._state.items()):
            if due[0] <= now:
                due.pop(0)
                self._send_state(pid, pkts)
                if not due:
                    del self._state[pid]
        for r in list(self._rooms.values()):
            # A node timer firing a little early must not skip a whole interval.
            if now >= r.next_flush - 0.25 * min(r.interval_s, self.interval_s):
                self._flush(r, now)

    def _ensure_groups(self, r: _Room) -> None:
        if not r.dirty:
            return
        groups: dict[int, array[int]] = {}
        for pid, m in r.members.items():
            cap = r.default_cap if m.cap is None else m.cap
            g = groups.get(cap)
            if g is None:
                g = groups[cap] = array("i")
            g.append(pid)
        r.groups = groups
        r.all_pids = array("i", r.members)
        # A new group starts with one interval's worth: its first interval is not empty.
        r.credit = {cap: r.credit.get(cap, _burst(cap, r.interval_s)) for cap in groups}
        r.dirty = False

    def _flush(self, r: _Room, now: float) -> None:
        dt = min(max(0.0, now - r.last_flush), 2 * r.interval_s)
        if abs(dt - r.interval_s) < 0.25 * r.interval_s:
            # The node ticks on a fixed grid: count a tick a few ms early or late as one
            # interval, so credit accrues exactly cap x interval per flush (a wall-clock dt
            # of 0.199 s left a 5/s cap 0.995 of a comment short, every other interval).
            dt = r.interval_s
        r.last_flush, r.next_flush = now, now + r.interval_s
        while r.log and r.log[0][0] < now - LOG_AGE_S:
            r.log.popleft()
            r.log_base += 1
        tail = self._aggregate(r, now)  # newest seqs: after the interval's comments
        pending, r.pending = r.pending, []
        if not r.members:
            return
        self._ensure_groups(r)
        n = len(pending)
        ks: dict[int, int] = {}
        for cap in r.groups:
            credit = min(_burst(cap, r.interval_s), r.credit[cap] + cap * dt)
            # A tick a little early leaves 0.99 of a comment owed: deliver it and carry the
            # small debt, or the capped credit would forfeit it (a cap of 5/s gave 3.3/s).
            k = min(n, int(credit + SLACK))
            r.credit[cap] = credit - k
            ks[cap] = k
        kmax = max(ks.values(), default=0)
        # One uniform sample of the interval; a group taking k keeps its first k, in seq
        # order: groups with equal k share the packets, bigger caps see a superset.
        order = list(range(n)) if kmax >= n else self._rng.sample(range(n), kmax)
        echo = now <= r.echo_hp_until
        built: dict[int, list[bytes]] = {}
        for cap, pids in r.groups.items():
            k = ks[cap]
            pkts = built.get(k)
            if pkts is None:
                chosen = pending if k >= n else [pending[i] for i in sorted(order[:k])]
                if not chosen and not tail and not echo:
                    pkts = []
                else:
                    pkts = wire.build_batches(self.node_ssrc, r.hp, chosen + tail)
                    self._counters["batches_built"] += len(pkts)
                built[k] = pkts
            for pkt in pkts:
                self._out(r, pids, pkt)

    def _aggregate(self, r: _Room, now: float) -> list[bytes]:
        """The interval's like / viewer-count messages (one ``data.aggregate`` event)."""
        if not r.likes and not r.viewer_dirty:
            return []
        q = self.bus.last_seq(r.name) + 1
        at = int(now * 1000)
        data: dict[str, Any] = {"at": at}
        msgs: list[dict[str, Any]] = []
        if r.likes:
            data["likes"], data["likes_total"] = r.likes, r.likes_total
            msgs.append({"q": q, "k": "like", "f": None, "r": "service", "n": r.likes,
                         "x": {"total": r.likes_total}, "at": at})
        if r.viewer_dirty:
            data["viewer_count"] = r.viewer_count
            msgs.append({"q": q, "k": "viewer_count", "f": None, "r": "service",
                         "n": r.viewer_count, "at": at})
        r.likes, r.viewer_dirty = 0, False
        event = self.bus.publish(r.name, "data.aggregate", data)
        for msg in msgs:
            msg["q"] = event["seq"]
        r.stats["aggregates"] += 1
        return [wire.pack_message(m) for m in msgs]

    def _out(self, r: _Room, pids: Sequence[int], pkt: bytes) -> None:
        if not pids:
            return
        sent = self._send(pids, pkt)
        r.stats["batches"] += 1
        r.stats["datagrams"] += sent
        self._counters["datagrams_out"] += sent

    # -- introspection ---------------------------------------------------------------------

    def stats(self, room: str) -> dict[str, Any]:
        r = self._rooms.get(room)
        if r is None:
            raise NotFound(f"no data state for room {room!r}")
        self._ensure_groups(r)
        return {"members": len(r.members), "interval_ms": round(r.interval_s * 1000),
                "comment_cap": r.default_cap,
                "caps": {str(cap): len(p) for cap, p in sorted(r.groups.items())},
                "hp": r.hp, "log": len(r.log), "pending": len(r.pending),
                "likes_total": r.likes_total, "viewer_count": r.viewer_count, **r.stats}

    def counters(self) -> dict[str, int]:
        return dict(self._counters, rooms=len(self._rooms), members=len(self._members))


def _burst(cap: int, interval_s: float) -> float:
    """Most comments a cap group may be owed: one interval's worth, at least one (a cap
    below one per interval then gets one every few intervals); none for cap 0."""
    return max(1.0, cap * interval_s) if cap else 0.0


def _check_media(media: Any) -> dict[str, Any]:
    """A media stamp ``{"track": str, "rtp_ts": u32, "ntp"?: u64}``."""
    if not isinstance(media, dict) or set(media) - {"track", "rtp_ts", "ntp"}:
        raise BadRequest("media must be a map of track, rtp_ts and ntp")
    track, ts, ntp = media.get("track"), media.get("rtp_ts"), media.get("ntp")
    if not isinstance(track, str) or not track or len(track) > wire.MAX_ID:
        raise BadRequest("media.track must be a track id")
    if type(ts) is not int or not 0 <= ts <= 0xFFFF_FFFF:
        raise BadRequest("media.rtp_ts must be a 32-bit RTP timestamp")
    if ntp is not None and (type(ntp) is not int or not 0 <= ntp <= 0xFFFF_FFFF_FFFF_FFFF):
        raise BadRequest("media.ntp must be a 64-bit NTP timestamp")
    out = {"track": track, "rtp_ts": ts}
    if ntp is not None:
        out["ntp"] = ntp
    return out


"""The live room's control methods: co-streaming seats (``costream.*``), PK links (``pk.*``),
data messages (``data.*``) and FAQ answers (``faq.*``). Validation lives here; state rules
in sfu/costream.py, sfu/data.py and sfu/faq.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sfu import faq
from sfu.errors import BadRequest, Conflict, NotFound
from sfu.layout import LAYOUTS
from sfu.params import Params, _check_keys, _enum, _id, _int

if TYPE_CHECKING:
    from sfu.node import Node

Handler = Callable[[Params], Awaitable[dict[str, Any] | None]]
NTP_EPOCH = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
SERVICE_KINDS = ("comment", "like", "gift", "order", "product", "link_live", "viewer_count",
                 "announcement", "custom")
SYNCED_KINDS = ("product", "link_live")


def _timeout(params: Params) -> float:
    value = params.get("timeout_s", 30)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 600:
        raise BadRequest(f"field 'timeout_s' must be a number of seconds in 1..600, got "
                         f"{value!r:.40}")
    return float(value)


def _media_kinds(params: Params) -> tuple[str, ...]:
    kind = _enum(params, "kind", ("audio", "video", "all"))
    return ("audio", "video") if kind == "all" else (kind,)


class LiveMethods:
    """Registers its handlers into ``node`` (``Node._methods``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.responders: dict[str, faq.FaqResponder] = {}
        self.faq_latency_ms: list[float] = []

    def handlers(self) -> dict[str, Handler]:
        return {
            "costream.invite": self.invite, "costream.apply": self.apply,
            "costream.accept": self.accept, "costream.reject": self.reject,
            "costream.cancel": self.cancel, "costream.mute": self.mute,
            "costream.unmute": self.unmute, "costream.kick": self.kick,
            "costream.leave": self.leave, "costream.handover": self.handover,
            "costream.state": self.state, "costream.set_layout": self.set_layout,
            "pk.link": self.pk_link, "pk.unlink": self.pk_unlink, "pk.score": self.pk_score,
            "data.send": self.data_send, "data.configure": self.data_configure,
            "faq.load": self.faq_load, "faq.clear": self.faq_clear,
        }

    @property
    def costream(self) -> Any:
        return self.node.costream

    # -- seats -------------------------------------------------------------------------------

    async def invite(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "timeout_s"))
        return dict(self.costream.invite(_id(params, "room"), _id(params, "participant"),
                                         _timeout(params)))

    async def apply(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "timeout_s"))
        return dict(self.costream.apply(_id(params, "room"), _id(params, "participant"),
                                        _timeout(params)))

    async def accept(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "request"))
        return dict(self.costream.accept(_id(params, "room"), _id(params, "request")))

    async def reject(self, params: Params) -> None:
        _check_keys(params, ("room", "request"))
        self.costream.reject(_id(params, "room"), _id(params, "request"))

    async def cancel(self, params: Params) -> None:
        _check_keys(params, ("room", "request"))
        self.costream.cancel(_id(params, "room"), _id(params, "request"))

    async def mute(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "kind"))
        return dict(self.costream.mute(_id(params, "room"), _id(params, "participant"),
                                       _media_kinds(params), True))

    async def unmute(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant", "kind"))
        return dict(self.costream.mute(_id(params, "room"), _id(params, "participant"),
                                       _media_kinds(params), False))

    async def kick(self, params: Params) -> None:
        _check_keys(params, ("room", "participant"))
        self.costream.kick(_id(params, "room"), _id(params, "participant"))

    async def leave(self, params: Params) -> None:
        _check_keys(params, ("room", "participant"))
        self.costream.leave(_id(params, "room"), _id(params, "participant"))

    async def handover(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "participant"))
        return dict(self.costream.handover(_id(params, "room"), _id(params, "participant")))

    async def state(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room",))
        return dict(self.costream.describe(_id(params, "room")))

    async def set_layout(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "mode"))
        return dict(self.costream.set_layout(_id(params, "room"),
                                             _enum(params, "mode", LAYOUTS)))

    # -- PK ----------------------------------------------------------------------------------

    async def pk_link(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "other_room", "duration_s"))
        duration = _int(params, "duration_s", 1, 86400, optional=True)
        return dict(self.costream.pk_link(_id(params, "room"), _id(params, "other_room"),
                                          None if duration is None else float(duration)))

    async def pk_unlink(self, params: Params) -> None:
        _check_keys(params, ("link", "room"))
        if ("link" in params) == ("room" in params):
            raise BadRequest("give exactly one of 'link' or 'room'")
        link = _id(params, "link") if "link" in params else \
            self.costream.link_of(_id(params, "room")).link_id
        self.costream.pk_unlink(link)

    async def pk_score(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("link", "scores"))
        raw = params.get("scores")
        if not isinstance(raw, dict) or not raw or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                and 0 <= v < 2**53 for k, v in raw.items()):
            raise BadRequest("field 'scores' must be a map of room id -> integer score ≥ 0")
        return dict(self.costream.pk_score(_id(params, "link"), dict(raw)))

    # -- data messages -----------------------------------------------------------------------

    def stamp(self, room_id: str, sync: object) -> dict[str, Any]:
        """The media clock of the host's video frame on screen now: the last frame the node
        received (RTP timestamp) and when, as NTP on the node's clock — the clock of the SRs
        the node sends each viewer, which map it to that viewer's timestamps."""
        rooms = self.node.rooms
        if isinstance(sync, str):
            track = rooms.tracks.get(sync)
            if track is None or track.room_id != room_id or track.kind != "video":
                raise NotFound(f"field 'sync' names no video track of room {room_id!r}: "
                               f"{sync!r:.40}")
        else:
            host = rooms.host_of(room_id)
            track = next((t for t in (host.tracks.values() if host else ())
                          if t.kind == "video"), None)
            if track is None:
                raise Conflict(f"room {room_id!r} has no host video track to sync to")
        clock = [c for c in self.node.engine.source_clock(track.sid) if c[2] > 0]
        if not clock:
            raise Conflict(f"track {track.track_id} has not received media yet")
        layer, rtp_ts, arrival = max(clock, key=lambda c: c[2])[:3]
        wall = arrival + self.node.wallclock_offset + NTP_EPOCH
        return {"track": track.track_id, "rtp_ts": int(rtp_ts),
                "ntp": int(wall * 4294967296.0) & 0xFFFFFFFFFFFFFFFF,
                "layer": track.layers[layer].rid if layer < len(track.layers) else None}

    async def data_send(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "kind", "text", "count", "extra", "from", "role",
                             "priority", "sync"))
        room = _id(params, "room")
        self.node.rooms.room(room)
        kind = _enum(params, "kind", SERVICE_KINDS)
        sender = _id(params, "from") if params.get("from") is not None else None
        role = params.get("role", "service")
        if role not in ("service", "host", "cohost", "audience", "assistant"):
            raise BadRequest("field 'role' must be one of service, host, cohost, audience, "
                             f"assistant, got {role!r:.40}")
        priority = params.get("priority")
        if priority is not None and not isinstance(priority, bool):
            raise BadRequest("field 'priority' must be true or false")
        media = None
        if params.get("sync") not in (None, False):
            if kind not in SYNCED_KINDS:
                raise BadRequest(f"field 'sync' is for kinds {', '.join(SYNCED_KINDS)}")
            media = self.stamp(room, params["sync"])
        result = self.node.data.send(
            room, kind, sender=sender, role=role, text=params.get("text"),
            count=params.get("count"), extra=params.get("extra"), priority=priority,
            media=None if media is None else {k: media[k] for k in ("track", "rtp_ts", "ntp")})
        out = dict(result)
        if media is not None:
            out["media"] = media
        return out

    async def data_configure(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "interval_ms", "comment_cap"))
        room = _id(params, "room")
        self.node.rooms.room(room)
        # The node flushes data every 200 ms (Node._start_live): a shorter room interval
        # could not be kept.
        return dict(self.node.data.configure_room(
            room, interval_ms=_int(params, "interval_ms", 200, 5000, optional=True),
            comment_cap=_int(params, "comment_cap", 0, 100, optional=True)))

    # -- FAQ ---------------------------------------------------------------------------------

    async def faq_load(self, params: Params) -> dict[str, Any]:
        _check_keys(params, ("room", "entries", "matcher", "options",
                             "per_question_interval_s"))
        room = _id(params, "room")
        self.node.rooms.room(room)
        try:
            entries = faq.FaqSet.from_params(params.get("entries")).entries
        except BadRequest as exc:  # the matcher names the list "faq"; here it is "entries"
            raise BadRequest(str(exc).replace("faq[", "entries[").replace("'faq'", "'entries'")
                             ) from None
        name = params.get("matcher", "fuzzy")
        options = params.get("options") or {}
        if not isinstance(name, str) or not isinstance(options, dict):
            raise BadRequest("field 'matcher' must be a name and 'options' a map")
        interval = params.get("per_question_interval_s", 10.0)
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) \
                or not 0 <= interval <= 3600:
            raise BadRequest("field 'per_question_interval_s' must be a number in 0..3600")
        matcher = faq.make_matcher(name, entries, options)
        self.responders[room] = faq.FaqResponder(matcher,
                                                 per_question_interval_s=float(interval))
        return {"room": room, "entries": len(entries), "matcher": name}

    async def faq_clear(self, params: Params) -> None:
        _check_keys(params, ("room",))
        room = _id(params, "room")
        if self.responders.pop(room, None) is None:
            raise NotFound(f"room {room!r} has no FAQ loaded")

    def on_comment(self, room: str, participant: str, role: str, text: str) -> None:
        """A comment reached the room: answer it from the room's FAQ, at once."""
        responder = self.responders.get(room)
        if responder is None or role == "assistant":
            return
        t0 = self.node.clock()
        entry = responder.on_comment(text, t0)
        if entry is None:
            return
        self.node.data.send(room, "faq_answer", sender="assistant", role="assistant",
                            text=entry.answer, extra={"question": text[:200],
                                                      "reply_to": participant,
                                                      "faq": entry.id})
        self.faq_latency_ms.append((self.node.clock() - t0) * 1000.0)
        del self.faq_latency_ms[:-1000]

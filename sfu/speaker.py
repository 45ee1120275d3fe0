"""Active speaker: RFC 6464 audio levels, smoothed, and one dominant speaker per room.

The engine sums each audio track's level extension per packet (no Python per packet);
every 100 ms ``tick`` reads the sums. Level is -dBov (0 loudest, 127 silence); we work with
loudness = 127 - level. A track's score is an EWMA of its loudness while it speaks and decays
while it is silent or sends nothing. A new dominant speaker must beat the current one by
``margin`` dB for ``hold`` consecutive ticks (no flapping on a cough), and the room hears
of it at most every ``min_interval`` seconds (the issue's 300 ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sfu import _native
from sfu.rooms import RoomManager, Track

SILENCE_LEVEL = 60  # -dBov quieter than this never counts as speech without the V flag
MIN_SCORE = 20.0  # loudness (127 - level) a dominant speaker needs at all


@dataclass(slots=True)
class _TrackLevel:
    track_id: str
    room_id: str
    participant_id: str
    score: float = 0.0
    last_level: float = 127.0  # the last tick's mean level (-dBov)


@dataclass(slots=True)
class _Room:
    dominant: str | None = None
    challenger: str | None = None
    challenger_ticks: int = 0
    last_emit: float = -1e9
    tracks: dict[int, _TrackLevel] = field(default_factory=dict)  # by source handle


class SpeakerMonitor:
    def __init__(self, engine: _native.Engine, rooms: RoomManager, *,
                 clock: Callable[[], float] = time.monotonic, alpha: float = 0.35,
                 margin: float = 3.0, hold: int = 2, min_interval: float = 0.3,
                 on_change: Callable[[str, str | None], None] | None = None) -> None:
        self.engine = engine
        self.rooms = rooms
        self.clock = clock
        self.alpha = alpha
        self.margin = margin
        self.hold = hold
        self.min_interval = min_interval
        self.on_change = on_change
        self._rooms: dict[str, _Room] = {}
        self._sid_room: dict[int, str] = {}
        self.changes = 0

    def register(self, track: Track) -> None:
        """An audio track whose publisher sends the audio-level extension."""
        room = self._rooms.setdefault(track.room_id, _Room())
        room.tracks[track.sid] = _TrackLevel(track.track_id, track.room_id,
                                             track.participant_id)
        self._sid_room[track.sid] = track.room_id

    def forget(self, track: Track) -> None:
        room_id = self._sid_room.pop(track.sid, None)
        if room_id is None:
            return
        room = self._rooms[room_id]
        gone = room.tracks.pop(track.sid, None)
        if gone is not None and room.dominant == gone.participant_id and not any(
                t.participant_id == gone.participant_id for t in room.tracks.values()):
            room.dominant = None
            room.challenger = None
            if self.on_change is not None:
                self.on_change(room_id, None)
        if not room.tracks:
            del self._rooms[room_id]

    def forget_participant(self, room_id: str, participant_id: str) -> None:
        """It left: its tracks (and their source handles, which the engine reuses) go."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        for sid in [sid for sid, t in room.tracks.items()
                    if t.participant_id == participant_id]:
            del room.tracks[sid]
            self._sid_room.pop(sid, None)
        if room.dominant == participant_id:
            room.dominant = None
            if self.on_change is not None:
                self.on_change(room_id, None)
        if room.challenger == participant_id:
            room.challenger, room.challenger_ticks = None, 0
        if not room.tracks:
            del self._rooms[room_id]

    def forget_room(self, room_id: str) -> None:
        room = self._rooms.pop(room_id, None)
        for sid in room.tracks if room is not None else ():
            self._sid_room.pop(sid, None)

    def dominant(self, room_id: str) -> str | None:
        room = self._rooms.get(room_id)
        return None if room is None else room.dominant

    def levels(self, room_id: str) -> dict[str, float]:
        """participant -> smoothed loudness (for stats)."""
        room = self._rooms.get(room_id)
        if room is None:
            return {}
        out: dict[str, float] = {}
        for t in room.tracks.values():
            out[t.participant_id] = max(out.get(t.participant_id, 0.0), round(t.score, 1))
        return out

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        fresh: dict[int, tuple[float, bool]] = {}
        for sid, count, level_sum, voiced in self.engine.audio_levels():
            if count > 0:
                level = level_sum / count
                fresh[sid] = (level, voiced * 2 >= count or level < SILENCE_LEVEL)
        for room_id, room in list(self._rooms.items()):
            for sid, t in room.tracks.items():
                level, speaking = fresh.get(sid, (127.0, False))
                t.last_level = level
                target = 127.0 - level if speaking else 0.0
                t.score += self.alpha * (target - t.score)
            self._elect(room_id, room, now)

    def _elect(self, room_id: str, room: _Room, now: float) -> None:
        best: dict[str, float] = {}
        for t in room.tracks.values():
            best[t.participant_id] = max(best.get(t.participant_id, 0.0), t.score)
        if not best:
            return
        leader = max(best, key=lambda pid: best[pid])
        current = best.get(room.dominant, 0.0) if room.dominant is not None else 0.0
        if leader == room.dominant or best[leader] < MIN_SCORE \
                or best[leader] < current + self.margin:
            room.challenger, room.challenger_ticks = None, 0
            return
        if leader != room.challenger:
            room.challenger, room.challenger_ticks = leader, 0
        room.challenger_ticks += 1
        if room.challenger_ticks < self.hold or now - room.last_emit < self.min_interval:
            return  # not yet: the challenger keeps its count and wins on a later tick
        previous, room.dominant = room.dominant, leader
        room.challenger, room.challenger_ticks = None, 0
        room.last_emit = now
        self.changes += 1
        if room_id in self.rooms.rooms:
            self.rooms.emit(room_id, "room.speaker_changed", {
                "participant": leader, "previous": previous,
                "level_dbov": -round(127.0 - best[leader], 1)})
        if self.on_change is not None:
            self.on_change(room_id, leader)

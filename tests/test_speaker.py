"""Active speaker from RFC 6464 audio levels: the engine sums levels per packet, the monitor
smooths them, elects one dominant speaker per room with hysteresis, emits at most every
300 ms, and the allocator puts that speaker first."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from node_helpers import call, join_bound, run_async, running_node

from sfu import _native
from sfu.events import EventBus
from sfu.rooms import Layer, RoomManager
from sfu.speaker import SpeakerMonitor

EXT = 1
AUDIO = {"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000}


def opus(seq: int, ssrc: int, level: int, voiced: bool = True) -> bytes:
    """An Opus-sized RTP packet with the client-to-mixer audio level (RFC 6464 §3)."""
    ext = bytes([(0x80 if voiced else 0) | level])
    return _native.build_rtp(111, seq & 0xFFFF, seq * 960 & 0xFFFFFFFF, ssrc, b"\x78" * 80,
                             extensions={EXT: ext})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor_world() -> tuple[Any, ...]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    engine = _native.Engine(max_peers=16, max_sources=16, max_downtracks=64)
    tid = engine.add_udp(sock.fileno())
    bus = EventBus()
    events: list[dict[str, Any]] = []
    bus.subscribe(None, events.append)
    rooms = RoomManager(engine, bus, tid, max_rooms=2, max_participants_per_room=10)
    rooms.create_room("r", None, None)
    clock = Clock()
    mon = SpeakerMonitor(engine, rooms, clock=clock)
    people = {}
    for i, who in enumerate(("a", "b")):
        p = rooms.join("r", who, "cohost")
        rooms.bind(p, "127.0.0.1", 40000 + i)
        track = rooms.publish("r", who, "audio", "opus", 111, 48000, [Layer("", 7000 + i, None)])
        engine.set_source_audio_level(track.sid, EXT)
        mon.register(track)
        people[who] = (40000 + i, 7000 + i)
    return sock, engine, tid, mon, clock, events, people


def feed(engine: Any, tid: int, clock: Clock, people: dict[str, tuple[int, int]],
         levels: dict[str, int | None], seq: list[int], mon: SpeakerMonitor,
         seconds: float) -> None:
    """50 packets/s per speaker (None = sends nothing), the monitor ticking every 100 ms."""
    for _ in range(round(seconds * 10)):
        for _k in range(5):
            clock.now += 0.02
            seq[0] += 1
            for who, level in levels.items():
                port, ssrc = people[who]
                if level is not None:
                    engine.ingest(tid, opus(seq[0], ssrc, level), "127.0.0.1", port, clock.now)
        mon.tick()


def speaker_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["event"] == "room.speaker_changed"]


def test_engine_sums_levels_and_resets() -> None:
    sock, engine, tid, mon, clock, _events, people = monitor_world()
    try:
        port, ssrc = people["a"]
        for i, level in enumerate((10, 30, 50)):
            engine.ingest(tid, opus(i + 1, ssrc, level, voiced=i != 2), "127.0.0.1", port,
                          clock.now)
        # Without the extension the packet counts for nothing.
        engine.ingest(tid, _native.build_rtp(111, 4, 4 * 960, ssrc, b"x" * 80), "127.0.0.1",
                      port, clock.now)
        levels = {row[0]: row[1:] for row in engine.audio_levels()}
        sid = next(t.sid for t in mon.rooms.tracks.values() if t.participant_id == "a")
        assert levels == {sid: (3, 90, 2)}
        assert engine.audio_levels() == []
    finally:
        engine.remove_transport(tid)
        sock.close()


def test_dominant_speaker_needs_a_clear_lead_and_is_rate_limited() -> None:
    sock, engine, tid, mon, clock, events, people = monitor_world()
    seq = [0]
    try:
        feed(engine, tid, clock, people, {"a": 30, "b": 90}, seq, mon, 1.0)
        assert [e["participant"] for e in speaker_events(events)] == ["a"]
        assert mon.dominant("r") == "a"
        # b barely louder than a (1 dB): no flapping.
        feed(engine, tid, clock, people, {"a": 30, "b": 29}, seq, mon, 1.0)
        assert mon.dominant("r") == "a"
        # b clearly louder: takes over within a few ticks.
        t0 = clock.now
        feed(engine, tid, clock, people, {"a": 70, "b": 10}, seq, mon, 1.0)
        assert mon.dominant("r") == "b"
        changes = [e for e in events if e["event"] == "room.speaker_changed"]
        assert changes[-1]["data"]["previous"] == "a"
        assert changes[-1]["data"]["level_dbov"] < -5
        # Quick alternation: events never closer than 300 ms apart.
        emitted = []
        for i in range(12):
            loud, quiet = ("a", "b") if i % 2 else ("b", "a")
            before = len(speaker_events(events))
            feed(engine, tid, clock, people, {loud: 5, quiet: 100}, seq, mon, 0.2)
            if len(speaker_events(events)) > before:
                emitted.append(clock.now)
        gaps = [b - a for a, b in zip(emitted, emitted[1:], strict=False)]
        assert emitted and all(g >= 0.3 - 1e-9 for g in gaps), gaps
        assert clock.now > t0
    finally:
        engine.remove_transport(tid)
        sock.close()


def test_silence_and_no_packets_never_elect() -> None:
    sock, engine, tid, mon, clock, events, people = monitor_world()
    try:
        feed(engine, tid, clock, people, {"a": 127, "b": None}, [0], mon, 1.0)
        assert speaker_events(events) == [] and mon.dominant("r") is None
    finally:
        engine.remove_transport(tid)
        sock.close()


@run_async
async def test_node_elects_over_udp_and_raises_video_priority() -> None:
    async with running_node() as running:
        await call(running, "room.create", room="r1")
        events: list[dict[str, Any]] = []
        running.node.bus.subscribe(["r1"], events.append)
        clients = {}
        for i, who in enumerate(("h", "c")):
            clients[who] = await join_bound(running, "r1", who, "host" if i == 0 else "cohost")
            await call(running, "track.publish", room="r1", participant=who,
                       layers=[{"ssrc": 9000 + i}], audio_level_ext_id=EXT, **AUDIO)
        # The co-host talks, the host is quiet: the co-host becomes the dominant speaker.
        for seq in range(1, 60):
            clients["h"].send(opus(seq, 9000, 100, voiced=False), running.udp_address)
            clients["c"].send(opus(seq, 9001, 15), running.udp_address)
            await asyncio.sleep(0.02)
        names = [e["data"]["participant"] for e in events if e["event"] == "room.speaker_changed"]
        assert names == ["c"]
        assert running.node.simulcast is not None
        assert running.node.simulcast.speakers["r1"] == "c"
        host = running.node.rooms.participant("r1", "h")
        cohost = running.node.rooms.participant("r1", "c")
        track = next(iter(cohost.tracks.values()))
        assert running.node.simulcast._priority(track, cohost) < \
            running.node.simulcast._priority(next(iter(host.tracks.values())), host)
        # The speaker leaves: the election forgets it (its source handle will be reused).
        await call(running, "participant.leave", room="r1", participant="c")
        assert running.node.speaker is not None
        assert running.node.speaker.dominant("r1") is None
        assert "c" not in running.node.speaker.levels("r1")
        assert "r1" not in running.node.simulcast.speakers
        for c in clients.values():
            c.close()

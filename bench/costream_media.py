"""Issue 5 "Measured", media side: a 6-person co-stream with 500 viewers, on this machine.

Two node subprocesses (fanout.py's NodeForwarder: `sfu serve` pinned to core 0), both up
for the whole run, their viewers bound to the same sockets (one native UdpSink in a child
process pinned to core 1, drained continuously; the stage's Python clients run here):
- foundation: 1 publisher single-layer -> N plain viewers, driven by the native UdpBlaster
  at the rate and mean packet size of the co-stream's audience traffic (copies/s x size);
- co-stream: a room with `auto_subscribe`; host + 5 co-hosts (participant.join role
  host/cohost) each publish Opus-sized audio (40 ms frames: 25 pps; --ptime 20 for 50 pps,
  which saturates this 2-core machine at 500 viewers: 150k audio copies/s alone; RFC 6464
  level extension id 1; --talkers N: Opus DTX with N talking at a time) and
  3-layer simulcast VP8 (q 150, h 500, f 1500 kbit/s, 30 fps L1T3, VP8 descriptors,
  keyframes every ~2.5 s and on PLI/FIR, NACKs answered with RTX). Each stage member also receives
  every other one (RecoveringReceiver per track: NACK + RTX, RRs) behind its own LossyLink,
  10 % i.i.d. loss each way and RTT 50 ms on the receiving leg (issue 3's NACK case, budget
  200 ms; --both-legs: its media uplink loses 10 % too). N audience participants are
  auto-subscribed to the 6 audio + 6 video tracks, capped at --audience-layer (q) and
  --audience-temporal (1: 15 fps), which keeps 500 viewers near one core of node.
CPU per forwarded packet = node CPU (/proc schedstat) / its `forwarded` counter delta, in
windows: 1 foundation, then the co-stream's windows (stage publishing throughout), then
more foundation windows (stage silent: a pause mid co-stream would make 3000 downtracks
drop and re-take their layers); medians and their ratio (limit 1.15). Residual loss per
(receiver, source track) = packets given up after recovery / packets due, over the
co-stream windows (+ SETTLE_S each). Usage: python bench/costream_media.py [--quick]
[--viewers N] [--cohosts K] [--window S] [--audience-layer q|h|f] [--both-legs]
[--ptime 20|40|60] [--talkers N]
Progress on stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _procstat  # noqa: E402
import fanout  # noqa: E402
from _children import native_module  # noqa: E402
from lossy_link import LinkProfile, LossyLink  # noqa: E402

from sfu import _native  # noqa: E402
from sfu.client.loss import RecoveringReceiver  # noqa: E402
from sfu.client.publisher import RtpEndpoint, ntp_now, parse_hostport, random_ssrc  # noqa: E402
from sfu.client.rtx import RTX_PT, SendHistory, SeqCounter  # noqa: E402
from sfu.client.vp8 import build_descriptor  # noqa: E402

ROOM = "costream"
AUDIO_PT, AUDIO_CLOCK, AUDIO_PPS, AUDIO_BYTES, LEVEL_EXT = 111, 48000, 50, 120, 1
VIDEO_PT, VIDEO_CLOCK, FPS, MAX_PAYLOAD = 96, 90000, 30, 1100
# rid, width, height, bit/s
LAYERS = (("q", 320, 180, 150_000), ("h", 640, 360, 500_000), ("f", 1280, 720, 1_500_000))
KEY_PERIOD, KEY_FACTOR = 76, 3  # keyframe every 76 frames (~2.5 s), this many times bigger
TID_PATTERN = (0, 2, 1, 2)  # L1T3: frames of tid <= t are 1/4, 1/2, all of them
TEMPORAL_SHARE = (0.25, 0.5, 1.0)
LINK_LOSS, LINK_RTT_MS, BUDGET_S = 0.10, 50.0, 0.2
RESIDUAL_LIMIT, BOTH_LEGS_LIMIT, CPU_RATIO_LIMIT = 0.001, 0.005, 1.15
TALK_TURN_S, DTX_EVERY, DTX_BYTES = 3.0, 20, 3  # Opus DTX: one 3-byte SID frame per 400 ms
RR_INTERVAL_S = 1.0  # libwebrtc's video RTCP interval; each RR carries all 10 blocks
SETTLE_S = 0.8  # after the stage stops: every hole is recovered or given up (budget + RTT)


@dataclass(frozen=True)
class Plan:
    cohosts: int = 5
    viewers: int = 500
    audience_layer: str = "q"
    audience_temporal: int = 1  # max_temporal of the audience: 15 fps of L1T3
    warm_s: float = 6.0  # stage publishing before anything is measured (layers settle)
    window_s: float = 4.0  # one CPU window (co-stream or foundation)
    windows: int = 3  # co-stream windows; foundation: one before, windows - 1 after
    seed: int = 1
    # False: issue 3's NACK case (the receiving leg lossy both ways: media down, NACK/RR
    # up; the co-host's own publishing clean). True: its media uplink loses 10 % too.
    both_legs: bool = False
    # Opus DTX as in a real co-stream: this many members talk at a time (rotating every
    # TALK_TURN_S); the others send a comfort-noise frame every DTX_EVERY packets' time.
    # 0 = everyone sends continuous audio (whatever they say). Note: a lost DTX frame is
    # only seen 400 ms later, past the 200 ms budget, so DTX inflates the residual.
    talkers: int = 0
    # Opus frame length. 20 ms is the conversational default; 40 ms halves the audience's
    # audio packets (6 × 25 instead of 6 × 50 per viewer) for 20 ms more delay.
    audio_ptime_ms: int = 40


QUICK = Plan(warm_s=10.0)
FULL = Plan(warm_s=10.0, window_s=10.0, windows=5)


def log(msg: str) -> None:
    print(f"[costream {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _frame_bytes(bps: int) -> int:
    return bps // 8 // FPS


def audience_traffic(plan: Plan) -> tuple[float, float]:
    """(packets/s, mean bytes) one viewer gets from one stage member at its layer and
    temporal cap: what the foundation load imitates."""
    size = _frame_bytes(next(b for rid, _w, _h, b in LAYERS if rid == plan.audience_layer))
    fps = FPS * TEMPORAL_SHARE[plan.audience_temporal]
    key_share = 1.0 / KEY_PERIOD  # of all frames; keyframes are tid 0 (always forwarded)
    v_pkts = fps * -(-size // MAX_PAYLOAD) + FPS * key_share * (
        -(-size * KEY_FACTOR // MAX_PAYLOAD) - -(-size // MAX_PAYLOAD))
    v_bytes = fps * size + FPS * key_share * size * (KEY_FACTOR - 1)
    members = plan.cohosts + 1
    talking = min(plan.talkers, members) / members if plan.talkers else 1.0
    apps = 1000 / plan.audio_ptime_ms
    a_size = AUDIO_BYTES * plan.audio_ptime_ms // 20
    a_pps = apps * (talking + (1 - talking) / DTX_EVERY)
    a_bytes = apps * talking * (20 + a_size) + apps * (1 - talking) / DTX_EVERY * (20 + DTX_BYTES)
    pps = a_pps + v_pkts
    return pps, (a_bytes + 12 * v_pkts + 8 * v_pkts + v_bytes) / pps


# -- stage members: publisher + receiving client on one bound address -------------------------

Snapshot = dict[str, dict[str, tuple[int, int]]]  # member -> label -> (due, given up)


class _Out:
    """One outgoing RTP stream with its send history (NACKs answered by RTX)."""

    def __init__(self, pt: int, rtx_pt: int) -> None:
        self.ssrc, self.rtx_ssrc = random_ssrc(), random_ssrc()
        self.pt, self.rtx_pt = pt, rtx_pt
        self.seq = SeqCounter()
        self.rtx_seq = SeqCounter()
        self.history = SendHistory(2048, 2.0)
        self.history.rtt = LINK_RTT_MS / 1000
        self.packets = self.octets = 0
        self.want_key = False
        self.ts_base = int.from_bytes(os.urandom(4), "big")


class StageMember(RtpEndpoint):
    def __init__(self, node: tuple[str, int], ufrag: str, pwd: str, name: str,
                 level: int, feedback_loss: float = 0.0, seed: int = 1) -> None:
        super().__init__(node, ufrag, pwd)
        self.name, self.level = name, level
        self.index, self.members, self.talkers = 0, 1, 0  # talk turns (Plan.talkers)
        self.ptime_ms = 20
        self.feedback_loss = feedback_loss  # our RTCP (NACK, RR) lost on the way up
        self._rng = random.Random(seed)
        self.feedback_dropped = 0
        self.ssrc = random_ssrc()  # RTCP sender
        self.audio = _Out(AUDIO_PT, RTX_PT["audio"])
        self.video = [_Out(VIDEO_PT, RTX_PT["video"]) for _ in LAYERS]
        base = self.video[0].ts_base
        for out in self.video:
            out.ts_base = base  # one capture clock for all layers
        self.by_ssrc = {o.ssrc: o for o in (self.audio, *self.video)}
        self.rx: dict[int, RecoveringReceiver] = {}  # media SSRC -> receiver
        self.rtx_of: dict[int, int] = {}  # RTX / FEC SSRC -> media SSRC
        self.label: dict[int, str] = {}  # media SSRC -> "publisher/kind"
        self.unknown = 0  # RTP of SSRCs we had no STATE for (FEC, or before the STATE)
        self.paused = True
        self.picture_id = self.tl0 = 0
        self._tasks: list[asyncio.Task[None]] = []

    def learn(self, subs: list[dict[str, Any]]) -> None:
        """Receivers for subscriptions ({ssrc, pt, clock_rate, rtx_ssrc, fec_ssrc, rtx_pt,
        participant, kind}: the fields of the node's STATE, which needs send_datagram in
        the engine; taken from stats.get here)."""
        for s in subs:
            ssrc = int(s["ssrc"])
            if ssrc in self.rx:
                continue
            rtx = int(s["rtx_ssrc"]) if s.get("rtx_ssrc") else None
            self.rx[ssrc] = RecoveringReceiver(
                ssrc, int(s["pt"]), int(s["clock_rate"]), None, rtx, int(s["rtx_pt"]),
                budget_s=BUDGET_S, sender_ssrc=self.ssrc)
            for extra in (rtx, s.get("fec_ssrc")):
                if extra:
                    self.rtx_of[int(extra)] = ssrc  # RTX and SFU-RS FEC streams
            self.label[ssrc] = f"{s['participant']}/{s['kind']}"

    def send(self, data: bytes) -> None:
        if (self.feedback_loss and len(data) > 1 and 192 <= data[1] <= 223
                and data[0] >> 6 == 2 and self._rng.random() < self.feedback_loss):
            self.feedback_dropped += 1
            return
        super().send(data)

    # -- receive ----------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        ssrc = int.from_bytes(data[8:12], "big")
        rx = self.rx.get(self.rtx_of.get(ssrc, ssrc))
        if rx is None or len(data) < 12:
            self.unknown += 1
        else:
            rx.feed(data, time.monotonic())

    def on_rtcp(self, data: bytes) -> None:
        try:
            pkts = _native.parse_rtcp(data)
        except ValueError:
            return
        now = time.monotonic()
        for p in pkts:
            kind = p["type"]
            if kind == "nack":
                out = self.by_ssrc.get(int(p["media_ssrc"]))  # type: ignore[call-overload]
                if out is not None:
                    lost = [int(s) for s in p.get("lost", [])]  # type: ignore[attr-defined]
                    for pkt in out.history.resend(lost, now, out.rtx_ssrc, out.rtx_pt,
                                                  out.rtx_seq):
                        self.send(pkt)
            elif kind in ("pli", "fir"):
                ssrcs = [p["media_ssrc"]] if kind == "pli" else \
                    [e["ssrc"] for e in p.get("entries", [])]  # type: ignore[attr-defined]
                for ssrc in ssrcs:
                    out = self.by_ssrc.get(int(ssrc))  # type: ignore[call-overload]
                    if out is not None:
                        out.want_key = True
            elif kind == "sr":
                rx = self.rx.get(int(p["ssrc"]))  # type: ignore[call-overload]
                if rx is not None:
                    rx.on_sr(int(p["ntp"]), now)  # type: ignore[call-overload]

    # -- send -------------------------------------------------------------------------------

    def _emit(self, out: _Out, payload: bytes, ts: int, marker: bool,
              ext: dict[int, bytes] | None, now: float) -> None:
        pkt = _native.build_rtp(out.pt, out.seq.next(), ts & 0xFFFF_FFFF, out.ssrc, payload,
                                marker=marker, extensions=ext)
        out.history.add(pkt, now)
        out.packets += 1
        out.octets += len(payload)
        self.send(pkt)

    def _send_audio(self, n: int, now: float) -> None:
        """One 20 ms slot. A talker sends every slot (voice activity on, the level moving a
        little so the speaker detector has work); a silent member under DTX sends a
        comfort-noise frame every DTX_EVERY slots (RFC 6464: V=0, level 127)."""
        step = 48 * self.ptime_ms  # RTP ticks per frame at 48 kHz
        if self.talkers and (self.index - int(n * self.ptime_ms / 1000 / TALK_TURN_S)) \
                % self.members >= self.talkers:
            if n % DTX_EVERY == 0:
                self._emit(self.audio, b"\x00" * DTX_BYTES, self.audio.ts_base + n * step,
                           False, {LEVEL_EXT: bytes((127,))}, now)
            return
        level = bytes((0x80 | (self.level + (n // 25) % 5),))
        self._emit(self.audio, b"\x7c" * (AUDIO_BYTES * self.ptime_ms // 20),
                   self.audio.ts_base + n * step, False,
                   {LEVEL_EXT: level}, now)

    def _send_frame(self, n: int, now: float) -> None:
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        periodic = n % KEY_PERIOD == 0
        asked = any(out.want_key for out in self.video)
        tid = 0 if periodic or asked else TID_PATTERN[n % 4]
        self.tl0 = (self.tl0 + (tid == 0)) & 0xFF
        for out, (_rid, w, h, bps) in zip(self.video, LAYERS, strict=True):
            key = periodic or out.want_key
            out.want_key = False
            size = _frame_bytes(bps) * (KEY_FACTOR if key else 1)
            if key:  # VP8 frame tag (P=0, show_frame) + start code + size: a keyframe
                head = b"\x90\x0c\x00\x9d\x01\x2a" + w.to_bytes(2, "little") + \
                    h.to_bytes(2, "little")
            else:
                head = b"\x91\x0c\x00"
            frame = head + b"\x5a" * (size - len(head))
            chunks = [frame[i:i + MAX_PAYLOAD] for i in range(0, len(frame), MAX_PAYLOAD)]
            ts = out.ts_base + n * (VIDEO_CLOCK // FPS)
            for i, chunk in enumerate(chunks):
                desc = build_descriptor(i == 0, 0, picture_id=self.picture_id,
                                        tl0picidx=self.tl0, tid=tid, layer_sync=tid > 0)
                self._emit(out, desc + chunk, ts, i == len(chunks) - 1, None, now)

    async def _publish(self) -> None:
        t0 = time.monotonic()
        na = nv = 0
        last_sr = t0
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            due_a, due_v = int((now - t0) * 1000 / self.ptime_ms), int((now - t0) * FPS)
            # After a stall, catch up a little only (a real sender drops stale frames).
            na, nv = max(na, due_a - 3), max(nv, due_v - 2)
            while na < due_a:
                if not self.paused:
                    self._send_audio(na, now)
                na += 1
            while nv < due_v:
                if not self.paused:
                    self._send_frame(nv, now)
                nv += 1
            if now - last_sr >= 1.0 and not self.paused:
                last_sr = now
                ntp = ntp_now()
                for out, clock in ((self.audio, AUDIO_CLOCK), *((v, VIDEO_CLOCK)
                                                                for v in self.video)):
                    if out.packets:
                        ts = out.ts_base + int((now - t0) * clock)
                        self.send(_native.build_sr(out.ssrc, ntp, ts & 0xFFFF_FFFF,
                                                   out.packets, out.octets))

    async def _receive_timers(self) -> None:
        last_rr = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            for rx in self.rx.values():
                if rx.nack.pending:
                    _, nack, _ = rx.poll(now)
                    if nack is not None:
                        self.send(nack)
            if now - last_rr >= RR_INTERVAL_S and self.rx:
                last_rr = now
                blocks = [rx.report_block(now) for rx in self.rx.values()][:31]
                self.send(_native.build_rr(self.ssrc, blocks))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publish()),
                       asyncio.create_task(self._receive_timers())]

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        super().close()

    def counts(self) -> dict[str, tuple[int, int]]:
        """label -> (packets due: arrived + recovered + given up, given up)."""
        out: dict[str, tuple[int, int]] = {}
        for ssrc, rx in self.rx.items():
            _, nack, _ = rx.poll(time.monotonic())  # give up expired holes now
            if nack is not None:
                self.send(nack)  # (a due NACK must not be swallowed by the snapshot)
            st = rx.stats
            lost = rx.nack.given_up
            out[self.label[ssrc]] = (st.received + st.recovered_rtx + st.recovered_fec + lost,
                                     lost)
        return out


# -- the co-stream node ---------------------------------------------------------------------

class Costream:
    def __init__(self, plan: Plan, sink: SinkChild, blaster: Any) -> None:
        self.plan, self.sink, self.blaster = plan, sink, blaster
        # fanout's NodeForwarder with no viewers: its launch (pinned, logged) and its
        # "forwarded" counter; our room lives next to its idle "bench" room.
        self.node = fanout.NodeForwarder(False)
        self.stage: list[StageMember] = []
        self.links: list[LossyLink] = []
        self.watcher: Any = None
        self.created: list[dict[str, Any]] = []
        self._collect: asyncio.Task[None] | None = None
        self.audio_levels = False
        self.track_info: dict[str, tuple[str, str, int, int]] = {}  # publisher, kind, pt, clock

    async def start(self) -> None:
        from sfu.control import Client

        await self.node.start([], self.blaster.port)
        ctl = self.node.client
        self.watcher = await Client.connect_unix(str(Path(self.node.tmp, "sfu.sock")))
        await self.watcher.subscribe_events([ROOM])

        async def collect() -> None:
            async for ev in self.watcher.events():
                if ev.get("event") == "subscription.created":
                    self.created.append(ev["data"])
        self._collect = asyncio.create_task(collect())
        await ctl.call("room.create", room=ROOM, auto_subscribe=True)
        down = LinkProfile.iid(LINK_LOSS, delay_ms=LINK_RTT_MS / 2)
        up = down if self.plan.both_legs else LinkProfile(delay_ms=LINK_RTT_MS / 2)
        for i in range(self.plan.cohosts + 1):
            name = "host" if i == 0 else f"cohost{i}"
            joined = await ctl.call("participant.join", room=ROOM, participant=name,
                                    role="host" if i == 0 else "cohost")
            link = await LossyLink.start(parse_hostport(joined["udp"]), up=up, down=down,
                                         seed=self.plan.seed * 100 + i)
            self.links.append(link)
            m = StageMember(link.address, joined["ice_ufrag"], joined["ice_pwd"], name,
                            10 + 8 * i, 0.0 if self.plan.both_legs else LINK_LOSS,
                            self.plan.seed * 100 + i)
            m.index, m.members, m.talkers = i, self.plan.cohosts + 1, self.plan.talkers
            m.ptime_ms = self.plan.audio_ptime_ms
            await m.open()
            await m.bind(10.0)
            self.stage.append(m)
        # Audio packets carry the level extension either way; the node is told about it
        # only if its engine (same build as ours) has set_source_audio_level.
        self.audio_levels = hasattr(_native.Engine, "set_source_audio_level")
        level = {"audio_level_ext_id": LEVEL_EXT} if self.audio_levels else {}
        for m in self.stage:
            a = await ctl.call("track.publish", room=ROOM, participant=m.name, kind="audio",
                               codec="opus", payload_type=AUDIO_PT, clock_rate=AUDIO_CLOCK,
                               layers=[{"ssrc": m.audio.ssrc, "rtx_ssrc": m.audio.rtx_ssrc}],
                               **level)
            m.audio.rtx_pt = int(a.get("rtx_payload_type") or m.audio.rtx_pt)
            layers = [{"rid": rid, "ssrc": o.ssrc, "rtx_ssrc": o.rtx_ssrc, "width": w,
                       "height": h, "max_bitrate": bps}
                      for o, (rid, w, h, bps) in zip(m.video, LAYERS, strict=True)]
            v = await ctl.call("track.publish", room=ROOM, participant=m.name, kind="video",
                               codec="VP8", payload_type=VIDEO_PT, clock_rate=VIDEO_CLOCK,
                               layers=layers, temporal_layers=3)
            for o in m.video:
                o.rtx_pt = int(v.get("rtx_payload_type") or o.rtx_pt)
            self.track_info[a["track"]] = (m.name, "audio", AUDIO_PT, AUDIO_CLOCK)
            self.track_info[v["track"]] = (m.name, "video", VIDEO_PT, VIDEO_CLOCK)
        for m in self.stage:
            st = await ctl.call("stats.get", room=ROOM, participant=m.name)
            subs = []
            for sub in st.get("subscriptions", []):
                info = self.track_info.get(sub["track"])
                rec = sub.get("recovery", {})
                if info is not None:
                    subs.append({"ssrc": sub["ssrc"], "participant": info[0], "kind": info[1],
                                 "pt": info[2], "clock_rate": info[3],
                                 "rtx_ssrc": rec.get("rtx_ssrc"),
                                 "fec_ssrc": rec.get("fec_ssrc"),
                                 "rtx_pt": rec.get("rtx_payload_type") or RTX_PT[info[1]]})
            m.learn(subs)
            m.start()
        await self.join_audience()
        # Events only for the set-up: a watcher that reads slower than 3000 downtracks'
        # events arrive must not be what the node waits on.
        if self._collect is not None:
            self._collect.cancel()
        with contextlib.suppress(Exception):
            await self.watcher.close()
        self.watcher = None

    async def join_audience(self) -> None:
        ctl, ports = self.node.client, self.sink.ports

        async def one(i: int) -> None:
            await ctl.call("participant.join", room=ROOM, participant=f"a{i}", role="audience")
            await ctl.call("participant.connect", room=ROOM, participant=f"a{i}",
                           remote=f"127.0.0.1:{ports[i]}")
        for lo in range(0, self.plan.viewers, 50):
            await asyncio.gather(*(one(i) for i in range(lo, min(lo + 50,
                                                                self.plan.viewers))))
        want = self.plan.viewers * (self.plan.cohosts + 1)
        deadline = time.monotonic() + 20
        while True:
            subs = [d for d in self.created if d["participant"].startswith("a")
                    and self.track_info.get(d["track"], ("", ""))[1] == "video"]
            if len(subs) >= want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        log(f"audience: {len(subs)}/{want} video subscriptions; max_layer "
            f"{self.plan.audience_layer}, max_temporal {self.plan.audience_temporal}")

        async def pref(d: dict[str, Any]) -> None:
            await ctl.call("track.set_preferences", room=ROOM, participant=d["participant"],
                           subscription=d["subscription"], max_layer=self.plan.audience_layer,
                           max_temporal=self.plan.audience_temporal)
        for lo in range(0, len(subs), 50):  # the control socket takes 64 requests in flight
            await asyncio.gather(*(pref(d) for d in subs[lo:lo + 50]))

    def set_paused(self, paused: bool) -> None:
        for m in self.stage:
            m.paused = paused

    def residual(self, spans: list[tuple[Snapshot, Snapshot]]) -> dict[str, Any]:
        """Residual loss over the measured spans (each from a window's start to SETTLE_S
        after its end, the stage publishing throughout)."""
        acc: dict[str, list[int]] = {}
        for a, b in spans:
            for name, labels in b.items():
                for label, (d, g) in labels.items():
                    d0, g0 = a.get(name, {}).get(label, (0, 0))
                    cur = acc.setdefault(f"{name}<-{label}", [0, 0])
                    cur[0] += d - d0
                    cur[1] += g - g0
        pairs = {k: g / d for k, (d, g) in acc.items() if d > 0}
        due = sum(d for d, _ in acc.values())
        lost = sum(g for _, g in acc.values())
        expected = (self.plan.cohosts + 1) * self.plan.cohosts * 2
        return {"cohost_residual_loss": lost / due if due else None,
                "cohost_residual_max_pair": max(pairs.values()) if pairs else None,
                "cohost_pairs": len(pairs), "cohost_pairs_expected": expected,
                "cohost_packets_due": due, "cohost_packets_lost": lost,
                "cohost_unknown_ssrc_packets": sum(m.unknown for m in self.stage),
                "cohost_rx_totals": {k: sum(getattr(rx.stats, k) for m in self.stage
                                            for rx in m.rx.values())
                                     for k in ("received", "recovered_rtx", "recovered_fec",
                                               "late", "duplicates", "nack_seqs")},
                "cohost_link_loss_down": [round(k.down.dropped_loss / max(1, k.down.sent), 4)
                                          for k in self.links],
                "cohost_pair_residuals": {k: round(v, 5) for k, v in sorted(pairs.items())}}

    def snapshot(self) -> Snapshot:
        return {m.name: m.counts() for m in self.stage}

    async def stop(self) -> None:
        for m in self.stage:
            m.close()
        for link in self.links:
            await link.close()
        if self._collect is not None:
            self._collect.cancel()
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                await self.watcher.close()
        await self.node.stop()


# -- measurement ----------------------------------------------------------------------------

class SinkChild:
    """The audience sinks in their own process on the load core (this one runs the stage's
    Python clients): one native UdpSink drained continuously. Lines on its stdout: the
    ports, then {"total": datagrams received} per "snap" line on its stdin."""

    def __init__(self, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--sink-child", str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.ports: list[int] = json.loads(self._line())["ports"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode() or f"sink child exited {self.proc.poll()}"

    async def total(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"snap\n")
        self.proc.stdin.flush()
        return int(json.loads(await asyncio.to_thread(self._line))["total"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        fanout._reap(self.proc)  # type: ignore[arg-type]


def sink_child(n: int) -> int:
    _procstat.pin(fanout.LOAD_CPU)
    nat = native_module()
    sink = nat.UdpSink(n)
    idle = nat.UdpBlaster("127.0.0.1", 9)  # bench_drive wants one; it sends nothing here
    print(json.dumps({"ports": list(sink.ports)}), flush=True)
    while True:
        nat.bench_drive(idle, sink, 0.0, 0.0, 0.05)
        if select.select([sys.stdin], [], [], 0)[0]:
            if not sys.stdin.readline():
                return 0
            print(json.dumps({"total": sink.stats()["total"]}), flush=True)


def _sink_drops(ports: set[int]) -> int:
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if int(cols[1].split(":")[1], 16) in ports:
                total += int(cols[-1])
    return total


async def cpu_window(node: fanout.NodeForwarder, secs: float,
                     work: Callable[[], Any]) -> dict[str, Any]:
    s0 = await node.client.call("stats.get")
    c0 = _procstat.read_cpu(node.pid)
    m0 = _procstat.read_cpu(os.getpid())
    q0 = _procstat.udp_drops(node.port)
    t0 = time.monotonic()
    await work()
    wall = time.monotonic() - t0
    c1 = _procstat.read_cpu(node.pid)
    s1 = await node.client.call("stats.get")
    d = {k: v - s0["counters"].get(k, 0) for k, v in s1["counters"].items()
         if v - s0["counters"].get(k, 0)}
    for k in ("forwarded", "rx_rtp", "drop_send_eagain", "drop_send_error"):
        d.setdefault(k, 0)
    for k, v in (s1.get("allocation") or {}).items():  # control-plane work in the window
        d[f"alloc_{k}"] = v - (s0.get("allocation") or {}).get(k, 0)
    d["node_socket_drops"] = _procstat.udp_drops(node.port) - q0
    cpu = _procstat.cpu_delta(c0, c1)
    me = _procstat.cpu_delta(m0, _procstat.read_cpu(os.getpid()))
    fwd = d["forwarded"]
    return {"cpu_us_per_pkt": cpu.total_s / fwd * 1e6 if fwd else None,
            "user_us_per_pkt": cpu.user_s / fwd * 1e6 if fwd else None,
            "sys_us_per_pkt": cpu.sys_s / fwd * 1e6 if fwd else None,
            "forwarded_pps": fwd / wall, "rx_rtp_pps": d["rx_rtp"] / wall,
            "node_util": cpu.total_s / wall, "load_util": me.total_s / wall, "wall_s": wall,
            "counters": d, "live": s1.get("live")}


async def run_media(quick: bool, progress: Callable[[str], None] = log,
                    plan: Plan | None = None, rt: int | None = None) -> dict[str, Any]:
    """The co-stream media bench (see the module doc); `rt`: SCHED_FIFO priority of both
    nodes (None: 10 as root, as fanout.py does)."""
    plan = plan or (QUICK if quick else FULL)
    fanout.RT = (10 if os.geteuid() == 0 else 0) if rt is None else rt
    nat = native_module()
    # Not pinned: the stage's clients float; the sinks' process is on the load core.
    per_member_pps, size = audience_traffic(plan)
    members = plan.cohosts + 1
    f_rate = per_member_pps * members  # foundation in-rate: same copies/s as the audience
    blaster = nat.UdpBlaster("127.0.0.1", 9, size=max(int(size), 64), ssrc=fanout.PUB_SSRC)
    sink = SinkChild(plan.viewers)
    ports = set(sink.ports)
    pacer = nat.UdpSink(1)  # bench_drive paces the blaster while "draining" this idle one
    found = fanout.NodeForwarder(False)
    cs = Costream(plan, sink, blaster)
    lags: list[float] = []
    out: dict[str, Any] = {"viewers": plan.viewers, "cohosts": plan.cohosts,
                           "audience_layer": plan.audience_layer, "quick": quick,
                           "audience_max_temporal": plan.audience_temporal,
                           "talkers": plan.talkers, "audio_ptime_ms": plan.audio_ptime_ms,
                           "node_rt_prio": fanout.RT}
    t_start = time.monotonic()
    try:
        progress(f"foundation node: 1 -> {plan.viewers} viewers ...")
        await found.start([("127.0.0.1", p) for p in sink.ports], blaster.port)
        progress(f"co-stream node: {members} on stage, {plan.viewers} audience ...")
        await cs.start()
        progress(f"set up in {time.monotonic() - t_start:.1f} s")

        async def lag_probe() -> None:
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append((time.monotonic() - t - 0.01) * 1000)
        lag_task = asyncio.create_task(lag_probe())
        spans: list[tuple[Snapshot, Snapshot]] = []
        f_runs: list[dict[str, Any]] = []
        c_runs: list[dict[str, Any]] = []
        c_lags: list[float] = []

        async def foundation() -> None:
            # The stage is silent meanwhile: the co-stream node idles (a pause in the
            # middle of the co-stream would make its 3000 video downtracks drop their
            # layers and switch back, which is no steady state), so foundation windows come
            # before the stage starts and after it stopped.
            cs.set_paused(True)
            blaster.set_destination("127.0.0.1", found.port)
            await asyncio.to_thread(nat.bench_drive, blaster, pacer, f_rate, 0.3, 0.1)

            async def drive() -> None:
                await asyncio.to_thread(nat.bench_drive, blaster, pacer, f_rate,
                                        plan.window_s, 0.1)
            r = await cpu_window(found, plan.window_s, drive)
            r["rate_in"] = f_rate
            f_runs.append(r)
            progress(f"foundation: {r['cpu_us_per_pkt']:.3f} µs/pkt at "
                     f"{r['forwarded_pps']:.0f} pps, node util {r['node_util']:.2f}")
            await fanout.settle(nat, found, blaster, pacer)

        await foundation()
        progress(f"stage on; warm-up {plan.warm_s} s")
        cs.set_paused(False)
        await asyncio.sleep(plan.warm_s)
        drops0 = _sink_drops(ports)
        for i in range(plan.windows):
            n0 = len(lags)
            snap = cs.snapshot()
            got0 = await sink.total()
            r = await cpu_window(cs.node, plan.window_s,
                                 lambda: asyncio.sleep(plan.window_s))
            r["audience_received_pps"] = (await sink.total() - got0) / r["wall_s"]
            c_lags += lags[n0:]
            c_runs.append(r)
            progress(f"co-stream {i + 1}/{plan.windows}: {r['cpu_us_per_pkt']:.3f} µs/pkt at "
                     f"{r['forwarded_pps']:.0f} pps, node util {r['node_util']:.2f}, load util "
                     f"{r['load_util']:.2f}")
            # Holes of the window's last packets are recovered or given up by then (the
            # next span starts at this same point: packets after it count twice, rarely).
            await asyncio.sleep(SETTLE_S)
            spans.append((snap, cs.snapshot()))
        audience_drops = _sink_drops(ports) - drops0
        for _ in range(max(1, plan.windows - 1)):
            await foundation()
        out.update(cs.residual(spans))
        out["audio_level_ext_on_node"] = cs.audio_levels
        lag_task.cancel()
        limit = BOTH_LEGS_LIMIT if plan.both_legs else RESIDUAL_LIMIT
        f_med = statistics.median(r["cpu_us_per_pkt"] for r in f_runs)
        c_med = statistics.median(r["cpu_us_per_pkt"] for r in c_runs)
        live = c_runs[-1].get("live") or {}
        c_lags.sort()
        out.update({
            "cpu_us_per_pkt": c_med, "foundation_cpu_us_per_pkt": f_med,
            "cpu_ratio": c_med / f_med, "cpu_ratio_limit": CPU_RATIO_LIMIT,
            "cpu_ratio_ok": c_med / f_med <= CPU_RATIO_LIMIT,
            "cohost_residual_ok": (out["cohost_residual_loss"] is not None
                                   and out["cohost_residual_loss"] <= limit
                                   and out["cohost_pairs"] == out["cohost_pairs_expected"]),
            "cohost_residual_limit": limit, "both_legs": plan.both_legs,
            "forwarded_pps": statistics.median(r["forwarded_pps"] for r in c_runs),
            "foundation_forwarded_pps": statistics.median(r["forwarded_pps"] for r in f_runs),
            "foundation_rate_in": f_rate, "foundation_packet_bytes": blaster.size,
            "downtracks": live.get("downtracks"), "node_live": live,
            "audience_drops": audience_drops + sum(
                r["counters"]["drop_send_eagain"] + r["counters"]["drop_send_error"]
                for r in c_runs),
            "loop_lag_ms_p50": c_lags[len(c_lags) // 2] if c_lags else None,
            "loop_lag_ms_p99": c_lags[int(len(c_lags) * 0.99)] if c_lags else None,
            "loop_lag_ms_max": c_lags[-1] if c_lags else None,
            "costream_windows": [{k: v for k, v in r.items() if k != "live"} for r in c_runs],
            "foundation_windows": [{k: v for k, v in r.items() if k != "live"}
                                   for r in f_runs],
        })
    finally:
        out["node_log_tail"] = cs.node.log_tail()[-600:]
        await cs.stop()
        await found.stop()
        sink.close()
        pacer.close()
        blaster.close()
    out["seconds"] = time.monotonic() - t_start
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (~1.5 minutes)")
    ap.add_argument("--viewers", type=int, default=None)
    ap.add_argument("--cohosts", type=int, default=None)
    ap.add_argument("--window", type=float, default=None, help="seconds per CPU window")
    ap.add_argument("--audience-layer", choices=[x[0] for x in LAYERS], default=None)
    ap.add_argument("--audience-temporal", type=int, choices=(0, 1, 2), default=None,
                    help="audience max_temporal (L1T3: 7.5 / 15 / 30 fps; default 1)")
    ap.add_argument("--talkers", type=int, default=None,
                    help="members talking at a time under Opus DTX (default 0: all send "
                         "continuous audio)")
    ap.add_argument("--ptime", type=int, choices=(20, 40, 60), default=None,
                    help="Opus frame length in ms (default 40)")
    ap.add_argument("--both-legs", action="store_true",
                    help="10 %% loss on the co-hosts' media uplink too (issue 3's both-legs "
                         "case, limit 0.005)")
    ap.add_argument("--rt", type=int, default=10 if os.geteuid() == 0 else 0, metavar="PRIO",
                    help="both nodes SCHED_FIFO at PRIO (fanout.py --rt; default 10 as root): "
                         "other tasks on the shared core 0 must not stall the node")
    ap.add_argument("--sink-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink_child:
        return sink_child(args.sink_child)
    plan = QUICK if args.quick else FULL
    for key, val in (("viewers", args.viewers), ("cohosts", args.cohosts),
                     ("both_legs", args.both_legs or None),
                     ("window_s", args.window), ("audience_layer", args.audience_layer),
                     ("audience_temporal", args.audience_temporal),
                     ("talkers", args.talkers), ("audio_ptime_ms", args.ptime)):
        if val is not None:
            plan = replace(plan, **{key: val})
    res = asyncio.run(run_media(args.quick, log, plan, args.rt))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

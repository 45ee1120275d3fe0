"""Applies sfu/simulcast.py's allocation to the engine, per viewer.

Inputs, all per batch or event (never per packet): the engine's per-layer byte counters
(layer rates, sampled on a timer), EV_BWE (a viewer's transport-wide estimate changed),
receiver reports and REMB for viewers without transport-wide feedback, preference changes,
subscriptions coming and going. Outputs: `set_downtrack_layer` targets, padding probes when a
viewer could use more than its estimate, and the events of design §4 (target and layer
changes, bandwidth, watched layers).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfu import _native
from sfu.rooms import Participant, RoomManager, Subscription, Track
from sfu.simulcast import Allocator, Choice, Demand, LayerRate, RrLossEstimator, unused_layers

_D = {name: i for i, name in enumerate(_native.DOWNTRACK_FIELDS)}
_P = {name: i for i, name in enumerate(_native.PEER_FIELDS)}
START_BPS = 1_000_000  # a viewer's estimate before any feedback
DEFAULT_LAYER_BPS = (150_000, 500_000, 2_500_000, 4_000_000)  # until a layer is measured
RATE_WINDOW_S = 1.0  # layer rates: bytes over about this long, ...
RATE_EWMA = 0.35  # ... smoothed with this weight for the newest window
UP_HEADROOM_TWCC = 1.05  # GCC's estimate is already a measured, conservative figure
UP_HEADROOM_RR = 1.15  # loss-only / REMB estimates are coarser
# GCC cuts to 0.85 x the acked rate on overuse and dips below a layer that fits: stay on a
# layer until the estimate is 10 % under its rate (a real collapse falls far below that).
DOWN_MARGIN_TWCC = 1.1
COLLAPSE = 0.5  # a new target under half the layer being sent: the link collapsed ...
COLLAPSE_DRAIN_S = 0.3  # ... pause this long (a bottleneck queue's worth) before switching
PROBE_GAP_OK_S = 0.5  # probe again this soon after a probe that raised the estimate
PROBE_GAP_S = 2.0  # ... and after one that did not
PROBE_S = 0.15  # probe length
PROBE_STEP = 2.0  # a probe asks for at most this times the estimate
ALR_PROBE_S = 5.0  # held below its subscriptions by preferences: probe this often ...
ALR_HEADROOM = 1.2  # ... until the estimate covers all of them with this margin
BANDWIDTH_EVENT_CHANGE = 0.15  # participant.bandwidth on a change this large (or every 5 s)
PRIORITY = {"host": 0, "cohost": 1}
SPEAKER_PRIORITY = -1  # the dominant speaker's video is served before the host's
# A steady viewer (same estimate, subscriptions, preferences and layer rates, within these
# steps) is re-allocated on the tick at most this often: at hundreds of viewers the per-tick
# allocation was a fifth of the node's CPU. A transport-wide-CC viewer short of bandwidth is
# re-allocated every tick (it probes and climbs); others only when an input moved.
STEADY_REALLOCATE_S = 30.0
CONSTRAINED_REALLOCATE_S = 1.0
SWEEP_SLICE_S = 0.002  # allocation work per loop turn on the tick's sweep
ESTIMATE_STEP = math.log(1.05)
RATE_STEP = math.log(1.25)


@dataclass(slots=True)
class _Viewer:
    allocator: Allocator = field(default_factory=Allocator)
    rr: RrLossEstimator = field(default_factory=lambda: RrLossEstimator(START_BPS))
    estimate: float = START_BPS
    source: str = "start"
    last_probe: float = -1e9
    probe_from: float = 0.0  # estimate when the last probe started
    probe_ok: bool = False
    reported: float = 0.0
    reported_at: float = -1e9
    signature: tuple[Any, ...] = ()  # inputs of the last allocation (quantized)
    allocated_at: float = -1e9


@dataclass(slots=True)
class _Rates:
    at: float
    bytes: dict[int, list[int]]  # layer -> cumulative bytes per TID
    rates: dict[int, list[float]] = field(default_factory=dict)  # layer -> bps per TID


class SimulcastController:
    def __init__(self, engine: _native.Engine, rooms: RoomManager, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.rooms = rooms
        self.clock = clock
        self._viewers: dict[int, _Viewer] = {}  # by native peer handle
        self._owner: dict[int, str] = {}  # peer handle -> participant id (handles are reused)
        self._rates: dict[str, _Rates] = {}  # by track id
        self._watched: dict[str, tuple[int, ...]] = {}  # by track id
        self._rate_cache: dict[str, tuple[LayerRate, ...]] = {}  # cleared on each sample
        self._drain: dict[int, asyncio.TimerHandle] = {}  # downtrack -> delayed switch
        self.allocations = 0
        self.probes = 0
        self.speakers: dict[str, str] = {}  # room -> dominant speaker (sfu/speaker.py)
        self._dirty: set[int] = set()  # viewers to re-allocate at the end of this loop turn
        self._sweep: deque[int] = deque()  # viewers the tick found changed, in slices
        self._sweep_set: set[int] = set()
        self._sweep_handle: asyncio.Handle | None = None
        self._dirty_flush: asyncio.Handle | None = None
        self._qrates: dict[str, tuple[tuple[int, ...], ...]] = {}  # cleared on each sample
        self.skipped = 0

    # -- layer rates -------------------------------------------------------------------------

    def sample_rates(self) -> bool:
        """Measure each layer's rate per temporal layer; True if any track got new rates
        (they are taken over RATE_WINDOW_S, so every other tick has none)."""
        now = self.clock()
        fresh = False
        self._rate_cache.clear()
        self._qrates.clear()
        live: set[str] = set()
        for room in self.rooms.rooms.values():
            for track in room.tracks.values():
                if track.kind != "video":
                    continue
                live.add(track.track_id)
                counts = {layer: list(tids) for layer, _ssrc, tids, _key
                          in self.engine.layer_bytes(track.sid)}
                prev = self._rates.get(track.track_id)
                if prev is None:
                    self._rates[track.track_id] = _Rates(now, counts)
                    continue
                dt = now - prev.at
                if dt < RATE_WINDOW_S:
                    continue
                rates = {layer: [max(0.0, (b - prev.bytes.get(layer, [0] * 4)[t]) * 8 / dt)
                                 for t, b in enumerate(tids)] for layer, tids in counts.items()}
                # Smoothed over a few windows: a keyframe must not look like a rate step.
                for layer, per_tid in rates.items():
                    old = prev.rates.get(layer)
                    if old is not None and per_tid[0] > 0:
                        rates[layer] = [RATE_EWMA * r + (1 - RATE_EWMA) * o
                                        for r, o in zip(per_tid, old, strict=True)]
                self._rates[track.track_id] = _Rates(now, counts, rates)
                fresh = True
        for gone in set(self._rates) - live:
            del self._rates[gone]
            fresh = True
        return fresh

    def layer_rates(self, track: Track) -> tuple[LayerRate, ...]:
        cached = self._rate_cache.get(track.track_id)
        if cached is not None and all(lay.ssrc for lay in track.layers):
            return cached
        measured = self._rates.get(track.track_id)
        out = []
        tl = max(1, min(track.temporal_layers, 4))
        for index, lay in enumerate(track.layers):
            per_tid = measured.rates.get(index) if measured is not None else None
            if per_tid is not None and measured is not None:
                cum, total = [], 0.0
                for t in range(tl):
                    total += per_tid[t] if t < len(per_tid) else 0.0
                    cum.append(total)
                if tl == 1:
                    cum = [sum(per_tid)]
                rates = tuple(cum)
            else:
                # Not measured yet: the declared rate, split evenly over temporal layers.
                full = float(lay.max_bitrate or DEFAULT_LAYER_BPS[min(index, 3)])
                rates = tuple(full * (t + 1) / tl for t in range(tl)) if lay.ssrc else (0.0,)
            out.append(LayerRate(index, lay.rid, lay.width, lay.height, rates))
        self._rate_cache[track.track_id] = tuple(out)
        return self._rate_cache[track.track_id]

    # -- estimates ---------------------------------------------------------------------------

    def _viewer(self, p: Participant) -> _Viewer:
        if self._owner.get(p.pid) != p.participant_id:
            self._viewers[p.pid] = _Viewer(Allocator(
                up_headroom=UP_HEADROOM_TWCC if p.twcc_ext_id else UP_HEADROOM_RR,
                down_margin=DOWN_MARGIN_TWCC if p.twcc_ext_id else 1.0))
            self._owner[p.pid] = p.participant_id
        return self._viewers[p.pid]

    def on_bwe(self, pid: int, estimate_bps: int, _acked_bps: int) -> None:
        p = self.rooms.by_pid.get(pid)
        if p is None:
            return
        v = self._viewer(p)
        v.estimate = float(estimate_bps)
        v.source = "twcc"
        if v.probe_from and estimate_bps > v.probe_from * 1.1:
            v.probe_ok = True
        self._report(p, v)
        self._mark(p)

    def on_receiver_report(self, did: int) -> None:
        """Viewers without transport-wide feedback: GCC's loss rule on RR, capped by REMB."""
        sub = self.rooms.by_did.get(did)
        if sub is None or sub.room_id not in self.rooms.rooms:
            return
        p = self.rooms.rooms[sub.room_id].participants.get(sub.participant_id)
        if p is None or p.twcc_ext_id:
            return
        row = self.engine.downtrack_stats[did]
        v = self._viewer(p)
        remb = int(row[_D["remb_bps"]])
        v.estimate = v.rr.on_report(int(row[_D["rr_fraction_lost"]]) / 256.0, self.clock(),
                                    remb if remb > 0 else None)
        v.source = "remb" if remb > 0 else "rr"
        self._report(p, v)
        self._mark(p)

    def _mark(self, p: Participant) -> None:
        """Re-allocate p once at the end of this loop turn: a receiver report carries a
        block per subscription, and each block is an event."""
        self._dirty.add(p.pid)
        if self._dirty_flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): now
                self._run_dirty()
                return
            self._dirty_flush = loop.call_soon(self._run_dirty)

    def _run_dirty(self) -> None:
        self._dirty_flush = None
        dirty, self._dirty = self._dirty, set()
        now = self.clock()
        for pid in dirty:
            p = self.rooms.by_pid.get(pid)
            if p is None:
                continue
            v = self._viewer(p)
            sig = self._signature(p, v)
            if sig == v.signature and not self._due(p, v, now):
                self.skipped += 1
                continue
            self.allocate(p)

    def _quantized_rates(self, track: Track) -> tuple[tuple[int, ...], ...]:
        q = self._qrates.get(track.track_id)
        if q is None:
            q = self._qrates[track.track_id] = tuple(
                tuple(round(math.log1p(r) / RATE_STEP) for r in lr.rates)
                for lr in self.layer_rates(track))
        return q

    @staticmethod
    def _due(p: Participant, v: _Viewer, now: float) -> bool:
        """Re-allocate even with unchanged inputs: a viewer short of bandwidth climbs by
        timers (up-switch hold, probes: transport-wide CC viewers every tick, others every
        second), and everyone every STEADY_REALLOCATE_S as a safety net."""
        age = now - v.allocated_at
        if v.allocator.constrained and (p.twcc_ext_id or age >= CONSTRAINED_REALLOCATE_S):
            return True
        return age >= STEADY_REALLOCATE_S

    def _signature(self, p: Participant, v: _Viewer) -> tuple[Any, ...]:
        parts: list[Any] = [round(math.log(max(v.estimate, 1.0)) / ESTIMATE_STEP)]
        # Priorities (the dominant speaker first) only matter to a viewer short of bandwidth:
        # one that gets everything it asks for keeps its allocation when the speaker changes.
        short = v.allocator.constrained
        for sub in p.subscriptions.values():
            track = self.rooms.tracks.get(sub.track_id)
            if track is None:
                continue
            rates: tuple[Any, ...] = ()
            if track.kind == "video":
                rates = self._quantized_rates(track)
            parts.append((sub.subscription_id, sub.prefs, sub.target, sub.layer,
                          short and self.speakers.get(track.room_id) == track.participant_id,
                          rates))
        return tuple(parts)

    def _report(self, p: Participant, v: _Viewer) -> None:
        now = self.clock()
        if (abs(v.estimate - v.reported) >= BANDWIDTH_EVENT_CHANGE * max(v.reported, 1.0)
                or now - v.reported_at >= 5.0):
            v.reported, v.reported_at = v.estimate, now
            self.rooms.emit(p.room_id, "participant.bandwidth", {
                "participant": p.participant_id, "estimate_bps": int(v.estimate),
                "source": v.source, "at": round(now, 6)})

    # -- allocation --------------------------------------------------------------------------

    def _priority(self, track: Track, publisher: Participant | None) -> int:
        """0 host, 1 co-host, 2 others; the room's dominant speaker goes first (-1)."""
        if publisher is None:
            return 2
        if self.speakers.get(track.room_id) == publisher.participant_id:
            return SPEAKER_PRIORITY
        return PRIORITY.get(publisher.role, 2)

    def _demand(self, sub: Subscription, track: Track, priority: int) -> Demand:
        current = None
        if sub.layer is not None and sub.target is not None:
            current = (sub.layer, sub.target[1])
        if track.kind == "audio":
            return Demand(sub.subscription_id, "audio", priority,
                          (LayerRate(0, "", None, None, (64_000.0,)),), sub.prefs, current)
        return Demand(sub.subscription_id, "video", priority,
                      self.layer_rates(track), sub.prefs, current)

    def allocate(self, p: Participant) -> None:
        """Re-split participant p's estimate over its subscriptions and apply the targets."""
        if p.room_id not in self.rooms.rooms:
            return
        subs: list[tuple[Subscription, Track]] = []
        demands: list[Demand] = []
        for sub in p.subscriptions.values():
            track = self.rooms.tracks.get(sub.track_id)
            if track is None or track.room_id not in self.rooms.rooms:
                continue
            publisher = self.rooms.rooms[track.room_id].participants.get(track.participant_id)
            subs.append((sub, track))
            demands.append(self._demand(sub, track, self._priority(track, publisher)))
        if not demands:
            return
        v = self._viewer(p)
        now = self.clock()
        choices = v.allocator.allocate(v.estimate, demands, now)
        self.allocations += 1
        v.allocated_at = now
        for sub, track in subs:
            if track.kind == "video":
                self._apply(sub, track, choices[sub.subscription_id], now)
        # What the viewer would take with no preferences: every subscription's best layer.
        ceiling = sum(max((lr.rate(len(lr.rates) - 1) for lr in d.layers), default=0.0)
                      for d in demands)
        self._maybe_probe(p, v, now, ceiling, sum(c.bps for c in choices.values()))
        v.signature = self._signature(p, v)  # inputs as they stand after this allocation

    def _apply(self, sub: Subscription, track: Track, c: Choice, now: float) -> None:
        temporal = c.temporal if track.temporal_layers > 1 else 3
        target = (c.spatial, temporal)
        if target == sub.target:
            return
        sub.target = target
        pending = self._drain.pop(sub.did, None)
        if pending is not None:
            pending.cancel()
        layer = -1 if c.spatial is None else c.spatial
        if (c.reason == "bandwidth" and sub.layer is not None and 0 <= layer < sub.layer
                and c.bps < COLLAPSE * self._layer_bps(track, sub.layer)):
            # The link collapsed under the layer being sent (the estimate fell far below
            # it): stop now and ask for the new layer's keyframe once the bottleneck queue
            # has drained, or that keyframe is lost in the queue the old layer filled.
            self.engine.set_downtrack_layer(sub.did, -1, temporal, now)
            self._drain[sub.did] = asyncio.get_running_loop().call_later(
                COLLAPSE_DRAIN_S, self._resume, sub, layer, temporal)
        else:
            self.engine.set_downtrack_layer(sub.did, layer, temporal, now)
        if not track.switchable:
            return      # one layer, every frame: nothing to choose, nothing to announce
        self.rooms.emit(sub.room_id, "subscription.target_changed", {
            "subscription": sub.subscription_id, "participant": sub.participant_id,
            "track": sub.track_id, "layer": self._rid(track, c.spatial), "temporal": temporal,
            "bps": int(c.bps), "reason": c.reason, "at": round(now, 6)})
        self._update_watched(track)

    def _resume(self, sub: Subscription, layer: int, temporal: int) -> None:
        self._drain.pop(sub.did, None)
        if self.rooms.by_did.get(sub.did) is sub and sub.target == (layer, temporal):
            self.engine.set_downtrack_layer(sub.did, layer, temporal, self.clock())

    def _layer_bps(self, track: Track, layer: int) -> float:
        rates = self.layer_rates(track)
        return rates[layer].rate(len(rates[layer].rates) - 1) if layer < len(rates) else 0.0

    def _maybe_probe(self, p: Participant, v: _Viewer, now: float, ceiling: float,
                     sending: float) -> None:
        """Probe when the viewer could use more than its estimate (constrained), and, every
        ALR_PROBE_S, when its preferences hold it below what it subscribed to (so a lifted
        preference finds the estimate ready instead of waiting for probes). The padding
        tops up what the media already sends (`sending`) to the probe rate."""
        if not p.twcc_ext_id:
            return
        if not v.allocator.constrained:
            if (sending >= 0.9 * ceiling or v.estimate >= ceiling * ALR_HEADROOM
                    or now - v.last_probe < ALR_PROBE_S):
                return
            want = ceiling * ALR_HEADROOM
        else:
            want = v.allocator.wanted_bps() * 1.1
        row = self.engine.peer_stats[p.pid]
        if int(row[_P["twcc_fb"]]) == 0:
            return      # no feedback yet: a probe would teach the estimator nothing
        if int(row[_P["bwe_loss_ppm"]]) > 100_000 or int(row[_P["bwe_state"]]) == 1:
            return      # losing or queueing already: more traffic would only add to it
        # Probes that find headroom come back to back; after one that did not, wait: each
        # probe fills the bottleneck queue for a moment (delay for the packets behind it).
        gap = PROBE_GAP_OK_S if v.probe_ok else PROBE_GAP_S
        if now - v.last_probe < gap or want <= v.estimate:
            return
        rate = min(want, v.estimate * PROBE_STEP) - sending     # padding on top of media
        if rate < 50_000:
            return
        if self.engine.probe(p.pid, rate, PROBE_S, now):
            self.probes += 1
            v.last_probe = now
            v.probe_from = v.estimate
            v.probe_ok = False

    # -- engine events -----------------------------------------------------------------------

    def on_layer(self, did: int, layer: int, temporal: int) -> None:
        sub = self.rooms.by_did.get(did)
        if sub is None or sub.room_id not in self.rooms.rooms:
            return
        track = self.rooms.tracks.get(sub.track_id)
        if track is None:
            return
        sub.layer = None if layer < 0 else layer
        if not track.switchable:
            return
        reason = "paused" if layer < 0 else "keyframe"
        self.rooms.emit(sub.room_id, "subscription.layer_changed", {
            "subscription": sub.subscription_id, "participant": sub.participant_id,
            "track": sub.track_id, "layer": self._rid(track, sub.layer), "temporal": temporal,
            "reason": reason, "at": round(self.clock(), 6)})
        self._update_watched(track)

    def on_rid(self, pid: int, ssrc: int, rid_packed: int) -> None:
        rid = rid_packed.to_bytes(8, "big").lstrip(b"\0").decode("ascii", "replace")
        track = self.rooms.learn_layer(pid, ssrc, rid)
        if track is not None:
            self.rooms.emit(track.room_id, "track.layer_learned", {
                "track": track.track_id, "participant": track.participant_id, "rid": rid,
                "ssrc": ssrc})

    def _update_watched(self, track: Track) -> None:
        choices = []
        for sub in track.subscriptions.values():
            for layer in {sub.layer, sub.target[0] if sub.target else None}:
                choices.append(Choice(layer, 0, 0.0, "fits"))
        unused = unused_layers(len(track.layers), choices)
        watched = tuple(i for i in range(len(track.layers)) if i not in unused)
        if self._watched.get(track.track_id) == watched:
            return
        self._watched[track.track_id] = watched
        self.rooms.emit(track.room_id, "track.layers_changed", {
            "track": track.track_id, "participant": track.participant_id,
            "watched": [track.layers[i].rid for i in watched],
            "unused": [track.layers[i].rid for i in unused]})

    @staticmethod
    def _rid(track: Track, layer: int | None) -> str | None:
        if layer is None or not 0 <= layer < len(track.layers):
            return None
        return track.layers[layer].rid

    # -- periodic and on changes -------------------------------------------------------------

    def tick(self) -> None:
        """Every ~0.5 s: refresh layer rates, re-allocate the viewers whose inputs moved.
        The allocations run in slices of SWEEP_SLICE_S between the loop's other callbacks:
        hundreds at once would hold up the media reader for a large part of a second."""
        fresh = self.sample_rates()
        now = self.clock()
        for p in list(self.rooms.by_pid.values()):
            if not p.subscriptions or p.pid in self._sweep_set:
                continue
            v = self._viewer(p)
            if not fresh and not self._due(p, v, now):
                self.skipped += 1  # no new rates: nothing for the signature to see
                continue
            sig = self._signature(p, v)
            if sig == v.signature and not self._due(p, v, now):
                self.skipped += 1
                continue
            self._sweep.append(p.pid)
            self._sweep_set.add(p.pid)
        self._sweep_step()
        live = set(self.rooms.by_pid)
        for pid in set(self._viewers) - live:
            del self._viewers[pid]
            self._owner.pop(pid, None)

    def _sweep_step(self) -> None:
        self._sweep_handle = None
        t0 = time.perf_counter()
        while self._sweep and time.perf_counter() - t0 < SWEEP_SLICE_S:
            pid = self._sweep.popleft()
            self._sweep_set.discard(pid)
            p = self.rooms.by_pid.get(pid)
            if p is not None:
                self.allocate(p)
        if self._sweep:
            try:
                self._sweep_handle = asyncio.get_running_loop().call_soon(self._sweep_step)
            except RuntimeError:  # no loop (a synchronous caller): finish now
                self._sweep_step()

    def on_subscribed(self, sub: Subscription) -> None:
        p = self.rooms.participant(sub.room_id, sub.participant_id)
        self.allocate(p)

    def describe_viewer(self, p: Participant) -> dict[str, Any]:
        v = self._viewers.get(p.pid) if self._owner.get(p.pid) == p.participant_id else None
        out: dict[str, Any] = {"estimate_bps": int(v.estimate if v else START_BPS),
                               "source": v.source if v else "start"}
        bwe = self.engine.bwe(p.pid)
        if bwe is not None:
            out.update({"acked_bps": int(bwe["acked_bps"]), "loss": round(bwe["loss"], 4),
                        "delay_state": ("normal", "overusing", "underusing")[
                            int(bwe["delay_state"]) % 3],
                        "probes": int(bwe["probes"]), "feedbacks": int(bwe["feedbacks"])})
        return out

    def describe_subscription(self, sub: Subscription, track: Track | None) -> dict[str, Any]:
        row = self.engine.downtrack_stats[sub.did]
        layer = int(row[_D["layer"]])
        target = sub.target
        return {"current": self._rid(track, layer) if track else None,
                "target": self._rid(track, target[0]) if track and target else None,
                "temporal": int(row[_D["temporal"]]),
                "target_temporal": target[1] if target else None,
                "switches": int(row[_D["switches"]]), "paused": sub.prefs.paused,
                "dropped_temporal": int(row[_D["dropped_temporal"]]),
                "gop_packets": int(row[_D["gop_sent"]])}

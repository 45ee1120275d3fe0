"""Simulcast allocation policy: (estimate, layer rates, preferences) → target layer per viewer.

Pure: no I/O, no clock (time is passed in, seconds), no engine. The node measures each
publisher layer's rate per temporal subset (``LayerRate``), builds one ``Demand`` per
subscription of a viewer, and asks that viewer's ``Allocator`` for a ``Choice`` per
subscription; it sets the engine's target layer from it (the engine switches on a keyframe).

Allocation, per call, over the viewer's estimate E:

- Audio first (priority order; any kind but "video" is served like audio): each gets its
  rate while it fits the budget; priority 0/1 audio is forwarded even when it does not
  (never silence a host), other audio is dropped.
- Video next, by priority (0 host, 1 co-host, 2 others; ties keep input order), over the
  budget B left (never below ``min_video_bps``). Each takes the best (spatial, temporal)
  allowed by its preferences among active layers whose rate fits B, under hysteresis:
  - keep: the reference choice (``current``, or the last target while nothing is forwarded
    yet) stays while its rate ≤ B × down_margin; otherwise it drops at once to the best
    choice below it that fits.
  - spatial up: to layer s only once s's base rate × up_headroom ≤ B has held continuously
    for the hold time (tracked per subscription and layer, even while preferences exclude s,
    so lifting a preference is fast when the link was already good).
  - temporal up on the same spatial layer: at once, but only with up_headroom (a cheap
    change; the headroom band alone keeps it from flapping).
  - hold backoff: a bandwidth down-switch less than ``FAILED_UP_S`` after an up doubles that
    subscription's hold (up to ``MAX_UP_HOLD_S``); one after a longer stay resets it. Counted
    per change of target, not per call (the node forwards the old layer until a keyframe).
  - nothing fits: priority 0/1 still get their lowest allowed layer at temporal 0 (a host
    must never vanish); others get None.
  Choice order is lexicographic (spatial, temporal): layer rates grow that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sfu.errors import BadRequest

Reason = Literal["bandwidth", "preferences", "layer_inactive", "paused", "fits"]

FAILED_UP_S = 5.0  # a down-switch this soon after an up means the up was premature
MAX_UP_HOLD_S = 8.0  # cap of the backed-off up hold
MAX_TEMPORAL = 3  # VP8 / VP9 carry at most 4 temporal layers (TID 0..3)


def _finite(x: object, default: float = 0.0) -> float:
    """x as a finite float, else ``default`` (numbers from measurements may be NaN)."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


# ---- values exchanged with the node ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerRate:
    """One spatial layer of a track as measured by the node."""

    index: int  # 0 = lowest
    rid: str
    width: int | None
    height: int | None
    # cumulative bps per temporal subset: rates[t] = bps of TIDs 0..t (len 1 without temporal
    # layers); 0.0 = inactive (a layer is active iff rates[0] > 0)
    rates: tuple[float, ...]

    def rate(self, t: int) -> float:
        """Rate of TIDs 0..t; 0.0 when unknown, inactive or not a sane number."""
        if not 0 <= t < len(self.rates):
            return 0.0
        return max(_finite(self.rates[t]), 0.0)

    @property
    def active(self) -> bool:
        return self.rate(0) > 0.0


@dataclass(frozen=True, slots=True)
class Preferences:
    """A viewer's limits on one subscription (``track.set_preferences``)."""

    max_layer: int | None = None  # highest spatial index
    max_height: int | None = None  # layers taller than this are skipped (lowest kept)
    max_temporal: int | None = None  # highest TID
    paused: bool = False

    def __post_init__(self) -> None:
        for name, v, lo, hi in (("max_layer", self.max_layer, 0, None),
                                ("max_height", self.max_height, 1, None),
                                ("max_temporal", self.max_temporal, 0, MAX_TEMPORAL)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo \
                    or (hi is not None and v > hi):
                rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise BadRequest(f"{name} must be an int {rng} or None, got {v!r}")
        if not isinstance(self.paused, bool):
            raise BadRequest(f"paused must be a bool, got {self.paused!r}")


@dataclass(frozen=True, slots=True)
class Demand:
    """One subscription of the viewer."""

    subscription: str
    kind: str  # "audio" | "video"
    priority: int  # 0 host, 1 co-host, 2 others (lower = served first); audio always first
    layers: tuple[LayerRate, ...]  # video: LOW → HIGH; audio: one LayerRate with its rate
    prefs: Preferences = field(default_factory=Preferences)
    current: tuple[int, int] | None = None  # (spatial, temporal) forwarded now; None = nothing


@dataclass(frozen=True, slots=True)
class Choice:
    """The target of one subscription."""

    spatial: int | None  # None = paused / nothing fits (audio: 0 when forwarded)
    temporal: int
    bps: float
    reason: Reason  # "bandwidth" | "preferences" | "layer_inactive" | "paused" | "fits"


# ---- preferences -------------------------------------------------------------------------

def _by_index(layers: Iterable[LayerRate]) -> list[LayerRate]:
    return sorted(layers, key=lambda lr: lr.index)


def _spatials(layers: Sequence[LayerRate], prefs: Preferences,
              active_only: bool) -> list[LayerRate]:
    """Layers allowed by max_layer and max_height (LOW → HIGH). If max_height excludes every
    layer, the lowest remaining one is kept: a small window still wants a picture."""
    idx = [lr for lr in _by_index(layers)
           if (prefs.max_layer is None or lr.index <= prefs.max_layer)
           and (not active_only or lr.active)]
    fit = [lr for lr in idx
           if prefs.max_height is None or lr.height is None or lr.height <= prefs.max_height]
    return fit or idx[:1]


def _temporals(layer: LayerRate, prefs: Preferences, active_only: bool) -> list[int]:
    top = len(layer.rates) - 1
    if prefs.max_temporal is not None:
        top = min(top, prefs.max_temporal)
    return [t for t in range(top + 1) if not active_only or layer.rate(t) > 0.0]


def _candidates(layers: Sequence[LayerRate], prefs: Preferences,
                active_only: bool = True) -> list[tuple[int, int, float]]:
    """(spatial, temporal, bps) allowed by the preferences, ascending."""
    return [(lr.index, t, lr.rate(t)) for lr in _spatials(layers, prefs, active_only)
            for t in _temporals(lr, prefs, active_only)]


def select_by_prefs(layers: Sequence[LayerRate], prefs: Preferences, *,
                    active_only: bool = True) -> tuple[int, int] | None:
    """Best (spatial, temporal) the preferences allow, bandwidth aside; None when paused or
    nothing is allowed. ``active_only=False`` also considers inactive layers (what the viewer
    asked for, whether or not the publisher sends it)."""
    if prefs.paused:
        return None
    cands = _candidates(layers, prefs, active_only)
    return (cands[-1][0], cands[-1][1]) if cands else None


def unused_layers(layer_count: int, choices: Iterable[Choice]) -> list[int]:
    """Spatial indexes in 0..layer_count-1 that no choice forwards (publishers may pause them)."""
    used = {c.spatial for c in choices if c.spatial is not None}
    return [i for i in range(layer_count) if i not in used]


# ---- the allocator -----------------------------------------------------------------------

@dataclass(slots=True)
class _SubState:
    """Hysteresis memory of one subscription."""

    hold_s: float
    since: dict[int, float] = field(default_factory=dict)  # spatial → affordable since
    last: Choice | None = None  # last target returned
    last_up: float | None = None  # when the target last went up a spatial layer


class Allocator:
    """Per viewer: splits the estimate across its subscriptions; keeps hysteresis state
    between calls (see the module docstring for the rules)."""

    def __init__(self, *, up_headroom: float = 1.15, down_margin: float = 1.0,
                 up_hold_s: float = 1.0, min_video_bps: float = 0.0) -> None:
        for name, v, lo in (("up_headroom", up_headroom, 1.0), ("down_margin", down_margin, 0.1),
                            ("up_hold_s", up_hold_s, 0.0), ("min_video_bps", min_video_bps, 0.0)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= lo):
                raise ValueError(f"{name} must be a number >= {lo}, got {v!r}")
        self.up_headroom = float(up_headroom)
        self.down_margin = float(down_margin)
        self.up_hold_s = float(up_hold_s)
        self.min_video_bps = float(min_video_bps)
        self._subs: dict[str, _SubState] = {}
        self._constrained = False
        self._wanted = 0.0

    @property
    def constrained(self) -> bool:
        """True if some demand got less than its preferences allow (the node should probe)."""
        return self._constrained

    def wanted_bps(self) -> float:
        """Estimate at which the last call's demands would all reach their best choice: the
        sum of their best rates, or more where a demand below its best still needs the
        up_headroom on top of what the demands served before it take (the probe target)."""
        return self._wanted

    def hold_s(self, subscription: str) -> float:
        """Current up hold of a subscription (backed off after premature ups); for stats."""
        st = self._subs.get(subscription)
        return st.hold_s if st is not None else self.up_hold_s

    def allocate(self, estimate_bps: float, demands: list[Demand], now: float
                 ) -> dict[str, Choice]:
        """Choices for all ``demands`` of this viewer at time ``now`` (seconds)."""
        names = [d.subscription for d in demands]
        if len(set(names)) != len(names):
            raise ValueError("duplicate subscription in demands")
        for gone in self._subs.keys() - set(names):
            del self._subs[gone]
        budget = max(_finite(estimate_bps), 0.0)
        out: dict[str, Choice] = {}
        self._constrained = False
        served = 0.0  # sum of best rates of the demands served so far (for wanted_bps)
        wanted = 0.0

        for d in sorted((d for d in demands if d.kind != "video"), key=lambda d: d.priority):
            c = self._audio(d, budget)
            out[d.subscription] = c
            self._constrained |= c.reason == "bandwidth" or c.bps > budget
            budget = max(budget - c.bps, 0.0)
            served += 0.0 if d.prefs.paused or not d.layers else d.layers[0].rate(0)
            wanted = max(wanted, served)

        budget = max(budget, self.min_video_bps)
        for d in sorted((d for d in demands if d.kind == "video"), key=lambda d: d.priority):
            st = self._subs.get(d.subscription)
            if st is None:
                st = self._subs[d.subscription] = _SubState(self.up_hold_s)
            c, best = self._video(d, st, budget, now)
            out[d.subscription] = c
            st.last = c
            below = best is not None and (c.spatial is None or (c.spatial, c.temporal) < best[:2])
            self._constrained |= below or c.bps > budget
            budget = max(budget - c.bps, 0.0)
            if best is not None:
                need = best[2] * self.up_headroom if below else best[2] / self.down_margin
                wanted = max(wanted, served + need)
                served += best[2]
                wanted = max(wanted, served)
        self._wanted = wanted
        return {name: out[name] for name in names}

    # -- audio --

    def _audio(self, d: Demand, budget: float) -> Choice:
        if d.prefs.paused:
            return Choice(None, 0, 0.0, "paused")
        rate = d.layers[0].rate(0) if d.layers else 0.0
        if rate <= budget or d.priority <= 1:
            return Choice(0, 0, rate, "fits")
        return Choice(None, 0, 0.0, "bandwidth")

    # -- video --

    def _video(self, d: Demand, st: _SubState, budget: float, now: float
               ) -> tuple[Choice, tuple[int, int, float] | None]:
        """The choice and the best candidate the preferences allow (None if none)."""
        layers = _by_index(d.layers)
        h, keep_b = self.up_headroom, budget * self.down_margin
        # affordability of each spatial layer for an up-switch, whatever the preferences
        for lr in layers:
            if lr.active and lr.rate(0) * h <= budget:
                st.since.setdefault(lr.index, now)
            else:
                st.since.pop(lr.index, None)

        if d.prefs.paused:
            return Choice(None, 0, 0.0, "paused"), None
        cands = _candidates(layers, d.prefs)
        best = cands[-1] if cands else None
        if best is None:
            return Choice(None, 0, 0.0, "layer_inactive"), None

        ref = d.current
        if ref is None and st.last is not None and st.last.spatial is not None:
            ref = (st.last.spatial, st.last.temporal)
        rates = {(s, t): r for s, t, r in cands}
        fitting = [c for c in cands if c[2] <= keep_b]

        forced = False  # the link no longer carries the reference's spatial layer
        if ref is None:  # first pick: the best that fits, no hysteresis
            pick = fitting[-1] if fitting else None
        else:
            # keep the reference while it fits, else drop at once to the best fit below it
            lower = [c for c in fitting if c[:2] <= ref]
            pick = lower[-1] if lower else None
            forced = ref in rates and (pick is None or pick[0] < ref[0])
            # temporal up on the same spatial layer: immediate, with headroom
            # (an up must also keep fitting, or a down_margin < 1 / up_headroom would flap)
            up_ok = [c for c in cands if c[2] * h <= budget and c[2] <= keep_b]
            if pick is not None:
                ups = [c for c in up_ok if c[0] == pick[0] and c[1] > pick[1]]
                if ups:
                    pick = ups[-1]
            # spatial up: only after the layer stayed affordable for the hold time
            floor_s = pick[0] if pick is not None else -1
            ready = [c for c in up_ok if c[0] > floor_s and c[0] in st.since
                     and now - st.since[c[0]] >= st.hold_s]
            if ready:
                pick = ready[-1]
                if st.last is None or st.last.spatial is None or pick[0] > st.last.spatial:
                    st.last_up = now

        if pick is None:
            if d.priority > 1:
                c = Choice(None, 0, 0.0, "bandwidth")
            else:
                low = cands[0]  # never let a host vanish: lowest layer, temporal 0
                c = Choice(low[0], low[1], low[2], "bandwidth")
        else:
            c = Choice(pick[0], pick[1], pick[2], self._reason(layers, d.prefs, pick, best))
        last_s = st.last.spatial if st.last is not None else None
        if forced and last_s is not None and (c.spatial is None or c.spatial < last_s):
            self._note_down(st, now)  # counted once per target change, not per call
        return c, best

    def _note_down(self, st: _SubState, now: float) -> None:
        if st.last_up is not None and now - st.last_up < FAILED_UP_S:
            st.hold_s = min(max(st.hold_s * 2.0, self.up_hold_s), MAX_UP_HOLD_S)
        else:
            st.hold_s = self.up_hold_s
        st.last_up = None

    @staticmethod
    def _reason(layers: Sequence[LayerRate], prefs: Preferences,
                pick: tuple[int, int, float], best: tuple[int, int, float]) -> Reason:
        if pick[:2] < best[:2]:
            return "bandwidth"
        asked = select_by_prefs(layers, prefs, active_only=False)
        if asked is not None and asked != best[:2]:
            return "layer_inactive"  # the preferred layer (or temporal subset) is not sent
        top = select_by_prefs(layers, Preferences())
        if top is not None and top != best[:2]:
            return "preferences"
        return "fits"


# ---- loss-based fallback estimator ----------------------------------------------------------

LOSS_LOW = 0.02  # below: the link has room, grow
LOSS_HIGH = 0.10  # above: back off by half the loss
GROWTH = 1.08  # per increase
GROWTH_INTERVAL_S = 1.0  # at most one increase per second


class RrLossEstimator:
    """GCC's loss-based controller on receiver-report fraction lost, for viewers without
    TWCC: < 2 % → × 1.08 (at most once per second), 2–10 % → hold, > 10 % → × (1 − loss / 2).
    A REMB value caps the estimate (the capped value is kept: growth restarts from it). The
    estimate stays within [min_bps, max_bps]. Time is passed in (seconds)."""

    def __init__(self, start_bps: float = 1e6, min_bps: float = 5e4,
                 max_bps: float = 5e7) -> None:
        for name, v in (("start_bps", start_bps), ("min_bps", min_bps), ("max_bps", max_bps)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if min_bps > max_bps:
            raise ValueError(f"min_bps {min_bps} > max_bps {max_bps}")
        self.min_bps = float(min_bps)
        self.max_bps = float(max_bps)
        self.estimate_bps = min(max(float(start_bps), self.min_bps), self.max_bps)
        self._last_increase: float | None = None

    def on_report(self, fraction_lost: float, now: float,
                  remb_bps: float | None = None) -> float:
        """Feed one RR's fraction lost (0..1; the byte / 256) and, if any, the latest REMB;
        returns the new estimate. Non-finite values are ignored (no change)."""
        est = self.estimate_bps
        f = _finite(fraction_lost, math.nan)
        t = _finite(now, math.nan)
        if not math.isnan(f) and not math.isnan(t):
            f = min(max(f, 0.0), 1.0)
            if self._last_increase is not None and t < self._last_increase:
                self._last_increase = t  # clock went back: restart the interval
            if f < LOSS_LOW:
                if self._last_increase is None or t - self._last_increase >= GROWTH_INTERVAL_S:
                    est *= GROWTH
                    self._last_increase = t
            elif f > LOSS_HIGH:
                est *= 1.0 - 0.5 * f
        remb = _finite(remb_bps, 0.0) if remb_bps is not None else 0.0
        if remb > 0.0:
            est = min(est, remb)
        self.estimate_bps = min(max(est, self.min_bps), self.max_bps)
        return self.estimate_bps


__all__ = ["Allocator", "Choice", "Demand", "LayerRate", "Preferences", "RrLossEstimator",
           "select_by_prefs", "unused_layers"]

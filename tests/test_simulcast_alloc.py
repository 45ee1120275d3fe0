"""sfu/simulcast.py: allocation tables, priority and audio first, preferences, inactive layers,
hysteresis (hold, headroom, immediate downs, anti-flap backoff), unused layers, and the
RR loss-based estimator."""

from __future__ import annotations

import math

import pytest

from sfu.errors import BadRequest
from sfu.simulcast import (
    MAX_UP_HOLD_S,
    Allocator,
    Choice,
    Demand,
    LayerRate,
    Preferences,
    RrLossEstimator,
    select_by_prefs,
    unused_layers,
)

# The bench layers (q 320x180, h 640x360, f 1280x720), L1T3: cumulative rates per TID subset.
Q = (50e3, 100e3, 150e3)
H = (170e3, 340e3, 500e3)
F = (750e3, 1500e3, 2200e3)


def layers(q=Q, h=H, f=F) -> tuple[LayerRate, ...]:
    return (LayerRate(0, "q", 320, 180, q), LayerRate(1, "h", 640, 360, h),
            LayerRate(2, "f", 1280, 720, f))


def video(sub="v", prio=0, cur=None, lay=None, **prefs) -> Demand:
    return Demand(sub, "video", prio, layers() if lay is None else lay, Preferences(**prefs), cur)


def audio(sub="a", prio=0, bps=40e3, **prefs) -> Demand:
    return Demand(sub, "audio", prio, (LayerRate(0, "", None, None, (bps,)),),
                  Preferences(**prefs), None)


def pick(c: Choice) -> tuple[int | None, int]:
    return (c.spatial, c.temporal)


# ---- tables ------------------------------------------------------------------------------

# (estimate, expected (spatial, temporal), reason): first pick of one host, no hysteresis yet
SINGLE = [
    (3e6, (2, 2), "fits"),
    (2.2e6, (2, 2), "fits"),  # exactly fits
    (2.19e6, (2, 1), "bandwidth"),
    (1e6, (2, 0), "bandwidth"),  # spatial first: 720p T0 beats 360p T0-2
    (749e3, (1, 2), "bandwidth"),
    (400e3, (1, 1), "bandwidth"),
    (169e3, (0, 2), "bandwidth"),
    (100e3, (0, 1), "bandwidth"),
    (60e3, (0, 0), "bandwidth"),
    (10e3, (0, 0), "bandwidth"),  # nothing fits: a host still gets the lowest layer
    (0.0, (0, 0), "bandwidth"),
]


@pytest.mark.parametrize("est,want,reason", SINGLE, ids=[f"{r[0]:g}" for r in SINGLE])
def test_single_host_table(est, want, reason) -> None:
    c = Allocator().allocate(est, [video()], 0.0)["v"]
    assert (pick(c), c.reason) == (want, reason)
    assert c.bps == {(0, 0): 50e3, (0, 1): 100e3, (0, 2): 150e3, (1, 0): 170e3, (1, 1): 340e3,
                     (1, 2): 500e3, (2, 0): 750e3, (2, 1): 1500e3, (2, 2): 2200e3}[want]


# (estimate, [(sub, kind, prio)], expected {sub: (spatial, temporal) or None})
MULTI = [
    # audio first, then host, then co-host, then others
    (2.9e6, [("a", "audio", 2), ("o", "video", 2), ("c", "video", 1), ("h", "video", 0)],
     {"a": (0, 0), "h": (2, 2), "c": (1, 2), "o": (0, 2)}),
    # 2.24 M - 40 k audio = 2.2 M → host takes all of it; co-host floor; other nothing
    (2.24e6, [("o", "video", 2), ("c", "video", 1), ("h", "video", 0), ("a", "audio", 2)],
     {"a": (0, 0), "h": (2, 2), "c": (0, 0), "o": None}),
    # ties keep input order: first "o1" then "o2"
    (0.4e6, [("o1", "video", 2), ("o2", "video", 2)], {"o1": (1, 1), "o2": (0, 0)}),
    (0.4e6, [("o2", "video", 2), ("o1", "video", 2)], {"o2": (1, 1), "o1": (0, 0)}),
    # too little even for audio: priority 0/1 audio still forwarded, others dropped
    (30e3, [("a0", "audio", 0), ("a2", "audio", 2), ("h", "video", 0), ("o", "video", 2)],
     {"a0": (0, 0), "a2": None, "h": (0, 0), "o": None}),
]


@pytest.mark.parametrize("est,subs,want", MULTI, ids=[str(i) for i in range(len(MULTI))])
def test_priority_and_audio_first_table(est, subs, want) -> None:
    ds = [audio(s, p) if k == "audio" else video(s, p) for s, k, p in subs]
    got = Allocator().allocate(est, ds, 0.0)
    assert list(got) == [s for s, _, _ in subs]  # answers in input order
    assert {s: (None if c.spatial is None else pick(c)) for s, c in got.items()} == want


def test_audio_is_taken_before_video_and_uses_its_rate() -> None:
    # 790 k: audio 40 k leaves exactly 750 k → host (2,0); without audio first it would get less
    got = Allocator().allocate(790e3, [video(), audio(bps=40e3, prio=2)], 0.0)
    assert got["a"] == Choice(0, 0, 40e3, "fits")
    assert pick(got["v"]) == (2, 0)
    got = Allocator().allocate(789e3, [video(), audio(bps=40e3, prio=2)], 0.0)
    assert pick(got["v"]) == (1, 2)


def test_min_video_bps_floors_the_video_budget() -> None:
    got = Allocator(min_video_bps=500e3).allocate(100e3, [video(), audio()], 0.0)
    assert pick(got["v"]) == (1, 2)  # budget 500 k although only 60 k is left after audio
    assert pick(Allocator().allocate(100e3, [video(), audio()], 0.0)["v"]) == (0, 0)


# ---- preferences -------------------------------------------------------------------------

PREFS = [
    (dict(max_layer=1), (1, 2), "preferences"),
    (dict(max_layer=0), (0, 2), "preferences"),
    (dict(max_height=360), (1, 2), "preferences"),
    (dict(max_height=719), (1, 2), "preferences"),
    (dict(max_height=720), (2, 2), "fits"),
    (dict(max_height=100), (0, 2), "preferences"),  # below every layer: the lowest one
    (dict(max_temporal=1), (2, 1), "preferences"),
    (dict(max_temporal=0, max_layer=1), (1, 0), "preferences"),
    (dict(max_temporal=3), (2, 2), "fits"),
    (dict(max_layer=7), (2, 2), "fits"),
]


@pytest.mark.parametrize("prefs,want,reason", PREFS, ids=[str(p[0]) for p in PREFS])
def test_preferences_table(prefs, want, reason) -> None:
    c = Allocator().allocate(10e6, [video(**prefs)], 0.0)["v"]
    assert (pick(c), c.reason) == (want, reason)
    assert select_by_prefs(layers(), Preferences(**prefs)) == want


def test_preferences_combine_with_bandwidth() -> None:
    c = Allocator().allocate(400e3, [video(max_temporal=0)], 0.0)["v"]
    assert (pick(c), c.reason) == ((1, 0), "bandwidth")


def test_paused_video_and_audio_take_nothing() -> None:
    a = Allocator()
    got = a.allocate(1e6, [video(paused=True), audio(paused=True), video("w", max_layer=1)], 0.0)
    assert got["v"] == Choice(None, 0, 0.0, "paused")
    assert got["a"] == Choice(None, 0, 0.0, "paused")
    assert pick(got["w"]) == (1, 2)  # the paused ones left the budget to it
    assert select_by_prefs(layers(), Preferences(paused=True)) is None
    assert not a.constrained and a.wanted_bps() == 500e3


@pytest.mark.parametrize("bad", [dict(max_layer=-1), dict(max_height=0), dict(max_temporal=4),
                                 dict(max_temporal=-1), dict(max_layer=True),
                                 dict(max_layer=1.5), dict(paused=1)])
def test_bad_preferences_are_typed_errors(bad) -> None:
    with pytest.raises(BadRequest):
        Preferences(**bad)


def test_lowering_max_layer_applies_at_once_and_raising_it_is_fast_on_a_good_link() -> None:
    a = Allocator()
    assert pick(a.allocate(3e6, [video(cur=(2, 2))], 0.0)["v"]) == (2, 2)
    c = a.allocate(3e6, [video(cur=(2, 2), max_layer=0)], 0.1)["v"]
    assert (pick(c), c.reason) == ((0, 2), "preferences")
    # the link stayed good for longer than the hold: lifting the limit goes straight back up
    assert pick(a.allocate(3e6, [video(cur=(0, 2))], 1.5)["v"]) == (2, 2)


# ---- inactive layers ---------------------------------------------------------------------

INACTIVE = [
    (layers(f=(0.0, 0.0, 0.0)), {}, (1, 2), "layer_inactive"),
    (layers(h=(0.0, 0.0, 0.0)), dict(max_layer=1), (0, 2), "layer_inactive"),
    (layers(f=(750e3, 1500e3, 0.0)), {}, (2, 1), "layer_inactive"),  # TID 2 not sent
    (layers(h=(0.0, 0.0, 0.0)), {}, (2, 2), "fits"),  # an unwatched middle layer is no loss
    (layers(f=(float("nan"), 1.0, 2.0)), {}, (1, 2), "layer_inactive"),  # garbage = inactive
    # the inactive layer is outside the preferences anyway: nothing is missing
    (layers(f=(0.0, 0.0, 0.0)), dict(max_layer=1), (1, 2), "fits"),
]


@pytest.mark.parametrize("lay,prefs,want,reason", INACTIVE, ids=[str(i) for i in range(6)])
def test_inactive_layers_table(lay, prefs, want, reason) -> None:
    c = Allocator().allocate(10e6, [video(lay=lay, **prefs)], 0.0)["v"]
    assert (pick(c), c.reason) == (want, reason)


def test_inactive_layers_are_skipped_under_bandwidth_too() -> None:
    lay = layers(h=(0.0, 0.0, 0.0))
    c = Allocator().allocate(700e3, [video(lay=lay)], 0.0)["v"]
    assert (pick(c), c.reason) == ((0, 2), "bandwidth")


def test_current_layer_going_inactive_moves_at_once() -> None:
    a = Allocator()
    a.allocate(3e6, [video(cur=(2, 2))], 0.0)
    c = a.allocate(3e6, [video(cur=(2, 2), lay=layers(f=(0.0, 0.0, 0.0)))], 0.1)["v"]
    assert (pick(c), c.reason) == ((1, 2), "layer_inactive")


def test_nothing_active_gives_none_even_to_a_host() -> None:
    z = (0.0, 0.0, 0.0)
    c = Allocator().allocate(10e6, [video(lay=layers(z, z, z))], 0.0)["v"]
    assert c == Choice(None, 0, 0.0, "layer_inactive")


# ---- hysteresis --------------------------------------------------------------------------

def test_up_needs_headroom_for_the_whole_hold() -> None:
    a = Allocator()  # headroom 1.15, hold 1 s
    assert pick(a.allocate(600e3, [video()], 0.0)["v"]) == (1, 2)
    need = 750e3 * 1.15  # (2,0) base rate with headroom
    # plenty of budget for (2,0) without headroom, never with it: stays put
    for i in range(30):
        assert pick(a.allocate(need - 1, [video(cur=(1, 2))], 0.1 * i)["v"]) == (1, 2)
    # with headroom: only once it held for 1 s, and a dip restarts the clock
    t = 3.0
    assert pick(a.allocate(need, [video(cur=(1, 2))], t)["v"]) == (1, 2)
    assert pick(a.allocate(need, [video(cur=(1, 2))], t + 0.9)["v"]) == (1, 2)
    assert pick(a.allocate(need - 1, [video(cur=(1, 2))], t + 0.95)["v"]) == (1, 2)
    assert pick(a.allocate(need, [video(cur=(1, 2))], t + 1.5)["v"]) == (1, 2)
    assert pick(a.allocate(need, [video(cur=(1, 2))], t + 2.4)["v"]) == (1, 2)
    c = a.allocate(need, [video(cur=(1, 2))], t + 2.5)["v"]
    assert (pick(c), c.reason) == ((2, 0), "bandwidth")
    assert a.constrained  # it still wants (2,2)


def test_up_jumps_to_the_highest_layer_that_held() -> None:
    a = Allocator()
    a.allocate(100e3, [video()], 0.0)
    assert pick(a.allocate(3e6, [video(cur=(0, 1))], 0.5)["v"]) == (0, 2)  # temporal: at once
    assert pick(a.allocate(3e6, [video(cur=(0, 2))], 1.4)["v"]) == (0, 2)
    assert pick(a.allocate(3e6, [video(cur=(0, 2))], 1.5)["v"]) == (2, 2)


def test_down_is_immediate_and_lands_on_the_best_fit() -> None:
    a = Allocator()
    a.allocate(3e6, [video()], 0.0)
    c = a.allocate(2.2e6, [video(cur=(2, 2))], 0.1)["v"]
    assert pick(c) == (2, 2)  # exactly fits: kept (down_margin 1.0)
    assert pick(a.allocate(2.19e6, [video(cur=(2, 2))], 0.2)["v"]) == (2, 1)  # temporal only
    assert pick(a.allocate(600e3, [video(cur=(2, 1))], 0.3)["v"]) == (1, 2)
    assert pick(a.allocate(120e3, [video(cur=(1, 2))], 0.4)["v"]) == (0, 1)


def test_down_margin_scales_the_keep_test() -> None:
    a = Allocator(down_margin=0.9)
    a.allocate(3e6, [video()], 0.0)
    assert pick(a.allocate(2.2e6, [video(cur=(2, 2))], 0.1)["v"]) == (2, 1)
    b = Allocator(down_margin=1.2)
    b.allocate(3e6, [video()], 0.0)
    assert pick(b.allocate(2e6, [video(cur=(2, 2))], 0.1)["v"]) == (2, 2)


def test_ups_must_also_pass_the_keep_test() -> None:
    # down_margin 0.8 < 1 / 1.15: (2,0) clears the headroom at 900 k but would not be kept
    a = Allocator(down_margin=0.8)
    a.allocate(600e3, [video()], 0.0)
    assert run(a, [900e3] * 200, (1, 2)) == []


def test_temporal_up_is_immediate_but_needs_headroom() -> None:
    a = Allocator()
    a.allocate(2.0e6, [video()], 0.0)  # (2,1)
    assert pick(a.allocate(2.2e6 * 1.15 - 1, [video(cur=(2, 1))], 0.1)["v"]) == (2, 1)
    assert pick(a.allocate(2.2e6 * 1.15, [video(cur=(2, 1))], 0.2)["v"]) == (2, 2)


def test_pending_target_is_the_reference_until_something_is_forwarded() -> None:
    a = Allocator()
    assert pick(a.allocate(3e6, [video()], 0.0)["v"]) == (2, 2)
    assert pick(a.allocate(1e6, [video()], 0.1)["v"]) == (2, 0)  # down at once
    # back up: the pending target (2,0) is the reference, so the temporal up needs headroom
    # and nothing jumps without the hold
    assert pick(a.allocate(2.2e6, [video()], 0.2)["v"]) == (2, 1)
    assert pick(Allocator().allocate(2.2e6, [video()], 0.2)["v"]) == (2, 2)  # fresh: no ref


def test_state_is_per_subscription_and_dropped_with_it() -> None:
    a = Allocator()
    a.allocate(600e3, [video("x")], 0.0)
    a.allocate(3e6, [video("x", cur=(1, 2))], 0.5)  # x's clock for layer 2 starts at 0.5
    # y appears later: its first pick is free; x still waits for its own hold
    got = a.allocate(3e6, [video("x", cur=(1, 2)), video("y", prio=1)], 1.0)
    assert pick(got["x"]) == (1, 2) and pick(got["y"]) == (2, 2)
    a.allocate(3e6, [video("y", prio=1)], 1.2)  # x disappears: its state is dropped
    c = a.allocate(3e6, [video("x", cur=(1, 2))], 1.6)["x"]
    assert pick(c) == (1, 2)  # a new x: layer 2 affordable only since 1.6


def test_duplicate_subscription_and_bad_config_raise() -> None:
    with pytest.raises(ValueError):
        Allocator().allocate(1e6, [video(), video()], 0.0)
    for bad in (dict(up_headroom=0.9), dict(up_hold_s=-1), dict(min_video_bps=math.nan),
                dict(down_margin=0.0)):
        with pytest.raises(ValueError):
            Allocator(**bad)


def test_bad_estimate_is_no_budget() -> None:
    for est in (math.nan, -5.0, math.inf):
        got = Allocator().allocate(est, [video(), video("o", prio=2)], 0.0)
        assert pick(got["v"]) == (0, 0) and got["o"].spatial is None


# ---- constrained / wanted ----------------------------------------------------------------

def test_constrained_and_wanted_bps() -> None:
    a = Allocator()
    a.allocate(10e6, [video(), audio()], 0.0)
    assert not a.constrained
    assert a.wanted_bps() == pytest.approx(2.24e6)
    a.allocate(1e6, [video(), audio(), video("o", prio=2, max_layer=1)], 0.1)
    assert a.constrained
    # o (last) below its best: needs what the others take plus its best with headroom
    assert a.wanted_bps() == pytest.approx(40e3 + 2.2e6 + 500e3 * 1.15)
    a.allocate(1e6, [video(max_layer=1), audio()], 0.2)  # fits entirely
    assert not a.constrained and a.wanted_bps() == pytest.approx(540e3)


# ---- flapping ----------------------------------------------------------------------------

def run(a: Allocator, estimates, start, dt=0.1, sub="v"):
    """Feed estimates every dt; the node switches at once (current = last choice).
    Returns the change times."""
    cur, changes = start, []
    for i, est in enumerate(estimates):
        c = a.allocate(est, [video(sub, cur=cur)], i * dt)[sub]
        new = pick(c)
        if new != cur:
            changes.append(i * dt)
        cur = new
    return changes


def max_changes_per_window(changes, window=5.0) -> int:
    return max((sum(1 for u in changes if t <= u < t + window) for t in changes), default=0)


# every choice above the lowest, with the choice just below it: (threshold choice, below)
LADDER = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
RATE = dict(zip(LADDER, Q + H + F, strict=True))


@pytest.mark.parametrize("step", range(1, len(LADDER)), ids=[str(c) for c in LADDER[1:]])
@pytest.mark.parametrize("period_s", [0.4, 1.0, 2.6, 6.0])
@pytest.mark.parametrize("shape", ["square", "sine"])
def test_no_flapping_around_a_layer_threshold(step, period_s, shape) -> None:
    """The estimate swings ±10 % around the rate of a choice, for 60 s; the viewer starts on
    that choice or on the one below. At most one change in any 5 s."""
    center = RATE[LADDER[step]]

    def est(i: int) -> float:
        ph = 2 * math.pi * i * 0.1 / period_s
        w = math.sin(ph) if shape == "sine" else (1.0 if math.sin(ph) >= 0 else -1.0)
        return center * (1 + 0.1 * w)
    for start in (LADDER[step], LADDER[step - 1]):
        a = Allocator()
        a.allocate(est(0), [video(cur=start)], -10.0)  # long-standing state on `start`
        changes = run(a, [est(i) for i in range(600)], start)
        assert max_changes_per_window(changes) <= 1, (start, changes)


def test_without_headroom_the_same_oscillation_flaps() -> None:
    # proves the flapping test bites: no headroom and no hold flap at every crossing
    a = Allocator(up_headroom=1.0, up_hold_s=0.0)
    est = [750e3 * (1.1 if (i // 5) % 2 else 0.9) for i in range(200)]
    assert len(run(a, est, (1, 2))) >= 10


def test_hold_backs_off_after_premature_ups() -> None:
    # 7 % above the (2,0) threshold ± 10 %: high phases clear the headroom, low ones force a
    # down; each up that fails within 5 s doubles the hold, so the flapping dies out
    r = 750e3
    est = [r * 1.07 * (1.1 if (i // 50) % 2 == 0 else 0.9) for i in range(1200)]  # 10 s period
    a = Allocator()
    changes = run(a, est, (1, 2))
    assert len(changes) <= 8, changes  # a fixed 1 s hold would change 24 times in 120 s
    assert a.hold_s("v") >= 4.0
    assert a.hold_s("v") <= MAX_UP_HOLD_S
    # a down long after the last up is not a failed up: the hold resets
    t0 = 200.0
    a.allocate(3e6, [video(cur=(1, 2))], t0)
    a.allocate(3e6, [video(cur=(1, 2))], t0 + MAX_UP_HOLD_S)
    assert pick(a.allocate(3e6, [video(cur=(1, 2))], t0 + MAX_UP_HOLD_S)["v"]) == (2, 2)
    a.allocate(600e3, [video(cur=(2, 2))], t0 + MAX_UP_HOLD_S + 6.0)
    assert a.hold_s("v") == 1.0


def test_backoff_survives_a_pending_down_switch() -> None:
    # the node keeps forwarding the old layer until the keyframe: repeated calls with the old
    # `current` are one down-switch, not many (a per-call count would reset the backoff)
    a = Allocator()
    a.allocate(600e3, [video()], 0.0)
    a.allocate(1e6, [video(cur=(1, 2))], 0.5)
    assert pick(a.allocate(1e6, [video(cur=(1, 2))], 1.5)["v"]) == (2, 0)
    for i in range(5):
        assert pick(a.allocate(600e3, [video(cur=(2, 0))], 2.0 + 0.1 * i)["v"]) == (1, 2)
    assert a.hold_s("v") == 2.0
    a.allocate(1e6, [video(cur=(1, 2))], 3.0)
    assert pick(a.allocate(1e6, [video(cur=(1, 2))], 4.9)["v"]) == (1, 2)
    assert pick(a.allocate(1e6, [video(cur=(1, 2))], 5.0)["v"]) == (2, 0)


# ---- unused layers / select_by_prefs -----------------------------------------------------

def test_unused_layers() -> None:
    cs = [Choice(2, 1, 1.5e6, "fits"), Choice(None, 0, 0.0, "paused"),
          Choice(0, 0, 5e4, "bandwidth"), Choice(2, 2, 2.2e6, "fits")]
    assert unused_layers(3, cs) == [1]
    assert unused_layers(3, []) == [0, 1, 2]
    assert unused_layers(3, [Choice(None, 0, 0.0, "bandwidth")]) == [0, 1, 2]
    assert unused_layers(2, [Choice(1, 0, 1.0, "fits")]) == [0]
    assert unused_layers(0, cs) == []


def test_unused_layers_from_an_allocation() -> None:
    a = Allocator()
    got = a.allocate(3e6, [video("x"), video("y", prio=2, max_layer=0)], 0.0)
    assert unused_layers(3, got.values()) == [1]


def test_select_by_prefs_active_only() -> None:
    lay = layers(f=(0.0, 0.0, 0.0))
    assert select_by_prefs(lay, Preferences()) == (1, 2)
    assert select_by_prefs(lay, Preferences(), active_only=False) == (2, 2)
    assert select_by_prefs((), Preferences()) is None
    # layers given out of order are taken by their index
    assert select_by_prefs(tuple(reversed(layers())), Preferences(max_layer=1)) == (1, 2)
    # no temporal layers: one subset
    one = (LayerRate(0, "q", 320, 180, (150e3,)), LayerRate(1, "h", 640, 360, (500e3,)))
    assert select_by_prefs(one, Preferences(max_temporal=2)) == (1, 0)


# ---- RR loss estimator -------------------------------------------------------------------

def test_rr_low_loss_grows_8_percent_at_most_once_per_second() -> None:
    e = RrLossEstimator(start_bps=1e6)
    assert e.on_report(0.0, 0.0) == pytest.approx(1.08e6)
    assert e.on_report(0.01, 0.5) == pytest.approx(1.08e6)  # < 1 s since the last increase
    assert e.on_report(0.019, 1.0) == pytest.approx(1.08e6 * 1.08)
    assert e.on_report(0.0, 1.99) == pytest.approx(1.08e6 * 1.08)
    assert e.on_report(0.0, 2.0) == pytest.approx(1e6 * 1.08 ** 3)


@pytest.mark.parametrize("loss", [0.02, 0.05, 0.10])
def test_rr_moderate_loss_holds(loss) -> None:
    e = RrLossEstimator(start_bps=1e6)
    for i in range(5):
        assert e.on_report(loss, float(i)) == 1e6


@pytest.mark.parametrize("loss", [0.11, 0.2, 0.5, 1.0])
def test_rr_high_loss_cuts_by_half_the_loss(loss) -> None:
    e = RrLossEstimator(start_bps=1e6)
    assert e.on_report(loss, 0.0) == pytest.approx(1e6 * (1 - 0.5 * loss))
    assert e.on_report(loss, 0.1) == pytest.approx(1e6 * (1 - 0.5 * loss) ** 2)


def test_rr_sequence_and_bounds() -> None:
    e = RrLossEstimator(start_bps=1e6, min_bps=5e4, max_bps=2e6)
    seq = [(0.0, 0.0, 1.08e6), (0.3, 1.0, 1.08e6 * 0.85), (0.05, 2.0, 1.08e6 * 0.85),
           (0.0, 3.0, 1.08e6 * 0.85 * 1.08)]
    for loss, t, want in seq:
        assert e.on_report(loss, t) == pytest.approx(want)
    for i in range(30):
        e.on_report(0.0, 10.0 + i)
    assert e.estimate_bps == 2e6  # max
    for i in range(60):
        e.on_report(1.0, 50.0 + i)
    assert e.estimate_bps == 5e4  # min


def test_rr_remb_caps_and_growth_restarts_from_the_cap() -> None:
    e = RrLossEstimator(start_bps=1e6)
    assert e.on_report(0.0, 0.0, remb_bps=600e3) == 600e3
    assert e.on_report(0.0, 1.0) == pytest.approx(648e3)
    assert e.on_report(0.0, 2.0, remb_bps=5e6) == pytest.approx(648e3 * 1.08)
    assert e.on_report(0.0, 3.0, remb_bps=1e3) == 5e4  # never under min_bps
    assert e.on_report(0.0, 3.1, remb_bps=math.nan) == 5e4  # garbage REMB ignored


def test_rr_garbage_input_changes_nothing() -> None:
    e = RrLossEstimator(start_bps=1e6)
    for loss, t in ((math.nan, 0.0), (0.0, math.nan), (math.inf, 1.0)):
        assert e.on_report(loss, t) == 1e6
    assert e.on_report(-3.0, 0.0) == pytest.approx(1.08e6)  # clamped to 0 loss
    assert e.on_report(0.0, -100.0) == pytest.approx(1.08e6)  # clock went back: wait again
    assert e.on_report(0.0, -99.0) == pytest.approx(1.08e6 ** 2 / 1e6)
    with pytest.raises(ValueError):
        RrLossEstimator(min_bps=2e6, max_bps=1e6)
    with pytest.raises(ValueError):
        RrLossEstimator(start_bps=0)

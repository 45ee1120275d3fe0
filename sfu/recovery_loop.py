"""Applies sfu/recovery.py's plans to the engine, per viewer, from its receiver reports.

The engine raises one EV_RR event per report block a viewer sends; each one updates that
downtrack's link estimate (loss, burstiness from its NACK runs, RTT) and may change its
plan: NACK answering and the SFU-RS parity rows per block (m). The block length (k) is
per source, sized from its packet rate, because the engine computes parity once per
source block and viewers differ only in how many rows they get. Runs per report, never
per packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sfu import _native
from sfu.recovery import BlockSizer, LinkEstimate, Plan, RecoveryPolicy
from sfu.rooms import RoomManager, Subscription, Track

# Video: one unrepaired packet costs every frame until the next keyframe, so aim lower, and
# let a block span up to 100 ms (at ~100 packets/s a 40 ms block is 4 packets: weak FEC);
# the viewer's late-frame wait covers the longer block.
VIDEO_TARGET, VIDEO_MAX_BLOCK_S = 1e-4, 0.1
AUDIO_TARGET, AUDIO_MAX_BLOCK_S = 2e-3, 0.04

_D = {name: i for i, name in enumerate(_native.DOWNTRACK_FIELDS)}
_S = {name: i for i, name in enumerate(_native.SOURCE_FIELDS)}


EVAL_INTERVAL_S = 10.0  # re-plan a viewer whose loss holds steady at most this often


class RecoveryController:
    def __init__(self, engine: _native.Engine, rooms: RoomManager, *, budget_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.rooms = rooms
        self.budget_s = budget_s
        self.clock = clock
        # Keyed by native handle, which the engine reuses: each entry remembers whose it is.
        self._owner: dict[int, str] = {}  # downtrack -> subscription id
        self._links: dict[int, LinkEstimate] = {}
        self._policies: dict[int, RecoveryPolicy] = {}
        self._sizers: dict[str, BlockSizer] = {}  # by track id
        self.plan_changes = 0

    def _forget_stale(self, did: int, sub: Subscription) -> None:
        if self._owner.get(did) != sub.subscription_id:
            self._links.pop(did, None)
            self._policies.pop(did, None)
            self._owner[did] = sub.subscription_id
        if len(self._sizers) > 2 * max(1, sum(len(r.tracks) for r in self.rooms.rooms.values())):
            live = {t for r in self.rooms.rooms.values() for t in r.tracks}
            for track_id in list(self._sizers):
                if track_id not in live:
                    del self._sizers[track_id]

    def on_receiver_report(self, did: int) -> None:
        sub = self.rooms.by_did.get(did)
        if sub is None:
            return
        track = self.rooms.tracks.get(sub.track_id) \
            if sub.room_id in self.rooms.rooms else None
        if track is None:
            return
        self._forget_stale(did, sub)
        now = self.clock()
        row = self.engine.downtrack_stats[did]
        est = self._links.get(did)
        if est is None:
            est = self._links[did] = LinkEstimate()
        est.on_counters(now, int(row[_D["packets"]]), int(row[_D["nack_seqs"]]),
                        int(row[_D["nack_runs"]]), octets=int(row[_D["bytes"]]))
        rtt_us = int(row[_D["rtt_us"]])
        est.on_report(now, int(row[_D["rr_fraction_lost"]]) / 256.0,
                      rtt_us / 1e6 if rtt_us > 0 else None,
                      highest_seq=int(row[_D["rr_highest_seq"]]),
                      cumulative_lost=int(row[_D["rr_cumulative_lost"]]))
        sizer = self._sizers.get(track.track_id)
        video = track.kind == "video"
        if sizer is None:
            sizer = self._sizers[track.track_id] = BlockSizer(
                max_block_s=VIDEO_MAX_BLOCK_S if video else AUDIO_MAX_BLOCK_S)
        packets = int(self.engine.source_stats[track.sid][_S["packets"]])
        new_k = sizer.update(now, packets)
        if new_k is not None:
            self.engine.set_source_recovery(track.sid, nack=track.nack, fec_k=new_k)
            # Rows already granted stay valid for the new block length (any m works with any k).
        if sub.recovery.fec in ("off", "ulpfec"):
            return      # fixed at subscribe time
        policy = self._policies.get(did)
        if policy is None:
            policy = self._policies[did] = RecoveryPolicy(
                nack=sub.recovery.nack, fec="rs", budget_s=self.budget_s,
                target=VIDEO_TARGET if video else AUDIO_TARGET,
                max_block_s=VIDEO_MAX_BLOCK_S if video else AUDIO_MAX_BLOCK_S,
                eval_interval_s=EVAL_INTERVAL_S)
        plan = policy.update(est, now, k=sizer.k or None)
        if plan is not None:
            self._apply(sub, track, sizer, plan, est)

    def _apply(self, sub: Subscription, track: Track, sizer: BlockSizer, plan: Plan,
               est: LinkEstimate) -> None:
        m = plan.m if plan.fec == "rs" else 0
        room = self.rooms.rooms.get(sub.room_id)
        viewer = room.participants.get(sub.participant_id) if room else None
        if viewer is not None and viewer.twcc_ext_id:
            # The transport-wide seq extension changes the bytes SFU-RS protects (parity is
            # computed once per source block): such viewers are repaired by NACK alone.
            m = 0
        if m and not sizer.k:
            # Rate not known yet: the plan's own block length stands for the source's.
            sizer.k = plan.k
            self.engine.set_source_recovery(track.sid, nack=track.nack, fec_k=plan.k)
        self.engine.set_downtrack_recovery(
            sub.did, nack=plan.nack, rtx_ssrc=(sub.rtx_ssrc or 0) if sub.recovery.rtx else 0,
            rtx_payload_type=sub.rtx_payload_type, fec_ssrc=sub.fec_ssrc or 0,
            fec_payload_type=sub.fec_payload_type, fec_m=m)
        link = est.link()
        sub.plan = {"nack": plan.nack, "fec": plan.fec if m else "off",
                    "k": sizer.k if m else 0, "m": m, "loss": round(link.loss, 4),
                    "mean_burst": None if link.mean_burst is None else round(link.mean_burst, 2),
                    "rtt_ms": round(link.rtt_s * 1000, 1)}
        self.plan_changes += 1
        self.rooms.emit(sub.room_id, "subscription.recovery_changed", {
            "subscription": sub.subscription_id, "participant": sub.participant_id,
            "track": sub.track_id, **sub.plan})

    def describe(self, sub: Subscription) -> dict[str, Any]:
        """The viewer's link as estimated, and the model's view of its current plan."""
        did = sub.did
        est, policy = self._links.get(did), self._policies.get(did)
        if est is None or self._owner.get(did) != sub.subscription_id:
            return {}
        link = est.link()
        out: dict[str, Any] = {"loss": round(link.loss, 5), "rtt_ms": round(link.rtt_s * 1e3, 1),
                               "mean_burst": link.mean_burst, "pps": round(link.pps, 1)}
        if policy is not None:
            out.update({k: round(v, 6) for k, v in policy.model(est).items()})
        return out

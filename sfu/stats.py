"""Counter views → stats.get reports. Reads the engine's numpy arrays; copies only the
rows it reports, on request (never on the data path)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sfu import _native

if TYPE_CHECKING:
    from sfu.recovery_loop import RecoveryController
    from sfu.rooms import Participant, Room, Subscription, Track
    from sfu.simulcast_loop import SimulcastController
    from sfu.transports.udp import UdpTransport


def _row(names: tuple[str, ...], array: Any, index: int) -> dict[str, int]:
    row = array[index]
    return {name: int(row[i]) for i, name in enumerate(names)}


class StatsView:
    def __init__(self, engine: _native.Engine, udp: UdpTransport,
                 recovery: RecoveryController | None = None,
                 simulcast: SimulcastController | None = None) -> None:
        self.engine = engine
        self.simulcast = simulcast
        self.udp = udp
        self.recovery = recovery
        self.quic: Any = None  # sfu.transports.quic.QuicTransport when QUIC is on
        # Last (time, rx_datagrams, tx_datagrams) sample and the rates derived from it.
        self._sample: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self._rx = _native.COUNTER_NAMES.index("rx_datagrams")
        self._tx = _native.COUNTER_NAMES.index("tx_datagrams")

    def counters(self) -> dict[str, int]:
        counters = self.engine.counters
        out = {name: int(counters[i]) for i, name in enumerate(_native.COUNTER_NAMES)}
        out.update(self.udp.counters)
        if self.quic is not None:
            out.update(self.quic.counters)
            out["quic_sessions_live"] = len(self.quic.sessions)
        return out

    def rates(self) -> tuple[float, float]:
        """(rx, tx) datagrams per second since the previous sample (≥ 0.5 s apart)."""
        now = time.monotonic()
        counters = self.engine.counters
        rx, tx = int(counters[self._rx]), int(counters[self._tx])
        if self._sample is None:
            self._sample = (now, rx, tx)
        else:
            then, rx0, tx0 = self._sample
            if now - then >= 0.5:
                self._rates = ((rx - rx0) / (now - then), (tx - tx0) / (now - then))
                self._sample = (now, rx, tx)
        return self._rates

    def pps(self) -> float:
        return round(self.rates()[0], 1)

    def node(self) -> dict[str, Any]:
        rx, tx = self.rates()
        return {"counters": self.counters(), "live": self.engine.live(),
                "rx_pps": round(rx, 1), "tx_pps": round(tx, 1)}

    def track(self, track: Track) -> dict[str, Any]:
        return {"track": track.track_id, "participant": track.participant_id,
                "kind": track.kind,
                "source": _row(_native.SOURCE_FIELDS, self.engine.source_stats, track.sid),
                "layers": [{"rid": lay.rid, "ssrc": lay.ssrc or None,
                            "bps": [round(r) for r in rate.rates]}
                           for lay, rate in zip(track.layers, self.simulcast.layer_rates(track),
                                                strict=True)] if self.simulcast else [],
                "subscriptions": [self.subscription(s, track)
                                  for s in track.subscriptions.values()]}

    def subscription(self, sub: Subscription, track: Track | None = None) -> dict[str, Any]:
        # Receiver-report fields (rr_*) come from the viewer's RTCP RR for this downtrack.
        # recovery: what the viewer negotiated, the plan in force, and the link estimate
        # (loss before recovery, burstiness, RTT) with the model's residual for the plan.
        recovery = sub.describe_recovery()
        if self.recovery is not None:
            recovery["link"] = self.recovery.describe(sub)
        return {"subscription": sub.subscription_id, "participant": sub.participant_id,
                "track": sub.track_id, "ssrc": sub.ssrc,
                "downtrack": _row(_native.DOWNTRACK_FIELDS, self.engine.downtrack_stats,
                                  sub.did),
                "recovery": recovery,
                "layer": self.simulcast.describe_subscription(sub, track)
                if self.simulcast else {}}

    def participant(self, p: Participant) -> dict[str, Any]:
        return {"room": p.room_id, "participant": p.participant_id, "role": p.role,
                "address": p.address_str,
                "peer": _row(_native.PEER_FIELDS, self.engine.peer_stats, p.pid),
                "bandwidth": self.simulcast.describe_viewer(p) if self.simulcast else {},
                "tracks": [self.track(t) for t in p.tracks.values()],
                "subscriptions": [self.subscription(s, self._track_of(p, s))
                                  for s in p.subscriptions.values()]}

    def _track_of(self, p: Participant, sub: Subscription) -> Track | None:
        if self.simulcast is None or p.room_id not in self.simulcast.rooms.rooms:
            return None
        return self.simulcast.rooms.tracks.get(sub.track_id)

    def room(self, room: Room) -> dict[str, Any]:
        return {"room": room.room_id,
                "participants": [{"participant": p.participant_id, "role": p.role,
                                  "address": p.address_str,
                                  "peer": _row(_native.PEER_FIELDS, self.engine.peer_stats,
                                               p.pid)}
                                 for p in room.participants.values()],
                "tracks": [self.track(t) for t in room.tracks.values()]}

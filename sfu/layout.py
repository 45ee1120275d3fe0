"""Where each on-stage participant is drawn: a pure function of the stage, rendered by clients.

Rectangles are fractions of the viewer's canvas (x, y, w, h in 0..1) so every screen size
draws the same picture. Modes:
- ``grid``: equal tiles, as square as the count allows (1, 2 side by side, 2×2, 3×2, 3×3).
- ``pip``: the host fills the canvas, co-hosts are small tiles stacked up the right edge.
- ``pk`` (chosen automatically while two rooms battle): the room's own host on the left half,
  the other room's host on the right half, co-hosts as small tiles along the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LAYOUTS = ("grid", "pip")
PIP_TILE = 0.25  # co-host tile side in pip and pk modes


@dataclass(frozen=True, slots=True)
class Slot:
    participant: str
    role: str  # host | cohost | pk_host (the linked room's host)
    seat: int  # 0 host, 1.. co-host seats, -1 the linked room's host
    room: str
    tracks: dict[str, str]  # kind -> track id (first track of each kind)
    muted: tuple[str, ...]


def slot_of(participant: str, room: str, tracks: Iterable[Any], role: str, seat: int,
            muted: Iterable[str]) -> Slot:
    """A slot for a participant and its published tracks (first track of each kind)."""
    first: dict[str, str] = {}
    for t in tracks:
        first.setdefault(t.kind, t.track_id)
    return Slot(participant, role, seat, room, first, tuple(sorted(muted)))


def _rect(x: float, y: float, w: float, h: float) -> dict[str, float]:
    return {"x": round(x, 4), "y": round(y, 4), "w": round(w, 4), "h": round(h, 4)}


def _grid(n: int) -> list[dict[str, float]]:
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    return [_rect((i % cols) / cols, (i // cols) / rows, 1 / cols, 1 / rows) for i in range(n)]


def _small_tiles(n: int, *, along_bottom: bool) -> list[dict[str, float]]:
    """Co-host tiles: four per row along the bottom (pk) or four per column up the right
    edge (pip), then the next row/column."""
    per = int(1 / PIP_TILE)
    out = []
    for i in range(n):
        major, minor = divmod(i, per)
        if along_bottom:
            out.append(_rect(PIP_TILE * minor, 1 - PIP_TILE * (major + 1), PIP_TILE, PIP_TILE))
        else:
            out.append(_rect(1 - PIP_TILE * (major + 1), 1 - PIP_TILE * (minor + 1),
                             PIP_TILE, PIP_TILE))
    return out


def compute(mode: str, slots: list[Slot]) -> dict[str, Any]:
    """The layout event's data for ``slots`` (host first, then seats in order, then the
    linked room's host)."""
    pk = [s for s in slots if s.role == "pk_host"]
    local = [s for s in slots if s.role != "pk_host"]
    if pk:
        hosts = [s for s in local if s.role == "host"]
        cohosts = [s for s in local if s.role != "host"]
        rects = [_rect(0, 0, 0.5, 1)] * len(hosts) + _small_tiles(len(cohosts),
                                                                  along_bottom=True)
        placed = hosts + cohosts + [pk[0]]
        rects.append(_rect(0.5, 0, 0.5, 1))
        used = "pk"
    elif mode == "pip" and local and local[0].role == "host":
        placed = local
        rects = [_rect(0, 0, 1, 1)] + _small_tiles(len(local) - 1, along_bottom=False)
        used = "pip"
    else:
        placed = local
        rects = _grid(len(local))
        used = "grid"
    return {"mode": used, "slots": [
        {"participant": s.participant, "role": s.role, "seat": s.seat, "room": s.room,
         "tracks": dict(s.tracks), "muted": list(s.muted), **rect}
        for s, rect in zip(placed, rects, strict=True)]}

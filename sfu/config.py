"""Node configuration (one frozen value, built by the CLI or by embedding code)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sfu.errors import BadRequest

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _default_node_id() -> str:
    # Hostname keeps ids readable in a cluster; the random suffix keeps two processes on
    # one host apart.
    return f"{socket.gethostname()}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    udp_host: str = "0.0.0.0"
    udp_port: int = 5004
    control_path: str | None = "./run/sfu.sock"
    control_tcp: tuple[str, int] | None = None
    secret: str | None = None
    log_level: str = "info"
    node_id: str = field(default_factory=_default_node_id)
    max_rooms: int = 1000
    max_participants_per_room: int = 10000
    advertised_host: str | None = None
    gop_cache: bool = True  # start new viewers at the latest keyframe held (no PLI round)

    def __post_init__(self) -> None:
        if not 0 <= self.udp_port <= 65535:
            raise BadRequest(f"udp_port {self.udp_port} is outside 0..65535")
        if self.log_level.lower() not in LOG_LEVELS:
            raise BadRequest(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.control_tcp is not None and not self.secret:
            raise BadRequest("control_tcp needs a secret (TCP control is authenticated)")
        if self.max_rooms < 1 or self.max_participants_per_room < 1:
            raise BadRequest("max_rooms and max_participants_per_room must be ≥ 1")

    @property
    def public_host(self) -> str:
        """The host clients should send media to (participant.join's ``udp``)."""
        if self.advertised_host:
            return self.advertised_host
        if self.udp_host in ("0.0.0.0", ""):
            return "127.0.0.1"
        return self.udp_host

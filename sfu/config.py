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
    # RTP over QUIC and WebTransport (UDP port; None = off). `sfu serve` turns it on (4433).
    quic_port: int | None = None
    quic_host: str | None = None  # default: udp_host
    quic_max_datagram: int = 1452  # UDP payload of a QUIC packet: a 1500-byte MTU path
    cert_file: str | None = None  # PEM; default a self-signed ECDSA one valid 13 days
    key_file: str | None = None
    # The viewer page (HTTP on TCP; None = off; needs QUIC). `sfu serve` turns it on (8080).
    http_port: int | None = None
    http_host: str | None = None  # default: quic_host

    def __post_init__(self) -> None:
        if not 0 <= self.udp_port <= 65535:
            raise BadRequest(f"udp_port {self.udp_port} is outside 0..65535")
        if self.log_level.lower() not in LOG_LEVELS:
            raise BadRequest(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.control_tcp is not None and not self.secret:
            raise BadRequest("control_tcp needs a secret (TCP control is authenticated)")
        for name in ("quic_port", "http_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise BadRequest(f"{name} {port} is outside 0..65535")
        if self.http_port is not None and self.quic_port is None:
            raise BadRequest("http_port serves the WebTransport viewer page: it needs quic_port")
        if not 1200 <= self.quic_max_datagram <= 65527:
            raise BadRequest(f"quic_max_datagram {self.quic_max_datagram} is outside "
                             "1200..65527 (RFC 9000 §14)")
        if (self.cert_file is None) != (self.key_file is None):
            raise BadRequest("cert_file and key_file go together")
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

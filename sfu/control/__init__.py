"""Control plane: the msgpack control socket (server), its typed client and wire format."""

from sfu.control.client import Client
from sfu.control.protocol import V1_METHODS, ControlLimits
from sfu.control.server import ControlServer, start_control_server

__all__ = ["Client", "ControlLimits", "ControlServer", "V1_METHODS", "start_control_server"]

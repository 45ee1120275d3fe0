"""Client library: VP8 over RTP (RFC 7741), PyAV encode/decode, publisher and subscriber
with loss recovery (NACK/RTX, SFU-RS and ULPFEC, jitter buffer), simulcast publisher and
viewer with transport-wide congestion feedback, packet probes for benches.

Used by the tests, the benchmarks, ``sfu demo`` and embedding applications. Names are
imported lazily so ``import sfu.client.vp8`` does not pay for PyAV.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FrameAssembler": "sfu.client.vp8",
    "Vp8Packetizer": "sfu.client.vp8",
    "packetize": "sfu.client.vp8",
    "parse_descriptor": "sfu.client.vp8",
    "Vp8Encoder": "sfu.client.media",
    "Vp8Decoder": "sfu.client.media",
    "Publisher": "sfu.client.publisher",
    "Subscriber": "sfu.client.subscriber",
    "run_demo": "sfu.client.demo",
    "NackGenerator": "sfu.client.loss",
    "RecoveringReceiver": "sfu.client.loss",
    "SendHistory": "sfu.client.loss",
    "ProbePublisher": "sfu.client.probe",
    "ProbeSubscriber": "sfu.client.probe",
    "SimulcastPublisher": "sfu.client.simulcast_pub",
    "SimulcastViewer": "sfu.client.simulcast_view",
    "TwccFeedback": "sfu.client.twcc",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sfu.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

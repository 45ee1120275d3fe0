"""The allocation skip (a viewer whose inputs did not move is not re-allocated) must never
strand a viewer: a receiver-report viewer short of bandwidth still climbs once the up-hold
expires, although its estimate and subscriptions stay the same."""

from __future__ import annotations

from typing import Any

import uvloop

from sfu.config import NodeConfig
from sfu.server import start_node

VIDEO = {"kind": "video", "codec": "VP8", "payload_type": 96, "clock_rate": 90000}


def test_rr_viewer_moves_up_after_the_hold_with_unchanged_inputs() -> None:
    async def main() -> None:
        running = await start_node(NodeConfig(udp_host="127.0.0.1", udp_port=0,
                                              control_path=None))
        node = running.node
        sc = node.simulcast
        assert sc is not None
        now = [1000.0]
        sc.clock = lambda: now[0]

        async def call(method: str, **params: Any) -> Any:
            return await node.call(method, params)
        try:
            await call("room.create", room="r")
            await call("participant.join", room="r", participant="h", role="host")
            await call("participant.join", room="r", participant="v", role="audience")
            track = (await call("track.publish", room="r", participant="h", layers=[
                {"rid": "q", "ssrc": 11}, {"rid": "h", "ssrc": 12}, {"rid": "f", "ssrc": 13}],
                **VIDEO))["track"]
            p = node.rooms.participant("r", "v")
            v = sc._viewer(p)
            v.estimate = 600_000
            await call("track.subscribe", room="r", participant="v", track=track)
            sub = next(iter(p.subscriptions.values()))
            start = sub.target
            # Receiver reports now say 3 Mbit/s, and keep saying exactly that.
            for dt in (1.0, 1.0, 1.5, 2.0, 3.0):
                now[0] += dt
                v.estimate = 3_000_000
                sc._mark(p)
                if sc._dirty_flush is not None:
                    sc._dirty_flush.cancel()
                sc._run_dirty()
            assert start is not None and sub.target is not None
            assert sub.target[0] == 2 and start[0] < 2, (start, sub.target)
        finally:
            await running.close()
    uvloop.run(main())

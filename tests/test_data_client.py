"""DataChannel (sfu.client.data) over real UDP on 127.0.0.1.

A small responder plays the node: one UDP socket, peers identified by address, a real
DataHub behind it whose ``send`` writes to the socket and drops chosen BATCH packets on
purpose, so NACK recovery and in-order priority delivery are exercised end to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sfu import data_wire as w
from sfu.client.data import NACK_TRIES, DataChannel
from sfu.client.publisher import RtpEndpoint
from sfu.data import DataHub
from sfu.events import EventBus

NODE_SSRC = 0x5FD0_0002
Drop = Callable[[int, int, list[dict[str, Any]]], bool]  # (pid, subtype, maps) -> drop?


class NodeStandIn(asyncio.DatagramProtocol):
    """The node's data path in a few lines: datagrams in -> DataHub -> datagrams out."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.bus = EventBus()
        self.hub = DataHub(self.bus, self._send, NODE_SSRC, interval_s=interval_s)
        self.transport: asyncio.DatagramTransport | None = None
        self.addr_of: dict[int, tuple[str, int]] = {}
        self.pid_of: dict[tuple[str, int], int] = {}
        self.drop: Drop = lambda pid, st, msgs: False
        self.dropped = 0
        self.nacked: list[int] = []  # indices asked for, as received
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0))
        self._ticker = asyncio.create_task(self._tick())
        return self.transport.get_extra_info("sockname")[:2]

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.hub.interval_s)
            self.hub.tick(time.monotonic())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.transport is not None:
            self.transport.close()

    def join(self, room: str, pid: int, participant: str, role: str,
             addr: tuple[str, int]) -> None:
        self.addr_of[pid], self.pid_of[addr] = addr, pid
        self.hub.add_member(room, pid, participant, role)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pid = self.pid_of.get(addr)
        if pid is None:
            return
        try:
            packets = w.parse_app(data)
        except ValueError:
            return
        for subtype, _ssrc, payload in packets:  # what the engine's EV_DATA carries
            if subtype == w.NACK:
                self.nacked += w.decode_nack(payload)
            self.hub.on_datagram(pid, subtype, payload, time.monotonic())

    def _send(self, pids, datagram: bytes) -> int:
        [(subtype, _ssrc, payload)] = w.parse_app(datagram)
        # What the drop rule looks at: a BATCH's messages, a STATE's map.
        msgs = w.decode_batch(payload)[1] if subtype == w.BATCH else [w.decode_state(payload)]
        sent = 0
        for pid in pids:
            if self.drop(pid, subtype, msgs):
                self.dropped += 1
                continue
            assert self.transport is not None
            self.transport.sendto(datagram, self.addr_of[pid])
            sent += 1
        return sent


async def connect(node: NodeStandIn, addr: tuple[str, int], pid: int, participant: str,
                  role: str = "audience") -> tuple[RtpEndpoint, DataChannel]:
    ep = RtpEndpoint(addr, "ufrag", "pwd")
    await ep.open()
    node.join("r", pid, participant, role, ep.local_address)
    return ep, DataChannel(ep, first_pi=1)


async def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def first_copy_dropper(victim: int, pis: set[int]) -> Drop:
    """Drop the first transmission of priority ``pis`` to ``victim`` (resends go through)."""
    seen: set[int] = set()

    def drop(pid: int, subtype: int, msgs: list[dict[str, Any]]) -> bool:
        if pid != victim or subtype != w.BATCH:
            return False
        hit = {m["pi"] for m in msgs if m.get("pi") in pis and m["pi"] not in seen}
        seen.update(hit)
        return bool(hit)

    return drop


async def scenario_recovery() -> None:
    node = NodeStandIn()
    addr = await node.start()
    eps: list[RtpEndpoint] = []
    try:
        ep_v, viewer = await connect(node, addr, 2, "viewer")  # loses packets
        ep_c, control = await connect(node, addr, 3, "control")  # loses nothing
        ep_h, host = await connect(node, addr, 1, "host", "host")
        eps += [ep_v, ep_c, ep_h]
        delivered: list[int] = []
        viewer.on_message = lambda m: delivered.append(m["pi"]) if "pi" in m else None
        # 3, 6 and 7 lost once; 12 is the last one: only a later batch's hp reveals it.
        node.drop = first_copy_dropper(2, {3, 6, 7, 12})
        viewer.set_cap(20)
        host.set_cap(0)
        assert await wait_for(lambda: node.hub.counters()["settings"] == 2, 2.0)
        likes = 0
        for i in range(1, 12):
            if i % 4 == 0:
                host.send_comment(f"host line {i}")  # host: priority, over UDP
            else:
                node.hub.send("r", "order", sender="viewer", role="audience",
                              text=f"order {i}", extra={"sku": i})
            control.send_comment(f"hello {i}")
            viewer.send_like(3)
            likes += 3
            await asyncio.sleep(0.01)
        node.hub.send("r", "gift", count=1)  # pi 12
        node.hub.send("r", "viewer_count", count=1234)
        ok = await wait_for(lambda: len(viewer.priority) == 12 and viewer.likes_total == likes
                            and viewer.viewer_count == 1234, 3.0)
        assert ok, (len(viewer.priority), viewer.counters, node.nacked)
        assert [m["pi"] for m in viewer.priority] == list(range(1, 13))
        assert delivered == list(range(1, 13))  # held back until the gaps were filled
        assert [m["pi"] for m in control.priority] == list(range(1, 13))
        assert viewer.counters.out_of_order >= 2 and viewer.counters.nacks_sent >= 2
        assert {3, 6, 7, 12} <= set(node.nacked) and node.dropped == 4
        assert control.counters.nacks_sent == 0 and control.counters.lost == 0
        assert viewer.counters.lost == 0
        hosts = [m for m in viewer.priority if m["r"] == "host"]
        assert [m["t"] for m in hosts] == ["host line 4", "host line 8"]
        assert viewer.priority[0]["x"] == {"sku": 1}
        # Sampled comments: at most 20/s (one per 50 ms interval), a subsequence in seq
        # order; the host asked for none.
        comments = [m["t"] for m in viewer.messages if m["k"] == "comment" and "pi" not in m]
        sent = [f"hello {i}" for i in range(1, 12)]
        assert 1 <= len(comments) <= len(sent)
        assert sorted(comments, key=sent.index) == comments
        assert not [m for m in host.messages if m["k"] == "comment" and "pi" not in m]
        assert node.hub.counters()["nack_resent"] >= 4
    finally:
        for ep in eps:
            ep.close()
        node.close()


def test_nack_recovery_and_in_order_priority_over_udp():
    asyncio.run(asyncio.wait_for(scenario_recovery(), 20))


async def scenario_give_up_and_state() -> None:
    node = NodeStandIn()
    addr = await node.start()
    ep, viewer = await connect(node, addr, 2, "viewer")
    try:
        # Every copy of pi 2 is lost: the client NACKs it NACK_TRIES times, then gives up
        # and delivers what follows.
        node.drop = lambda pid, st, msgs: any(m.get("pi") == 2 for m in msgs)
        for i in range(3):
            node.hub.send("r", "gift", count=i)
        assert await wait_for(lambda: len(viewer.priority) == 2, 3.0), viewer.counters
        assert [m["pi"] for m in viewer.priority] == [1, 3]
        assert viewer.counters.lost == 1
        assert node.nacked.count(2) == NACK_TRIES
        # STATE: the first copy lost, a resend (+0.5 s) brings it; duplicates are ignored.
        first = [True]

        def drop_first_state(pid: int, st: int, msgs: list[dict[str, Any]]) -> bool:
            if st == w.STATE and first[0]:
                first[0] = False
                return True
            return False

        node.drop = drop_first_state
        states: list[dict[str, Any]] = []
        viewer.on_state = states.append
        state = {"v": 1, "subs": [{"track": "t1", "participant": "host", "kind": "video",
                                   "ssrc": 11, "pt": 96, "rtx_ssrc": 12, "rtx_pt": 97}],
                 "layout": {"mode": "pip", "main": "host"}}
        node.hub.send_state(2, state)
        assert await wait_for(lambda: viewer.state is not None, 1.5)
        assert viewer.state == state
        await asyncio.sleep(1.2)  # the +1.5 s resend arrives and changes nothing
        assert states == [state]
        # A state too big for one datagram comes in parts; one part's first copy is lost:
        # applied whole, once, when the resend completes it.
        big = {"v": 2, "layout": {"mode": "grid"},
               "subs": [dict(state["subs"][0], track=f"track-{i:03d}", ssrc=100 + i)
                        for i in range(30)]}
        lost = [True]

        def drop_part_one(pid: int, st: int, msgs: list[dict[str, Any]]) -> bool:
            if st == w.STATE and lost[0] and msgs[0].get("part") == 1:
                lost[0] = False
                return True
            return False

        node.drop = drop_part_one
        node.hub.send_state(2, big)
        assert await wait_for(lambda: viewer.state is not None and viewer.state["v"] == 2, 1.5)
        assert not lost[0]
        assert viewer.state == big and states == [state, big]
        # Garbage from the node side is counted, never raised.
        assert node.transport is not None
        node.transport.sendto(w.build_app(w.BATCH, NODE_SSRC, b"\xc1junk"), ep.local_address)
        await wait_for(lambda: viewer.counters.malformed > 0, 1.0)
        assert viewer.counters.malformed == 1
    finally:
        viewer.close()
        ep.close()
        node.close()


def test_gap_given_up_after_nacks_and_state_resent_over_udp():
    asyncio.run(asyncio.wait_for(scenario_give_up_and_state(), 20))

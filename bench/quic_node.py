"""Node process, viewer children, CPU windows and the migration run of bench/quic.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _procstat  # noqa: E402
import fanout  # noqa: E402
from _children import free_udp_port  # noqa: E402
from quic_clients import DirectReceiver, PublisherLink, StampingPublisher  # noqa: E402

from sfu.client.endpoint import parse_hostport  # noqa: E402

SIZE = 1100


# -- processes ------------------------------------------------------------------------------

class QuicNode(fanout.NodeProcess):
    """`python -m sfu serve` with its QUIC port, pinned like fanout.py's NodeForwarder."""

    def __init__(self) -> None:
        super().__init__("sfu-quicbench-")
        self.udp_port = self.quic_port = 0

    async def start(self) -> None:
        self.udp_port, self.quic_port = free_udp_port(), free_udp_port()
        await self.launch("--udp", f"127.0.0.1:{self.udp_port}",
                          "--quic", f"127.0.0.1:{self.quic_port}", "--http", "127.0.0.1:0")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.call(method, **params)
        return result

    async def counters(self) -> dict[str, int]:
        return dict((await self.call("stats.get"))["counters"])

    def tail(self) -> str:
        return self.log_tail()


class Child:
    """A bench/quic_clients.py child (viewers or sinks): config in, counters per snap."""

    def __init__(self, mode: str, cfg: dict[str, Any]) -> None:
        self.mode = mode
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "quic_clients.py"), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.proc.stdin.flush()

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"{self.mode} child did not answer (rc={self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        return out

    async def ready(self, timeout: float = 60.0) -> dict[str, Any]:
        return await asyncio.to_thread(self._line, timeout)

    async def snap(self) -> dict[str, Any]:
        return await self.command("snap")

    async def command(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return await asyncio.to_thread(self._line, 30.0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        fanout._reap(self.proc)


async def totals(children: list[Child]) -> tuple[int, int]:
    """(RTP packets the viewers received, packets they sent the node: ACKs)."""
    got = sent = 0
    for c in children:
        snap = await c.snap()
        got += int(snap["received"])
        sent += int(snap.get("sent", 0))
    return got, sent


async def received(children: list[Child]) -> int:
    return (await totals(children))[0]


def steal_s(cpu: int) -> float:
    """Time the hypervisor ran something else while this core's vCPU wanted to run."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8]) / _procstat.CLK_TCK
    return 0.0


def runq_wait_s(pid: int) -> float:
    """Time pid's threads spent runnable but not running (schedstat run_delay): another task
    had the node's core."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    return total / 1e9


def ksoftirqd_s(cpu: int) -> float:
    """CPU time of the core's ksoftirqd so far: the loopback deliveries the node's own
    sends could not finish inline; it competes with the node for its core."""
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() \
                    == f"ksoftirqd/{cpu}":
                return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    return 0.0


async def cpu_window(node: QuicNode, work: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Node CPU and counters around `work`; µs per forwarded packet."""
    s0 = await node.counters()
    c0 = _procstat.read_cpu(node.pid)
    q0 = _procstat.udp_drops(node.quic_port) + _procstat.udp_drops(node.udp_port)
    st0 = steal_s(fanout.FWD_CPU)
    w0, b0 = runq_wait_s(node.pid), _procstat.core_busy_s(fanout.FWD_CPU)
    k0 = ksoftirqd_s(fanout.FWD_CPU)
    t0 = time.monotonic()
    result = await work()
    await asyncio.sleep(0.2)  # the last packets leave the node and reach the viewers
    wall = time.monotonic() - t0
    c1 = _procstat.read_cpu(node.pid)
    s1 = await node.counters()
    d = {k: v - s0.get(k, 0) for k, v in s1.items() if isinstance(v, int)}
    cpu = _procstat.cpu_delta(c0, c1)
    fwd = d.get("forwarded", 0)
    return {"result": result, "wall_s": wall,
            "node_core_steal_ms": (steal_s(fanout.FWD_CPU) - st0) * 1000,
            # Interference: the node waiting for its core, and the core's busy time (all
            # tasks, softirq included) beside the node's own CPU time.
            "node_runq_wait_ms": (runq_wait_s(node.pid) - w0) * 1000,
            "node_core_busy_s": _procstat.core_busy_s(fanout.FWD_CPU) - b0,
            "node_core_ksoftirqd_ms": (ksoftirqd_s(fanout.FWD_CPU) - k0) * 1000,
            "cpu_s": cpu.total_s, "node_util": cpu.total_s / wall,
            "forwarded": fwd, "tx_datagrams": d.get("tx_datagrams", 0),
            "rx_rtp": d.get("rx_rtp", 0),
            "drop_send": d.get("drop_send_eagain", 0) + d.get("drop_send_error", 0),
            "node_socket_drops": _procstat.udp_drops(node.quic_port)
            + _procstat.udp_drops(node.udp_port) - q0,
            "cpu_us_per_pkt": cpu.total_s / fwd * 1e6 if fwd else None,
            "user_us_per_pkt": cpu.user_s / fwd * 1e6 if fwd else None,
            "sys_us_per_pkt": cpu.sys_s / fwd * 1e6 if fwd else None}


async def quic_publisher(node: QuicNode, room: str, ssrc: int, direct: DirectReceiver | None = None
                         ) -> tuple[StampingPublisher, str]:
    """Join `room` as its host over RoQ and publish one VP8 track of SSRC `ssrc`."""
    await node.call("room.create", room=room)
    j = await node.call("participant.join", room=room, participant="pub", role="host")
    link = PublisherLink(parse_hostport(j["quic"]))
    await link.connect()
    await link.authenticate(room, "pub", j["token"])
    track = await publish(node, room, ssrc)
    sock = None
    if direct is not None:
        sock = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM), direct.address)
    return StampingPublisher(link, ssrc, SIZE, sock), track


async def publish(node: QuicNode, room: str, ssrc: int) -> str:
    res = await node.call("track.publish", room=room, participant="pub", kind="video",
                          codec="VP8", payload_type=96, clock_rate=90000,
                          layers=[{"rid": "f", "ssrc": ssrc}])
    return str(res["track"])


async def quic_logins(node: QuicNode, room: str, names: list[str]) -> list[list[str]]:
    out = []
    for name in names:
        j = await node.call("participant.join", room=room, participant=name, role="audience")
        out.append([room, name, str(j["token"])])
    return out


async def subscribe(node: QuicNode, room: str, names: list[str], track: str) -> None:
    for name in names:
        await node.call("track.subscribe", room=room, participant=name, track=track)


# -- 3. migration ---------------------------------------------------------------------------

async def phase_migration(transport: str, frames: int) -> dict[str, Any]:
    """A VP8 publisher moves to a new local port mid-run (in-process node)."""
    from sfu.client.publisher import Publisher
    from sfu.client.subscriber import Subscriber
    from sfu.config import NodeConfig
    from sfu.control import Client
    from sfu.server import start_node

    fps = 30
    viewer_transports = (transport, "udp")
    with tempfile.TemporaryDirectory(prefix="sfu-quicmig-") as tmp:
        running = await start_node(NodeConfig(
            udp_host="127.0.0.1", udp_port=0, quic_port=0, log_level="warning",
            control_path=os.path.join(tmp, "sfu.sock")))
        moved: list[dict[str, Any]] = []
        running.node.bus.subscribe(None, lambda e: moved.append(e)
                                   if e["event"] == "participant.moved" else None)
        client = await Client.connect_unix(os.path.join(tmp, "sfu.sock"))
        pub: Any = None
        subs: list[Any] = []
        try:
            await client.call("room.create", room="mig")
            pub = await Publisher.join(client, "mig", "host", width=320, height=240, fps=fps,
                                       bitrate=400_000, transport=transport)
            for i, vt in enumerate(viewer_transports):
                subs.append(await Subscriber.join(client, "mig", f"v{i}", pub.track,
                                                  transport=vt))
            before = pub.local_address
            sending = asyncio.create_task(pub.run(frames=frames))
            await asyncio.sleep(frames / fps / 2)
            t_move = time.monotonic()
            await pub.rebind()
            rebind_ms = (time.monotonic() - t_move) * 1000
            after = pub.local_address
            await sending
            sent = pub.stats.frames
            deadline = time.monotonic() + 5.0
            while (min(s.stats.frames_decoded for s in subs) < sent
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a last late frame is not mistaken for a loss
            decoded = [s.stats.frames_decoded for s in subs]
            quic_counters = dict(running.node.quic.counters) if running.node.quic else {}
            return {
                "transport": transport, "viewer_transports": list(viewer_transports),
                "frames_sent": sent, "frames_decoded": decoded,
                "frames_lost": sent - min(decoded),
                "longest_freeze_ms": max(s.stats.longest_freeze_ms for s in subs),
                "lost_after_recovery": [s.stats.lost_after_recovery for s in subs],
                "recovered_rtx": [s.stats.recovered_rtx for s in subs],
                "moved": before != after, "rebind_call_ms": rebind_ms,
                "moved_events": len(moved), "quic_moved": quic_counters.get("quic_moved"),
                "publisher_nacks": pub.stats.nacks_received,
            }
        finally:
            for s in subs:
                s.close()
            if pub is not None:
                pub.close()
            await client.close()
            await running.close()

"""bench/lossy_link.py: loss statistics, determinism, delay/jitter, reordering, rate limit,
per-client upstream sockets, both directions, argument checks, CLI. Real UDP sockets on
127.0.0.1, bounded in time; no speed assertions (the throughput check is an upper bound)."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from lossy_link import LinkProfile, LossyLink, main  # noqa: E402

SO_TIMESTAMPNS = 35  # Linux; not exported by the socket module
BURST = 20  # datagrams per loop turn: keeps every socket buffer far from full


def run(coro: Coroutine[Any, Any, Any], use_uvloop: bool = False) -> Any:
    factory = uvloop.new_event_loop if use_uvloop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


class Sink:
    """Non-blocking UDP socket on the running loop; keeps (kernel stamp, payload, source)."""

    def __init__(self, echo: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.got: list[tuple[float, bytes, tuple[str, int]]] = []
        self.echo = echo
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _, src = self.sock.recvmsg(65536, 64)
            except BlockingIOError:
                return
            stamp = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    stamp = sec + nsec / 1e9
            self.got.append((stamp, data, src))
            if self.echo:
                self.sock.sendto(data, src)

    def seqs(self) -> list[int]:
        return [struct.unpack_from("!I", d)[0] for _, d, _ in self.got]

    async def wait_count(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # anything extra (a duplicate) would show up now

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def packet(seq: int, size: int = 64) -> bytes:
    return struct.pack("!I", seq).ljust(size, b"\0")


async def send_stream(sink: Sink, dst: tuple[str, int], n: int, size: int = 64,
                      gap: float = 0.0, stamps: list[float] | None = None) -> None:
    """Send n numbered datagrams from `sink`'s socket, BURST per loop turn (or one per gap)."""
    for seq in range(n):
        if stamps is not None:
            stamps.append(time.time())
        sink.sock.sendto(packet(seq, size), dst)
        if gap:
            await asyncio.sleep(gap)
        elif seq % BURST == BURST - 1:
            await asyncio.sleep(0)


async def one_way(up: LinkProfile, n: int, seed: int = 1, size: int = 64,
                  gap: float = 0.0) -> tuple[LossyLink, Sink, list[float]]:
    """n datagrams client → link(up) → target; returns the closed link, target sink, send
    stamps."""
    target, client = Sink(), Sink()
    link = await LossyLink.start(target=target.addr, up=up, seed=seed, record_drops=True)
    stamps: list[float] = []
    try:
        await send_stream(client, link.address, n, size, gap, stamps)
        await asyncio.sleep(0.02)
        assert await link.idle(10.0)
        await target.wait_count(link.up.delivered)
    finally:
        await link.close()
        target.close()
        client.close()
    assert link.up.sent == n  # the proxy saw every datagram: the statistics are over n
    return link, target, stamps


def loss_runs(indices: list[int]) -> list[int]:
    runs: list[int] = []
    prev = -2
    for i in indices:
        if i == prev + 1:
            runs[-1] += 1
        else:
            runs.append(1)
        prev = i
    return runs


def test_iid_loss_rate_and_exact_drop_set():
    n, p = 20_000, 0.1
    link, target, _ = run(one_way(LinkProfile.iid(p), n))
    st = link.up
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(st.dropped_loss - n * p) <= 3 * sigma
    assert st.dropped_indices is not None and len(st.dropped_indices) == st.dropped_loss
    assert st.delivered == n - st.dropped_loss and st.dropped_queue == st.send_errors == 0
    # what arrived is exactly the complement of the recorded drops, in order, once each
    assert target.seqs() == sorted(set(range(n)) - set(st.dropped_indices))


def test_gilbert_elliott_average_and_burst():
    n, avg, burst = 20_000, 0.1, 3.0
    prof = LinkProfile.gilbert_elliott(avg, burst)
    assert prof.p_bg == pytest.approx(1 / burst)
    assert prof.p_gb == pytest.approx((1 / burst) * avg / (1 - avg))
    assert prof.expected_loss() == pytest.approx(avg)
    link, target, _ = run(one_way(prof, n))
    st = link.up
    assert st.dropped_indices is not None
    # correlated loss: variance inflated by (1+rho)/(1-rho), rho = 1 - p_gb - p_bg (≈ ±0.014)
    assert abs(st.dropped_loss / n - avg) <= 0.02
    runs = loss_runs(st.dropped_indices)
    assert abs(sum(runs) / len(runs) - burst) <= 0.4  # ~670 runs, σ(mean) ≈ 0.1
    assert target.seqs() == sorted(set(range(n)) - set(st.dropped_indices))
    # iid at the same rate has mean runs ≈ 1/(1-p) ≈ 1.1: the burstiness is the GE model's
    assert max(runs) > 8


def test_same_seed_same_decisions():
    prof = LinkProfile.gilbert_elliott(0.15, 2.0, jitter_ms=3.0, reorder=0.05,
                                       reorder_hold_ms=1000.0)

    async def trial(seed: int) -> tuple[list[int], int, list[int]]:
        link, target, _ = await one_way(prof, 3000, seed=seed)
        assert link.up.dropped_indices is not None
        return link.up.dropped_indices, link.up.reordered, target.seqs()

    a, b, c = run(trial(7)), run(trial(7)), run(trial(8))
    assert a == b
    assert a[1] > 0
    assert c[0] != a[0]


def test_delay_and_jitter_applied():
    delay, jitter, n = 30.0, 10.0, 70
    prof = LinkProfile(delay_ms=delay, jitter_ms=jitter)
    # 15 ms apart > jitter: FIFO never holds a packet back, each sees delay + U(0, jitter)
    link, target, stamps = run(one_way(prof, n, gap=0.015))
    assert link.up.delivered == n
    lat = sorted((t - stamps[s]) * 1000 for t, s in zip((g[0] for g in target.got),
                                                          target.seqs(), strict=True))
    assert lat[0] >= delay - 0.5
    spread = lat[int(0.9 * n)] - lat[int(0.1 * n)]  # U(0, 10): ≈ 8 ms
    assert 4.0 <= spread <= 25.0
    assert lat[n // 2] - delay >= 2.0  # median of U(0, 10) is 5 ms


def test_reorder_rate_exact_and_no_duplicates():
    n, p = 5000, 0.1
    # jitter with back-to-back packets: FIFO keeps jitter from adding reorderings
    prof = LinkProfile(reorder=p, jitter_ms=2.0)
    link, target, _ = run(one_way(prof, n))
    seqs = target.seqs()
    assert sorted(seqs) == list(range(n))  # nothing lost, nothing duplicated
    pos = {s: i for i, s in enumerate(seqs)}
    inversions = sum(pos[s + 1] < pos[s] for s in range(n - 1))
    assert inversions == link.up.reordered
    assert abs(link.up.reordered - n * p) <= 3 * math.sqrt(n * p * (1 - p))


def test_rate_limit_caps_throughput_and_counts_queue_drops():
    rate, size, queue, n = 400_000.0, 500, 40, 200  # 10 ms per packet
    prof = LinkProfile(rate_bps=rate, queue_packets=queue)
    t0 = time.monotonic()
    link, target, _ = run(one_way(prof, n, size=size))
    st = link.up
    assert st.dropped_queue > 0 and st.dropped_loss == 0
    assert st.delivered + st.dropped_queue == n
    assert len(target.got) == st.delivered
    # the link can have drained at most one packet per 10 ms while the burst went in
    send_s = time.monotonic() - t0
    assert st.delivered <= queue + 1 + math.ceil(send_s * rate / (size * 8))
    times = [g[0] for g in target.got]
    bits_after_first = (len(times) - 1) * size * 8
    # an upper bound only (a late first packet shortens the span: 20% = 80 ms of slack)
    assert bits_after_first / (times[-1] - times[0]) <= rate * 1.2


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_per_client_upstream_sockets(use_uvloop: bool):
    async def body() -> None:
        target = Sink(echo=True)
        clients = [Sink(), Sink()]
        link = await LossyLink.start(target=target.addr)
        try:
            for k, c in enumerate(clients):
                for i in range(5):
                    c.sock.sendto(packet(k * 100 + i), link.address)
            await target.wait_count(10)
            for c in clients:
                await c.wait_count(5)
            srcs = {src for _, _, src in target.got}
            assert len(srcs) == 2 and link.address not in srcs
            assert srcs == set(link.upstream_addresses().values())
            assert set(link.upstream_addresses()) == {c.addr for c in clients}
            for k, c in enumerate(clients):  # each reply went back to its own client only
                assert sorted(c.seqs()) == [k * 100 + i for i in range(5)]
            assert link.up.delivered == link.down.delivered == 10
        finally:
            await link.close()
            for s in (target, *clients):
                s.close()

    run(body(), use_uvloop)


@pytest.mark.parametrize("down", [LinkProfile(), LinkProfile.iid(0.2)])
def test_directions_independent(down: LinkProfile):
    n = 3000

    async def body() -> None:
        target, client = Sink(echo=True), Sink()
        link = await LossyLink.start(target=target.addr, up=LinkProfile.iid(0.2), down=down,
                                     seed=3, record_drops=True)
        try:
            await send_stream(client, link.address, n)
            await target.wait_count(link.up.delivered)
            assert await link.idle(10.0)
            await client.wait_count(link.down.delivered)
        finally:
            await link.close()
            target.close()
            client.close()
        up, dn = link.up, link.down
        assert up.sent == n and dn.sent == up.delivered == len(target.got)
        assert len(client.got) == dn.delivered == dn.sent - dn.dropped_loss
        sigma = math.sqrt(n * 0.2 * 0.8)
        assert abs(up.dropped_loss - 0.2 * n) <= 3 * sigma
        if down.loss == "none":
            assert dn.dropped_loss == 0
        else:
            assert abs(dn.dropped_loss - 0.2 * dn.sent) <= 3 * math.sqrt(dn.sent * 0.16)
            # separate random streams: the same indices are not dropped on both legs
            assert up.dropped_indices is not None
            assert [i for i in up.dropped_indices if i < dn.sent] != dn.dropped_indices
        assert up.dropped_indices is not None
        assert sorted(client.seqs()) == client.seqs()  # no reordering configured
        assert set(client.seqs()) <= set(range(n)) - set(up.dropped_indices)

    run(body())


@pytest.mark.parametrize("make", [
    lambda: LinkProfile(loss="bursty"),  # type: ignore[arg-type]
    lambda: LinkProfile.iid(1.5),
    lambda: LinkProfile.iid(-0.1),
    lambda: LinkProfile(p=0.1),  # p without loss='iid'
    lambda: LinkProfile(loss="ge", p_gb=0.1),  # p_bg missing
    lambda: LinkProfile(loss="ge", p_gb=0.0, p_bg=0.5),
    lambda: LinkProfile(loss="iid", p=0.1, p_gb=0.1, p_bg=0.1),
    lambda: LinkProfile.gilbert_elliott(0.6, 1.0),  # unreachable: needs p_gb > 1
    lambda: LinkProfile.gilbert_elliott(0.1, 0.5),  # mean burst < 1 packet
    lambda: LinkProfile.gilbert_elliott(0.0, 3.0),
    lambda: LinkProfile(delay_ms=-1.0),
    lambda: LinkProfile(jitter_ms=float("nan")),
    lambda: LinkProfile(jitter_dist="pareto"),  # type: ignore[arg-type]
    lambda: LinkProfile(reorder=1.0),
    lambda: LinkProfile(reorder_hold_ms=0.0),
    lambda: LinkProfile(rate_bps=-5.0),
    lambda: LinkProfile(queue_packets=0),
    lambda: LinkProfile(delay_ms="10"),  # type: ignore[arg-type]
])
def test_bad_profile_raises(make: Callable[[], LinkProfile]):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("kwargs", [
    {"target": ("10.0.0.1", 5004)},  # never anything but loopback
    {"target": ("example.com", 5004)},
    {"target": ("127.0.0.1", 70000)},
    {"target": ("127.0.0.1", 0)},
    {"target": "127.0.0.1:5004"},
    {"target": ("127.0.0.1", 5004), "listen": ("0.0.0.0", 0)},
    {"target": ("127.0.0.1", 5004), "up": 0.1},
    {"target": ("127.0.0.1", 5004), "seed": "x"},
    {"target": ("127.0.0.1", 5004), "max_inflight": 0},
])
def test_bad_start_raises(kwargs: dict[str, Any]):
    with pytest.raises(ValueError):
        run(LossyLink.start(**kwargs))


def test_cli_forwards_and_prints_stats(tmp_path: Path):
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(5.0)
    port = target.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "lossy_link.py"), "--target", f"127.0.0.1:{port}",
         "--up-loss", "0", "--down-ge", "0.1,3", "--delay", "5", "--jitter", "1",
         "--seed", "1", "--seconds", "1.5", "--interval", "0.3"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("lossy_link: 127.0.0.1:")
        listen_port = int(first.split()[1].rsplit(":", 1)[1])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3):
            client.sendto(packet(i), ("127.0.0.1", listen_port))
        got = [struct.unpack_from("!I", target.recv(100))[0] for _ in range(3)]
        client.close()
        assert got == [0, 1, 2]
        rest = proc.communicate(timeout=10)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        target.close()
    assert proc.returncode == 0
    assert "up: sent=3 delivered=3" in rest.splitlines()[-1]


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit) as e:
        main(["--target", "127.0.0.1:5004", "--up-loss", "2"])
    assert e.value.code == 2


def test_set_profile_changes_a_running_link():
    async def main() -> None:
        target, client = Sink(), Sink()
        link = await LossyLink.start(target=target.addr, seed=3)
        try:
            await send_stream(client, link.address, 50)
            await target.wait_count(50)
            assert len(target.got) == 50 and link.up.dropped_loss == 0
            link.set_profile(up=LinkProfile.iid(1.0))
            assert link.up_profile.p == 1.0
            await send_stream(client, link.address, 50)
            await asyncio.sleep(0.1)
            assert len(target.got) == 50 and link.up.dropped_loss == 50
            with pytest.raises(ValueError):
                link.set_profile(down="fast")  # type: ignore[arg-type]
        finally:
            await link.close()
            target.close()
            client.close()
    run(main())

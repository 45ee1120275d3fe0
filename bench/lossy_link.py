"""Lossy-link harness: a UDP proxy on loopback with seeded loss, delay, jitter, reordering and a
rate limit, independently per direction.

    link = await LossyLink.start(target=("127.0.0.1", 5004),
                                 up=LinkProfile.iid(0.1),
                                 down=LinkProfile.gilbert_elliott(0.05, 3, delay_ms=20), seed=1)
    # clients send to link.address; the target sees one distinct source port per client (NAT)
    ...
    await link.close()

Pipeline per direction, for each datagram in arrival order (its index = stats.sent before it):
  1. loss: the loss model draws from its own Random, a fixed number of draws per packet;
  2. rate limit (rate_bps > 0): a bottleneck of rate_bps with a queue of queue_packets packets
     (tail drop, counted in dropped_queue); a packet leaves it at max(now, link free) + bits/rate;
  3. latency: delay_ms + X, X >= 0 from jitter (uniform: X ~ U(0, jitter_ms); normal:
     X = |N(0, jitter_ms)| capped at 4 jitter_ms). Departures stay FIFO (a packet never
     leaves before its predecessor), so jitter alone never reorders and stats.reordered is exact;
  4. reorder: with probability `reorder` the packet is held and sent right after its successor
     (the next packet of this direction); a packet still held after reorder_hold_ms is sent in
     order and not counted.
Loss, jitter and reorder draws come from per-direction Random streams seeded from (seed,
direction) and are made for every packet whatever happens to it, so with the same seed and the
same packet sequence the decisions are identical, independent of timing. Queue drops depend on
timing by nature (they are the point of a rate limit) but never change the random streams.

Gilbert–Elliott: two states, Good and Bad; for each packet the loss is drawn with the current
state's loss probability (loss_in_good / loss_in_bad), then the state moves G→B with p_gb or
B→G with p_bg. Stationary P(Bad) = pi_b = p_gb / (p_gb + p_bg), so the mean loss is
pi_b * loss_in_bad + (1 - pi_b) * loss_in_good. The first state is drawn from that distribution.
LinkProfile.gilbert_elliott(avg_loss, mean_burst) is the Gilbert special case (loss_in_bad=1,
loss_in_good=0): every loss run is one stay in Bad, geometric with mean 1/p_bg, so
    p_bg = 1 / mean_burst,   p_gb = p_bg * avg_loss / (1 - avg_loss)
(needs mean_burst >= 1 and p_gb <= 1, i.e. avg_loss <= mean_burst / (1 + mean_burst)).

One LossyLink is one link: its loss chain, rate queue and ordering are shared by all its
clients per direction (a shared bottleneck). Give each client its own LossyLink for
independent access links. Only loopback addresses are accepted.

CLI: python bench/lossy_link.py --listen 127.0.0.1:6000 --target 127.0.0.1:5004 --up-loss 0.1 \
        --down-ge 0.1,3 --delay 25 --jitter 5 --seed 1 [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import random
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

LossModel = Literal["none", "iid", "ge"]
JitterDist = Literal["uniform", "normal"]

RECV_BATCH = 256  # datagrams read per readiness callback, so one busy socket cannot starve
SOCK_BUF = 4 << 20  # asked for; the kernel caps it at rmem_max/wmem_max
SEND_EARLY_S = 1e-4  # timers may fire a hair early (uvloop rounds to ms); avoid re-arm spins
MAX_HELD = 16  # packets waiting for their successor at once (p^16 chance at the cap)
MAX_RECORDED_DROPS = 1_000_000


def _num(name: str, value: object, lo: float, hi: float = math.inf,
         lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise ValueError(f"{name} must be in {lo_s}, {hi}], got {value!r}")
    return v


@dataclass(frozen=True)
class LinkProfile:
    """Impairments of one direction. Times in ms, rate in bit/s (0 = unlimited)."""

    loss: LossModel = "none"
    p: float = 0.0  # iid loss probability
    p_gb: float | None = None  # ge: P(Good -> Bad) per packet
    p_bg: float | None = None  # ge: P(Bad -> Good) per packet
    loss_in_bad: float = 1.0
    loss_in_good: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_dist: JitterDist = "uniform"
    reorder: float = 0.0  # probability that a packet lands after its successor
    reorder_hold_ms: float = 50.0  # longest wait for that successor
    rate_bps: float = 0.0
    queue_packets: int = 64  # bottleneck queue, only with rate_bps > 0

    def __post_init__(self) -> None:
        if self.loss not in ("none", "iid", "ge"):
            raise ValueError(f"loss must be 'none', 'iid' or 'ge', got {self.loss!r}")
        _num("p", self.p, 0.0, 1.0)
        if self.loss != "iid" and self.p != 0.0:
            raise ValueError("p is only for loss='iid'")
        if self.loss == "ge":
            if self.p_gb is None or self.p_bg is None:
                raise ValueError("loss='ge' needs p_gb and p_bg")
            _num("p_gb", self.p_gb, 0.0, 1.0, lo_open=True)
            _num("p_bg", self.p_bg, 0.0, 1.0, lo_open=True)
        elif self.p_gb is not None or self.p_bg is not None:
            raise ValueError("p_gb/p_bg are only for loss='ge'")
        _num("loss_in_bad", self.loss_in_bad, 0.0, 1.0)
        _num("loss_in_good", self.loss_in_good, 0.0, 1.0)
        _num("delay_ms", self.delay_ms, 0.0, 60_000.0)
        _num("jitter_ms", self.jitter_ms, 0.0, 60_000.0)
        if self.jitter_dist not in ("uniform", "normal"):
            raise ValueError(f"jitter_dist must be 'uniform' or 'normal', got {self.jitter_dist!r}")
        _num("reorder", self.reorder, 0.0, 1.0)
        if self.reorder >= 1.0:
            raise ValueError("reorder must be < 1 (some packet has to be the successor)")
        _num("reorder_hold_ms", self.reorder_hold_ms, 0.0, 60_000.0, lo_open=True)
        _num("rate_bps", self.rate_bps, 0.0)
        if isinstance(self.queue_packets, bool) or not isinstance(self.queue_packets, int) \
                or self.queue_packets < 1:
            raise ValueError(f"queue_packets must be an int >= 1, got {self.queue_packets!r}")

    @classmethod
    def iid(cls, p: float, **kw: object) -> LinkProfile:
        """Independent loss with probability p per packet."""
        return cls(loss="iid", p=p, **kw)  # type: ignore[arg-type]

    @classmethod
    def gilbert_elliott(cls, avg_loss: float, mean_burst: float, **kw: object) -> LinkProfile:
        """Gilbert loss (all of Bad lost, none of Good) with this mean loss and mean loss-run
        length: p_bg = 1/mean_burst, p_gb = p_bg * avg_loss / (1 - avg_loss)."""
        a = _num("avg_loss", avg_loss, 0.0, 1.0, lo_open=True)
        if a >= 1.0:
            raise ValueError("avg_loss must be < 1")
        b = _num("mean_burst", mean_burst, 1.0)
        p_bg = 1.0 / b
        p_gb = p_bg * a / (1.0 - a)
        if p_gb > 1.0:
            raise ValueError(f"avg_loss {a} is unreachable with mean_burst {b}: "
                             f"needs avg_loss <= {b / (1 + b):.4f}")
        return cls(loss="ge", p_gb=p_gb, p_bg=p_bg, loss_in_bad=1.0, loss_in_good=0.0,
                   **kw)  # type: ignore[arg-type]

    def expected_loss(self) -> float:
        """Long-run loss probability of the loss model (queue drops excluded)."""
        if self.loss == "iid":
            return self.p
        if self.loss == "ge":
            assert self.p_gb is not None and self.p_bg is not None
            pi_b = self.p_gb / (self.p_gb + self.p_bg)
            return pi_b * self.loss_in_bad + (1.0 - pi_b) * self.loss_in_good
        return 0.0


@dataclass
class LinkStats:
    """Counters of one direction; sent = datagrams the proxy received for this direction."""

    sent: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0  # tail drops of the rate-limit queue
    dropped_overflow: int = 0  # over the link's max_inflight (memory bound)
    send_errors: int = 0  # the socket refused the datagram (buffer full, ICMP error)
    reordered: int = 0  # packets sent right after their successor
    bytes_delivered: int = 0
    dropped_indices: list[int] | None = field(default=None, repr=False)  # loss drops only

    def line(self) -> str:
        return (f"sent={self.sent} delivered={self.delivered} loss={self.dropped_loss} "
                f"queue={self.dropped_queue} overflow={self.dropped_overflow} "
                f"senderr={self.send_errors} reordered={self.reordered}")


# (departure time, socket, destination or None for a connected socket, payload)
_Entry = tuple[float, socket.socket, tuple[str, int] | None, bytes]


class _Direction:
    """Decisions and scheduling of one direction; I/O is only the final send."""

    def __init__(self, loop: asyncio.AbstractEventLoop, profile: LinkProfile, seed: int,
                 name: str, max_inflight: int, record_drops: bool) -> None:
        self.loop = loop
        self.profile = profile
        self.stats = LinkStats(dropped_indices=[] if record_drops else None)
        self.max_inflight = max_inflight
        # str seeds are hashed with SHA-512 by random.Random: stable across runs and processes
        self.rng_loss = random.Random(f"{seed}/{name}/loss")
        self.rng_delay = random.Random(f"{seed}/{name}/delay")
        self.bad = False
        if profile.loss == "ge":
            assert profile.p_gb is not None and profile.p_bg is not None
            self.bad = self.rng_loss.random() < profile.p_gb / (profile.p_gb + profile.p_bg)
        self.link_free_at = 0.0
        self.in_queue: deque[float] = deque()  # departure times from the bottleneck
        self.last_t = 0.0
        self.inflight: deque[_Entry] = deque()
        self.held: list[_Entry] = []
        self.timer: asyncio.TimerHandle | None = None
        self.hold_timer: asyncio.TimerHandle | None = None

    def _lost(self) -> bool:
        prof, rng = self.profile, self.rng_loss
        if prof.loss == "iid":
            return rng.random() < prof.p
        if prof.loss == "ge":
            lost = rng.random() < (prof.loss_in_bad if self.bad else prof.loss_in_good)
            u = rng.random()
            if self.bad:
                self.bad = not u < prof.p_bg  # type: ignore[operator]
            else:
                self.bad = u < prof.p_gb  # type: ignore[operator]
            return lost
        return False

    def _jitter_s(self) -> float:
        prof, rng = self.profile, self.rng_delay
        u = rng.random()
        g = rng.gauss(0.0, 1.0)
        if prof.jitter_ms == 0.0:
            return 0.0
        if prof.jitter_dist == "uniform":
            return u * prof.jitter_ms / 1000.0
        return min(abs(g), 4.0) * prof.jitter_ms / 1000.0

    def on_packet(self, data: bytes, sock: socket.socket, dst: tuple[str, int] | None) -> None:
        prof, st = self.profile, self.stats
        index = st.sent
        st.sent += 1
        # every random draw happens for every packet, before any timing-dependent branch
        lost = self._lost()
        extra = self._jitter_s()
        hold = self.rng_delay.random() < prof.reorder
        if lost:
            st.dropped_loss += 1
            if st.dropped_indices is not None and len(st.dropped_indices) < MAX_RECORDED_DROPS:
                st.dropped_indices.append(index)
            return
        if len(self.inflight) + len(self.held) >= self.max_inflight:
            st.dropped_overflow += 1
            return
        now = self.loop.time()
        t = now
        if prof.rate_bps > 0:
            q = self.in_queue
            while q and q[0] <= now:
                q.popleft()
            if len(q) >= prof.queue_packets:
                st.dropped_queue += 1
                return
            t = max(now, self.link_free_at) + len(data) * 8 / prof.rate_bps
            self.link_free_at = t
            q.append(t)
        t = max(t + prof.delay_ms / 1000.0 + extra, self.last_t)
        entry = (t, sock, dst, data)
        if hold and len(self.held) < MAX_HELD:
            self.held.append(entry)
            if self.hold_timer is None:
                self.hold_timer = self.loop.call_at(t + prof.reorder_hold_ms / 1000.0,
                                                    self._hold_expired)
            return
        self.last_t = t
        self._push(entry)
        if self.held:
            # newest first: each held packet lands right after its own successor
            for _, hs, hd, hdata in reversed(self.held):
                self._push((t, hs, hd, hdata))
            st.reordered += len(self.held)
            self.held.clear()
            self._cancel_hold()

    def _hold_expired(self) -> None:
        self.hold_timer = None
        for ht, hs, hd, hdata in self.held:  # no successor came: in order, not counted
            self.last_t = max(ht, self.last_t)
            self._push((self.last_t, hs, hd, hdata))
        self.held.clear()

    def _cancel_hold(self) -> None:
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None

    def _push(self, entry: _Entry) -> None:
        self.inflight.append(entry)
        if self.timer is None:
            self.timer = self.loop.call_at(entry[0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time() + SEND_EARLY_S
        q, st = self.inflight, self.stats
        while q and q[0][0] <= now:
            _, sock, dst, data = q.popleft()
            try:
                if dst is None:
                    sock.send(data)
                else:
                    sock.sendto(data, dst)
            except OSError:  # full buffer, ICMP port unreachable, closed: the datagram is gone
                st.send_errors += 1
                continue
            st.delivered += 1
            st.bytes_delivered += len(data)
        if q:
            self.timer = self.loop.call_at(q[0][0], self._flush)

    def pending(self) -> int:
        return len(self.inflight) + len(self.held)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._cancel_hold()
        self.inflight.clear()
        self.held.clear()


def _loopback_addr(name: str, addr: object) -> tuple[str, int]:
    if not (isinstance(addr, tuple) and len(addr) == 2):
        raise ValueError(f"{name} must be a (host, port) tuple, got {addr!r}")
    host, port = addr
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.IPv4Address(host)
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"{name} host must be an IPv4 loopback address, got {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"{name} must be on loopback (127.0.0.0/8), got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{name} port must be an int in [0, 65535], got {port!r}")
    return str(ip), port


def _udp_socket(local: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        sock.setblocking(False)
        sock.bind(local)
    except OSError:
        sock.close()
        raise
    return sock


class LossyLink:
    """UDP proxy: clients → `address` → (up) → target, and target → (down) → clients."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listen: socket.socket,
                 target: tuple[str, int], up: _Direction, down: _Direction,
                 max_clients: int) -> None:
        self._loop = loop
        self._listen = listen
        self.target = target
        self.up_profile = up.profile
        self.down_profile = down.profile
        self._up = up
        self._down = down
        self._max_clients = max_clients
        self._flows: dict[tuple[str, int], socket.socket] = {}  # client addr -> upstream socket
        self.rejected_clients = 0  # datagrams from new clients past max_clients
        self._closed = False
        self.address: tuple[str, int] = listen.getsockname()[:2]

    @classmethod
    async def start(cls, target: tuple[str, int], up: LinkProfile | None = None,
                    down: LinkProfile | None = None, seed: int = 1,
                    listen: tuple[str, int] = ("127.0.0.1", 0), max_clients: int = 64,
                    max_inflight: int = 65536, record_drops: bool = False) -> LossyLink:
        """Bind the client-side port and start forwarding on the running loop."""
        target = _loopback_addr("target", target)
        listen = _loopback_addr("listen", listen)
        if target[1] == 0:
            raise ValueError("target port must not be 0")
        up = LinkProfile() if up is None else up
        down = LinkProfile() if down is None else down
        for name, prof in (("up", up), ("down", down)):
            if not isinstance(prof, LinkProfile):
                raise ValueError(f"{name} must be a LinkProfile, got {type(prof).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        for name, v in (("max_clients", max_clients), ("max_inflight", max_inflight)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        loop = asyncio.get_running_loop()
        sock = _udp_socket(listen)
        link = cls(loop, sock, target,
                   _Direction(loop, up, seed, "up", max_inflight, record_drops),
                   _Direction(loop, down, seed, "down", max_inflight, record_drops),
                   max_clients)
        loop.add_reader(sock.fileno(), link._on_client_readable)
        return link

    def set_profile(self, up: LinkProfile | None = None,
                    down: LinkProfile | None = None) -> None:
        """Change a direction's impairments while running (e.g. a capacity step). Packets
        already queued keep their departure times; the new rate and queue apply from the
        next packet."""
        for name, prof in (("up", up), ("down", down)):
            if prof is not None and not isinstance(prof, LinkProfile):
                raise ValueError(f"{name} must be a LinkProfile, got {type(prof).__name__}")
        if up is not None:
            self._up.profile = self.up_profile = up
        if down is not None:
            self._down.profile = self.down_profile = down

    @property
    def up(self) -> LinkStats:
        return self._up.stats

    @property
    def down(self) -> LinkStats:
        return self._down.stats

    def upstream_addresses(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Client address -> the proxy address the target sees for that client."""
        return {c: s.getsockname()[:2] for c, s in self._flows.items()}

    def pending(self) -> int:
        """Packets admitted but not yet sent, both directions."""
        return self._up.pending() + self._down.pending()

    async def idle(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is in flight (True) or timeout (False)."""
        deadline = self._loop.time() + timeout
        while self.pending() and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        return not self.pending()

    def _on_client_readable(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                data, addr = self._listen.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError:
                continue  # e.g. ICMP error queued on the socket: skip it
            up = self._flows.get(addr)
            if up is None:
                up = self._new_flow(addr)
                if up is None:
                    continue
            self._up.on_packet(data, up, None)

    def _new_flow(self, client: tuple[str, int]) -> socket.socket | None:
        if len(self._flows) >= self._max_clients:
            self.rejected_clients += 1
            return None
        sock = _udp_socket(("127.0.0.1", 0))
        sock.connect(self.target)  # connected: only the target's datagrams come back
        self._flows[client] = sock
        self._loop.add_reader(sock.fileno(), self._on_target_readable, sock, client)
        return sock

    def _on_target_readable(self, sock: socket.socket, client: tuple[str, int]) -> None:
        for _ in range(RECV_BATCH):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                continue  # ECONNREFUSED from an earlier send to a closed target port
            self._down.on_packet(data, self._listen, client)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._up.close()
        self._down.close()
        for sock in [self._listen, *self._flows.values()]:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._flows.clear()

    async def __aenter__(self) -> LossyLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---- CLI ---------------------------------------------------------------------------------

def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _ge_pair(text: str) -> tuple[float, float]:
    try:
        avg, burst = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AVG_LOSS,MEAN_BURST, got {text!r}") from None
    return avg, burst


def _profile(args: argparse.Namespace, side: str) -> LinkProfile:
    common = dict(delay_ms=args.delay, jitter_ms=args.jitter, jitter_dist=args.jitter_dist,
                  reorder=args.reorder, rate_bps=args.rate, queue_packets=args.queue)
    ge = getattr(args, f"{side}_ge")
    loss = getattr(args, f"{side}_loss")
    if ge is not None and loss is not None:
        raise ValueError(f"--{side}-loss and --{side}-ge are exclusive")
    if ge is not None:
        return LinkProfile.gilbert_elliott(ge[0], ge[1], **common)
    if loss is not None:
        return LinkProfile.iid(loss, **common)
    return LinkProfile(**common)  # type: ignore[arg-type]


async def _run(args: argparse.Namespace) -> None:
    link = await LossyLink.start(target=args.target, up=_profile(args, "up"),
                                 down=_profile(args, "down"), seed=args.seed,
                                 listen=args.listen)
    print(f"lossy_link: {link.address[0]}:{link.address[1]} -> "
          f"{args.target[0]}:{args.target[1]}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds
    try:
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(args.interval, left))
            print(f"up: {link.up.line()} | down: {link.down.line()} | "
                  f"clients={len(link.upstream_addresses())}", file=sys.stderr, flush=True)
    finally:
        await link.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0))
    ap.add_argument("--target", type=_hostport, required=True)
    ap.add_argument("--up-loss", type=float, help="iid loss probability client->target")
    ap.add_argument("--down-loss", type=float, help="iid loss probability target->client")
    ap.add_argument("--up-ge", type=_ge_pair, metavar="AVG,BURST")
    ap.add_argument("--down-ge", type=_ge_pair, metavar="AVG,BURST")
    ap.add_argument("--delay", type=float, default=0.0, help="ms, both directions")
    ap.add_argument("--jitter", type=float, default=0.0, help="ms, both directions")
    ap.add_argument("--jitter-dist", choices=("uniform", "normal"), default="uniform")
    ap.add_argument("--reorder", type=float, default=0.0, help="probability, both directions")
    ap.add_argument("--rate", type=float, default=0.0, help="bit/s per direction, 0 = off")
    ap.add_argument("--queue", type=int, default=64, help="rate-limit queue, packets")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60.0, help="run this long, then exit")
    ap.add_argument("--interval", type=float, default=1.0, help="stats line period, s")
    args = ap.parse_args(argv)
    if not (args.seconds > 0 and args.interval > 0):
        ap.error("--seconds and --interval must be > 0")
    try:
        asyncio.run(_run(args))
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())

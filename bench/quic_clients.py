"""Clients of bench/quic.py: the stamping RoQ publisher, the measuring viewers, and the viewer
child processes.

- ``StampingPublisher``: RTP over a ``QuicLink`` at a fixed rate. Every packet carries the
  CLOCK_REALTIME time (ns) taken right before aioquic encrypts it and it is sent (the link is
  flushed per packet); optionally the same bytes also go to a plain UDP socket (the direct
  path the added latency is measured against).
- ``NativePublisher``: the same packets from a native, timerfd-paced QuicBlaster on the
  link's socket and 1-RTT keys (the link pauses meanwhile): no event-loop bursts.
- ``StampedLink``: a real ``QuicLink`` (decrypts, ACKs) whose socket has SO_TIMESTAMPNS: each
  datagram's kernel receive time is kept, so a late Python reader does not count as latency.
- Child processes (``python bench/quic_clients.py viewers|meters|sinks``), one JSON config line on
  stdin ({"node": [host, port], "viewers": [[room, participant, token], ...]}), then
  {"ready": n} on stdout; every "snap" line gets counters back; EOF ends the child.
  - viewers: one real QuicLink per viewer (ACKs at ACK_DELAY like any client); counts the
    RTP packets of payload type 96 each got. meters: the same with StampedLinks; "window T0
    T1" gets the latencies (ms) and send stamps (ns) of the packets sent in [T0, T1].
  - sinks: a native UdpSink whose sockets first carry a QuicLink handshake + auth each; then
    the links are dropped (never read again, never ACK) and the sink only counts datagrams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import uvloop  # noqa: E402
from _children import native_module  # noqa: E402
from aioquic.quic.crypto import derive_key_iv_hp  # noqa: E402
from aioquic.tls import Epoch  # noqa: E402

from sfu import _native  # noqa: E402
from sfu.client.quic import QuicLink  # noqa: E402

SO_TIMESTAMPNS = 35  # Linux <asm-generic/socket.h> (not exported by the socket module)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
PT = 96
# VP8 payload descriptor (S=1) + keyframe header, as UdpBlaster sends: every packet is a whole
# keyframe, so the node's keyframe gate and GOP cache never hold it back.
VP8_KEY = b"\x10\x90\x0c\x00\x9d\x01\x2a\x80\x02\x68\x01\x00"
STAMP_AT = len(VP8_KEY)  # offset of the int64 send stamp in the RTP payload
CONNECT_BATCH = 10  # handshakes in flight at once per process
KEEPALIVE_S = 5.0  # PING period of the counting-only QUIC viewers
CATCH_UP = 4  # packets a late publisher sends back to back at most (see StampingPublisher.run)
FILL = bytes((i * 7 + 3) & 0xFF for i in range(2048))


def media_packet(seq: int, ts: int, ssrc: int, size: int, stamp_ns: int) -> bytes:
    """A `size`-byte RTP packet (pt 96, marker) carrying the send stamp."""
    payload = VP8_KEY + stamp_ns.to_bytes(8, "little") + FILL[:size - 12 - STAMP_AT - 8]
    return _native.build_rtp(PT, seq & 0xFFFF, ts & 0xFFFF_FFFF, ssrc, payload, marker=True)


def read_stamp(rtp: bytes) -> int | None:
    """The send stamp of one of our RTP packets (after the node's rewrite), else None."""
    if len(rtp) < 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != PT:
        return None
    off = 12 + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10:  # header extension
        if len(rtp) < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(rtp[off + 2:off + 4], "big")
    off += STAMP_AT
    if len(rtp) < off + 8:
        return None
    return int.from_bytes(rtp[off:off + 8], "little")


def enable_rx_stamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def kernel_stamp(ancdata: list[tuple[int, int, bytes]]) -> int:
    """CLOCK_REALTIME ns of a recvmsg's SCM_TIMESTAMPNS (now if the kernel gave none)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("@qq", data[:16])
            return int(sec * 1_000_000_000 + nsec)
    return time.time_ns()


class PublisherLink(QuicLink):
    """The publisher's QuicLink. A datagram that aioquic holds back (congestion window full)
    is re-stamped before each flush, so its stamp is the time it is encrypted and sent: the
    publisher's own queueing is not counted as latency through the node (it is counted in
    `held` / `max_backlog`)."""

    def __init__(self, node: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(node, **kwargs)
        self.stamp_off = len(self.prefix) + 12 + STAMP_AT
        self.held = 0  # flushes that left datagrams queued
        self.max_backlog = 0
        self.stamp = b"\0" * 8  # the last stamp written (int64 LE)
        self.paused = False

    def pause(self) -> None:
        """Read, send and time out nothing: a NativePublisher uses the socket and the packet
        number space meanwhile (a packet number used twice reuses an AES-GCM nonce, and the
        node drops the second as a duplicate)."""
        self.paused = True
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        for handle in (self._timer, self._flush):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush = self._timer_at = None

    def resume(self, next_pn: int) -> None:
        """Back to normal after a pause; `next_pn`: the first packet number nobody used."""
        self.quic._packet_number = max(self.quic._packet_number, next_pn)
        self.paused = False
        if self._sock is not None and self._loop is not None and not self.closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._on_readable()  # what the node sent meanwhile; re-arms the timer

    def _transmit(self) -> None:
        if self.paused:
            return
        pending = self.quic._datagrams_pending
        if pending:
            self.stamp = now = time.time_ns().to_bytes(8, "little")
            off = self.stamp_off
            for i, d in enumerate(pending):
                pending[i] = d[:off] + now + d[off + 8:]
        super()._transmit()
        if pending:
            self.held += 1
            self.max_backlog = max(self.max_backlog, len(pending))


class StampingPublisher:
    """RTP at a fixed rate over a QuicLink, one aioquic flush (encrypt + sendto) per packet."""

    def __init__(self, link: PublisherLink, ssrc: int, size: int,
                 direct: tuple[socket.socket, tuple[str, int]] | None = None) -> None:
        self.link, self.ssrc, self.size = link, ssrc, size
        self.direct = direct
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.ts = int.from_bytes(os.urandom(4), "big")
        self.sent = 0
        self.skipped = 0

    def send_one(self) -> None:
        link = self.link
        packet = media_packet(self.seq, self.ts, self.ssrc, self.size, time.time_ns())
        self.seq += 1
        self.ts += 3000
        # QuicLink.send without its end-of-turn flush: encrypted and sent right now.
        link.quic.send_datagram_frame(link.prefix + packet)
        link.stats["datagrams_out"] += 1
        link._transmit()
        if self.direct is not None:
            # The same bytes and stamp (taken before aioquic encrypted the QUIC copy), sent
            # after the QUIC copy left: the publisher's encryption and sendto count on both
            # paths, so through - direct is the node's share.
            sock, addr = self.direct
            off = 12 + STAMP_AT
            with contextlib.suppress(OSError):
                sock.sendto(packet[:off] + link.stamp + packet[off + 8:], addr)
        self.sent += 1

    async def run(self, rate: float, seconds: float, catch_up: int = CATCH_UP) -> int:
        """Send at `rate` packets/s for `seconds`; returns the packets sent. Behind schedule
        (this process was not scheduled in time) it sends at most CATCH_UP packets back to
        back and skips the rest of the slots: a burst would queue in the node and count as
        its latency. Skipped slots are counted in `skipped` (the rate achieved is lower).
        Sleeps are >= 1 ms (the loop's timers have ms resolution: shorter ones spin)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        slot = sent = 0
        while True:
            now = loop.time()
            if now - t0 >= seconds:
                return sent
            due = int((now - t0) * rate) + 1 - slot
            limit = max(catch_up, int(rate * 0.002) + 1)  # 1 ms ticks: several per tick
            if due > limit:
                self.skipped += due - limit
                slot += due - limit
                due = limit
            for _ in range(due):
                self.send_one()
                sent += 1
            slot += max(due, 0)
            await asyncio.sleep(max(0.001, t0 + slot / rate - loop.time()))


class NativePublisher:
    """RTP at a fixed rate from a native QuicBlaster (timerfd-paced, on a thread without the
    GIL) on the link's own socket with its 1-RTT send keys: packets reach the node one by one
    on schedule, not in the bursts of an event-loop-paced aioquic sender. The link is paused
    while it runs (shared packet numbers). Stamps are CLOCK_REALTIME ns taken right before
    each packet is sealed; `direct` also gets the same RTP bytes as plain UDP right after."""

    def __init__(self, link: PublisherLink, ssrc: int, size: int,
                 direct: tuple[str, int] | None = None) -> None:
        assert link._sock is not None
        self.link = link
        self.blaster = native_module().QuicBlaster(
            link._sock.fileno(), link.node[0], link.node[1], size=size, ssrc=ssrc,
            payload_type=PT, prefix=link.prefix, seq=int.from_bytes(os.urandom(2), "big"),
            ts=int.from_bytes(os.urandom(4), "big"))
        if direct is not None:
            self.blaster.set_direct(*direct)
        self._keys: tuple[bytes, int, bytes] | None = None
        self._hp: bytes | None = None

    @property
    def skipped(self) -> int:
        return int(self.blaster.skipped)

    @property
    def errors(self) -> int:
        return int(self.blaster.errors)

    def _load_keys(self) -> None:
        quic = self.link.quic
        send = quic._cryptos[Epoch.ONE_RTT].send
        if not send.is_valid() or send.cipher_suite is None:
            raise RuntimeError("the publisher link has no 1-RTT keys yet")
        keys = (send.secret, send.key_phase, quic._peer_cid.cid)
        if keys == self._keys:
            self.blaster.set_next_pn(max(quic._packet_number, self.blaster.next_pn))
            return
        key, iv, hp = derive_key_iv_hp(cipher_suite=send.cipher_suite, secret=send.secret,
                                       version=send.version)
        # Header protection keeps the first 1-RTT key across key updates (RFC 9001 6).
        self._hp = self._hp or hp
        self.blaster.set_keys(key, iv, self._hp, quic._peer_cid.cid, send.key_phase,
                              max(quic._packet_number, self.blaster.next_pn))
        self._keys = keys

    async def run(self, rate: float, seconds: float, catch_up: int = CATCH_UP) -> int:
        """Send at `rate` packets/s for `seconds`; returns the packets sent. Woken late it
        sends at most `catch_up` back to back and gives up the other due slots (`skipped`)."""
        link = self.link
        # The executor's thread may predate the caller's pinning and SCHED_FIFO (both are
        # per thread on Linux): it takes the calling thread's.
        cpus, policy = os.sched_getaffinity(0), os.sched_getscheduler(0)
        param = os.sched_getparam(0)

        def drive() -> int:
            own = (os.sched_getaffinity(0), os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setaffinity(0, cpus)
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy, param)
            try:
                return int(self.blaster.drive(rate, seconds, catch_up))
            finally:  # the pool's thread goes back as it was
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(0, own[1], own[2])
                os.sched_setaffinity(0, own[0])

        link.pause()
        try:
            self._load_keys()
            return await asyncio.to_thread(drive)
        except BaseException:
            self.blaster.stop()  # a cancelled run must not keep sending on its thread
            raise
        finally:
            link.resume(self.blaster.next_pn)

    def send(self, count: int) -> int:
        """`count` packets back to back now (tests)."""
        link = self.link
        link.pause()
        try:
            self._load_keys()
            return int(self.blaster.send(count))
        finally:
            link.resume(self.blaster.next_pn)

    def close(self) -> None:
        self.blaster.close()


class StampedLink(QuicLink):
    """A real QUIC viewer that keeps each datagram's kernel receive time: `samples` gets
    (send stamp, receive - send) ns of every RTP packet it decrypts."""

    def __init__(self, node: tuple[str, int], **kwargs: Any) -> None:
        super().__init__(node, **kwargs)
        self.rx_ns = 0
        self.samples: list[tuple[int, int]] = []
        self.on_datagram = self._on_media

    def _open_socket(self, local_host: str) -> None:
        super()._open_socket(local_host)
        assert self._sock is not None
        enable_rx_stamps(self._sock)

    def _on_readable(self) -> None:
        sock, loop = self._sock, self._loop
        assert loop is not None
        got = 0
        while sock is not None and got < 256:
            try:
                data, anc, _flags, addr = sock.recvmsg(65536, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            got += 1
            self.rx_ns = kernel_stamp(anc)
            self.quic.receive_datagram(data, addr, now=loop.time())
            self._process_events()  # per datagram: its frames go with its own stamp
        self._transmit()

    def _on_media(self, data: bytes) -> None:
        stamp = read_stamp(data)
        if stamp is not None:
            self.samples.append((stamp, self.rx_ns - stamp))


def window_ms(samples: list[tuple[int, int]], t0_ns: int, t1_ns: int) -> list[float]:
    """Latencies (ms) of the packets sent in [t0, t1] (by their send stamp)."""
    return [lat / 1e6 for stamp, lat in samples if t0_ns <= stamp <= t1_ns]


def paired_added_ms(meter_stamps: list[list[int]], meter_ms: list[list[float]],
                    direct: list[tuple[int, int]]) -> list[float]:
    """Per packet: its one-way latency through the node (each meter's copy) minus the same
    packet's over the direct path, matched by send stamp, in ms."""
    by_stamp = dict(direct)
    return [lat - by_stamp[st] / 1e6 for stamps, lats in zip(meter_stamps, meter_ms, strict=True)
            for st, lat in zip(stamps, lats, strict=True) if st in by_stamp]


class DirectReceiver:
    """The direct path: a plain UDP socket getting the publisher's packets, kernel-stamped."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        enable_rx_stamps(self.sock)
        self.samples: list[tuple[int, int]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _on_readable(self) -> None:
        for _ in range(16):  # a few per turn: the publisher shares this loop
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp = read_stamp(data)
            if stamp is not None:
                self.samples.append((stamp, kernel_stamp(anc) - stamp))

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


# -- child processes -----------------------------------------------------------------------

class AdoptedLink(QuicLink):
    """A QuicLink on a given socket (one of a UdpSink's), not one of its own."""

    def __init__(self, node: tuple[str, int], sock: socket.socket) -> None:
        super().__init__(node)
        self._adopt = sock

    def _open_socket(self, local_host: str) -> None:
        assert self._loop is not None
        self._adopt.setblocking(False)
        self._sock = self._adopt
        self._loop.add_reader(self._adopt.fileno(), self._on_readable)


async def _login(links: list[QuicLink], logins: list[list[str]]) -> None:
    for i in range(0, len(links), CONNECT_BATCH):
        async def one(link: QuicLink, login: list[str]) -> None:
            await link.connect(timeout=15.0)
            await link.authenticate(login[0], login[1], login[2], timeout=15.0)
        await asyncio.gather(*(one(link, login) for link, login
                               in zip(links[i:i + CONNECT_BATCH], logins[i:i + CONNECT_BATCH],
                                      strict=True)))


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _viewers_main(cfg: dict[str, Any], meters: bool = False) -> None:
    """Real QuicLink viewers; `meters`: StampedLinks that also answer "window T0 T1" (ns)
    with the latencies (ms) of the packets sent in [T0, T1], one list per link."""
    node = (str(cfg["node"][0]), int(cfg["node"][1]))
    links = [StampedLink(node) if meters else QuicLink(node) for _ in cfg["viewers"]]
    counts = [0] * len(links)
    for i, link in enumerate(links):
        def count(data: bytes, i: int = i, inner: Any = link.on_datagram) -> None:
            if len(data) > 1 and data[1] & 0x7F == PT:
                counts[i] += 1
            if meters:
                inner(data)
        link.on_datagram = count
    await _login(links, cfg["viewers"])
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_command() -> None:
        data = os.read(0, 4096)
        for line in data.decode().splitlines():
            cmd = line.split()
            if cmd and cmd[0] == "window":
                t0, t1 = int(cmd[1]), int(cmd[2])
                meters_ = [link for link in links if isinstance(link, StampedLink)]
                lat = [window_ms(link.samples, t0, t1) for link in meters_]
                stamps = [[st for st, _ in link.samples if t0 <= st <= t1] for link in meters_]
                for link in meters_:
                    link.samples.clear()
                _emit({"lat": lat, "stamp": stamps})
                continue
            # sent: QUIC packets the viewers sent the node (ACKs, nearly all of them)
            _emit({"received": sum(counts), "per": counts,
                   "sent": sum(link.quic._packet_number for link in links),
                   "closed": sum(link.closed for link in links)})
        if not data and not done.done():
            done.set_result(None)

    loop.add_reader(0, on_command)
    _emit({"ready": len(links)})
    await done
    loop.remove_reader(0)
    for link in links:
        link.close()


def _sink_sockets(ports: list[int]) -> list[socket.socket]:
    """Duplicates of the UdpSink's sockets, found by their ports among our fds (the sink
    does not expose its socket objects)."""
    by_port: dict[int, socket.socket] = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            continue
        try:
            port = sock.getsockname()[1] if sock.type == socket.SOCK_DGRAM else -1
        except OSError:
            port = -1
        if port in ports and port not in by_port:
            by_port[port] = sock
        else:
            sock.close()
    return [by_port[p] for p in ports]


def _keepalive(link: QuicLink, close: bool = False) -> None:
    """A PING from a link nobody reads: the node's idle timeout (30 s) must not close it
    (or its CONNECTION_CLOSE)."""
    sock = link._sock
    if sock is None:
        return
    if close:
        link.quic.close()
    else:
        link.quic.send_ping(0)
    for data, addr in link.quic.datagrams_to_send(now=time.monotonic()):
        with contextlib.suppress(OSError):
            sock.sendto(data, addr)


def _sinks_main(cfg: dict[str, Any]) -> int:
    """QUIC viewers that only count (cfg has "viewers"), or plain UDP viewers (cfg "n": the
    parent binds their ports with participant.connect; UdpBlaster packets are counted)."""
    nat = native_module()
    quic = "viewers" in cfg
    n = len(cfg["viewers"]) if quic else int(cfg["n"])
    sink = nat.UdpSink(n)
    links: list[AdoptedLink] = []
    if quic:
        socks = _sink_sockets(list(sink.ports))
        node = (str(cfg["node"][0]), int(cfg["node"][1]))
        links = [AdoptedLink(node, s) for s in socks]

        async def handshakes() -> None:
            await _login(links, cfg["viewers"])
            await asyncio.sleep(0.1)  # the ACKs of the auth answer leave (ACK_DELAY 20 ms)

        uvloop.run(handshakes())  # the loop closes: the links are never read again
    sink.reset()
    idle = nat.UdpBlaster("127.0.0.1", 9)  # bench_drive wants one; it sends nothing here
    _emit({"ready": n, "ports": list(sink.ports)})
    # One link at a time, round robin: 50 PINGs at once would stall the node for ~10 ms
    # and show up in the latency tail.
    next_ping, turn = time.monotonic(), 0
    while True:
        nat.bench_drive(idle, sink, 0.0, 0.0, 0.02)
        if links and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + KEEPALIVE_S / len(links)
            _keepalive(links[turn % len(links)])
            turn += 1
        if select.select([sys.stdin], [], [], 0)[0]:
            if not sys.stdin.readline():
                for link in links:  # CONNECTION_CLOSE: the node unbinds them at once
                    _keepalive(link, close=True)
                return 0
            st = sink.stats()
            # QUIC: every datagram (media, plus the odd SR / aioquic resend); UDP: the
            # blaster's packets only.
            _emit({"received": st["total"] if quic else st["bench"], "total": st["total"],
                   "per": list(sink.counts())})


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    cfg = json.loads(sys.stdin.readline())
    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {int(cfg["cpu"])})
    if mode in ("viewers", "meters"):
        uvloop.run(_viewers_main(cfg, meters=mode == "meters"))
        return 0
    if mode == "sinks":
        return _sinks_main(cfg)
    raise SystemExit(f"usage: {sys.argv[0]} viewers|meters|sinks (config on stdin)")


if __name__ == "__main__":
    raise SystemExit(main())

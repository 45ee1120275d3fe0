"""Native QUIC 1-RTT sealing (issue 6, RTP over QUIC): the engine wraps egress to a QUIC
peer as short-header packets with one DATAGRAM frame, protected per RFC 9001 with keys
aioquic negotiated. Checked against aioquic's own packet protection and a real aioquic
client connection over loopback."""

from __future__ import annotations

import os
import resource
import select
import socket
import ssl
import time
from collections.abc import Callable

import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events as qev
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext, CryptoError, derive_key_iv_hp
from aioquic.quic.packet import QuicProtocolVersion, pull_quic_header
from aioquic.tls import CipherSuite, Epoch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from test_engine import counters, recv_all, udp

from sfu import _native as n
from sfu.transports.cert import self_signed

V1 = QuicProtocolVersion.VERSION_1
SUITES = {CipherSuite.AES_128_GCM_SHA256: 32, CipherSuite.AES_256_GCM_SHA384: 48}


def keys(suite: CipherSuite, secret: bytes) -> tuple[bytes, bytes, bytes]:
    return derive_key_iv_hp(cipher_suite=suite, secret=secret, version=V1)


def reference(suite: CipherSuite, secret: bytes, key_phase: int = 0) -> CryptoContext:
    ctx = CryptoContext(key_phase=key_phase)
    ctx.setup(cipher_suite=suite, secret=secret, version=V1)
    return ctx


def plain_header(dcid: bytes, pn: int, key_phase: int = 0) -> bytes:
    return bytes([0x43 | key_phase << 2]) + dcid + (pn & 0xFFFFFFFF).to_bytes(4, "big")


# ---- 1. packet protection against aioquic ---------------------------------------------

@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("dcid_len", [0, 8, 20])
@pytest.mark.parametrize("key_phase", [0, 1])
def test_seal_matches_aioquic(suite: CipherSuite, dcid_len: int, key_phase: int) -> None:
    secret = os.urandom(SUITES[suite])
    dcid = os.urandom(dcid_len)
    sealer = n.QuicSealer(*keys(suite, secret), dcid, key_phase=key_phase)
    ctx = reference(suite, secret, key_phase)
    pns = [0, 1, 255, 256, 65535, 2**32 - 1, 2**32 + 7, 2**40 + 3, 2**62 - 1]
    sizes = [1, 2, 15, 16, 17, 100, 1199, 1300]
    for pn in pns:
        for size in sizes:
            payload = os.urandom(size)
            packet = sealer.seal(pn, payload)
            assert len(packet) == 1 + dcid_len + 4 + size + 16
            # Byte-identical to aioquic's own sealing of the same header and frames.
            assert packet == ctx.encrypt_packet(plain_header(dcid, pn, key_phase), payload, pn)
            header, plain, got_pn, update = ctx.decrypt_packet(packet, 1 + dcid_len, pn)
            assert (header, plain, got_pn, update) == (
                plain_header(dcid, pn, key_phase), payload, pn, False)
            # Any flipped byte (protected header, DCID in the AAD, payload, tag) is rejected.
            for pos in (0, 1, 1 + dcid_len + 2, 1 + dcid_len + 4, len(packet) - 1):
                bad = bytearray(packet)
                bad[pos] ^= 0x01
                with pytest.raises(CryptoError):
                    ctx.decrypt_packet(bytes(bad), 1 + dcid_len, pn)


def test_sealer_rejects_bad_keys() -> None:
    k16, k32, iv = bytes(16), bytes(32), bytes(12)
    for args in [(bytes(24), iv, bytes(24), b""),       # ChaCha20 / AES-192: not offered
                 (k16, bytes(11), k16, b""), (k16, iv, k32, b""), (k32, iv, k16, b""),
                 (k16, iv, k16, bytes(21))]:
        with pytest.raises(ValueError):
            n.QuicSealer(*args)
    with pytest.raises(ValueError):
        n.QuicSealer(k16, iv, k16, b"", key_phase=2)
    sealer = n.QuicSealer(k16, iv, k16, b"")
    with pytest.raises(ValueError):
        sealer.seal(2**62, b"x")
    with pytest.raises(ValueError):
        sealer.seal(-1, b"x")


# ---- engine API without a QUIC connection ------------------------------------------------

class Plain:
    """An engine on one loopback socket with a viewer whose socket the test reads itself."""

    def __init__(self) -> None:
        self.e = n.Engine(max_peers=64, max_sources=8, max_downtracks=16, pool_slots=256,
                          batch=16, stun_rate=0)
        self.srv = udp()
        self.tid = self.e.add_udp(self.srv.fileno())
        self.sock = udp()
        self.pid = self.peer(self.sock)
        self.secret = os.urandom(32)
        self.key, self.iv, self.hp = keys(CipherSuite.AES_128_GCM_SHA256, self.secret)
        self.ctx = reference(CipherSuite.AES_128_GCM_SHA256, self.secret)

    def peer(self, sock: socket.socket) -> int:
        pid = self.e.add_peer(self.tid)
        self.e.bind_peer(pid, *sock.getsockname())
        return pid

    def quic(self, pid: int | None = None, **kw: object) -> None:
        args: dict[str, object] = dict(key=self.key, iv=self.iv, hp=self.hp, dcid=b"\xaa" * 8,
                                       prefix=b"\x40\x05", next_pn=10)
        args.update(kw)
        self.e.set_peer_quic(self.pid if pid is None else pid, **args)

    def open(self, packet: bytes, pn: int) -> bytes:
        _, plain, got_pn, _ = self.ctx.decrypt_packet(packet, 9, pn)
        assert got_pn == pn
        return plain


def test_engine_seals_and_clears() -> None:
    p = Plain()
    p.quic()
    assert p.e.quic_next_pn(p.pid) == 10
    assert p.e.quic_max_payload(p.pid) == 1200 - (1 + 8 + 4 + 1 + 2 + 16)
    assert p.e.send_datagram([p.pid], b"hello") == 1
    assert p.e.send_datagram([p.pid], b"world") == 1
    got = recv_all(p.sock, 2)
    assert [p.open(d, pn) for d, pn in zip(got, (10, 11), strict=True)] == [
        b"\x30\x40\x05hello", b"\x30\x40\x05world"]
    assert p.e.quic_next_pn(p.pid) == 12
    c = counters(p.e)
    assert (c["quic_sealed"], c["quic_too_big"], c["quic_seal_errors"]) == (2, 0, 0)
    assert p.e.peer_stats[p.pid].tolist()[2:4] == [2, sum(len(d) for d in got)]
    # Python (aioquic) sent packets 12..19 meanwhile: the engine continues at 20.
    p.e.set_quic_next_pn(p.pid, 20)
    with pytest.raises(ValueError):
        p.e.set_quic_next_pn(p.pid, 19)     # would reuse a nonce
    p.e.send_datagram([p.pid], b"again")
    assert p.open(recv_all(p.sock, 1)[0], 20) == b"\x30\x40\x05again"
    # Back to plain UDP.
    p.e.clear_peer_quic(p.pid)
    p.e.send_datagram([p.pid], b"plain")
    assert recv_all(p.sock, 1) == [b"plain"]
    assert counters(p.e)["quic_sealed"] == 3
    with pytest.raises(ValueError):
        p.e.quic_next_pn(p.pid)
    p.e.clear_peer_quic(p.pid)          # idempotent


def test_engine_rejects_bad_quic_args() -> None:
    p = Plain()
    bad: list[dict[str, object]] = [
        dict(key=bytes(24), hp=bytes(24)), dict(iv=bytes(16)), dict(hp=bytes(32)),
        dict(dcid=bytes(21)), dict(prefix=bytes(17)), dict(max_packet=1199),
        dict(max_packet=65528), dict(next_pn=-1), dict(next_pn=2**62), dict(key_phase=2)]
    for kw in bad:
        with pytest.raises(ValueError):
            p.quic(**kw)
    with pytest.raises(ValueError):
        p.quic(pid=63)                  # no such peer
    for call in (p.e.quic_next_pn, p.e.quic_max_payload):
        with pytest.raises(ValueError):
            call(p.pid)                 # not a QUIC peer (nothing was set above)
    p.quic(dcid=b"", prefix=b"", max_packet=65527)
    assert p.e.quic_max_payload(p.pid) == 2048 - (1 + 4 + 1 + 16)   # seal slot bound


def test_too_big_dropped_others_unaffected() -> None:
    p = Plain()
    other = udp()
    plain_pid = p.peer(other)
    p.quic()
    limit = p.e.quic_max_payload(p.pid)
    before = p.e.peer_stats[p.pid].tolist()[2]
    # One batch: the QUIC copy is too big and dropped, the plain peer's copy still goes.
    assert p.e.send_datagram([p.pid, plain_pid], b"B" * (limit + 1)) == 2
    assert recv_all(other, 1) == [b"B" * (limit + 1)]
    c = counters(p.e)
    assert (c["quic_too_big"], c["quic_sealed"]) == (1, 0)
    assert p.e.peer_stats[p.pid].tolist()[2] == before
    assert p.e.peer_stats[plain_pid].tolist()[2] == 1
    assert p.e.quic_next_pn(p.pid) == 10    # no packet number spent
    # The largest that fits is exactly max_packet on the wire, and still arrives.
    p.e.send_datagram([plain_pid, p.pid, plain_pid], b"S" * limit)
    got = recv_all(p.sock, 1)
    assert len(got[0]) == 1200
    assert p.open(got[0], 10) == b"\x30\x40\x05" + b"S" * limit
    assert len(recv_all(other, 2)) == 2
    assert recv_all(p.sock, 1, timeout=0.05) == []
    assert counters(p.e)["quic_sealed"] == 1


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def test_remove_peer_frees_quic_state() -> None:
    p = Plain()
    sock = udp()

    def cycle() -> None:
        pid = p.peer(sock)
        p.quic(pid=pid)
        p.e.send_datagram([pid], b"x")
        p.e.remove_peer(pid)
        assert len(recv_all(sock, 1)) == 1

    for _ in range(200):
        cycle()
    start = rss_kib()
    for _ in range(1000):
        cycle()
    # Two EVP contexts (~1 KiB) a cycle would leak over a megabyte.
    assert rss_kib() - start < 512
    assert p.e.live()["peers"] == 1
    assert counters(p.e)["quic_sealed"] == 1200
    # Re-keying replaces the state (the old one is freed); dealloc frees the rest.
    p.quic()
    p.quic(key_phase=1)
    p.e.send_datagram([p.pid], b"k1")
    got = recv_all(p.sock, 1)[0]
    assert got[0] & 0x80 == 0
    phase1 = reference(CipherSuite.AES_128_GCM_SHA256, p.secret, key_phase=1)
    assert phase1.decrypt_packet(got, 9, 10)[1] == b"\x30\x40\x05k1"


# ---- 2. end to end with a real aioquic client ----------------------------------------------

def certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    c = self_signed(("localhost",))  # the node's own certificate maker
    return c.certificate, c.private_key


def config(is_client: bool,
           suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256) -> QuicConfiguration:
    cfg = QuicConfiguration(is_client=is_client, alpn_protocols=["roq"],
                            max_datagram_frame_size=65536, cipher_suites=[suite])
    if is_client:
        cfg.verify_mode = ssl.CERT_NONE
        cfg.server_name = "localhost"
    else:
        cfg.certificate, cfg.private_key = certificate()
    return cfg


class QuicPair:
    """An aioquic client and server on two loopback sockets, driven sans-I/O. The server's
    sends can be wrapped (around) to share the packet number space with an engine."""

    def __init__(self, suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256) -> None:
        self.suite = suite
        self.ssock, self.csock = udp(), udp()
        self.saddr, self.caddr = self.ssock.getsockname(), self.csock.getsockname()
        self.client = QuicConnection(configuration=config(True, suite))
        self.server: QuicConnection | None = None
        self.cevents: list[qev.QuicEvent] = []
        # Sees each datagram the server is about to receive (the ACK-filter tests capture).
        self.on_server_datagram: Callable[[bytes], None] | None = None
        self.around: tuple[Callable[[QuicConnection], None],
                           Callable[[QuicConnection], None]] | None = None
        self.client.connect(self.saddr, now=time.monotonic())

    def _send(self, now: float) -> None:
        for data, addr in self.client.datagrams_to_send(now):
            self.csock.sendto(data, addr)
        if self.server is not None:
            if self.around:
                self.around[0](self.server)
            for data, addr in self.server.datagrams_to_send(now):
                self.ssock.sendto(data, addr)
            if self.around:
                self.around[1](self.server)

    def _receive(self, sock: socket.socket, now: float) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if sock is self.csock:
                self.client.receive_datagram(data, addr, now)
                continue
            if self.server is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                self.server = QuicConnection(
                    configuration=config(False, self.suite),
                    original_destination_connection_id=header.destination_cid)
            if self.on_server_datagram is not None:
                self.on_server_datagram(data)
            self.server.receive_datagram(data, addr, now)

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            for conn in (self.client, self.server):
                timer = conn.get_timer() if conn else None
                if conn and timer is not None and timer <= now:
                    conn.handle_timer(now)
            self._send(now)
            while (ev := self.client.next_event()) is not None:
                self.cevents.append(ev)
            if self.server:
                while self.server.next_event() is not None:
                    pass
            if until():
                return
            assert now < deadline, f"timed out; client events {self.cevents[-5:]}"
            ready, _, _ = select.select([self.ssock, self.csock], [], [], 0.01)
            for sock in ready:
                self._receive(sock, time.monotonic())

    def settle(self, quiet: float = 0.2) -> None:
        """Let in-flight packets and delayed ACKs land."""
        end = time.monotonic() + quiet
        self.pump(lambda: time.monotonic() > end)

    def of(self, kind: type) -> list:
        return [ev for ev in self.cevents if isinstance(ev, kind)]

    def alive(self) -> bool:
        return not self.of(qev.ConnectionTerminated)


def test_end_to_end_aioquic_client() -> None:
    q = QuicPair()
    q.pump(lambda: bool(q.of(qev.HandshakeCompleted)) and q.server is not None
           and q.server._handshake_confirmed)
    server = q.server
    assert server is not None
    crypto = server._cryptos[Epoch.ONE_RTT].send
    assert crypto.cipher_suite == CipherSuite.AES_128_GCM_SHA256

    e = n.Engine(max_peers=8, max_sources=8, max_downtracks=8, pool_slots=256, batch=16,
                 stun_rate=0)
    tid = e.add_udp(q.ssock.fileno())      # the engine sends from the QUIC server's socket
    pid = e.add_peer(tid)
    e.bind_peer(pid, *q.caddr)
    prefix = b"\x04"                        # RoQ flow id 4

    first_hp: list[bytes] = []

    def rekey() -> None:
        c = server._cryptos[Epoch.ONE_RTT].send
        key, iv, hp = derive_key_iv_hp(cipher_suite=c.cipher_suite, secret=c.secret,
                                       version=c.version)
        # A key update changes key and iv only: the header protection key stays the
        # first one (RFC 9001 section 6).
        first_hp.append(hp)
        hp = first_hp[0]
        e.set_peer_quic(pid, key=key, iv=iv, hp=hp, dcid=server._peer_cid.cid, prefix=prefix,
                        next_pn=server._packet_number, key_phase=c.key_phase)

    def before(conn: QuicConnection) -> None:   # aioquic continues after the engine's PNs
        conn._packet_number = e.quic_next_pn(pid)

    def after(conn: QuicConnection) -> None:
        e.set_quic_next_pn(pid, conn._packet_number)

    rekey()
    q.around = (before, after)

    def datagrams() -> list[bytes]:
        return [ev.data for ev in q.of(qev.DatagramFrameReceived)]

    # Raw datagrams (send_datagram), in order.
    payloads = [bytes([i]) * (1 + 37 * i) for i in range(20)]
    for data in payloads:
        assert e.send_datagram([pid], data) == 1
    q.pump(lambda: len(datagrams()) >= 20)
    assert datagrams() == [prefix + d for d in payloads]

    # RTP fan-out: a publisher's packets forwarded to the QUIC viewer, rewritten.
    pub = udp()
    pp = e.add_peer(tid)
    e.bind_peer(pp, *pub.getsockname())
    sid = e.add_source(pp, n.KIND_AUDIO, 48000)
    e.add_ingress(sid, 1111, 111)
    e.add_downtrack(sid, pid, 2222, 100)
    now = time.monotonic()
    for i in range(10):
        pkt = n.build_rtp(111, 500 + i, 960 * i, 1111, b"opus" * (i + 1))
        e.ingest(tid, pkt, *pub.getsockname(), now)
    q.pump(lambda: len(datagrams()) >= 30)
    rtp = [n.parse_rtp(d[1:]) for d in datagrams()[20:30]]
    assert all(d[:1] == prefix for d in datagrams()[20:30])
    assert [(r["ssrc"], r["payload_type"]) for r in rtp] == [(2222, 100)] * 10
    seqs = [r["sequence_number"] for r in rtp]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(10)]
    # RTCP from the node (a sender report) takes the same path.
    e.on_tick(now + 2.0)
    q.pump(lambda: any(p["type"] == "sr" for d in datagrams()[30:]
                       for p in n.parse_rtcp(d[1:])))
    mark = len(datagrams())

    # aioquic sends on the same connection after the engine: a stream frame and a ping.
    sealed = counters(e)["quic_sealed"]
    assert sealed >= 31
    server.send_stream_data(3, b"control", end_stream=False)
    q.client.send_ping(7)
    q.pump(lambda: any(ev.data == b"control" for ev in q.of(qev.StreamDataReceived))
           and bool(q.of(qev.PingAcknowledged)))
    assert e.quic_next_pn(pid) > sealed     # aioquic's packets were numbered after ours

    # Too big: counted, not sent, and the next datagram still arrives.
    limit = e.quic_max_payload(pid)
    assert limit == 1200 - (1 + len(server._peer_cid.cid) + 4 + 1 + len(prefix) + 16)
    e.send_datagram([pid], b"T" * (limit + 1))
    e.send_datagram([pid], b"L" * limit)
    q.pump(lambda: len(datagrams()) > mark)
    assert counters(e)["quic_too_big"] == 1
    assert datagrams()[mark:] == [prefix + b"L" * limit]

    # Key update (RFC 9001 section 6): aioquic moves to key phase 1, the engine follows.
    # (aioquic takes any packet of the other phase as a peer's update, so nothing may be in
    # flight when it starts.)
    q.settle()
    server.request_key_update()
    server.send_ping(8)
    q.pump(lambda: q.client._cryptos[Epoch.ONE_RTT].recv.key_phase == 1)
    q.settle()
    assert server._cryptos[Epoch.ONE_RTT].send.key_phase == 1
    rekey()
    e.send_datagram([pid], b"after key update")
    q.pump(lambda: len(datagrams()) > mark + 1)
    assert datagrams()[mark + 1:] == [prefix + b"after key update"]
    assert counters(e)["quic_seal_errors"] == 0
    q.settle()
    assert q.alive()

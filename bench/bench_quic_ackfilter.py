"""Micro-benchmark of the native QUIC ACK-only filter (issue 6, RTP over QUIC).

Run: .venv/bin/python bench/bench_quic_ackfilter.py [--count N]

Prints ns per QuicAckFilter.ack_only call (Python loop included) on a typical 45-byte
ACK-only 1-RTT packet from a viewer, the cost it adds to a packet it hands on (-1: a
STREAM packet of the same size), and aioquic's QuicConnection.receive_datagram on the same
ACK-only packets (a real connection after an in-memory handshake), measured in the same run.
Read the ratios, not the absolute figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aioquic.buffer import encode_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext, derive_key_iv_hp
from aioquic.tls import CipherSuite, Epoch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from sfu import _native as n  # noqa: E402
from sfu.transports.cert import self_signed  # noqa: E402

PACKET = 45
CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 4433)


def certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    c = self_signed(("localhost",))  # the node's own certificate maker
    return c.certificate, c.private_key


def connected(suite: CipherSuite) -> tuple[QuicConnection, QuicConnection]:
    """A client and server after a handshake exchanged in memory (no sockets)."""
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=["roq"], cipher_suites=[suite],
                             verify_mode=0, server_name="localhost")
    scfg = QuicConfiguration(is_client=False, alpn_protocols=["roq"], cipher_suites=[suite])
    scfg.certificate, scfg.private_key = certificate()
    client = QuicConnection(configuration=ccfg)
    now = time.monotonic()
    client.connect(SERVER, now=now)
    server: QuicConnection | None = None
    for _ in range(20):
        for data, _ in client.datagrams_to_send(now):
            if server is None:
                server = QuicConnection(configuration=scfg,
                                        original_destination_connection_id=client._peer_cid.cid)
            server.receive_datagram(data, CLIENT, now)
        if server is not None:
            for data, _ in server.datagrams_to_send(now):
                client.receive_datagram(data, SERVER, now)
            if server._handshake_confirmed:
                return client, server
    raise RuntimeError("handshake did not complete")


def viewer_packets(client: QuicConnection, server: QuicConnection, count: int,
                   frame: int) -> tuple[list[bytes], int]:
    """count 45-byte 1-RTT packets as the client would send them (2-byte packet numbers,
    its send keys): ACK frames with ECN counts (Chromium's shape), or STREAM frames."""
    send = client._cryptos[Epoch.ONE_RTT].send
    ctx = CryptoContext()
    ctx.setup(cipher_suite=send.cipher_suite, secret=send.secret, version=send.version)
    dcid = client._peer_cid.cid
    first = client._packet_number
    largest = max(server._packet_number - 1, 0)
    packets = []
    for i in range(count):
        pn = first + i
        if frame == 0x03:
            body = (b"\x03" + encode_uint_var(largest) + encode_uint_var(25) + b"\x01"
                    + encode_uint_var(0) + b"\x00\x00" + encode_uint_var(i) + b"\x00\x00")
        else:
            body = b"\x0a\x00" + encode_uint_var(12)
        header = b"\x41" + dcid + (pn & 0xFFFF).to_bytes(2, "big")
        body += b"\x00" * (PACKET - len(header) - 16 - len(body))    # PADDING to 45 bytes
        packets.append(ctx.encrypt_packet(header, body, pn))
    assert all(len(p) == PACKET for p in packets)
    return packets, first


def best_ns(run: object, count: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        run()  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / count)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20_000, help="packets per timed run")
    args = ap.parse_args()
    count = args.count
    for suite in (CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384):
        client, server = connected(suite)
        recv = server._cryptos[Epoch.ONE_RTT].recv
        key, iv, hp = derive_key_iv_hp(cipher_suite=recv.cipher_suite, secret=recv.secret,
                                       version=recv.version)
        f = n.QuicAckFilter(key, iv, hp, len(server.host_cid))
        acks, first = viewer_packets(client, server, count, 0x03)
        streams, _ = viewer_packets(client, server, count, 0x0A)
        pairs = [(p, first + i) for i, p in enumerate(acks)]
        assert all(f.ack_only(p, e) == e for p, e in pairs)
        spairs = [(p, first + i) for i, p in enumerate(streams)]
        assert all(f.ack_only(p, e) == -1 for p, e in spairs)

        def loop(items: list[tuple[bytes, int]] = pairs) -> None:
            for p, _e in items:
                len(p)

        def accept(items: list[tuple[bytes, int]] = pairs, f: n.QuicAckFilter = f) -> None:
            for p, e in items:
                f.ack_only(p, e)

        def reject(items: list[tuple[bytes, int]] = spairs, f: n.QuicAckFilter = f) -> None:
            for p, e in items:
                f.ack_only(p, e)

        base = best_ns(loop, count)
        native = best_ns(accept, count)
        hand_on = best_ns(reject, count)
        # aioquic on the same packets: each one once (a second pass would be duplicates).
        now = time.monotonic()
        t0 = time.perf_counter_ns()
        for p in acks:
            server.receive_datagram(p, CLIENT, now)
        ref = (time.perf_counter_ns() - t0) / count
        space = server._spaces[Epoch.ONE_RTT]
        assert space.expected_packet_number == first + count, "aioquic dropped packets"
        print(f"{suite.name:20s} {PACKET}-byte ACK-only: ack_only {native:5.0f} ns "
              f"(python loop {base:3.0f} ns)   non-ACK hand-on {hand_on:5.0f} ns   "
              f"aioquic receive_datagram {ref:7.0f} ns ({ref / native:5.1f}x)")


if __name__ == "__main__":
    main()

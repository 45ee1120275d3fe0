"""Micro-benchmark of the native QUIC 1-RTT sealing (issue 6, RTP over QUIC).

Run: .venv/bin/python bench/bench_quic_seal.py [--count N]

Prints ns per sealed 1200-byte packet (AES-128-GCM and AES-256-GCM, header protection
included) next to a plain memcpy of the same bytes measured in the same run (the floor any
forwarding pays), aioquic's own packet protection, and the engine's fan-out of one datagram
to 64 viewers with and without QUIC (send_datagram: batch, seal, sendmmsg on loopback).
Read the ratios, not the absolute figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from aioquic.quic.crypto import CryptoContext, derive_key_iv_hp
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite

from sfu import _native as n

PACKET = 1200
DCID = bytes(8)
PAYLOAD = os.urandom(PACKET - (1 + len(DCID) + 4 + 16))     # frames: the packet is 1200 B
V1 = QuicProtocolVersion.VERSION_1
SECRET_LEN = {CipherSuite.AES_128_GCM_SHA256: 32, CipherSuite.AES_256_GCM_SHA384: 48}


def best_ns(run: object, count: int, repeat: int = 5) -> float:
    """Best of `repeat` runs of run(count), in ns per item."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        run(count)  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / count)
    return best


def seal_numbers(count: int) -> None:
    for suite, secret_len in SECRET_LEN.items():
        secret = os.urandom(secret_len)
        key, iv, hp = derive_key_iv_hp(cipher_suite=suite, secret=secret, version=V1)
        sealer = n.QuicSealer(key, iv, hp, DCID)
        assert len(sealer.seal(0, PAYLOAD)) == PACKET
        memcpy = best_ns(lambda c, s=sealer: s.copy_many(PAYLOAD, c), count)
        seal = best_ns(lambda c, s=sealer: s.seal_many(1, PAYLOAD, c), count)
        ctx = CryptoContext()
        ctx.setup(cipher_suite=suite, secret=secret, version=V1)
        header = b"\x43" + DCID + bytes(4)

        def aioquic(c: int, ctx: CryptoContext = ctx, header: bytes = header) -> None:
            for pn in range(c):
                ctx.encrypt_packet(header, PAYLOAD, pn)

        ref = best_ns(aioquic, max(count // 20, 100))
        print(f"{suite.name:20s} seal {seal:8.0f} ns/pkt   memcpy {memcpy:6.0f} ns/pkt "
              f"({seal / memcpy:5.1f}x)   aioquic {ref:8.0f} ns/pkt ({ref / seal:4.1f}x slower)")


def fanout_numbers(count: int, viewers: int = 64) -> None:
    e = n.Engine(max_peers=viewers + 1, max_sources=4, max_downtracks=4, pool_slots=256,
                 batch=16, stun_rate=0)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)     # overflow: dropped
    tid = e.add_udp(srv.fileno())
    pids = []
    for i in range(viewers):
        pid = e.add_peer(tid)
        e.bind_peer(pid, "127.0.0.1", 20000 + i)   # nothing listens: the kernel discards
        pids.append(pid)
    data = PAYLOAD[:PACKET - (1 + len(DCID) + 4 + 1 + 1 + 16)]

    def run(c: int) -> None:
        for _ in range(c):
            e.send_datagram(pids, data)

    rounds = max(count // viewers // 4, 50)
    plain = best_ns(run, rounds) / viewers
    key, iv, hp = os.urandom(16), os.urandom(12), os.urandom(16)
    for pid in pids:
        e.set_peer_quic(pid, key=key, iv=iv, hp=hp, dcid=DCID, prefix=b"\x04", next_pn=0)
    quic = best_ns(run, rounds) / viewers
    print(f"engine fan-out to {viewers} viewers: plain UDP {plain:6.0f} ns/copy, "
          f"QUIC sealed {quic:6.0f} ns/copy (+{quic - plain:.0f} ns), "
          f"sealed={int(e.counters[n.COUNTER_NAMES.index('quic_sealed')])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000, help="packets per timed run")
    args = ap.parse_args()
    seal_numbers(args.count)
    fanout_numbers(args.count)


if __name__ == "__main__":
    main()

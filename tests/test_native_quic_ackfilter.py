"""Native QUIC ACK-only packet filter (issue 6): QuicAckFilter recognises a viewer's
authenticated ACK-only 1-RTT packets so the node can drop them without aioquic's receive
path. Checked against the datagrams of a real aioquic client over loopback (with aioquic's
own decryption and frame parsers as the oracle), crafted packets and random input."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.quic import events as qev
from aioquic.quic.crypto import CryptoContext
from aioquic.quic.packet import (
    decode_packet_number,
    pull_ack_frame,
)
from aioquic.tls import CipherSuite, Epoch
from test_native_quic_seal import SUITES, QuicPair, keys, reference

from sfu import _native as n

ACK, ACK_ECN, PADDING, PING, STREAM, DATAGRAM = 0x02, 0x03, 0x00, 0x01, 0x08, 0x30


def frame_types(payload: bytes) -> list[int]:
    """Frame types of a decrypted payload, parsed by aioquic up to the first frame that is
    not ACK / PADDING (whose body this does not parse)."""
    buf = Buffer(data=payload)
    types = []
    while not buf.eof():
        t = buf.pull_uint_var()
        types.append(t)
        if t in (ACK, ACK_ECN):
            pull_ack_frame(buf)
            if t == ACK_ECN:
                for _ in range(3):
                    buf.pull_uint_var()
        elif t != PADDING:
            break
    return types


def is_ack_only(types: list[int]) -> bool:
    return (ACK in types or ACK_ECN in types) and set(types) <= {ACK, ACK_ECN, PADDING}


# ---- a real aioquic client and server on loopback; the client's datagrams captured --------

@dataclass
class Captured:
    data: bytes
    expected_pn: int        # the server's ONE_RTT expected_packet_number before receiving it


class Pair(QuicPair):
    """The seal tests' client/server pair; the server records every datagram it receives
    with the packet number it expected at that point."""

    def __init__(self, suite: CipherSuite) -> None:
        super().__init__(suite)
        self.captured: list[Captured] = []
        self.on_server_datagram = self._capture

    def _capture(self, data: bytes) -> None:
        assert self.server is not None
        space = self.server._spaces.get(Epoch.ONE_RTT)
        self.captured.append(Captured(data, space.expected_packet_number if space else 0))

    def received(self) -> int:
        return sum(len(ev.data) for ev in self.cevents if isinstance(ev, qev.StreamDataReceived))

    def recv_secret(self) -> bytes:
        assert self.server is not None
        crypto = self.server._cryptos[Epoch.ONE_RTT].recv
        assert crypto.cipher_suite == self.suite
        return crypto.secret

    def server_sends(self, rounds: int) -> None:
        """Stream data from the server, one packet a round: the client answers with ACKs."""
        assert self.server is not None
        for _ in range(rounds):
            want, sent = self.received() + 100, len(self.captured)
            self.server.send_stream_data(3, os.urandom(100))
            # The client's (delayed) ACK of it arrived: one ACK-only packet a round.
            self.pump(lambda want=want, sent=sent: self.received() >= want
                      and len(self.captured) > sent)
        self.settle()

    def client_sends(self, send: Callable[[], None]) -> None:
        """One client action, its packet on its own datagram."""
        sent = len(self.captured)
        send()
        self.pump(lambda: len(self.captured) > sent)
        self.settle()


@pytest.mark.parametrize("suite", list(SUITES))
def test_real_client_packets(suite: CipherSuite) -> None:
    q = Pair(suite)
    q.pump(lambda: q.server is not None and q.server._handshake_confirmed
           and any(isinstance(ev, qev.HandshakeCompleted) for ev in q.cevents))
    server = q.server
    assert server is not None
    dcid_len = len(server.host_cid)
    assert dcid_len == 8
    secret0 = q.recv_secret()
    q.server_sends(15)
    # The client's own ack-eliciting frames, each in its own packets.
    q.client_sends(lambda: q.client.send_stream_data(0, b"hello", end_stream=False))
    q.client_sends(lambda: q.client.send_ping(1))
    q.client_sends(lambda: q.client.send_datagram_frame(b"\x04rtp"))
    q.server_sends(5)
    # Key update by the client (RFC 9001 section 6): its packets move to key phase 1.
    q.client.request_key_update()
    q.client.send_ping(2)
    q.pump(lambda: server._cryptos[Epoch.ONE_RTT].recv.key_phase == 1)
    q.server_sends(10)
    secret1 = q.recv_secret()
    assert secret1 != secret0

    f0 = n.QuicAckFilter(*keys(suite, secret0), dcid_len)
    # A key update changes key and iv only: header protection keeps the first hp key.
    hp0 = keys(suite, secret0)[2]
    f1 = n.QuicAckFilter(*keys(suite, secret1)[:2], hp0, dcid_len, key_phase=1)
    assert n.QuicAckFilter(*keys(suite, secret1), dcid_len, key_phase=1).ack_only(
        q.captured[-1].data, q.captured[-1].expected_pn) == -1
    assert (f0.key_phase, f1.key_phase) == (0, 1)
    ref = reference(suite, secret0)
    seen: dict[str, int] = {"long": 0, "ack0": 0, "ack1": 0, "other": 0}
    kinds: set[int] = set()
    ack_packets: list[Captured] = []
    for c in q.captured:
        got0, got1 = f0.ack_only(c.data, c.expected_pn), f1.ack_only(c.data, c.expected_pn)
        if c.data[0] & 0x80:            # handshake: Initial / Handshake (maybe coalesced)
            seen["long"] += 1
            assert got0 == got1 == -1
            continue
        # aioquic's decryption and frame parsing are the oracle.
        _, payload, pn, other_phase = ref.decrypt_packet(c.data, 1 + dcid_len, c.expected_pn)
        assert pn == decode_packet_number(pn & 0xFFFF, 16, c.expected_pn)
        types = frame_types(payload)
        if is_ack_only(types):
            seen["ack1" if other_phase else "ack0"] += 1
            assert (got0, got1) == ((-1, pn) if other_phase else (pn, -1))
            ack_packets.append(c)
        else:
            seen["other"] += 1
            kinds.update(types)
            assert got0 == got1 == -1, types
    assert seen["long"] >= 2 and seen["ack0"] >= 10 and seen["ack1"] >= 5, seen
    # STREAM 0x08..0x0f and DATAGRAM 0x30/0x31 by their base type.
    assert {STREAM, PING, DATAGRAM} <= {t & ~0x07 if 0x08 <= t <= 0x0F else t & ~0x01
                                        if t in (0x30, 0x31) else t for t in kinds}

    # Damaged copies of real ACK-only packets: every flipped bit position, every truncation.
    for c in ack_packets[:8]:
        f = f1 if f1.ack_only(c.data, c.expected_pn) >= 0 else f0
        assert f.ack_only(c.data, c.expected_pn) >= 0
        for pos in range(len(c.data)):
            for bit in (0x01, 0x04, 0x20, 0x80):
                bad = bytearray(c.data)
                bad[pos] ^= bit
                assert f.ack_only(bytes(bad), c.expected_pn) == -1, (pos, bit)
        for length in range(len(c.data)):
            assert f.ack_only(c.data[:length], c.expected_pn) == -1
        assert f.ack_only(c.data + b"\x00", c.expected_pn) == -1     # trailing byte
        assert f.ack_only(c.data + c.data, c.expected_pn) == -1      # two packets
        # Another connection's keys (and the wrong DCID length) do not authenticate it.
        other = n.QuicAckFilter(*keys(suite, os.urandom(SUITES[suite])), dcid_len)
        assert other.ack_only(c.data, c.expected_pn) == -1
        assert n.QuicAckFilter(*keys(suite, secret0), dcid_len - 1).ack_only(
            c.data, c.expected_pn) == -1
    q.settle()
    assert not any(isinstance(ev, qev.ConnectionTerminated) for ev in q.cevents)


# ---- crafted packets: packet number lengths, frames, key phase -----------------------------

def seal(ctx: CryptoContext, dcid: bytes, pn: int, pn_len: int, payload: bytes,
         key_phase: int = 0, first: int = 0x40) -> bytes:
    header = bytes([first | key_phase << 2 | (pn_len - 1)]) + dcid
    header += (pn & ((1 << 8 * pn_len) - 1)).to_bytes(pn_len, "big")
    return ctx.encrypt_packet(header, payload, pn)


def ack_frame(largest: int, first: int, ranges: list[tuple[int, int]] = (), ecn: bool = False,
              delay: int = 3) -> bytes:
    out = bytes([ACK_ECN if ecn else ACK]) + encode_uint_var(largest) + encode_uint_var(delay)
    out += encode_uint_var(len(ranges)) + encode_uint_var(first)
    for gap, length in ranges:
        out += encode_uint_var(gap) + encode_uint_var(length)
    if ecn:
        out += encode_uint_var(1) + encode_uint_var(0) + encode_uint_var(2**30)
    return out


@pytest.mark.parametrize("suite", list(SUITES))
def test_crafted_packets(suite: CipherSuite) -> None:
    secret = os.urandom(SUITES[suite])
    dcid = os.urandom(8)
    ctx = reference(suite, secret)
    f = n.QuicAckFilter(*keys(suite, secret), len(dcid))
    good = [
        ack_frame(10, 3),
        ack_frame(10, 3) + b"\x00" * 30,
        b"\x00" * 5 + ack_frame(2**40, 2**40),                  # acknowledges down to 0
        ack_frame(1000, 5, [(0, 0), (10, 20), (900, 59)]),      # last range ends at 0
        ack_frame(500, 1, [(1, 1)] * 100, ecn=True),
        ack_frame(2**62 - 1, 0, delay=2**62 - 1, ecn=True),
        ack_frame(600, 0, [(0, 0)] * 256),                      # the range limit
        ack_frame(7, 0) + ack_frame(9, 1, ecn=True),            # two ACK frames
    ]
    bad = [
        b"\x00" * 20,                                           # PADDING only
        b"\x01",                                                # PING
        ack_frame(10, 3) + b"\x01",                             # ACK + PING
        b"\x01" + ack_frame(10, 3),
        ack_frame(10, 3) + b"\x08\x00\x01x",                    # ACK + STREAM
        ack_frame(10, 3) + b"\x30rtp",                          # ACK + DATAGRAM
        ack_frame(10, 3) + b"\x1e",                             # ACK + HANDSHAKE_DONE
        b"\x40\x02" + ack_frame(10, 3)[1:],                     # non-minimal frame type
        ack_frame(10, 11),                                      # first range below 0
        ack_frame(1000, 5, [(10, 20), (900, 62)]),              # a range below 0
        ack_frame(10, 3, [(6, 0)]),                             # gap below 0
        ack_frame(600, 0, [(0, 0)] * 257),                      # too many ranges
        ack_frame(10, 3, [(1, 1)])[:-1],                        # truncated range
        ack_frame(10, 3, ecn=True)[:-4],                        # truncated ECN counts
        bytes([ACK]) + b"\xc0",                                 # truncated varint
        b"",                                                    # no frames at all
    ]
    for pn_len in (1, 2, 3, 4):
        for pn, expected in [(0, 0), (1, 0), (200, 180), (70000, 69990), (2**32 + 5, 2**32),
                             (2**40, 2**40 + 100), (2**62 - 1, 2**62 - 1)]:
            # aioquic decodes the truncated number to pn (the window allows it) or not.
            window = 1 << 8 * pn_len
            decoded = decode_packet_number(pn % window, 8 * pn_len, expected)
            for payload in good:
                packet = seal(ctx, dcid, pn, pn_len, payload)
                assert f.ack_only(packet, expected) == (pn if decoded == pn else -1)
                if decoded == pn:
                    assert ctx.decrypt_packet(packet, 9, expected)[2] == pn
            for payload in bad:
                if len(payload) + pn_len < 4:
                    payload += b"\x00" * (4 - pn_len - len(payload))    # room for the sample
                assert f.ack_only(seal(ctx, dcid, pn, pn_len, payload), expected) == -1, payload
    # Wrong key phase, reserved bits, spin bit.
    ack = ack_frame(10, 3)
    one = reference(suite, secret, key_phase=1)
    f_one = n.QuicAckFilter(*keys(suite, secret), 8, key_phase=1)
    assert f.ack_only(seal(one, dcid, 5, 2, ack, key_phase=1), 5) == -1
    assert f_one.ack_only(seal(one, dcid, 5, 2, ack, key_phase=1), 5) == 5
    assert f_one.ack_only(seal(ctx, dcid, 5, 2, ack), 5) == -1
    assert f.ack_only(seal(ctx, dcid, 5, 2, ack, first=0x48), 5) == -1     # reserved bit
    assert f.ack_only(seal(ctx, dcid, 5, 2, ack, first=0x50), 5) == -1
    assert f.ack_only(seal(ctx, dcid, 5, 2, ack, first=0x60), 5) == 5      # spin bit: fine
    # The engine's own sealing (4-byte packet numbers) opens too; a long header does not.
    sealer = n.QuicSealer(*keys(suite, secret), dcid)
    assert f.ack_only(sealer.seal(12345, ack), 12340) == 12345
    long_header = bytearray(sealer.seal(7, ack))
    long_header[0] |= 0x80
    assert f.ack_only(bytes(long_header), 7) == -1
    no_fixed = bytearray(sealer.seal(7, ack))
    no_fixed[0] &= ~0x40
    assert f.ack_only(bytes(no_fixed), 7) == -1
    # Bigger than the filter's 1500-byte stack buffer: left to aioquic.
    assert f.ack_only(seal(ctx, dcid, 5, 2, ack + bytes(1500 - 11 - 16 - len(ack))), 5) == 5
    assert f.ack_only(seal(ctx, dcid, 5, 2, ack + bytes(1501 - 11 - 16 - len(ack))), 5) == -1
    # Zero-length connection ids work too.
    f_empty = n.QuicAckFilter(*keys(suite, secret), 0)
    assert f_empty.ack_only(seal(ctx, b"", 9, 1, ack), 9) == 9


def test_bad_arguments() -> None:
    k16, k32, iv = bytes(16), bytes(32), bytes(12)
    for args in [(bytes(24), iv, bytes(24), 8), (k16, bytes(11), k16, 8), (k16, iv, k32, 8),
                 (k32, iv, k16, 8), (k16, iv, k16, 21), (k16, iv, k16, -1)]:
        with pytest.raises(ValueError):
            n.QuicAckFilter(*args)
    with pytest.raises(ValueError):
        n.QuicAckFilter(k16, iv, k16, 8, key_phase=2)
    f = n.QuicAckFilter(k16, iv, k16, 8)
    for expected in (-1, 2**62 + 1):
        with pytest.raises(ValueError):
            f.ack_only(b"\x40" * 50, expected)
    with pytest.raises(TypeError):
        f.ack_only(bytearray(50), 0)    # type: ignore[arg-type]


# ---- random input -------------------------------------------------------------------------

def reference_ack_only(payload: bytes) -> bool:
    """The filter's frame rules in Python: one-byte types 0x00/0x02/0x03 only, at least one
    ACK, ranges never below 0, at most 256 ranges, nothing truncated."""
    buf = Buffer(data=payload)
    acks = 0
    try:
        while not buf.eof():
            t = buf.pull_uint8()
            if t == PADDING:
                continue
            if t not in (ACK, ACK_ECN):
                return False
            largest, _, count, first = (buf.pull_uint_var() for _ in range(4))
            if count > 256 or first > largest:
                return False
            smallest = largest - first
            for _ in range(count):
                gap, length = buf.pull_uint_var(), buf.pull_uint_var()
                smallest -= gap + 2 + length
                if smallest < 0:
                    return False
            if t == ACK_ECN:
                for _ in range(3):
                    buf.pull_uint_var()
            acks += 1
    except BufferReadError:
        return False
    return acks > 0


def random_frames(rng: random.Random) -> bytes:
    """Mostly ACK-shaped payloads with random damage: valid, truncated, extended, mixed."""
    out = b""
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.6:
            largest = rng.choice([rng.randint(0, 100), rng.randint(0, 2**62 - 1)])
            ranges = [(rng.randint(0, 20), rng.randint(0, 20)) for _ in range(rng.randint(0, 5))]
            out += ack_frame(largest, rng.randint(0, min(largest, 30) + 2), ranges,
                             ecn=rng.random() < 0.3)
        elif kind < 0.8:
            out += b"\x00" * rng.randint(1, 10)
        else:
            out += rng.randbytes(rng.randint(1, 12))
    if rng.random() < 0.3:
        out = out[:rng.randint(1, len(out))]
    return out


@pytest.mark.parametrize("suite", list(SUITES))
def test_random_input(suite: CipherSuite) -> None:
    rng = random.Random(6)
    secret = os.urandom(SUITES[suite])
    key, iv, hp = keys(suite, secret)
    f = n.QuicAckFilter(key, iv, hp, 8)
    # Garbage, half of it shaped like a short header: never authentic, never a crash.
    for i in range(10_000):
        data = bytearray(rng.randbytes(rng.choice([rng.randint(0, 64), rng.randint(0, 1600)])))
        if data and i % 2:
            data[0] = 0x40 | data[0] & 0x3F
        assert f.ack_only(bytes(data), rng.randint(0, 2**62)) == -1
    # Authentic packets with random frames: the filter agrees with the Python rules, and
    # whatever it accepts aioquic parses as ACK / PADDING only.
    sealer = n.QuicSealer(key, iv, hp, os.urandom(8))
    accepted = 0
    for pn in range(3_000):
        payload = random_frames(rng)
        if len(payload) < 4:
            payload += b"\x00" * (4 - len(payload))
        want = reference_ack_only(payload)
        assert f.ack_only(sealer.seal(pn, payload), pn) == (pn if want else -1), payload
        if want:
            accepted += 1
            assert is_ack_only(frame_types(payload))
    assert 500 < accepted < 2_900

"""Seeded mutation fuzzing of the native parsers and of the engine's ingress.

Parsers (parse_rtp, rtp_extension, parse_rtcp) may only raise ValueError. The engine,
fed the same kind of garbage from bound and unbound loopback addresses (both through
``ingest`` and through a real socket + ``on_readable``), must never raise, and its
counters must put every datagram in exactly the bucket the oracle predicts:
rx_datagrams == rx_rtp + rx_rtcp + rx_stun + sum(ingress drop_* counters).
Inputs that ever crashed something live in tests/vectors/crashers/ and run first.
"""

import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from oracle import load_crashers, load_vectors
from oracle import rtcp as rtcp_ref
from oracle import rtp as rtp_ref

from sfu import _native

CASES = 10_000
INTERESTING = (0x00, 0x01, 0x0F, 0x10, 0x1F, 0x20, 0x3F, 0x7F, 0x80, 0x8F, 0xA0, 0xBE, 0xC8,
               0xCD, 0xCE, 0xDE, 0xFE, 0xFF)


def seed_corpus(rng: random.Random) -> list[bytes]:
    seeds = [v.data for v in load_vectors("rtp.hex") + load_vectors("rtcp.hex")]
    seeds += [rtp_ref.build(**rtp_ref.random_args(rng)) for _ in range(40)]
    seeds += [rtcp_ref.build_twcc(1, 2, rng.getrandbits(16), 5, 1,
                                  [rng.choice((None, 3, 300)) for _ in range(rng.randint(1, 60))],
                                  rng.choice(("auto", "run", "vec1", "vec2")))
              for _ in range(20)]
    return [s for s in seeds if s]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One mutated input: a few flips/sets/inserts/deletes/truncations/splices."""
    if rng.random() < 0.03:
        return rng.randbytes(rng.randint(0, 64))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 5)):
        op = rng.random()
        if not data:
            data += rng.randbytes(rng.randint(1, 8))
        elif op < 0.35:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op < 0.55:
            data[rng.randrange(len(data))] = rng.choice(INTERESTING)
        elif op < 0.65:
            # Length fields are 16-bit big-endian: hit them with extreme values.
            i = rng.randrange(len(data))
            data[i : i + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"\x00\x01", b"\x7f\xff"))
        elif op < 0.75:
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.choice((1, 2, 4)))
        elif op < 0.85:
            i = rng.randrange(len(data))
            del data[i : i + rng.choice((1, 2, 4))]
        elif op < 0.95:
            data = data[: rng.randrange(len(data) + 1)]
        else:
            data += rng.choice(seeds)  # compound / trailing junk
    return bytes(data)


def only_value_error(fn: Callable[[bytes], object], data: bytes) -> None:
    try:
        fn(data)
    except ValueError:
        pass
    except Exception as exc:  # noqa: BLE001 - anything else is the bug we hunt
        raise AssertionError(f"{type(exc).__name__}: {exc} on input {data.hex()}") from exc


PARSERS: dict[str, Callable[[bytes], object]] = {
    "parse_rtp": _native.parse_rtp,
    "rtp_extension": lambda d: [_native.rtp_extension(d, i) for i in (0, 1, 2, 5, 14, 15, 255)],
    "parse_rtcp": _native.parse_rtcp,
}


@pytest.mark.parametrize("name", list(PARSERS))
def test_crashers_stay_fixed(name: str):
    for _, data in load_crashers():
        only_value_error(PARSERS[name], data)


@pytest.mark.parametrize("name", list(PARSERS))
def test_parsers_raise_only_value_error(name: str):
    rng = random.Random(f"fuzz-{name}")
    seeds = seed_corpus(rng)
    fn = PARSERS[name]
    outcomes: Counter[bool] = Counter()
    for _ in range(CASES):
        data = mutate(rng, seeds)
        try:
            fn(data)
            outcomes[True] += 1
        except ValueError:
            outcomes[False] += 1
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"{type(exc).__name__}: {exc} on {data.hex()}") from exc
    # The mutator must reach both sides, or the fuzz proves little.
    assert outcomes[True] > CASES // 20 and outcomes[False] > CASES // 20, outcomes


# ------------------------------------------------------------------- engine

PT, SSRC, RTX_SSRC, OTHER_SSRC, UNKNOWN_SSRC, OUT_SSRC = 96, 0xA1, 0xA2, 0xB1, 0xC1, 0xD1
SLOT_SIZE = 2048  # native/consts.pxi: larger datagrams cannot be held
EVENT_DATA_SIZE = 1500  # native/consts.pxi: larger STUN datagrams cannot be queued
HANDLED = ("rx_rtp", "rx_rtcp", "rx_stun")
# Egress drops and lost notification events are not ingress outcomes; a STUN datagram
# too large to queue is drop_malformed, one that finds the queue full drop_event_queue
# (never here: the test drains events after every datagram).
EGRESS_DROPS = ("drop_send_eagain", "drop_send_error", "drop_event_overflow")


def ingress_drop_names() -> list[str]:
    return [n for n in _native.COUNTER_NAMES if n.startswith("drop_") and n not in EGRESS_DROPS]


class HistoryModel:
    """The engine's per-SSRC history ring (native/engine_recovery.pxi), enough of it to
    say which packets are duplicates: held entries by extended seq, window [lo, hi)."""

    CAP, AGE = 2048, 2.0  # video history: ring size and age (Engine defaults)

    def __init__(self) -> None:
        self.lo = self.hi = 0
        self.ring: dict[int, tuple[int, str, float]] = {}  # pos -> (ext, state, time)

    def ext_of(self, seq: int) -> int:
        top = self.hi - 1
        d = (seq - top) & 0xFFFF
        return top + (d - 0x10000 if d >= 0x8000 else d)

    def put(self, seq: int, now: float) -> str:
        """'new', 'dup' or 'old', as eng_hist_put decides."""
        if self.hi == 0:
            ext = (1 << 32) + seq
            self.lo, self.hi = ext - 64, ext  # room for the RTX of lost first packets
        else:
            ext = self.ext_of(seq)
        if ext >= self.hi:
            if ext - self.hi > self.CAP >> 1:
                for x in range(self.lo, self.hi):
                    got = self.ring.get(x % self.CAP)
                    if got is not None and got[0] == x:
                        del self.ring[x % self.CAP]
                self.lo = ext
            else:
                for x in range(self.hi, ext):
                    self.ring[x % self.CAP] = (x, "missing", now)
            self.hi = ext + 1
            self.lo = max(self.lo, self.hi - self.CAP)
            self.ring[ext % self.CAP] = (ext, "held", now)
            return "new"
        if ext < self.lo:
            return "old"
        got = self.ring.get(ext % self.CAP)
        if got is not None and got[0] == ext and got[1] == "held":
            return "dup"
        self.ring[ext % self.CAP] = (ext, "held", now)
        return "new"

    def expire(self, now: float) -> None:
        while self.lo < self.hi:
            got = self.ring.get(self.lo % self.CAP)
            if got is not None and got[0] == self.lo:
                if now - got[2] < self.AGE:
                    break
                del self.ring[self.lo % self.CAP]
            self.lo += 1


def predict(data: bytes, sender: str, hist: HistoryModel | None = None,
            now: float = 0.0) -> str:
    """The counter a datagram must land in (RFC 7983 demux, then design.md §3 rules,
    then duplicate detection against the publisher's history when `hist` is given).

    sender: "pub" (owns SSRC and RTX_SSRC), "sub" (a bound viewer owning no SSRC) or
    "stranger" (unbound address).
    """
    n = len(data)
    if n > SLOT_SIZE or n == 0:
        return "drop_malformed"
    if data[0] < 4:  # STUN, verified in Python, so accepted from unbound senders too
        if n < 20:
            return "drop_malformed"
        return "drop_malformed" if n > EVENT_DATA_SIZE else "rx_stun"
    if sender == "stranger":
        return "drop_unbound"
    if not 128 <= data[0] <= 191:
        return "drop_not_rtp"
    if n >= 2 and 192 <= data[1] <= 223:
        try:
            list(rtcp_ref.split(data))
        except ValueError:
            return "drop_malformed"
        return "rx_rtcp"
    try:
        p = rtp_ref.parse(data, elements=False)
    except ValueError:
        return "drop_malformed"
    ssrc = p["ssrc"]
    if ssrc not in (SSRC, RTX_SSRC, OTHER_SSRC):
        return "drop_unknown_ssrc"
    if ssrc == OTHER_SSRC or sender != "pub":
        return "drop_ssrc_not_owned"
    if ssrc == RTX_SSRC:
        # RFC 4588: the payload starts with the original sequence number.
        if p["payload_size"] < 2:  # type: ignore[operator]
            return "drop_malformed"
        if hist is not None:
            hist.put(int.from_bytes(data[p["header_size"]:p["header_size"] + 2]), now)  # type: ignore[misc]
        return "rx_rtp"
    if p["payload_type"] != PT:
        return "drop_payload_type"
    if hist is not None and hist.put(p["sequence_number"], now) == "dup":  # type: ignore[arg-type]
        return "drop_duplicate"
    return "rx_rtp"


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(65536)
    except BlockingIOError:
        pass


@pytest.fixture
def node() -> Iterator[dict[str, object]]:
    """Engine on a loopback socket: a publisher (SSRC + RTX), another publisher whose
    SSRC the first must not use, and a viewer subscribed to the first."""
    srv, pub, other, sub, stranger = (udp_socket() for _ in range(5))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    eng = _native.Engine(stun_rate=0)  # unlimited: the fuzz predicts every outcome
    tid = eng.add_udp(srv.fileno())
    pids = {}
    for name, sock in (("pub", pub), ("other", other), ("sub", sub)):
        pids[name] = eng.add_peer(tid)
        eng.bind_peer(pids[name], *sock.getsockname())
    sid = eng.add_source(pids["pub"], _native.KIND_VIDEO, 90000)
    eng.add_ingress(sid, SSRC, PT, rtx_ssrc=RTX_SSRC)
    other_sid = eng.add_source(pids["other"], _native.KIND_AUDIO, 48000)
    eng.add_ingress(other_sid, OTHER_SSRC, 111)
    eng.add_downtrack(sid, pids["sub"], OUT_SSRC, 100)
    yield {"eng": eng, "tid": tid, "srv": srv, "pub": pub, "sub": sub, "stranger": stranger,
           "other": other}
    eng.remove_transport(tid)
    for s in (srv, pub, other, sub, stranger):
        s.close()


def engine_corpus(rng: random.Random) -> list[bytes]:
    seeds = seed_corpus(rng)
    for ssrc in [SSRC] * 30 + [RTX_SSRC, OTHER_SSRC, UNKNOWN_SSRC]:
        args = rtp_ref.random_args(rng)
        args.update(ssrc=ssrc, payload_type=rng.choice((PT, PT, 97)))
        seeds.append(rtp_ref.build(**args))
    seeds += [
        rtcp_ref.build_rr(5, [{"ssrc": OUT_SSRC, "fraction_lost": 3, "packets_lost": 1,
                               "highest_seq": 9, "jitter": 1, "lsr": 0, "dlsr": 0}]),
        rtcp_ref.build_pli(5, OUT_SSRC) + rtcp_ref.build_nack(5, OUT_SSRC, [1, 2, 9]),
        rtcp_ref.build_sr(SSRC, 1 << 40, 3, 4, 5) + rtcp_ref.build_bye([SSRC]),
        rtcp_ref.build_remb(5, 300000, [OUT_SSRC]) + rtcp_ref.build_fir(5, OUT_SSRC, 1),
        bytes.fromhex("000100002112a442") + bytes(12),  # STUN binding request header
        bytes(3000), b"\x80" * 1600, b"\x00\x01" + bytes(1600),  # oversize / big STUN
    ]
    return seeds


def counters(eng: _native.Engine) -> dict[str, int]:
    return dict(zip(_native.COUNTER_NAMES, (int(x) for x in eng.counters), strict=True))


def check_accounting(before: dict[str, int], after: dict[str, int], want: Counter[str]) -> None:
    delta = {k: after[k] - before[k] for k in after}
    drops = ingress_drop_names()
    assert delta["rx_datagrams"] == sum(want.values())
    assert delta["rx_datagrams"] == sum(delta[k] for k in HANDLED) + sum(delta[k] for k in drops)
    got = {k: delta[k] for k in (*HANDLED, *drops) if delta[k] or want[k]}
    assert got == dict(want)


def test_counter_names_cover_ingress_outcomes():
    names = set(_native.COUNTER_NAMES)
    needed = {"rx_datagrams", *HANDLED, "drop_malformed", "drop_unbound", "drop_not_rtp",
              "drop_unknown_ssrc", "drop_ssrc_not_owned", "drop_payload_type",
              "drop_duplicate", "drop_event_queue"}
    assert needed <= names, needed - names


def test_engine_ingest_fuzz_accounts_for_every_datagram(node: dict[str, object]):
    eng, tid = node["eng"], node["tid"]
    assert isinstance(eng, _native.Engine) and isinstance(tid, int)
    addrs = {k: node[k].getsockname() for k in ("pub", "sub", "stranger")}  # type: ignore
    rng = random.Random("engine-ingest")
    seeds = engine_corpus(rng)
    crashers = [d for _, d in load_crashers()]
    inputs = crashers + seeds + [
        rng.choice(seeds) if rng.random() < 0.2 else mutate(rng, seeds) for _ in range(6000)]
    want: Counter[str] = Counter()
    hist = HistoryModel()
    before = counters(eng)
    now = 100.0
    for i, data in enumerate(inputs):
        sender = ("pub", "pub", "pub", "sub", "stranger")[i % 5]
        host, port = addrs[sender]
        eng.ingest(tid, data, host, port, now)
        want[predict(data, sender, hist, now)] += 1
        now += 0.0005
        if i % 64 == 0:
            eng.on_tick(now)
            hist.expire(now)
            eng.drain_events()
            for k in ("pub", "sub", "other"):
                drain(node[k])  # type: ignore[arg-type]
    eng.drain_events()
    check_accounting(before, counters(eng), want)
    assert want["rx_rtp"] > 50 and want["rx_rtcp"] > 50 and want["drop_malformed"] > 50
    assert want["drop_duplicate"] > 0
    assert eng.live()["slots_in_use"] > 0  # the retransmission history holds packets
    eng.on_tick(now + 10.0)  # past every history's age
    assert eng.live()["slots_in_use"] == 0  # every pool slot came back


def test_engine_socket_fuzz_accounts_for_every_datagram(node: dict[str, object]):
    # Same through the kernel: real datagrams, recvmmsg in on_readable.
    eng, tid, srv = node["eng"], node["tid"], node["srv"]
    assert isinstance(eng, _native.Engine) and isinstance(srv, socket.socket)
    pub, stranger = node["pub"], node["stranger"]
    assert isinstance(pub, socket.socket) and isinstance(stranger, socket.socket)
    rng = random.Random("engine-socket")
    seeds = engine_corpus(rng)
    want: Counter[str] = Counter()
    hist = HistoryModel()
    before = counters(eng)
    now = 200.0
    sent = 0
    for batch in range(20):
        for i in range(50):
            data = mutate(rng, seeds) if i else seeds[batch % len(seeds)]
            sender = stranger if i % 5 == 4 else pub
            sender.sendto(data, srv.getsockname())
            want[predict(data, "pub" if sender is pub else "stranger", hist, now)] += 1
            sent += 1
        # Loopback delivery is synchronous; bounded retries only guard against slowness.
        for _ in range(50):
            eng.on_readable(tid, now)
            if counters(eng)["rx_datagrams"] - before["rx_datagrams"] >= sent:
                break
        eng.drain_events()
        for k in ("pub", "sub", "other"):
            drain(node[k])  # type: ignore[arg-type]
        now += 0.05
    check_accounting(before, counters(eng), want)
    eng.on_tick(now + 10.0)
    assert eng.live()["slots_in_use"] == 0


def test_oversize_datagram_from_socket_is_dropped_not_truncated(node: dict[str, object]):
    # A datagram larger than a pool slot must be dropped as malformed, as ingest() does,
    # not processed (and forwarded) truncated to the slot size.
    eng, tid, srv, pub = node["eng"], node["tid"], node["srv"], node["pub"]
    assert isinstance(eng, _native.Engine) and isinstance(srv, socket.socket)
    assert isinstance(pub, socket.socket)
    big = rtp_ref.build(PT, 1, 1, SSRC, bytes(SLOT_SIZE + 500))
    before = counters(eng)
    pub.sendto(big, srv.getsockname())
    for _ in range(50):
        if eng.on_readable(tid, 1.0):
            break
    after = counters(eng)
    assert after["rx_datagrams"] - before["rx_datagrams"] == 1
    assert after["drop_malformed"] - before["drop_malformed"] == 1
    assert after["forwarded"] == before["forwarded"]

"""16-bit sequence arithmetic: table tests of the oracle (tests/oracle/seq.py), then the
native engine's sequence handling checked against it through real loopback sockets:
extended highest seq / cumulative loss in its receiver reports, and the per-downtrack
sequence rewrite (a constant offset, so gaps and reordering survive a wrap)."""

import random
import socket
import struct
from collections.abc import Iterator

import pytest
from oracle import rtcp as rtcp_ref
from oracle import rtp as rtp_ref
from oracle.seq import ReceiveStats, Unwrapper, seq_add, seq_diff, seq_gt, seq_le, seq_lt

from sfu import _native


@pytest.mark.parametrize(
    ("a", "b", "diff", "lt"),
    [
        (0, 0, 0, False),
        (1, 0, 1, False),
        (0, 1, -1, True),
        (0, 65535, 1, False),      # 65535 -> 0 is one step forward
        (65535, 0, -1, True),
        (100, 65500, 136, False),  # across the wrap
        (32767, 0, 32767, False),  # largest forward distance
        (0, 32767, -32767, True),
        (32768, 0, -32768, False),  # exactly half-way: neither is before the other
        (0, 32768, -32768, False),
        (40000, 10000, 30000, False),
        (10000, 40000, -30000, True),
    ],
)
def test_seq_compare_table(a: int, b: int, diff: int, lt: bool):
    assert seq_diff(a, b) == diff
    assert seq_lt(a, b) is lt
    assert seq_gt(b, a) is lt
    assert seq_le(a, b) is (lt or a == b)
    assert seq_add(b, diff) == a


def test_seq_lt_is_a_strict_order_within_half_window():
    rng = random.Random(1982)
    for _ in range(2000):
        a = rng.getrandbits(16)
        d = rng.randint(1, 0x7FFF)
        b = seq_add(a, d)
        assert seq_lt(a, b) and not seq_lt(b, a) and not seq_lt(a, a)


@pytest.mark.parametrize(
    ("seqs", "want"),
    [
        ([0, 1, 2], [0, 1, 2]),
        ([65534, 65535, 0, 1], [65534, 65535, 65536, 65537]),
        ([65535, 0, 65534, 1], [65535, 65536, 65534, 65537]),  # reordering across the wrap
        ([5, 65535], [5, -1]),                                  # backwards across zero
        ([0, 32767, 65534, 1], [0, 32767, 65534, 65537]),
        ([0, 32768], [0, 32768]),                               # half-way counts forward
        ([10, 10, 10], [10, 10, 10]),
    ],
    ids=["inorder", "wrap", "reorder-wrap", "back-past-zero", "long-steps", "half", "dups"],
)
def test_unwrapper_table(seqs: list[int], want: list[int]):
    u = Unwrapper()
    assert [u.unwrap(s) for s in seqs] == want


def test_unwrapper_rejects_out_of_range():
    with pytest.raises(ValueError):
        Unwrapper().unwrap(65536)


def test_unwrapper_tracks_many_cycles():
    u = Unwrapper()
    ext = 0
    rng = random.Random(7)
    u.unwrap(0)
    for _ in range(20000):
        ext += rng.randint(-100, 3000)
        assert u.unwrap(ext & 0xFFFF) == ext


@pytest.mark.parametrize(
    ("seqs", "ext_max", "lost"),
    [
        ([1, 2, 3], 3, 0),
        ([1, 3], 3, 1),
        ([65534, 65535, 0, 2], 65538, 1),    # wrap with one loss
        ([65535, 1, 0], 65537, 0),           # late packet after the wrap
        ([10, 10, 11], 11, -1),              # duplicates make loss negative (§6.4.1)
        ([100, 5000], 100, -1),              # jump >= MAX_DROPOUT does not move the max
        ([100, 99], 100, -1),                # old packet
    ],
    ids=["inorder", "gap", "wrap-loss", "late-after-wrap", "dup", "dropout", "old"],
)
def test_receive_stats_table(seqs: list[int], ext_max: int, lost: int):
    st = ReceiveStats()
    for s in seqs:
        st.update(s)
    assert st.extended_max == ext_max
    assert st.lost == lost


# ------------------------------------------------------- through the native engine

PT, SSRC, OUT_SSRC, OUT_PT, CLOCK = 96, 0x1111, 0x2222, 100, 90000


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def recv_all(sock: socket.socket, timeout: float = 1.0, want: int | None = None) -> list[bytes]:
    """Datagrams already sent to ``sock`` over loopback (waits briefly for stragglers)."""
    out: list[bytes] = []
    sock.settimeout(timeout)
    try:
        while want is None or len(out) < want:
            out.append(sock.recv(4096))
            sock.settimeout(0.05 if want is None else timeout)
    except (TimeoutError, BlockingIOError):
        pass
    sock.setblocking(False)
    return out


@pytest.fixture
def node() -> Iterator[dict[str, object]]:
    """An engine on a real loopback socket: a publisher (one video SSRC) and a viewer."""
    srv, pub, sub = udp_socket(), udp_socket(), udp_socket()
    eng = _native.Engine(rtcp_interval=1.0)
    tid = eng.add_udp(srv.fileno())
    pub_pid = eng.add_peer(tid)
    eng.bind_peer(pub_pid, *pub.getsockname())
    sub_pid = eng.add_peer(tid)
    eng.bind_peer(sub_pid, *sub.getsockname())
    sid = eng.add_source(pub_pid, _native.KIND_VIDEO, CLOCK)
    eng.add_ingress(sid, SSRC, PT)
    did = eng.add_downtrack(sid, sub_pid, OUT_SSRC, OUT_PT)
    yield {"eng": eng, "tid": tid, "pub": pub, "sub": sub, "sid": sid, "did": did}
    eng.remove_transport(tid)
    for s in (srv, pub, sub):
        s.close()


SEQUENCES = {
    "wrap-with-loss-and-reorder": [65530, 65531, 65533, 65532, 65535, 0, 2, 1, 5, 6],
    "duplicates": [100, 101, 101, 102, 102, 102, 103],
    "late-across-wrap": [65534, 0, 1, 65535, 2],
    "dropout-jump": [10, 11, 12, 9000, 13],
    "long-run-two-wraps": [(40000 + 7 * i) % 65536 for i in range(19000) if i % 11],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_engine_receiver_report_matches_oracle(node: dict[str, object], name: str):
    eng, tid, pub = node["eng"], node["tid"], node["pub"]
    assert isinstance(eng, _native.Engine) and isinstance(pub, socket.socket)
    seqs = SEQUENCES[name]
    model = ReceiveStats()
    now = 10.0
    for i, seq in enumerate(seqs):
        eng.ingest(tid, rtp_ref.build(PT, seq, 3000 * i, SSRC, b"\x90" * 20), "127.0.0.1",
                   pub.getsockname()[1], now)
        model.update(seq)
        now += 0.001
    recv_all(pub, timeout=0.05)  # nothing but reports should reach the publisher
    eng.on_tick(now + 2.0)
    reports = [p for d in recv_all(pub) for p in rtcp_ref.parse(d) if p["type"] in ("rr", "sr")]
    assert reports, "no receiver report reached the publisher"
    blocks = [b for r in reports for b in r["reports"] if b["ssrc"] == SSRC]  # type: ignore
    assert len(blocks) == 1
    assert blocks[0]["highest_seq"] == model.extended_max & 0xFFFFFFFF
    assert blocks[0]["packets_lost"] == model.lost
    row = eng.source_stats[node["sid"]]
    assert row[_native.SOURCE_FIELDS.index("highest_seq")] == model.extended_max
    assert row[_native.SOURCE_FIELDS.index("lost")] == model.lost
    assert row[_native.SOURCE_FIELDS.index("packets")] == len(seqs)


def test_engine_rewrite_keeps_sequence_gaps_across_wrap(node: dict[str, object]):
    eng, tid, pub, sub = node["eng"], node["tid"], node["pub"], node["sub"]
    assert isinstance(eng, _native.Engine)
    assert isinstance(pub, socket.socket) and isinstance(sub, socket.socket)
    rng = random.Random(16)
    seqs = [65500 + i for i in range(80) if rng.random() > 0.2]  # wraps, with holes
    seqs = [s & 0xFFFF for s in seqs]
    for k in range(0, len(seqs) - 1, 5):  # some adjacent swaps (reordering)
        seqs[k], seqs[k + 1] = seqs[k + 1], seqs[k]
    sent = []
    for i, seq in enumerate(seqs):
        ts = (0xFFFFFF00 + 3000 * (seq - 65500)) & 0xFFFFFFFF
        pkt = rtp_ref.build(PT, seq, ts, SSRC, struct.pack("!I", i), marker=i % 3 == 0,
                            extensions={3: bytes([i])})
        sent.append(rtp_ref.parse(pkt))
        eng.ingest(tid, pkt, "127.0.0.1", pub.getsockname()[1], 20.0 + i * 0.001)
    got = [rtp_ref.parse(d) for d in recv_all(sub, want=len(seqs))]
    assert len(got) == len(seqs)
    got.sort(key=lambda p: struct.unpack("!I", p["payload"])[0])  # type: ignore[arg-type]
    out0, in0 = got[0], sent[0]
    for s, g in zip(sent, got, strict=True):
        assert g["ssrc"] == OUT_SSRC and g["payload_type"] == OUT_PT
        assert g["marker"] == s["marker"] and g["extensions"] == s["extensions"]
        assert seq_diff(g["sequence_number"], out0["sequence_number"]) == seq_diff(  # type: ignore
            s["sequence_number"], in0["sequence_number"])  # type: ignore
        assert (g["timestamp"] - out0["timestamp"]) & 0xFFFFFFFF == (  # type: ignore
            s["timestamp"] - in0["timestamp"]) & 0xFFFFFFFF  # type: ignore

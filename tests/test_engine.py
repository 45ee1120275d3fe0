"""Native engine on real loopback sockets, driven with a fake clock."""

import socket
import time
import tracemalloc

import pytest

from sfu import _native as n

NAMES = n.COUNTER_NAMES


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def counters(e: n.Engine) -> dict[str, int]:
    return dict(zip(NAMES, e.counters.tolist(), strict=True))


def recv_all(sock: socket.socket, expect: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            time.sleep(0.001)
    return out


def pump(e: n.Engine, tid: int, now: float, expect: int, timeout: float = 2.0) -> int:
    """Call on_readable until `expect` datagrams have been read (loopback is async)."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < expect and time.monotonic() < deadline:
        got += e.on_readable(tid, now)
        if got < expect:
            time.sleep(0.001)
    return got


class Node:
    """One engine with a publisher and viewers, all on loopback."""

    def __init__(self, viewers: int = 3, **kw: object) -> None:
        self.e = n.Engine(**kw)
        self.srv = udp()
        self.addr = self.srv.getsockname()
        self.tid = self.e.add_udp(self.srv.fileno())
        self.pub = udp()
        self.pp = self.e.add_peer(self.tid)
        self.e.bind_peer(self.pp, *self.pub.getsockname())
        self.sid = self.e.add_source(self.pp, n.KIND_VIDEO, 90000)
        self.e.add_ingress(self.sid, 1111, 96)
        self.views = [udp() for _ in range(viewers)]
        self.vps = []
        self.dts = []
        for i, v in enumerate(self.views):
            vp = self.e.add_peer(self.tid)
            self.e.bind_peer(vp, *v.getsockname())
            self.vps.append(vp)
            self.dts.append(self.e.add_downtrack(self.sid, vp, 5000 + i, 100))

    def send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendto(data, self.addr)

    def close(self) -> None:
        for s in [self.srv, self.pub, *self.views]:
            s.close()


@pytest.fixture
def node():
    nd = Node()
    yield nd
    nd.close()


def test_fanout_rewrites_ssrc_pt_seq_ts_and_keeps_payload(node: Node) -> None:
    sent = []
    for i in range(20):
        pkt = n.build_rtp(96, (65530 + i) & 0xFFFF, 3000 * i, 1111, bytes([i]) * 50,
                          marker=i % 2 == 0, csrcs=[7], extensions={3: b"\x01\x02"})
        sent.append(n.parse_rtp(pkt))
        node.send(node.pub, pkt)
    assert pump(node.e, node.tid, 1.0, 20) == 20
    for k, v in enumerate(node.views):
        got = [n.parse_rtp(d) for d in recv_all(v, 20)]
        assert len(got) == 20
        seq0, ts0 = got[0]["sequence_number"], got[0]["timestamp"]
        for i, (g, s) in enumerate(zip(got, sent, strict=True)):
            assert g["ssrc"] == 5000 + k
            assert g["payload_type"] == 100
            assert g["marker"] == s["marker"]
            assert g["sequence_number"] == (seq0 + i) & 0xFFFF  # continuous across wrap
            assert g["timestamp"] == (ts0 + 3000 * i) & 0xFFFFFFFF
            assert g["payload"] == s["payload"]
            assert g["csrcs"] == [7] and g["extensions"] == {3: b"\x01\x02"}
    c = counters(node.e)
    assert c["rx_rtp"] == 20 and c["forwarded"] == 60 and c["tx_datagrams"] == 60
    assert node.e.source_stats[node.sid][n.SOURCE_FIELDS.index("packets")] == 20
    for did in node.dts:
        assert node.e.downtrack_stats[did][n.DOWNTRACK_FIELDS.index("packets")] == 20


def test_unbound_hijacked_unknown_and_bad_pt_are_dropped_and_counted(node: Node) -> None:
    stranger = udp()
    node.send(stranger, n.build_rtp(96, 1, 1, 1111, b"spoof"))          # unbound address
    node.send(node.views[0], n.build_rtp(96, 1, 1, 1111, b"hijack"))    # bound, not owner
    node.send(node.pub, n.build_rtp(96, 1, 1, 2222, b"unknown"))        # unknown SSRC
    node.send(node.pub, n.build_rtp(97, 1, 1, 1111, b"wrong pt"))       # wrong payload type
    node.send(node.pub, b"\x16\xfe\xfd" + b"\x00" * 20)                 # DTLS-looking
    assert pump(node.e, node.tid, 1.0, 5) == 5
    c = counters(node.e)
    assert c["drop_unbound"] == 1
    assert c["drop_ssrc_not_owned"] == 1
    assert c["drop_unknown_ssrc"] == 1
    assert c["drop_payload_type"] == 1
    assert c["drop_not_rtp"] == 1
    assert c["forwarded"] == 0
    for v in node.views:
        assert recv_all(v, 1, timeout=0.05) == []
    pf = n.PEER_FIELDS.index("drop_ssrc_not_owned")
    assert node.e.peer_stats[node.vps[0]][pf] == 1
    stranger.close()


@pytest.mark.parametrize("length", [1, 2, 3, 11, 12, 13, 40, 1200])
def test_malformed_rtp_of_any_length_is_dropped(node: Node, length: int) -> None:
    bad = bytearray(b"\x9f" + b"\xff" * (length - 1))  # V=2, X, CC=15: overruns
    node.send(node.pub, bytes(bad))
    node.send(node.pub, n.build_rtp(96, 5, 5, 1111, b"ok"))
    assert pump(node.e, node.tid, 1.0, 2) == 2
    c = counters(node.e)
    assert c["drop_malformed"] + c["drop_not_rtp"] + c["rx_rtcp"] == 1
    assert c["forwarded"] == 3  # the good packet still reaches everyone


def test_accounting_invariant_over_mixed_traffic(node: Node) -> None:
    import random

    rng = random.Random(7)
    total = 300
    for i in range(total):
        kind = rng.randrange(4)
        if kind == 0:
            data = n.build_rtp(96, i, i, 1111, b"x" * rng.randrange(0, 300))
        elif kind == 1:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif kind == 2:
            data = n.build_rr(1, [{"ssrc": 5000}])
        else:
            data = bytes([0x80, 0xC8]) + bytes(rng.randrange(256) for _ in range(30))
        node.send(node.pub if rng.random() < 0.8 else node.views[1], data)
    assert pump(node.e, node.tid, 1.0, total) == total
    c = counters(node.e)
    ingress_drops = sum(v for k, v in c.items() if k.startswith("drop_")
                        and k not in ("drop_send_eagain", "drop_send_error",
                                      "drop_event_overflow"))
    assert c["drop_event_queue"] == 0
    assert c["rx_datagrams"] == total
    assert c["rx_rtp"] + c["rx_rtcp"] + c["rx_stun"] + ingress_drops == total


def test_pli_from_viewers_coalesced_per_source_with_fake_clock(node: Node) -> None:
    e = node.e
    for t, who in [(10.0, 0), (10.1, 1), (10.29, 2), (10.31, 0), (10.5, 1)]:
        node.send(node.views[who], n.build_pli(42, 5000 + who))
        assert pump(e, node.tid, t, 1) == 1
    plis = [p for d in recv_all(node.pub, 2) for p in n.parse_rtcp(d)]
    assert [p["type"] for p in plis] == ["pli", "pli"]
    assert all(p["media_ssrc"] == 1111 for p in plis)
    c = counters(e)
    assert c["pli_in"] == 5 and c["pli_sent"] == 2 and c["pli_coalesced"] == 3
    evs = [ev for ev in e.drain_events() if ev[0] == n.EV_PLI]
    assert [ev[1] for ev in evs] == [node.sid, node.sid]
    # FIR naming the downtrack also counts, and a PLI for someone else's stream does not.
    node.send(node.views[0], n.build_fir(42, 5000, 1))
    node.send(node.views[0], n.build_pli(42, 5001))
    assert pump(e, node.tid, 11.0, 2) == 2
    c = counters(e)
    assert c["fir_in"] == 1 and c["pli_sent"] == 3 and c["rtcp_foreign_ssrc"] == 1


def test_receiver_reports_feed_downtrack_stats_and_rtt(node: Node) -> None:
    e = node.e
    e.set_wallclock_offset(1_700_000_000.0)
    node.send(node.pub, n.build_rtp(96, 1, 1, 1111, b"x"))
    pump(e, node.tid, 5.0, 1)
    e.on_tick(5.0)
    sr = [p for p in n.parse_rtcp(recv_all(node.views[0], 2)[-1]) if p["type"] == "sr"][0]
    lsr = (sr["ntp"] >> 16) & 0xFFFFFFFF
    # The viewer answers 100 ms after the SR arrived, holding it 20 ms (DLSR).
    rr = n.build_rr(77, [{"ssrc": 5000, "fraction_lost": 25, "packets_lost": 12,
                          "highest_seq": 999, "jitter": 40, "lsr": lsr,
                          "dlsr": int(0.02 * 65536)}])
    node.send(node.views[0], rr)
    pump(e, node.tid, 5.1, 1)
    row = dict(zip(n.DOWNTRACK_FIELDS, e.downtrack_stats[node.dts[0]].tolist(), strict=True))
    assert row["rr_count"] == 1 and row["rr_fraction_lost"] == 25
    assert row["rr_cumulative_lost"] == 12 and row["rr_jitter"] == 40
    assert 79_000 <= row["rtt_us"] <= 81_000


def test_node_sends_sr_to_viewers_and_reports_to_publisher(node: Node) -> None:
    e = node.e
    e.set_source_recovery(node.sid, nack=False)  # this test is about reports, not NACKs
    for i in range(10):
        if i == 4:
            continue  # one lost packet upstream
        node.send(node.pub, n.build_rtp(96, 100 + i, 900 * i, 1111, b"y" * 10))
    pump(e, node.tid, 1.0, 9)
    for v in node.views:
        recv_all(v, 9)
    node.send(node.pub, n.build_sr(1111, 123 << 32, 0, 9, 90))
    pump(e, node.tid, 1.5, 1)
    deadline = e.on_tick(2.0)
    assert deadline == pytest.approx(2.1)  # history expiry; the next reports are due at 3.0
    rr = n.parse_rtcp(recv_all(node.pub, 1)[0])
    # An SR from the node SSRC without media, so the publisher's report on it gives the RTT.
    assert rr[0]["type"] == "sr" and rr[0]["ssrc"] == 1 and rr[0]["packets"] == 0
    assert rr[1]["type"] == "sdes"
    block = rr[0]["reports"][0]
    assert block["ssrc"] == 1111 and block["packets_lost"] == 1
    assert block["highest_seq"] == 109 and block["fraction_lost"] == 256 // 10
    assert block["lsr"] == (123 << 16) & 0xFFFFFFFF
    assert block["dlsr"] == int(0.5 * 65536)
    for k, v in enumerate(node.views):
        sr = n.parse_rtcp(recv_all(v, 1)[0])[0]
        assert sr["type"] == "sr" and sr["ssrc"] == 5000 + k
        assert sr["packets"] == 9 and sr["octets"] == 90


def test_bye_and_remb_and_nack_are_counted(node: Node) -> None:
    e = node.e
    node.send(node.pub, n.build_bye([1111]))
    node.send(node.views[0], n.build_remb(9, 1_500_000, [5000]))
    node.send(node.views[0], n.build_nack(9, 5000, [1, 2, 3]))
    node.send(node.views[0], n.build_twcc(9, 5000, 1, 0, 0, [1, 2]))
    pump(e, node.tid, 1.0, 4)
    c = counters(e)
    assert c["bye_in"] == 1 and c["remb_in"] == 1 and c["nack_in"] == 1 and c["twcc_in"] == 1
    assert (n.EV_BYE, node.pp, 1111, 0) in e.drain_events()
    row = dict(zip(n.DOWNTRACK_FIELDS, e.downtrack_stats[node.dts[0]].tolist(), strict=True))
    assert row["remb_bps"] == 1_500_000 and row["nack_in"] == 1


def test_stun_goes_up_as_event_even_from_unbound_address(node: Node) -> None:
    stranger = udp()
    msg = bytes.fromhex("0001000021124442") + b"t" * 12
    node.send(stranger, msg)
    pump(node.e, node.tid, 1.0, 1)
    evs = node.e.drain_events()
    assert evs == [(n.EV_STUN, node.tid, "127.0.0.1", stranger.getsockname()[1], msg)]
    assert counters(node.e)["rx_stun"] == 1
    stranger.close()


def test_rebinding_moves_peer_and_old_address_is_unbound(node: Node) -> None:
    e = node.e
    new = udp()
    assert e.bind_peer(node.pp, *new.getsockname()) is True
    node.send(node.pub, n.build_rtp(96, 1, 1, 1111, b"old"))
    node.send(new, n.build_rtp(96, 2, 2, 1111, b"new"))
    pump(e, node.tid, 1.0, 2)
    c = counters(e)
    assert c["drop_unbound"] == 1 and c["forwarded"] == 3
    with pytest.raises(ValueError, match="bound to another peer"):
        e.bind_peer(node.vps[0], *new.getsockname())
    new.close()


def test_configure_errors_are_value_errors(node: Node) -> None:
    e = node.e
    with pytest.raises(ValueError, match="already in use"):
        e.add_ingress(node.sid, 1111, 96)
    with pytest.raises(ValueError, match="already in use"):
        e.add_downtrack(node.sid, node.vps[0], 5000, 100)
    with pytest.raises(ValueError, match="no such source"):
        e.add_downtrack(999, node.vps[0], 6000, 100)
    with pytest.raises(ValueError, match="no such peer"):
        e.add_source(12345, n.KIND_AUDIO, 48000)
    with pytest.raises(ValueError, match="clock_rate"):
        e.add_source(node.pp, n.KIND_AUDIO, 7)
    with pytest.raises(ValueError, match="IPv4"):
        e.bind_peer(node.pp, "not-an-ip", 5)


def test_removing_everything_frees_native_state(node: Node) -> None:
    e = node.e
    node.send(node.pub, n.build_rtp(96, 1, 1, 1111, b"x"))
    pump(e, node.tid, 1.0, 1)
    e.remove_downtrack(node.dts[0])
    assert e.live()["downtracks"] == 2
    e.remove_peer(node.pp)  # the publisher: its source, SSRCs and downtracks go too
    live = e.live()
    assert live["sources"] == 0 and live["ssrcs"] == 0 and live["downtracks"] == 0
    for vp in node.vps:
        e.remove_peer(vp)
    assert e.live() == {"peers": 0, "bound_addresses": 0, "sources": 0, "ssrcs": 0,
                        "downtracks": 0, "slots_in_use": 0, "pending_events": 0}
    # Handles are reused cleanly afterwards.
    p = e.add_peer(node.tid)
    s = e.add_source(p, n.KIND_AUDIO, 48000)
    e.add_ingress(s, 1111, 111)
    assert e.source_stats[s].sum() == 0


def test_event_ring_overflow_is_counted() -> None:
    nd = Node(viewers=0, event_ring=16)
    try:
        msg = bytes.fromhex("0001000021124442") + b"t" * 12
        for _ in range(40):
            nd.send(nd.pub, msg)
        pump(nd.e, nd.tid, 1.0, 40)
        evs = nd.e.drain_events()
        assert len([ev for ev in evs if ev[0] == n.EV_STUN]) == 16
        assert evs[-1] == (n.EV_OVERFLOW, 24, 0, 0)
        assert counters(nd.e)["drop_event_queue"] == 24
    finally:
        nd.close()


def test_forwarding_allocates_no_python_objects_per_packet() -> None:
    # The data path (eng_* in native/) is compiled nogil, so Cython rejects any Python
    # object operation there at build time; this checks nothing is retained per packet.
    nd = Node(viewers=20)
    try:
        # Distinct sequence numbers: the node drops duplicates.
        pkts = [n.build_rtp(96, i, i, 1111, b"z" * 1100) for i in range(1050)]
        e = nd.e

        def burst(count: int) -> None:
            for i in range(count):
                nd.pub.sendto(pkts[i], nd.addr)
            pump(e, nd.tid, 1.0, count)
            for v in nd.views:
                recv_all(v, count)

        burst(50)  # warm up
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        read = 0
        for r in range(20):
            for i in range(50):
                nd.pub.sendto(pkts[50 + 50 * r + i], nd.addr)
            time.sleep(0.002)
            read += e.on_readable(nd.tid, 1.0)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        native = [s for s in after.compare_to(before, "filename")
                  if s.size_diff > 0 and "_native" in str(s.traceback)]
        assert read >= 500
        assert counters(e)["forwarded"] >= 500 * 20
        assert native == []
        stats = after.filter_traces([tracemalloc.Filter(True, "*test_engine.py")])
        # Only this test's own loop variables may appear; nothing scales with packets.
        assert sum(s.count for s in stats.statistics("filename")) < 50
    finally:
        nd.close()


def test_random_configure_sequences_keep_tables_consistent() -> None:
    """Random joins, publishes, subscriptions and leaves against a model of what is live:
    removing a peer frees exactly its sources and the downtracks to or from it."""
    import random

    rng = random.Random(11)
    e = n.Engine(max_peers=64, max_sources=32, max_downtracks=512)
    srv = udp()
    tid = e.add_udp(srv.fileno())
    peers: set[int] = set()
    sources: dict[int, int] = {}            # sid -> owner pid
    dts: dict[int, tuple[int, int]] = {}    # did -> (sid, receiver pid)
    next_ssrc = 1000
    for _ in range(3000):
        op = rng.random()
        if op < 0.2 and len(peers) < 60:
            peers.add(e.add_peer(tid))
        elif op < 0.3 and peers and len(sources) < 30:
            owner = rng.choice(sorted(peers))
            sid = e.add_source(owner, n.KIND_VIDEO, 90000)
            next_ssrc += 1
            e.add_ingress(sid, next_ssrc, 96)
            sources[sid] = owner
        elif op < 0.7 and peers and sources and len(dts) < 500:
            sid = rng.choice(sorted(sources))
            viewer = rng.choice(sorted(peers))
            next_ssrc += 1
            dts[e.add_downtrack(sid, viewer, next_ssrc, 96)] = (sid, viewer)
        elif op < 0.8 and dts:
            did = rng.choice(sorted(dts))
            e.remove_downtrack(did)
            del dts[did]
        elif op < 0.85 and sources:
            sid = rng.choice(sorted(sources))
            e.remove_source(sid)
            del sources[sid]
            dts = {d: v for d, v in dts.items() if v[0] != sid}
        elif peers:
            pid = rng.choice(sorted(peers))
            e.remove_peer(pid)
            peers.discard(pid)
            gone = {sid for sid, owner in sources.items() if owner == pid}
            sources = {sid: o for sid, o in sources.items() if sid not in gone}
            dts = {d: v for d, v in dts.items() if v[0] not in gone and v[1] != pid}
        live = e.live()
        assert (live["peers"], live["sources"], live["downtracks"]) == (
            len(peers), len(sources), len(dts))
    for did in dts:  # every downtrack the model holds is still a valid handle
        e.remove_downtrack(did)
    for pid in list(peers):
        e.remove_peer(pid)
    assert e.live()["downtracks"] == 0 and e.live()["sources"] == 0
    srv.close()


def test_stun_flood_is_rate_limited_before_python_sees_it() -> None:
    nd = Node(viewers=0, stun_rate=100.0)  # burst = max(64, rate / 4) = 64
    try:
        msg = bytes.fromhex("0001000021124442") + b"t" * 12
        for _ in range(100):
            nd.send(nd.pub, msg)
        pump(nd.e, nd.tid, 1.0, 100)
        assert len(nd.e.drain_events()) == 64
        assert counters(nd.e)["drop_stun_rate"] == 36
        for _ in range(60):  # half a second later: 50 tokens back
            nd.send(nd.pub, msg)
        pump(nd.e, nd.tid, 1.5, 60)
        assert len(nd.e.drain_events()) == 50
        c = counters(nd.e)
        assert c["drop_stun_rate"] == 46 and c["rx_stun"] == 114
        # Media keeps flowing while STUN is being shed.
        nd.send(nd.pub, n.build_rtp(96, 1, 1, 1111, b"x"))
        pump(nd.e, nd.tid, 1.5, 1)
        assert counters(nd.e)["rx_rtp"] == 1
    finally:
        nd.close()

"""Correctness of the benchmark helpers (native/bench_*.pxi, bench/_procstat.py,
bench/_children.py): real sockets on 127.0.0.1, bounded in time, no speed assertions."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sfu import _native

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _procstat  # noqa: E402


def drain_until(sink, total: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(sink.counts()) < total and time.monotonic() < deadline:
        sink.poll(20)


@pytest.fixture
def sink3():
    sink = _native.UdpSink(3)
    yield sink
    sink.close()


def test_blaster_packet_format():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    blaster = _native.UdpBlaster("127.0.0.1", rx.getsockname()[1], size=1100, ssrc=0xABCD1234)
    before = _native.bench_realtime_ns()
    assert blaster.send(3) == 3
    after = _native.bench_realtime_ns()
    seqs, stamps = [], []
    for _ in range(3):
        data, addr = rx.recvfrom(2048)
        assert len(data) == 1100
        assert addr[1] == blaster.port
        parsed = _native.parse_rtp(data)
        assert parsed["version"] == 2 and parsed["payload_type"] == 96 and parsed["marker"]
        assert parsed["ssrc"] == 0xABCD1234
        payload = data[parsed["header_size"]:]
        assert payload[0] == 0x10 and payload[4:7] == b"\x9d\x01\x2a"  # VP8 keyframe start
        assert payload[12:20] == b"SFUBENCH"
        sent_ns, counter = struct.unpack_from("<QI", payload, 20)
        assert before <= sent_ns <= after
        assert counter == parsed["sequence_number"]
        seqs.append(parsed["sequence_number"])
        stamps.append(parsed["timestamp"])
    assert seqs == [0, 1, 2]
    assert stamps == [0, 3000, 6000]  # one 90 kHz frame per packet
    assert blaster.sent == 3
    blaster.close()
    rx.close()


def test_sink_records_old_packets_in_millisecond_buckets():
    # A bench packet stamped 120 ms in the past lands in the 1 ms part of the histogram.
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    blaster = _native.UdpBlaster("127.0.0.1", rx.getsockname()[1])
    blaster.send(1)
    pkt = bytearray(rx.recv(2048))
    struct.pack_into("<Q", pkt, 12 + 20, _native.bench_realtime_ns() - 120_000_000)
    sink = _native.UdpSink(1)
    rx.sendto(bytes(pkt), ("127.0.0.1", sink.ports[0]))
    drain_until(sink, 1)
    st = sink.stats()
    assert st["bench"] == 1 and st["hist_over"] == 0 and st["lat_max_ns"] >= 120_000_000
    hist = np.frombuffer(sink.histogram(), dtype=np.int64)
    assert len(hist) == 59950 and hist[:50000].sum() == 0 and hist[50000 + 70:].sum() == 1
    p50 = _procstat.percentiles_ms(sink.histogram(), 0, st["lat_max_ns"], (0.5,))[0]
    assert 121.0 <= p50 < 10_000
    for obj in (sink, blaster, rx):
        obj.close()


def test_sink_counts_per_socket_and_latency(sink3):
    blaster = _native.UdpBlaster("127.0.0.1", sink3.ports[1])
    assert blaster.send(200) == 200
    drain_until(sink3, 200)
    assert sink3.counts() == [0, 200, 0]
    st = sink3.stats()
    assert st["total"] == 200 and st["bench"] == 200 and st["other"] == 0
    hist = np.frombuffer(sink3.histogram(), dtype=np.int64)
    assert int(hist.sum()) + st["hist_over"] == 200
    assert st["lat_max_ns"] > 0 and st["lat_sum_ns"] >= st["lat_max_ns"]
    sink3.reset()
    assert sink3.counts() == [0, 0, 0] and sink3.stats()["total"] == 0
    assert not np.frombuffer(sink3.histogram(), dtype=np.int64).any()
    blaster.close()


@pytest.mark.parametrize("datagram", [
    b"", b"\x80", b"\x00" * 100,                       # empty, short, not RTP v2
    bytes([0x81, 200]) + b"\x00" * 60,                 # RTCP SR
    bytes([0x80, 96]) + b"\x00" * 100,                 # RTP without the bench magic
    bytes([0x90, 96]) + b"\x00" * 10 + b"\x00\x00\xff\xff",  # extension length past the end
    bytes([0x8F, 96]) + b"\x00" * 30,                  # CSRC count past the end
], ids=["empty", "short", "not-v2", "rtcp", "no-magic", "bad-ext", "bad-csrc"])
def test_sink_survives_foreign_datagrams(sink3, datagram):
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.sendto(datagram, ("127.0.0.1", sink3.ports[0]))
    drain_until(sink3, 1)
    assert sink3.counts()[0] == 1
    st = sink3.stats()
    assert st["other"] == 1 and st["bench"] == 0
    tx.close()


def test_floor_forwarder_fans_out_every_packet(sink3):
    ff = _native.FloorForwarder([("127.0.0.1", p) for p in sink3.ports])
    stop_r, stop_w = os.pipe()
    worker = threading.Thread(target=ff.run, args=(stop_r,))
    worker.start()
    try:
        blaster = _native.UdpBlaster("127.0.0.1", ff.port)
        for _ in range(10):  # spaced bursts: the default socket buffers hold them
            assert blaster.send(50) == 50
            sink3.poll(5)
        drain_until(sink3, 1500)
        assert sink3.counts() == [500, 500, 500]
        assert sink3.stats()["bench"] == 1500
    finally:
        os.write(stop_w, b"x")
        worker.join(10)
    assert not worker.is_alive()
    assert ff.counters() == {"received": 500, "sent": 1500, "send_errors": 0,
                             "wakeups": ff.wakeups}
    ff.close()
    blaster.close()
    os.close(stop_r)
    os.close(stop_w)


def test_drive_paced_never_overshoots_and_everything_arrives():
    sink = _native.UdpSink(1)
    blaster = _native.UdpBlaster("127.0.0.1", sink.ports[0])
    sent = _native.bench_drive(blaster, sink, 2000.0, 0.25, 0.5)
    # The schedule is jittered but its mean is the rate; a loaded machine may fall behind.
    assert 100 <= sent <= 560
    assert sink.counts() == [sent] and sink.stats()["bench"] == sent
    blaster.close()
    sink.close()


def test_drive_unpaced_sends_bursts_and_drains():
    sink = _native.UdpSink(2)
    blaster = _native.UdpBlaster("127.0.0.1", sink.ports[0])
    sent = _native.bench_drive(blaster, sink, 0.0, 0.05, 0.2, 128)
    assert sent > 0 and sent % 128 == 0
    assert sink.counts()[1] == 0 and 0 < sink.counts()[0] <= sent
    with pytest.raises(ValueError):
        _native.bench_drive(blaster, sink, 0.0, 0.1, 0.0, 0)
    blaster.close()
    sink.close()


def test_drive_stops_early_from_another_thread():
    sink = _native.UdpSink(1)
    blaster = _native.UdpBlaster("127.0.0.1", sink.ports[0])
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(_native.bench_drive(blaster, sink, 500.0, 60.0, 0.1)))
    worker.start()
    time.sleep(0.2)
    blaster.stop_drive()
    worker.join(10)
    assert not worker.is_alive() and result and result[0] == blaster.sent
    assert sink.counts() == [result[0]]  # its drain time collected every packet
    blaster.close()
    sink.close()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        _native.UdpSink(0)
    with pytest.raises(ValueError):
        _native.UdpBlaster("127.0.0.1", 9, size=20)
    with pytest.raises(ValueError):
        _native.UdpBlaster("not-an-ip", 9)
    with pytest.raises(ValueError):
        _native.FloorForwarder([])
    with pytest.raises(ValueError):
        _native.FloorForwarder([("127.0.0.1", 70000)])


@pytest.mark.parametrize("kind", ["floor", "naive"])
def test_child_forwarder_protocol(sink3, kind):
    proc = subprocess.Popen([sys.executable, str(BENCH / "_children.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        cfg = {"kind": kind, "dests": [["127.0.0.1", p] for p in sink3.ports], "cpu": None}
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        proc.stdin.flush()
        port = json.loads(proc.stdout.readline())["port"]
        blaster = _native.UdpBlaster("127.0.0.1", port)
        for _ in range(4):
            blaster.send(25)
            sink3.poll(5)
        drain_until(sink3, 300)
        assert sink3.counts() == [100, 100, 100]
        proc.stdin.write(b"snap\n")
        proc.stdin.flush()
        snap = json.loads(proc.stdout.readline())
        assert snap["received"] == 100 and snap["sent"] == 300
        proc.stdin.close()
        final = json.loads(proc.stdout.readline())
        assert final["sent"] == 300
        assert proc.wait(10) == 0
        blaster.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_percentiles_from_histogram():
    hist = np.zeros(59950, dtype=np.int64)
    hist[9] = 50    # [9, 10) µs
    hist[99] = 49   # [99, 100) µs
    hist[999] = 1   # [999, 1000) µs
    p50, p99, p100 = _procstat.percentiles_ms(hist.tobytes(), 0, 999_500, (0.5, 0.99, 1.0))
    assert (p50, p99, p100) == (0.010, 0.100, 1.0)
    # Past the histogram: counted as the maximum seen.
    p50, p99 = _procstat.percentiles_ms(hist.tobytes(), 100, 80_000_000, (0.5, 0.99))
    assert p50 == 1.0 and p99 == 80.0  # rank 100 of 200 is the last in-histogram one
    # Millisecond buckets past 50 ms: bucket 50000 + j is [50 + j, 51 + j) ms.
    hist[50000 + 150] = 200
    assert _procstat.percentiles_ms(hist.tobytes(), 0, 0, (0.99,)) == [201.0]
    empty = _procstat.percentiles_ms(np.zeros(10, dtype=np.int64).tobytes(), 0, 0, (0.5,))
    assert np.isnan(empty[0])


def test_procstat_reads_this_process():
    a = _procstat.read_cpu(os.getpid())
    x = 0
    for i in range(2_000_000):
        x += i
    b = _procstat.read_cpu(os.getpid())
    d = _procstat.cpu_delta(a, b)
    assert d.total_s > 0 and abs(d.user_s + d.sys_s - d.total_s) < 1e-9
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    assert _procstat.udp_drops(s.getsockname()[1]) == 0
    s.close()
    assert _procstat.core_busy_s(0) > 0

"""Interleaved A/B: the native engine vs the kernel-floor loop, same fan-out, many short runs.

bench/fanout.py measures the whole node (uvloop, control plane) once per forwarder, so on a
shared machine its node/floor ratio moves ±15% between runs. This script isolates the data
path: the engine (driven by its native read callback from an epoll loop) and FloorForwarder
alternate, pinned to core 0, for ``--pairs`` short runs each at a fixed input rate, and the
medians are compared. Usage: python bench/engine_vs_floor.py [--n 50] [--rate 2000]
[--pairs 8] [--seconds 3]. The last line of output is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfu import _native as nat  # noqa: E402


def _schedstat_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _serve_engine(engine: nat.Engine, tid: int, fd: int, stop_fd: int) -> None:
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    ep.register(stop_fd, select.EPOLLIN)
    reader = nat.UdpReader(engine, tid, engine.drain_events)
    while True:
        ready = ep.poll()
        if any(f == stop_fd for f, _ in ready):
            return
        reader()


def one_run(kind: str, n: int, rate: float, seconds: float) -> float:
    """CPU µs per forwarded copy of one forwarder kind, measured in a pinned child."""
    sink = nat.UdpSink(n)
    engine = None
    if kind == "floor":
        floor = nat.FloorForwarder([("127.0.0.1", p) for p in sink.ports])
        port = floor.port
    else:
        engine = nat.Engine()
        srv = nat.bench_udp_socket("127.0.0.1", 0)
        tid = engine.add_udp(srv.fileno())
        port = srv.getsockname()[1]
    blaster = nat.UdpBlaster("127.0.0.1", port, size=1100, ssrc=1111)
    if engine is not None:
        pub = engine.add_peer(tid)
        engine.bind_peer(pub, "127.0.0.1", blaster.port)
        sid = engine.add_source(pub, nat.KIND_VIDEO, 90000)
        engine.add_ingress(sid, 1111, 96)
        for i, p in enumerate(sink.ports):
            viewer = engine.add_peer(tid)
            engine.bind_peer(viewer, "127.0.0.1", p)
            engine.add_downtrack(sid, viewer, 5000 + i, 96)
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {0})
        if engine is None:
            floor.run(stop_r)
        else:
            _serve_engine(engine, tid, srv.fileno(), stop_r)
        os._exit(0)
    try:
        c0 = _schedstat_ns(pid)
        sent = nat.bench_drive(blaster, sink, rate, seconds, 0.2)
        c1 = _schedstat_ns(pid)
    finally:
        os.write(stop_w, b"x")
        os.waitpid(pid, 0)
        os.close(stop_r)
        os.close(stop_w)
        blaster.close()
        sink.close()
    received = sum(sink.counts())
    if received != sent * n:
        print(f"  warning: {kind} delivered {received} of {sent * n} copies", file=sys.stderr)
    return (c1 - c0) / 1e3 / max(1, sent * n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    runs: dict[str, list[float]] = {"engine": [], "floor": []}
    for i in range(args.pairs):
        for kind in ("engine", "floor"):
            runs[kind].append(one_run(kind, args.n, args.rate, args.seconds))
        print(f"[{i + 1}/{args.pairs}] engine {runs['engine'][-1]:.3f} µs/copy, "
              f"floor {runs['floor'][-1]:.3f} µs/copy", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["engine"] / med["floor"]
    print(f"N={args.n} at {args.rate:.0f} pkt/s in, {args.pairs} interleaved pairs: engine "
          f"{med['engine']:.3f} µs/copy, floor {med['floor']:.3f} µs/copy, ratio {ratio:.3f}")
    print(json.dumps({"n": args.n, "rate": args.rate, "engine_us_per_copy": med["engine"],
                      "floor_us_per_copy": med["floor"], "engine_vs_floor": ratio,
                      "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

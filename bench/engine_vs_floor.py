"""Interleaved A/B: the native engine vs the kernel-floor loop, same fan-out, many short runs.

bench/fanout.py measures the whole node (uvloop, control plane) once per forwarder, so on a
shared machine its node/floor ratio moves ±15% between runs. This script isolates the data
path: the engine (driven by its native read callback from an epoll loop) and FloorForwarder
alternate, pinned to core 0, for ``--pairs`` short runs each at a fixed input rate, and the
medians are compared. With --simulcast a third kind, "engine_sc", joins the rotation: the same
engine with the issue-4 path on (a 3-layer VP8 source with 3 temporal layers, so viewers use the
switching rewriter, and transport-wide seq stamping + send records for every viewer);
`simulcast_vs_engine` is its median over the plain engine's. Usage:
python bench/engine_vs_floor.py [--n 50] [--rate 2000] [--pairs 8] [--seconds 3] [--simulcast].
The last line of output is a JSON object.
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
        sc = kind == "engine_sc"
        pub = engine.add_peer(tid)
        engine.bind_peer(pub, "127.0.0.1", blaster.port)
        sid = engine.add_source(pub, nat.KIND_VIDEO, 90000)
        if sc:
            engine.set_source_media(sid, "VP8", 3, 3)
            for layer in range(3):
                engine.add_ingress(sid, 1111 + layer, 96, layer=layer)
        else:
            engine.add_ingress(sid, 1111, 96)
        for i, p in enumerate(sink.ports):
            viewer = engine.add_peer(tid)
            engine.bind_peer(viewer, "127.0.0.1", p)
            did = engine.add_downtrack(sid, viewer, 5000 + i, 96)
            if sc:
                engine.set_peer_transport_cc(viewer, 5)
                engine.set_downtrack_recovery(did, rtx_ssrc=9000 + i, rtx_payload_type=97)
                engine.set_downtrack_layer(did, 0, 2, 0.0)
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
    ap.add_argument("--simulcast", action="store_true",
                    help="also run the engine with layer switching + TWCC stamping")
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    kinds = ("engine", "engine_sc", "floor") if args.simulcast else ("engine", "floor")
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.pairs):
        for kind in kinds:
            runs[kind].append(one_run(kind, args.n, args.rate, args.seconds))
        print(f"[{i + 1}/{args.pairs}] " + ", ".join(
            f"{k} {runs[k][-1]:.3f} µs/copy" for k in kinds), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["engine"] / med["floor"]
    out = {"n": args.n, "rate": args.rate, "engine_us_per_copy": med["engine"],
           "floor_us_per_copy": med["floor"], "engine_vs_floor": ratio, "runs": runs}
    line = (f"N={args.n} at {args.rate:.0f} pkt/s in, {args.pairs} interleaved rounds: engine "
            f"{med['engine']:.3f} µs/copy, floor {med['floor']:.3f} µs/copy, ratio {ratio:.3f}")
    if args.simulcast:
        out["engine_sc_us_per_copy"] = med["engine_sc"]
        out["simulcast_vs_engine"] = med["engine_sc"] / med["engine"]
        # Same-round ratios: each round's runs are seconds apart, so drift mostly cancels.
        out["simulcast_vs_engine_rounds"] = [a / b for a, b in
                                             zip(runs["engine_sc"], runs["engine"], strict=True)]
        line += (f"; engine_sc {med['engine_sc']:.3f} µs/copy = "
                 f"{out['simulcast_vs_engine']:.3f}x the engine")
    print(line)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loss-recovery matrix (issue 3): residual loss at the viewer next to the model bound.

Each case starts a fresh node in this process (sfu.server.start_node, embedded defaults),
creates a room, and puts one ProbePublisher and one ProbeSubscriber (sfu/client/probe.py)
behind their own LossyLink (bench/lossy_link.py): publisher ↔ [uplink proxy] ↔ node ↔
[downlink proxy] ↔ subscriber. Loss is applied in both directions of a lossy leg (media one
way, NACK/RR the other), the leg's RTT is split evenly between its two directions, and the
loss chains are seeded. A case runs a warm-up (the node measures the viewer's loss from its
RRs and picks its plan), then measures a window of packets while the stream goes on; the
figures below are of that window only.

Per case: residual (1 − packets available by send time + base delay + budget / packets sent),
the model for the plan the node chose (sfu/recovery.py, time-weighted over the plans seen in
stats.get during the window), the ideal plan's model, FEC overhead vs the erasure bound
p/(1−p) (node-side downtrack bytes), RTX overhead, recovered counts and packets.

Cases (JSON keys): residual_nack_10pct (downlink 10 % i.i.d. each way, RTT 50 ms, budget
200 ms, FEC off), residual_fec_20pct (20 % i.i.d., RTT 100, FEC auto), residual_ge_10pct
(Gilbert–Elliott 10 % mean, mean burst 3, RTT 100, auto), residual_fec_30pct (30 % i.i.d.,
RTT 100, auto), residual_both_legs_10pct (10 % each way on both legs, RTT 50 per leg, auto),
control_no_recovery_20pct (20 % i.i.d., RTT 100, no NACK/RTX/FEC: the damage).

Usage: python bench/loss.py [--quick] [--cases a,b] [--pps 500] [--seed 1] [--json out.json]
Progress on stderr; the table, then one JSON object (the last line) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from lossy_link import LinkProfile, LossyLink  # noqa: E402

from sfu import recovery  # noqa: E402
from sfu.recovery import Link, Plan  # noqa: E402

ROOM = "loss"
BUDGET_S = 0.2
SIZE = 1000  # probe payload bytes
RTP_BYTES = SIZE + 12
SETTLE_S = 0.6  # after the window: every packet of it is due (budget + RTT) and settled
STATS_EVERY_S = 0.5


@dataclass(frozen=True)
class Leg:
    """One lossy leg: loss model (both directions), its RTT (split evenly)."""

    loss: float = 0.0
    burst: float | None = None  # Gilbert–Elliott mean burst; None = i.i.d.
    rtt_ms: float = 0.0

    def profile(self) -> LinkProfile:
        delay = self.rtt_ms / 2.0
        if self.loss <= 0.0:
            return LinkProfile(delay_ms=delay)
        if self.burst is not None:
            return LinkProfile.gilbert_elliott(self.loss, self.burst, delay_ms=delay)
        return LinkProfile.iid(self.loss, delay_ms=delay)

    def link(self, pps: float) -> Link:
        return Link(self.loss, rtt_s=self.rtt_ms / 1000.0, mean_burst=self.burst,
                    back_loss=self.loss, pps=pps, packet_bytes=RTP_BYTES)


@dataclass(frozen=True)
class Case:
    name: str
    down: Leg
    up: Leg = field(default_factory=Leg)
    fec: str = "auto"  # the viewer's recovery.fec
    nack: bool = True
    packets: int = 5000  # measured packets, quick mode (full: × FULL_FACTOR)
    warm_s: float = 4.0
    issue_limit: float | None = None  # the issue's residual ceiling

    @property
    def fec_case(self) -> bool:
        return self.fec != "off"


CASES = (
    Case("residual_nack_10pct", Leg(0.10, None, 50.0), fec="off", packets=10_000, warm_s=1.0,
         issue_limit=0.001),
    Case("residual_fec_20pct", Leg(0.20, None, 100.0), issue_limit=0.01),
    Case("residual_ge_10pct", Leg(0.10, 3.0, 100.0), issue_limit=0.01),
    Case("residual_fec_30pct", Leg(0.30, None, 100.0), issue_limit=0.02),
    Case("residual_both_legs_10pct", Leg(0.10, None, 50.0), up=Leg(0.10, None, 50.0),
         issue_limit=0.005),
    Case("control_no_recovery_20pct", Leg(0.20, None, 100.0), fec="off", nack=False,
         packets=3000, warm_s=0.5),
)
FULL_FACTOR = 6


def progress(msg: str) -> None:
    print(f"[loss {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- reading the node's view ---------------------------------------------------------------

def _downtrack(stats: dict[str, Any]) -> dict[str, int]:
    """The viewer's (single) subscription downtrack row from stats.get(room, participant)."""
    for sub in stats.get("subscriptions", []):
        dt = sub.get("downtrack")
        if isinstance(dt, dict):
            return {k: int(v) for k, v in dt.items() if isinstance(v, int | float)}
    return {}


def _recovery_view(stats: dict[str, Any]) -> dict[str, Any]:
    """The node's own view of the viewer's recovery (plan, link estimate, model), if any."""
    for sub in stats.get("subscriptions", []):
        rec = sub.get("recovery")
        if isinstance(rec, dict):
            return rec
    return {}


def _source(stats: dict[str, Any]) -> dict[str, int]:
    for track in stats.get("tracks", []):
        src = track.get("source")
        if isinstance(src, dict):
            return {k: int(v) for k, v in src.items() if isinstance(v, int | float)}
    return {}


def _plan_of(dt: dict[str, int], nack: bool) -> Plan:
    k, m = dt.get("fec_k", 0), dt.get("fec_m", 0)
    if k >= 1 and m >= 1:
        return Plan(nack, "rs", min(k, recovery.RS_MAX_K), min(m, recovery.RS_MAX_M))
    return Plan(nack, "off")


class PlanLog:
    """Polls stats.get while a window runs: which plan the node applied, for how long."""

    def __init__(self, ctl: Any, nack: bool) -> None:
        self.ctl = ctl
        self.nack = nack
        self.samples: list[tuple[float, Plan, dict[str, int]]] = []
        self.recovery_view: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        viewer = await self.ctl.call("stats.get", room=ROOM, participant="viewer")
        host = await self.ctl.call("stats.get", room=ROOM, participant="host")
        self.recovery_view = _recovery_view(viewer)
        return _downtrack(viewer), _source(host)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a slow control reply only loses a sample
                dt, _ = await self.snapshot()
                self.samples.append((time.monotonic(), _plan_of(dt, self.nack), dt))
            await asyncio.sleep(STATS_EVERY_S)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def plans(self) -> list[tuple[Plan, float]]:
        """(plan, seconds) in order of first use."""
        out: dict[Plan, float] = {}
        for (t0, plan, _), (t1, _, _) in zip(self.samples, self.samples[1:], strict=False):
            out[plan] = out.get(plan, 0.0) + (t1 - t0)
        if self.samples and not out:
            out[self.samples[-1][1]] = STATS_EVERY_S
        return list(out.items())


def model_for(case: Case, plans: list[tuple[Plan, float]], pps: float) -> float:
    """Time-weighted modelled residual of the plans the node applied, on the true link."""
    down = case.down.link(pps)
    if not plans:
        plans = [(Plan(case.nack, "off"), 1.0)]
    total = sum(w for _, w in plans) or 1.0
    r = 0.0
    for plan, w in plans:
        if case.up.loss > 0:
            up_plan = Plan(case.nack, "off")
            r += w * recovery.two_leg_residual(case.up.link(pps), up_plan, down, plan, BUDGET_S)
        else:
            r += w * recovery.residual(plan, down, BUDGET_S)
    return r / total


def ideal_plan(case: Case, pps: float) -> Plan:
    if not case.fec_case:
        return Plan(case.nack, "off")
    link = case.down.link(pps)
    return recovery.choose_plan(link, BUDGET_S, nack=case.nack,
                                k=recovery.block_length(pps))


# ---- one case ------------------------------------------------------------------------------

def _window(sub: Any, first: int, end: int) -> dict[str, Any] | None:
    """Counts for indices first..end-1 from the probe's per-index record (the base delay is
    the run's minimum transit, as in ProbeSubscriber.result); None if it has no record."""
    available = getattr(sub, "available", None)
    if not isinstance(available, dict):
        return None
    base = getattr(sub, "base_delay", None) or 0.0
    counts = {"direct": 0, "rtx": 0, "fec": 0}
    late = 0
    for index in range(first, end):
        entry = available.get(index)
        if entry is None:
            continue
        sent_at, at, how = entry
        counts[how if how in counts else "fec"] += 1
        if at > sent_at + base + sub.budget_s:
            late += 1
    got = sum(counts.values())
    return {"expected": end - first, "on_time": got - late, "direct": counts["direct"],
            "recovered_rtx": counts["rtx"], "recovered_fec": counts["fec"], "late": late,
            "never": end - first - got}


def _delta(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return float(b.get(key, 0) or 0) - float(a.get(key, 0) or 0)


async def run_case(case: Case, pps: float, packets: int, seed: int) -> dict[str, Any]:
    from sfu.client.probe import ProbePublisher, ProbeSubscriber
    from sfu.config import NodeConfig
    from sfu.control import Client
    from sfu.server import start_node

    measure_s = packets / pps
    with tempfile.TemporaryDirectory(prefix="sfu-loss-") as tmp:
        cfg = NodeConfig(udp_host="127.0.0.1", udp_port=0,
                         control_path=os.path.join(tmp, "sfu.sock"), log_level="warning")
        running = await start_node(cfg)
        links: list[LossyLink] = []
        pub = sub = None
        ctl = None
        try:
            assert cfg.control_path is not None
            ctl = await Client.connect_unix(cfg.control_path)
            await ctl.call("room.create", room=ROOM)
            node = running.udp_address
            # uplink proxy: client = publisher ("up" = media to the node)
            up_link = await LossyLink.start(target=node, up=case.up.profile(),
                                            down=case.up.profile(), seed=seed)
            # downlink proxy: client = subscriber ("down" = media to the viewer)
            down_link = await LossyLink.start(target=node, up=case.down.profile(),
                                              down=case.down.profile(), seed=seed + 1000)
            links = [up_link, down_link]
            pub = ProbePublisher(up_link.address, rate_pps=int(pps), size=SIZE, kind="video",
                                 rtx=case.nack)
            track = await pub.join(ctl, ROOM, "host")
            sub = ProbeSubscriber(down_link.address, budget_s=BUDGET_S, nack=case.nack,
                                  rtx=case.nack, fec=case.fec)
            await sub.join(ctl, ROOM, "viewer", track)
            sub.start()
            log = PlanLog(ctl, case.nack)

            progress(f"{case.name}: warm-up {case.warm_s:.1f} s")
            await pub.run(case.warm_s)
            # The stream never pauses: a gap would skew the node's rate and loss estimates,
            # and the window's last packets need successors for their holes to be seen.
            sent0 = int(pub.stats()["sent"])
            r0 = sub.result(sent0)  # only for the fallback when the probe keeps no record
            p0 = pub.stats()
            dt0, src0 = await log.snapshot()
            progress(f"{case.name}: measuring {packets} packets ({measure_s:.1f} s at "
                     f"{pps:.0f}/s)")
            log.start()
            t0 = time.monotonic()
            await pub.run(measure_s)
            elapsed = time.monotonic() - t0
            sent1 = int(pub.stats()["sent"])
            p1 = pub.stats()
            dt1, src1 = await log.snapshot()
            await log.stop()
            await pub.run(SETTLE_S)  # every packet of the window is due or settled after this
            r1 = sub.result(sent1)
            win = _window(sub, sent0, sent1)
            link_stats = {"uplink": {"media_dir": up_link.up.line(),
                                     "back_dir": up_link.down.line()},
                          "downlink": {"media_dir": down_link.down.line(),
                                       "back_dir": down_link.up.line()}}
        finally:
            if sub is not None:
                sub.close()
            if pub is not None:
                pub.close()
            for link in links:
                await link.close()
            if ctl is not None:
                await ctl.close()
            await running.close()

    if win is not None:
        r0, r1 = {}, {**r1, **win}  # exact per-index figures of the window
    expected = _delta(r0, r1, "expected")
    on_time = _delta(r0, r1, "on_time")
    media_b = _delta(dt0, dt1, "bytes") or _delta(r0, r1, "media_bytes")
    fec_b = _delta(dt0, dt1, "fec_bytes") if "fec_bytes" in dt1 else _delta(r0, r1, "fec_bytes")
    rtx_b = _delta(dt0, dt1, "rtx_bytes") if "rtx_bytes" in dt1 else _delta(r0, r1, "rtx_bytes")
    plans = log.plans()
    bound = recovery.erasure_bound(case.down.loss)
    fec_over = fec_b / media_b if media_b > 0 else 0.0
    ideal = ideal_plan(case, pps)
    res: dict[str, Any] = {
        "residual": 1.0 - on_time / expected if expected > 0 else None,
        "model": model_for(case, plans, pps),
        "model_ideal": model_for(case, [(ideal, 1.0)], pps),
        "issue_limit": case.issue_limit,
        "packets": int(expected),
        "on_time": int(on_time),
        "direct": int(_delta(r0, r1, "direct")),
        "recovered_rtx": int(_delta(r0, r1, "recovered_rtx")),
        "recovered_fec": int(_delta(r0, r1, "recovered_fec")),
        "late": int(_delta(r0, r1, "late")),
        "never": int(_delta(r0, r1, "never")),
        "nacks_sent": int(_delta(r0, r1, "nacks_sent")),
        "fec_overhead": fec_over,
        "erasure_bound": bound,
        "fec_overhead_over_bound": fec_over / bound if bound > 0 else None,
        "rtx_overhead": rtx_b / media_b if media_b > 0 else 0.0,
        "probe_fec_overhead": r1.get("fec_overhead"),
        "plans": [{"nack": p.nack, "fec": p.fec, "k": p.k, "m": p.m, "seconds": round(s, 2)}
                  for p, s in plans],
        "plan_ideal": {"nack": ideal.nack, "fec": ideal.fec, "k": ideal.k, "m": ideal.m},
        "node_downtrack": {k: dt1.get(k, 0) - dt0.get(k, 0) for k in dt1
                           if k in ("packets", "nack_in", "nack_seqs", "nack_runs", "rtx_sent",
                                    "resend_miss", "fec_sent", "rr_count")},
        "node_source": {k: src1.get(k, 0) - src0.get(k, 0) for k in src1
                        if k in ("packets", "lost", "nack_sent", "recovered_rtx",
                                 "recovered_fec", "recovered_late", "unrecovered", "rtx_in")},
        "node_recovery": log.recovery_view,  # the node's estimate and model at the end
        "rr_fraction_lost_last": dt1.get("rr_fraction_lost", 0) / 256.0,
        "rtt_ms_node": dt1.get("rtt_us", 0) / 1000.0,
        "rtt_ms_probe": r1.get("rtt_ms"),
        "publisher": {"sent": int(_delta(p0, p1, "sent")),
                      "rtx_sent": int(_delta(p0, p1, "rtx_sent")),
                      "nacks_in": int(_delta(p0, p1, "nacks_in"))},
        "links": link_stats,
        "window_s": round(elapsed, 2),
        "pps": pps,
    }
    return res


# ---- report --------------------------------------------------------------------------------

def _pct(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{100.0 * v:.{digits}f}%"


def table(results: dict[str, dict[str, Any]]) -> str:
    head = ("case", "residual", "model", "ideal", "limit", "plan", "est loss", "fec ovh",
            "bound", "ovh/bd", "rtx ovh", "rec rtx", "rec fec", "late", "never", "packets")
    rows = [head]
    errors = []
    for name, r in results.items():
        if "error" in r:
            errors.append(f"{name}: ERROR {r['error']}")
            continue
        plan = ",".join(f"{p['fec']}({p['k']},{p['m']})" if p["fec"] != "off" else
                        ("nack" if p["nack"] else "none") for p in r["plans"]) or "-"
        ob = r["fec_overhead_over_bound"]
        est = (r.get("node_recovery") or {}).get("link", {}).get("loss")
        rows.append((name, _pct(r["residual"]), _pct(r["model"]), _pct(r["model_ideal"]),
                     _pct(r["issue_limit"], 1), plan, _pct(est, 1), _pct(r["fec_overhead"], 1),
                     _pct(r["erasure_bound"], 1), "-" if ob is None else f"{ob:.2f}",
                     _pct(r["rtx_overhead"], 1), str(r["recovered_rtx"]),
                     str(r["recovered_fec"]), str(r["late"]), str(r["never"]),
                     str(r["packets"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines += errors
    lines.append("residual = not available by send + base delay + 200 ms; model = "
                 "sfu/recovery.py for the plans the node applied (ideal: the plan it would "
                 "pick knowing the link); est loss = the node's estimate of the viewer's link "
                 "at the end; ovh = FEC bytes / media bytes to the viewer; bound = p/(1-p)")
    return "\n".join(lines)


def summary(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in CASES:
        r = results.get(case.name)
        if r is not None:
            out[case.name] = r.get("residual")
    ratios = [r["fec_overhead_over_bound"] for c in CASES if c.fec_case
              and (r := results.get(c.name)) and r.get("fec_overhead_over_bound") is not None]
    out["fec_overhead_over_bound"] = max(ratios) if ratios else None
    out["meta"] = meta
    out["cases"] = results
    return out


async def main_async(args: argparse.Namespace) -> int:
    wanted = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    unknown = set(args.cases.split(",")) - {c.name for c in CASES} if args.cases else set()
    if unknown:
        progress(f"unknown cases: {', '.join(sorted(unknown))}")
        return 2
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    for i, case in enumerate(wanted):
        packets = args.packets or (case.packets if args.quick else case.packets * FULL_FACTOR)
        warm = case.warm_s if args.warm is None else args.warm
        case = Case(case.name, case.down, case.up, case.fec, case.nack, packets, warm,
                    case.issue_limit)
        try:
            r = await asyncio.wait_for(run_case(case, args.pps, packets, args.seed + 17 * i),
                                       timeout=packets / args.pps + warm + 60.0)
        except Exception as exc:  # one broken case must not hide the others' numbers
            progress(f"{case.name}: failed: {exc!r}")
            results[case.name] = {"error": repr(exc)}
            continue
        results[case.name] = r
        progress(f"{case.name}: residual {_pct(r['residual'])} (model {_pct(r['model'])}), "
                 f"fec overhead {_pct(r['fec_overhead'], 1)} = "
                 f"{r['fec_overhead_over_bound'] or 0:.2f}× bound, "
                 f"rtx {_pct(r['rtx_overhead'], 1)}")
    meta = {"quick": args.quick, "pps": args.pps, "payload_bytes": SIZE, "budget_s": BUDGET_S,
            "seed": args.seed, "seconds": round(time.time() - started, 1),
            "loadavg": os.getloadavg()}
    print(table(results))
    doc = summary(results, meta)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        progress(f"wrote {args.json}")
    progress(f"done in {time.time() - started:.0f} s")
    print(json.dumps(doc))
    return 0 if all("error" not in r for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (< 5 minutes)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--pps", type=float, default=500.0, help="probe packets per second")
    ap.add_argument("--packets", type=int, default=0, help="measured packets per case "
                    "(default: per case, ×6 without --quick)")
    ap.add_argument("--warm", type=float, default=None, help="warm-up seconds per case")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the JSON document here")
    args = ap.parse_args(argv)
    if args.pps <= 0 or args.packets < 0:
        ap.error("--pps must be > 0 and --packets >= 0")
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

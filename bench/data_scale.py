"""Data messages at scale: one DataHub room of 2,000 viewers under the issue's load.

10,000 likes/s (5 like packets/s from every viewer), 500 comments/s (1,000 posters at
0.5/s), 5 orders/s from the business service and 2 host messages/s (over the host's data
packets) for ``--seconds`` of simulated time, interval 200 ms. Viewers ask for caps 5, 10,
20 or keep the default 10. Only the hub's work is timed: ``send`` just keeps the datagrams,
which are decoded afterwards to check what every viewer got.

Run: .venv/bin/python bench/data_scale.py [--seconds 10] [--viewers 2000]
Prints CPU seconds per simulated second, each cap group's comment rate (min/max per viewer
over the run, vs its cap), priority messages delivered/expected (in order per viewer), and a
last line with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfu import data_wire as w  # noqa: E402
from sfu.data import DataHub  # noqa: E402
from sfu.events import EventBus  # noqa: E402

STEP = 0.01  # simulated seconds per input step
CAPS = (5, 10, 20, None)  # None: the room default (10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--viewers", type=int, default=2000)
    args = ap.parse_args()
    n_viewers, seconds = args.viewers, args.seconds

    sent: list[tuple[Any, bytes]] = []

    def send(pids: Any, datagram: bytes) -> int:
        sent.append((pids, datagram))
        return len(pids)

    bus = EventBus()
    events = [0]
    bus.subscribe(None, lambda e: events.__setitem__(0, events[0] + 1))
    hub = DataHub(bus, send, 0x5FD0_0003, interval_s=0.2, clock=lambda: now)
    now = 0.0
    host = n_viewers + 1
    hub.add_member("r", host, "host", "host")
    cap_of = np.zeros(host + 1, dtype=np.int32)
    cap_of[host] = 10
    settings = {c: w.parse_app(w.build_settings(0, c))[0][2] for c in CAPS if c is not None}
    for pid in range(1, n_viewers + 1):
        hub.add_member("r", pid, f"v{pid}", "audience")
        cap = CAPS[pid % len(CAPS)]
        if cap is not None:
            hub.on_datagram(pid, w.SETTINGS, settings[cap], 0.0)
        cap_of[pid] = cap or 10
    like = w.parse_app(w.build_msg(0, "like", count=1))[0][2]
    comments = [w.parse_app(w.build_msg(0, "comment", text=f"好物推荐 comment {i}"))[0][2]
                for i in range(64)]
    host_msgs = [w.parse_app(w.build_msg(0, "comment", text=f"主播: deal {i}"))[0][2]
                 for i in range(64)]

    steps = round(seconds / STEP)
    likes_per_step = round(10_000 * STEP)
    comments_per_step = round(500 * STEP)
    like_pid = comment_pid = 0
    expected_pi = 0
    likes_sent = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(1, steps + 1):
        now = step * STEP
        for _ in range(likes_per_step):
            like_pid = like_pid % n_viewers + 1
            hub.on_datagram(like_pid, w.MSG, like, now)
        likes_sent += likes_per_step
        for _ in range(comments_per_step):
            comment_pid = comment_pid % min(1000, n_viewers) + 1
            hub.on_datagram(comment_pid, w.MSG, comments[step % 64], now)
        if step % 20 == 0:  # 5 orders/s
            hub.send("r", "order", sender=f"v{step % n_viewers + 1}", role="audience",
                     text="bought 1", extra={"sku": "A-100", "price": 9900})
            expected_pi += 1
        if step % 50 == 25:  # 2 host messages/s
            hub.on_datagram(host, w.MSG, host_msgs[step % 64], now)
            expected_pi += 1
        if step % 100 == 0:
            hub.send("r", "viewer_count", count=n_viewers + step)
        if step % 20 == 0:
            hub.tick(now)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0

    # What every viewer got: decode each datagram once, account per pid with numpy.
    got_comments = np.zeros(host + 1, dtype=np.int64)
    last_pi = np.zeros(host + 1, dtype=np.int64)
    out_of_order = 0
    likes_total = 0
    datagrams = 0
    for pids, datagram in sent:
        idx = np.frombuffer(pids, dtype=np.int32) if not isinstance(pids, tuple) else \
            np.array(pids, dtype=np.int32)
        datagrams += len(idx)
        [(_st, _ssrc, payload)] = w.parse_app(datagram)
        _hp, msgs = w.decode_batch(payload)
        n_comments = 0
        for m in msgs:
            if "pi" in m:
                bad = last_pi[idx] != m["pi"] - 1
                out_of_order += int(bad.sum())
                last_pi[idx] = m["pi"]
            elif m["k"] == "comment":
                n_comments += 1
            elif m["k"] == "like":
                likes_total = max(likes_total, m["x"]["total"])
        got_comments[idx] += n_comments
    rates: dict[str, Any] = {}
    viewers = np.arange(1, n_viewers + 1)
    for cap in sorted({c or 10 for c in CAPS}):
        sel = viewers[cap_of[viewers] == cap]
        per_s = got_comments[sel] / seconds
        rates[str(cap)] = {"viewers": int(len(sel)), "min_per_s": round(float(per_s.min()), 2),
                           "max_per_s": round(float(per_s.max()), 2)}
    delivered = int((last_pi[1:] == expected_pi).sum())
    result = {
        "viewers": n_viewers, "seconds": seconds,
        "cpu_s_per_sim_s": round(cpu / seconds, 4), "wall_s": round(wall, 2),
        "datagrams_per_s": round(datagrams / seconds),
        "batches_built": hub.counters()["batches_built"],
        "comment_rate_by_cap": rates,
        "priority_expected": expected_pi,
        "viewers_with_all_priority": delivered, "priority_out_of_order": out_of_order,
        "likes_sent": likes_sent, "likes_total_seen": likes_total,
        "rate_limited": hub.counters()["rate_limited"], "events": events[0],
    }
    print(f"CPU {cpu:.3f} s for {seconds:g} simulated s: "
          f"{result['cpu_s_per_sim_s']:.4f} CPU s per simulated s")
    for cap, r in rates.items():
        print(f"cap {cap:>2}: {r['viewers']} viewers, comments/s per viewer "
              f"min {r['min_per_s']} max {r['max_per_s']}")
    print(f"priority: {delivered}/{len(last_pi) - 1} viewers got all {expected_pi} in order "
          f"({out_of_order} out of order); likes {likes_total}/{likes_sent}")
    print(json.dumps(result))
    ok = (delivered == n_viewers + 1 and out_of_order == 0 and likes_total == likes_sent
          and all(r["max_per_s"] <= int(c) for c, r in rates.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

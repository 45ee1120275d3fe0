"""Data messages over real UDP: a room of 2,000 viewers under the issue's atmosphere load.

A node subprocess (bench/_children.served_node); in this process 2,000 audience participants,
each a UDP socket bound with STUN (``RtpEndpoint.bind``) carrying a ``DataChannel`` (comment
cap: the room default, 10/s), and the host the same way. Load for 10 s (quick: 6 s):

- 10,000 likes/s: 100 like packets/s of 100 likes, over UDP from 50 viewers (2 packets/s
  each, under the node's 20/s per participant);
- 500 comments/s: over UDP from 125 viewers (4/s each, under the node's 5/s);
- FAQ questions: 3/s over UDP from one more viewer, matching the loaded FAQ (each answered:
  ``per_question_interval_s`` 0, and under the room's 5 answers/s);
- orders: 5/s, ``data.send`` kind ``order`` on the control socket (the business service);
- host messages: 2/s, comments over UDP from the host participant (priority: never dropped).

A tenth of the viewers ask for 5 comments/s and another tenth for 20/s (SETTINGS); the
``comments_per_s_*`` figures are the default-cap (10/s) viewers', ``comments_per_s_by_cap``
has every group.

Then 1.5 s for the last batches and NACK repairs. Reported (last line of ``__main__``: one
JSON object): ``priority_messages_lost`` (orders + host messages some viewer never got,
summed over viewers), ``priority_out_of_order`` (delivered out of the send order, summed),
per-viewer comments/s (max, median) vs the cap, likes seen vs sent, node CPU, FAQ answer
latency (comment sent over UDP -> the answer's arrival at a viewer that did not ask: the
kernel's receive timestamp, SO_TIMESTAMPNS, on the same wall clock as the send time; the
delivery by that viewer's channel in this busy loop is reported too), and
``synced_event_error_frames`` (the synced scenario of tests/test_synced_events.py on the same
node, max |error| in frames).

Run: .venv/bin/python bench/costream_data.py [--quick] [--viewers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _children import served_node  # noqa: E402
from _procstat import cpu_delta, read_cpu  # noqa: E402

from sfu.client.data import DataChannel  # noqa: E402
from sfu.client.publisher import RtpEndpoint, parse_hostport  # noqa: E402
from sfu.client.sync import run_synced_events  # noqa: E402
from sfu.control import Client  # noqa: E402

ROOM = "live"
CAP = 10
OTHER_CAPS = (5, 20)  # every 10th viewer asks for 5/s, every 10th + 5 for 20/s (SETTINGS)
LIKES_PER_S, LIKES_PER_PACKET, LIKE_SENDERS = 10_000, 100, 50
COMMENTS_PER_S, COMMENT_SENDERS = 500, 125
FAQ_PER_S = 3  # the room answers at most 5/s (FaqResponder): stay clear of it
ORDERS_PER_S = 5
HOST_PER_S = 2
DRAIN_S = 1.5
RCVBUF = 256 << 10  # per viewer socket: 2,000 of them
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not name it
FAQ_ENTRIES = [
    {"id": "ship", "patterns": ["包邮吗", "is shipping free"], "answer": "全国包邮"},
    {"id": "size", "patterns": ["尺码怎么选", "what size should i get"], "answer": "看尺码表"},
    {"id": "when", "patterns": ["什么时候发货", "when will it ship"], "answer": "48小时内发货"},
    {"id": "coupon", "patterns": ["有优惠券吗", "is there a coupon"], "answer": "左下角领券"},
]
FAQ_QUESTIONS = ["主播包邮吗", "is shipping free?", "尺码怎么选呀", "when will it ship",
                 "有优惠券吗", "什么时候发货呢"]

Progress = Callable[[str], None]


class Viewer:
    """One audience member: a STUN-bound socket and its data channel; counts what it gets
    (the channel's plain-message list is emptied as it goes: 2,000 of them)."""

    def __init__(self, endpoint: RtpEndpoint, name: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.channel = DataChannel(endpoint)
        self.channel.on_message = self._on_message
        self.comments = 0
        self.cap = CAP
        self.likes_seen = 0  # sum of the aggregates' counts
        self.on_priority: Callable[[dict[str, Any], float], None] | None = None

    def _on_message(self, m: dict[str, Any]) -> None:
        kind = m["k"]
        if kind == "comment" and "pi" not in m:
            self.comments += 1
        elif kind == "like":
            self.likes_seen += int(m.get("n") or 0)
        if "pi" in m and self.on_priority is not None:
            self.on_priority(m, time.monotonic())

    def trim(self) -> None:
        self.channel.messages.clear()  # priority messages stay in channel.priority

    def close(self) -> None:
        self.channel.close()
        self.endpoint.close()


class KernelStamps:
    """Reads a viewer's socket with ``recvmsg`` and SO_TIMESTAMPNS: the kernel's arrival
    time (wall clock) of each datagram is ``at`` while the endpoint handles it. With 2,000
    sockets in this process, when our loop gets to a socket says more about this process
    than about the node; the kernel's stamp is when the answer reached the viewer."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.at = 0.0
        ep = viewer.endpoint
        assert ep.transport is not None
        self.sock: socket.socket = ep.transport.get_extra_info("socket")
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sock.fileno())
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.at = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    self.at = sec + nsec / 1e9
            self.viewer.endpoint.datagram_received(data, self.viewer.endpoint.node)


async def _join(client: Client, participant: str, role: str) -> Viewer:
    joined = await client.call("participant.join", room=ROOM, participant=participant,
                               role=role)
    ep = RtpEndpoint(parse_hostport(joined["udp"]), joined["ice_ufrag"], joined["ice_pwd"])
    await ep.open(rcvbuf=RCVBUF)
    try:
        await ep.bind(timeout=10.0)
    except BaseException:
        ep.close()
        raise
    return Viewer(ep, participant)


async def _join_all(client: Client, n: int, progress: Progress) -> list[Viewer]:
    viewers: list[Viewer] = []
    chunk = 50  # under the control limit of 64 requests in flight, and STUN 2,000/s
    for start in range(0, n, chunk):
        viewers += await asyncio.gather(*(_join(client, f"v{i}", "audience")
                                          for i in range(start, min(n, start + chunk))))
        if (start // chunk) % 10 == 9:
            progress(f"{len(viewers)} viewers bound")
    return viewers


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def run_data(quick: bool, progress: Progress, viewers_n: int = 2000,
                   synced_events: int | None = None) -> dict[str, Any]:
    seconds = 6.0 if quick else 10.0
    n_sync = synced_events if synced_events is not None else (3 if quick else 5)
    out: dict[str, Any] = {"data_viewers": viewers_n, "data_load_s": seconds, "comment_cap": CAP,
                           "comments_via": "udp (125 viewers x 4/s) + faq 3/s",
                           "likes_via": "udp (50 viewers x 2 packets/s x 100)",
                           "orders_via": "data.send on the control socket",
                           "host_messages_via": "udp comments from the host participant"}
    async with served_node(prefix="sfu-bench-data-") as (_addr, sock, proc):
        client = await Client.connect_unix(sock)
        viewers: list[Viewer] = []
        host: Viewer | None = None
        try:
            await client.call("room.create", room=ROOM)
            await client.call("data.configure", room=ROOM, comment_cap=CAP)
            await client.call("faq.load", room=ROOM, entries=FAQ_ENTRIES,
                              per_question_interval_s=0)
            t0 = time.monotonic()
            host = await _join(client, "host", "host")
            viewers = await _join_all(client, viewers_n, progress)
            out["data_join_s"] = round(time.monotonic() - t0, 2)
            progress(f"{len(viewers)} viewers + host bound in {out['data_join_s']} s; load "
                     f"{seconds:.0f} s")
            for i, v in enumerate(viewers[:-1]):  # the last one probes latencies
                if i % 10 in (0, 5):
                    v.cap = OTHER_CAPS[i % 10 // 5]
                    v.channel.set_cap(v.cap)
            await asyncio.sleep(1.0)  # the join's system messages and SETTINGS settle
            for v in viewers:
                v.trim()
                v.comments = v.likes_seen = 0
            out.update(await _load(client, proc.pid, host, viewers, seconds, progress))
            progress(f"synced events: {n_sync}")
            await client.call("room.create", room="sync")
            res = await run_synced_events(client, "sync", n_sync, seed=7)
            out["synced_event_errors"] = res.errors
            out["synced_event_missing"] = res.missing
            out["synced_event_late"] = sum(res.late)
            out["synced_event_error_frames"] = res.max_abs_error
        finally:
            for v in viewers:
                v.close()
            if host is not None:
                host.close()
            await client.close()
    return out


async def _load(client: Client, node_pid: int, host: Viewer, viewers: list[Viewer],
                seconds: float, progress: Progress) -> dict[str, Any]:
    n = len(viewers)
    like_senders = viewers[:LIKE_SENDERS]
    comment_senders = viewers[LIKE_SENDERS:LIKE_SENDERS + COMMENT_SENDERS]
    faq_sender = viewers[LIKE_SENDERS + COMMENT_SENDERS]
    probe = viewers[-1]  # measures FAQ answer and order latency: it sends nothing
    stamps = KernelStamps(probe)
    faq_sent: dict[str, float] = {}  # question -> time.time() it was sent
    faq_lat: list[float] = []  # kernel arrival at the probe - sent
    faq_app_lat: list[float] = []  # delivered by the probe's channel (this loop) - sent
    order_sent: dict[int, float] = {}
    order_lat: list[float] = []

    def on_probe(m: dict[str, Any], _at: float) -> None:
        now = time.time()
        if m["k"] == "faq_answer":
            sent = faq_sent.get(str((m.get("x") or {}).get("question")))
            if sent is not None:
                faq_lat.append((stamps.at - sent) * 1000)
                faq_app_lat.append((now - sent) * 1000)
        elif m["k"] == "order":
            sent = order_sent.get(int((m.get("x") or {}).get("k", -1)))
            if sent is not None:
                order_lat.append((stamps.at - sent) * 1000)

    probe.on_priority = on_probe
    orders_ok: list[int] = []
    order_errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def order(k: int) -> None:
        order_sent[k] = time.time()
        try:
            await client.call("data.send", room=ROOM, kind="order", text=f"order {k}",
                              extra={"k": k})
            orders_ok.append(k)
        except Exception as exc:  # counted, the load goes on
            order_errors.append(repr(exc))

    sent = {"likes": 0, "like_packets": 0, "comments": 0, "faq": 0, "orders": 0, "host": 0}
    cpu0 = read_cpu(node_pid)
    loop = asyncio.get_running_loop()
    start = loop.time()
    lag_max = 0.0
    while True:
        now = loop.time()
        el = now - start
        if el >= seconds:
            break
        # Whatever is due by now (a late tick catches up: the totals stay exact).
        for _ in range(int(el * LIKES_PER_S / LIKES_PER_PACKET) - sent["like_packets"]):
            like_senders[sent["like_packets"] % len(like_senders)].channel.send_like(
                LIKES_PER_PACKET)
            sent["like_packets"] += 1
            sent["likes"] += LIKES_PER_PACKET
        for _ in range(int(el * COMMENTS_PER_S) - sent["comments"]):
            k = sent["comments"]
            comment_senders[k % len(comment_senders)].channel.send_comment(f"c{k} 666 好看")
            sent["comments"] += 1
        for _ in range(int(el * FAQ_PER_S) - sent["faq"]):
            k = sent["faq"]
            text = f"{FAQ_QUESTIONS[k % len(FAQ_QUESTIONS)]} #{k}"
            faq_sent[text] = time.time()
            faq_sender.channel.send_comment(text)
            sent["faq"] += 1
        for _ in range(int(el * ORDERS_PER_S) - sent["orders"]):
            task = loop.create_task(order(sent["orders"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent["orders"] += 1
        for _ in range(int(el * HOST_PER_S) - sent["host"]):
            host.channel.send_comment(f"host {sent['host']}")
            sent["host"] += 1
        lag_max = max(lag_max, loop.time() - now)
        await asyncio.sleep(0.01)
    cpu = cpu_delta(cpu0, read_cpu(node_pid))
    progress(f"load sent {sent}; draining {DRAIN_S} s")
    await asyncio.sleep(DRAIN_S)
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)

    # -- priority messages: every viewer, every order and host message, in order --
    lost = out_of_order = duplicates = held = nacks = given_up = 0
    for v in viewers:
        ch = v.channel
        got: list[tuple[str, int]] = []
        for m in ch.priority:
            if m["k"] == "order":
                got.append(("o", int((m.get("x") or {}).get("k", -1))))
            elif m.get("r") == "host" and m["k"] == "comment":
                got.append(("h", int(str(m.get("t", "host -1")).split()[-1])))
        orders = [k for kind, k in got if kind == "o"]
        hosts = [k for kind, k in got if kind == "h"]
        lost += len(set(orders_ok) - set(orders)) + len(set(range(sent["host"])) - set(hosts))
        # Orders leave one control connection in order, host messages one socket: each
        # stream must arrive in its send order, and every priority message in room order.
        out_of_order += sum(1 for a, b in zip(hosts, hosts[1:], strict=False) if b <= a)
        out_of_order += sum(1 for a, b in zip(orders, orders[1:], strict=False) if b <= a)
        out_of_order += sum(1 for a, b in zip(ch.priority, ch.priority[1:], strict=False)
                            if b["pi"] <= a["pi"])
        duplicates += len(got) - len(set(got))
        held += ch.counters.out_of_order
        nacks += ch.counters.nacks_sent
        given_up += ch.counters.lost
    by_cap: dict[int, list[float]] = {}
    for v in viewers:
        by_cap.setdefault(v.cap, []).append(v.comments / seconds)
    rates = by_cap[CAP]
    likes_seen = [v.channel.likes_total for v in viewers]
    result: dict[str, Any] = {
        "priority_messages_expected": (len(orders_ok) + sent["host"]) * n,
        "priority_messages_lost": lost,
        "priority_out_of_order": out_of_order,
        "priority_duplicates": duplicates,
        "priority_arrived_after_gap": held,  # repaired by NACK before delivery
        "priority_nacks_sent": nacks,
        "priority_given_up": given_up,
        "orders_sent": sent["orders"], "orders_accepted": len(orders_ok),
        "order_errors": order_errors[:3],
        "host_messages_sent": sent["host"],
        "comments_sent": sent["comments"] + sent["faq"],
        "comments_per_s_max": round(max(rates), 2),
        "comments_per_s_median": round(statistics.median(rates), 2),
        "comments_per_s_min": round(min(rates), 2),
        "comments_per_s_by_cap": {
            str(cap): {"viewers": len(r), "max": round(max(r), 2),
                       "median": round(statistics.median(r), 2), "min": round(min(r), 2)}
            for cap, r in sorted(by_cap.items())},
        "likes_sent": sent["likes"],
        "likes_total_seen_min": min(likes_seen),  # the room total in the last aggregate
        "likes_total_seen_max": max(likes_seen),
        "likes_summed_median": int(statistics.median(v.likes_seen for v in viewers)),
        "data_node_cpu_pct": round(100 * cpu.total_s / seconds, 1),
        "data_node_cpu_user_pct": round(100 * cpu.user_s / seconds, 1),
        "data_node_cpu_sys_pct": round(100 * cpu.sys_s / seconds, 1),
        "faq_sent": sent["faq"], "faq_answered_at_probe": len(faq_lat),
        "faq_answer_p50_ms": _pct(faq_lat, 50), "faq_answer_p99_ms": _pct(faq_lat, 99),
        "faq_answer_max_ms": round(max(faq_lat), 2) if faq_lat else None,
        "faq_answer_app_p99_ms": _pct(faq_app_lat, 99),  # incl. this process's backlog
        "order_delivery_p50_ms": _pct(order_lat, 50),
        "order_delivery_p99_ms": _pct(order_lat, 99),
        "load_tick_lag_max_ms": round(lag_max * 1000, 1),
    }
    progress(f"lost {lost}, out of order {out_of_order}, comments/s max "
             f"{result['comments_per_s_max']} median {result['comments_per_s_median']} "
             f"(cap {CAP}), node CPU {result['data_node_cpu_pct']} %, FAQ p99 "
             f"{result['faq_answer_p99_ms']} ms")
    return result


def _progress(msg: str) -> None:
    print(f"[costream_data {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 s of load, 3 synced events")
    ap.add_argument("--viewers", type=int, default=2000)
    ap.add_argument("--synced-events", type=int, default=None)
    args = ap.parse_args()
    result = uvloop.run(run_data(args.quick, _progress, args.viewers, args.synced_events))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

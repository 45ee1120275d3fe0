"""bench/quic.py --selftest: the RoQ benchmark's machinery runs end to end on a tiny setup
(4 viewers, 1 s windows, 30-frame migrations) and reports every figure. No speed is asserted:
the figures only have to exist, which needs RoQ forwarding, the latency probes and the
migrations to work. Also: the native RoQ publisher of its latency phase (QuicBlaster) seals
packets a real node decrypts, in order, and hands the packet numbers back to its QuicLink."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sfu import _native
from sfu.client.endpoint import parse_hostport
from sfu.client.quic import QuicLink
from sfu.control import Client
from tests.node_helpers import running_node
from tests.test_e2e_video import run, wait_until

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from quic_clients import NativePublisher, PublisherLink, media_packet, read_stamp  # noqa: E402

KEYS = ("udp_cpu_us_per_pkt", "roq_cpu_us_per_pkt", "roq_vs_udp", "roq_noack_cpu_us_per_pkt",
        "roq_p50_added_latency_ms", "roq_p99_added_latency_ms", "roq_latency_node_util",
        "migration_frames_lost", "migration_longest_freeze_ms", "udp_migration_frames_lost",
        "udp_migration_longest_freeze_ms")


@pytest.mark.timeout(120)
def test_selftest_reports_every_figure() -> None:
    proc = subprocess.run([sys.executable, "bench/quic.py", "--selftest", "--rt", "0",
                           "--pub-rt", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] == {}, summary["errors"]
    missing = [k for k in KEYS if summary.get(k) is None]
    assert not missing, (missing, proc.stderr[-2000:])
    assert summary["roq_copies_expected"] > 0 and summary["roq_latency_samples"] > 0
    assert summary["migration_frames_sent"] == summary["udp_migration_frames_sent"] == 30
    detail = json.loads((ROOT / "bench/results/quic_selftest.json").read_text())
    assert detail["summary"]["roq_vs_udp"] == summary["roq_vs_udp"]


@pytest.mark.timeout(30)
def test_native_quic_publisher_packets_decrypt_in_order_at_a_real_node() -> None:
    ssrc = 0x5EB0BE9

    async def main() -> None:
        async with running_node(quic_port=0) as running:
            assert running.control_path is not None
            client = await Client.connect_unix(running.control_path)
            links: list[QuicLink] = []
            direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            direct.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # read at the end
            direct.bind(("127.0.0.1", 0))
            direct.settimeout(2.0)
            pub: NativePublisher | None = None
            try:
                await client.call("room.create", room="nq")
                j = await client.call("participant.join", room="nq", participant="pub",
                                      role="host")
                link = PublisherLink(parse_hostport(j["quic"]))
                links.append(link)
                await link.connect()
                await link.authenticate("nq", "pub", j["token"])
                track = (await client.call(
                    "track.publish", room="nq", participant="pub", kind="video", codec="VP8",
                    payload_type=96, clock_rate=90000,
                    layers=[{"rid": "f", "ssrc": ssrc}]))["track"]
                v = await client.call("participant.join", room="nq", participant="v",
                                      role="audience")
                viewer = QuicLink(parse_hostport(v["quic"]))
                links.append(viewer)
                got: list[bytes] = []
                viewer.on_datagram = lambda d: got.append(d) if read_stamp(d) else None
                await viewer.connect()
                await viewer.authenticate("nq", "v", v["token"])
                await client.call("track.subscribe", room="nq", participant="v", track=track)

                pub = NativePublisher(link, ssrc, 1100, direct.getsockname())
                pn0 = link.quic._packet_number
                sent = await pub.run(400.0, 0.25)  # paced, on a thread
                sent += pub.send(5)  # back to back
                assert sent >= 50 and pub.errors == 0
                assert link.quic._packet_number >= pn0 + sent  # numbers handed back
                # Then the link itself: its packet numbers must not collide with the
                # native ones (the node would drop the packet as a duplicate).
                seq = pub.blaster.seq
                link.send(media_packet(seq, 0, ssrc, 1100, 1))
                await wait_until(lambda: len(got) >= sent + 1, 10.0,
                                 lambda: f"{len(got)} of {sent + 1} packets")
                assert len(got) == sent + 1
                seqs = [int(_native.parse_rtp(d)["sequence_number"]) for d in got]
                assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
                stamps = [read_stamp(d) or 0 for d in got[:-1]]
                assert stamps == sorted(stamps) and len(set(stamps)) == sent
                assert (read_stamp(got[-1]) or 0) > stamps[-1]  # PublisherLink re-stamps
                # The direct path got the same RTP bytes with the same stamps.
                assert pub.blaster.direct_sent == sent, pub.blaster.direct_sent
                direct_stamps = [read_stamp(direct.recv(2048)) for _ in range(sent)]
                assert direct_stamps == stamps
                assert running.node.quic is not None
                assert running.node.quic.counters["quic_datagrams_in"] == sent + 1
            finally:
                if pub is not None:
                    pub.close()
                for q in links:
                    q.close()
                direct.close()
                await client.close()

    run(main)

"""bench/quic.py --selftest: the RoQ benchmark's machinery runs end to end on a tiny setup
(4 viewers, 1 s windows, 30-frame migrations) and reports every figure. No speed is asserted:
the figures only have to exist, which needs RoQ forwarding, the latency probes and the
migrations to work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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

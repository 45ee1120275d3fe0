"""Smoke run of bench/loss.py: a few short cases through the real node, lossy proxies and
probes; checks the JSON contract (last line) and the looser correctness floor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = "residual_nack_10pct,residual_fec_20pct,control_no_recovery_20pct"


def test_loss_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loss.py"), "--quick", "--cases", CASES,
         "--packets", "1500", "--pps", "300", "--warm", "2.5", "--seed", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    doc = json.loads(lines[-1])
    assert set(CASES.split(",")) <= doc.keys()
    assert "fec_overhead_over_bound" in doc
    cases = doc["cases"]

    nack = cases["residual_nack_10pct"]
    assert nack["packets"] == 1500
    assert nack["model"] < 0.001  # the three-round bound, 0.069 %
    assert nack["residual"] <= 0.01  # raw loss is 10 %: NACK/RTX must have repaired it
    assert nack["recovered_rtx"] > 50 and nack["rtx_overhead"] > 0.05

    fec = cases["residual_fec_20pct"]
    assert any(p["fec"] == "rs" and p["m"] >= 1 for p in fec["plans"]), fec["plans"]
    assert fec["recovered_fec"] > 0 and fec["fec_overhead"] > 0
    assert fec["residual"] < 0.03  # model 0.45 % for rs(12,4); NACK alone (1 round): 7.2 %
    assert 0 < doc["fec_overhead_over_bound"] <= 2.0

    control = cases["control_no_recovery_20pct"]
    assert control["residual"] > 0.12  # the damage without recovery
    assert control["recovered_rtx"] == 0 and control["recovered_fec"] == 0
    assert any(line.startswith("residual_nack_10pct") for line in lines)  # the table

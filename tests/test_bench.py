"""Smoke test of benchmarks/bench.py --quick: it runs, and its numbers are sane (not a speed target)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_reports_sane_numbers(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--no-fp16", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] == torch.__version__
    rows = [r for r in data["rows"] if not r["backend"].startswith("export-")]
    ran = [r for r in rows if r["status"] == "ok"]
    assert {r["batch"] for r in ran} == {1, 4}
    assert {"eager-seed-cpu", "eager-rewritten-cpu", "torchscript-cpu", "ort-cpu-opt-all"} <= {r["backend"] for r in ran}
    for r in ran:
        assert r["median_ms"] > 0 and math.isfinite(r["median_ms"]), r
        assert r["rel_l2"] <= 1e-4, r  # every fp32 backend computes the seed model's output
        if r["backend"] == "eager-seed-cpu":
            assert r["rel_l2"] == 0.0 and abs(r["speedup"] - 1.0) < 1e-9
    if not torch.cuda.is_available():
        cuda_rows = [r for r in rows if "cuda" in r["backend"]]
        assert cuda_rows and all(r["status"].startswith("not run") for r in cuda_rows)
    assert "median ms" in proc.stdout and "ort-cpu-opt-all" in proc.stdout

"""Smoke test of benchmarks/bench.py --quick: it runs, and its numbers are sane (not a speed target)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from modconv_export.runtimes import bf16_unavailable_reason, openvino_unavailable_reason
from modconv_export.verify.tolerances import BF16_REL_L2

from helpers import ROOT

BF16_ROWS = ("autocast-bf16-cpu", "openvino-cpu-bf16", "openvino-cpu-bf16-plain", "openvino-cpu-bf16-static", "ort-openvino-cpu-bf16")


def test_quick_benchmark_runs_and_reports_sane_numbers(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench.py"),
        "--quick",
        "--no-fp16",
        "--warmup",
        "1",
        "--json",
        str(out),
        "--markdown",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"]["model"] and isinstance(env["cpu"]["isa"], list)
    assert len(env["load_average_before"]) == 3 and len(env["load_average_after"]) == 3
    rows = [r for r in data["rows"] if not r["backend"].startswith("export-")]
    ran = {(r["backend"], r["batch"]): r for r in rows if r["status"] == "ok"}
    assert {b for _, b in ran} == {1, 4}
    expected = {"eager-seed-cpu", "eager-rewritten-cpu", "torchscript-cpu", "autocast-bf16-cpu", "ort-cpu"}
    if not openvino_unavailable_reason():
        expected |= {"openvino-cpu"} | ({"openvino-cpu-bf16", "openvino-cpu-bf16-plain"} if not bf16_unavailable_reason() else set())
    assert expected <= {name for name, _ in ran}, sorted(ran)
    for (name, batch), r in ran.items():
        assert r["median_ms"] > 0 and math.isfinite(r["median_ms"]) and r["runs"] == 20, r
        if name in BF16_ROWS:  # really reduced precision, yet the same function
            assert 1e-4 < r["rel_l2"] <= BF16_REL_L2, r
        else:  # every fp32 backend computes the seed model's output
            assert r["rel_l2"] <= 1e-4 and r["psnr"] > 80, r
        base = ran[("eager-seed-cpu", batch)]
        assert math.isclose(r["speedup"], base["median_ms"] / r["median_ms"], rel_tol=1e-9), r
    assert ran[("eager-seed-cpu", 1)]["rel_l2"] == 0.0 and abs(ran[("eager-seed-cpu", 1)]["speedup"] - 1.0) < 1e-9
    compile_rows = [r for r in rows if r["backend"] == "compile-cpu"]
    assert compile_rows and all(r["status"].startswith("not run: skipped with --quick") for r in compile_rows)
    if not torch.cuda.is_available():
        cuda_rows = [r for r in rows if "cuda" in r["backend"]]
        assert cuda_rows and all(r["status"].startswith("not run") for r in cuda_rows)
    assert "median ms" in proc.stdout and "ort-cpu" in proc.stdout and "| model | batch | backend |" in proc.stdout

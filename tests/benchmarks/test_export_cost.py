"""Smoke test of benchmarks/export_cost.py --quick: one small model's export in a child process, the
JSON and the table; the numbers are sane (not a speed or memory target: those are the benchmark's figures)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_quick_export_cost_measures_each_export_in_a_child(tmp_path):
    out = tmp_path / "cost.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "export_cost.py"), "--quick", "--models", "lats", "--kinds", "ours",
               "--lock", "", "--json", str(out), "--markdown"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    env = data["environment"]
    assert len(env["load_average_before"]) == 3 and len(env["load_average_after"]) == 3 and env["torch"]
    (row,) = data["rows"]
    assert (row["model"], row["size"], row["kind"], row["status"]) == ("lats", 32, "ours", "ok"), row
    # the child's peak includes what it held before the measured call (imports, the model), and more
    assert 0 < row["before_mb"] < row["peak_mb"] < 8192 and 0 < row["seconds"] < 600
    assert row["extra"]["file_mb"] > 0  # one self-contained file
    cell = f"{row['seconds']:.1f} s, {row['peak_mb'] / 1024:.2f} GB"
    assert "| model | measured | 32 px |" in proc.stdout and f"| lats | ours | {cell} |" in proc.stdout

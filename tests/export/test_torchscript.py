"""The TorchScript file runs at any batch size in a process that never imports modconv_export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from modconv_export import ExportError, export_torchscript

from fixtures.user_layers.my_stylegan import UserGenerator
from helpers import tiny_inputs

LOADER = textwrap.dedent(
    """
    import json, sys, torch
    module = torch.jit.load(sys.argv[1])
    data = torch.load(sys.argv[2])
    errors = {}
    for batch, (args, expected) in data.items():
        out = module(*args)
        errors[batch] = [list(out.shape), float((out - expected).norm() / expected.norm())]
    leaked = sorted(m for m in sys.modules if m.startswith(("modconv_export", "fixtures", "helpers", "conftest")))
    print(json.dumps({"errors": errors, "leaked": leaked}))
    """
)


def _run_isolated(ts_path, cases, tmp_path):
    data_path = tmp_path / "cases.pt"
    torch.save(cases, data_path)
    script = tmp_path / "load_ts.py"
    script.write_text(LOADER)
    # -I: isolated mode (no PYTHONPATH, no user site, script dir not trusted); cwd without project files
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(ts_path), str(data_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["seed", "user-copy"])
def test_torchscript_runs_any_batch_without_the_toolkit(which, tiny_decoder, tiny_args, tmp_path):
    if which == "seed":
        model, args, make = tiny_decoder, tiny_args, tiny_inputs
    else:
        torch.manual_seed(0)
        model = UserGenerator().eval()
        args = (torch.randn(2, 4, 8, 8), torch.randn(2, 8))

        def make(batch, seed):
            gen = torch.Generator().manual_seed(seed)
            return torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 8, generator=gen)

    path = export_torchscript(model, args, tmp_path / "model.pt")
    cases = {}
    for batch in (1, 5):
        inputs = make(batch, seed=batch)
        with torch.no_grad():
            cases[batch] = (inputs, model(*inputs))
    result = _run_isolated(path, cases, tmp_path)
    assert result["leaked"] == []
    for batch, (shape, err) in result["errors"].items():
        assert shape[0] == int(batch)
        assert err <= 1e-4, (batch, err)


def test_seed_model_cannot_be_saved_by_stock_trace(tiny_decoder, tiny_args, tmp_path):
    """The stock path fails on the seed's custom Function; the toolkit's file does not."""
    with pytest.raises(Exception, match="BlurFunction|Python function"):
        traced = torch.jit.trace(tiny_decoder, tiny_args, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "stock.pt"))


def test_export_torchscript_refuses_bad_target(tiny_decoder, tiny_args, tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_torchscript(tiny_decoder, tiny_args, tmp_path / "missing" / "m.pt")

"""rosinality's StyleGAN2, NVlabs' StyleGAN2-ADA and StyleGAN3 generators, exported as users bring them.

Neither codebase is on the package index and upstream code is never committed, so these tests read a
checkout named by an environment variable and skip without it (commits pinned in
``tests/fixtures/upstream_codebases/stylegan2_wrappers.py``)::

    MODCONV_UPSTREAM_ROSINALITY=/path/to/stylegan2-pytorch MODCONV_UPSTREAM_NVLABS=/path/to/stylegan2-ada-pytorch \\
    MODCONV_UPSTREAM_STYLEGAN3=/path/to/stylegan3  python -m pytest tests/rewrite/test_upstream_codebases.py

Each generator, at reduced size, must export to ONNX (both exporters) and TorchScript with a dynamic batch
and match eager within relative L2 1e-4 at batch 1, 3 and 8; every modulated convolution must be named in
the rewrite report; and the command line must export a ``torch.save(module)`` pickle with
``--trust-pickle --import-path`` (NVlabs' persistence objects in it restored from the checkout's classes). The module rules play no part (rosinality's layers share basicsr's
structure and would match some of them): the registry is emptied for the library calls.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import onnx
import pytest
import torch

from modconv_export import export_onnx, export_torchscript, make_exportable, rewrite_report
from modconv_export.export.checks import computed_conv_weights, conv_nodes
from modconv_export.rewrite import RuleRegistry, use_rules

from fixtures.stylegan2.models import perturb
from helpers import FIXTURES, relative_l2, run_exported

WRAPPERS = FIXTURES / "upstream_codebases"
sys.path.insert(0, str(WRAPPERS))
import stylegan2_wrappers as wrappers  # noqa: E402

CODEBASES = {
    "rosinality": (wrappers.ROSINALITY_ENV, wrappers.RosinalityGenerator, 11),
    "nvlabs": (wrappers.NVLABS_ENV, wrappers.NVlabsGenerator, 11),
    "stylegan3": (wrappers.STYLEGAN3_ENV, wrappers.StyleGAN3Generator, 5),  # 4 layers and the to-RGB layer
}


def _missing(name: str, env: str) -> str | None:
    if not os.environ.get(env):
        return f"set {env} to an upstream checkout to run it"
    if name == "stylegan3" and importlib.util.find_spec("scipy") is None:
        return "StyleGAN3 imports scipy, which is not installed"
    return None


def _params():
    for name, (env, _, _) in CODEBASES.items():
        reason = _missing(name, env)
        yield pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=reason or ""), id=name)


@pytest.fixture(scope="module", params=list(_params()))
def generator(request):
    _, build, modconvs = CODEBASES[request.param]
    torch.manual_seed(0)
    return request.param, perturb(build(), seed=1), modconvs


def _z(batch: int, seed: int) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 64, generator=torch.Generator().manual_seed(seed)),)


@pytest.fixture
def graph_only():
    with use_rules(RuleRegistry()):
        yield


def test_every_modulated_conv_is_found_in_the_graph(generator, graph_only):
    name, model, modconvs = generator
    form = make_exportable(model, _z(1, 0), strict=True)
    report = rewrite_report(form)
    paths = [done.path for done in report.rewritten if done.rule == "graph:batch_grouped_conv"]
    conv_paths = [p for p in paths if not p.endswith("blur")]
    assert len(set(conv_paths)) == modconvs, paths
    assert all(p.startswith("generator.") for p in paths)


@pytest.mark.parametrize("fmt", ["dynamo", "torchscript", "jit"])
def test_exports_with_a_dynamic_batch(generator, fmt, tmp_path, graph_only):
    name, model, _ = generator
    path = tmp_path / ("g.pt" if fmt == "jit" else "g.onnx")
    if fmt == "jit":
        export_torchscript(model, _z(1, 0), path)
    else:
        # StyleGAN3's input layer uses affine_grid, which the legacy exporter converts from opset 20 on
        opset = 20 if (name, fmt) == ("stylegan3", "torchscript") else None
        export_onnx(model, _z(1, 0), path, exporter=fmt, opset=opset)
        assert computed_conv_weights(onnx.load(str(path))) == []
    for batch in (1, 3, 8):
        (z,) = _z(batch, seed=batch)
        with torch.no_grad():
            expected = model(z).numpy()
        actual = run_exported(fmt, path, (z,))
        assert actual.shape == expected.shape
        assert relative_l2(actual, expected) <= 1e-4, (batch, relative_l2(actual, expected))


def test_cli_exports_a_pickled_generator(generator, tmp_path):
    name, model, _ = generator
    torch.save(model, tmp_path / f"{name}.pt")
    checkout = os.environ[CODEBASES[name][0]]
    # the upstream import-time stubs (CUDA builds, requests) reach the subprocess as a sitecustomize
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(WRAPPERS)!r})\nimport stylegan2_wrappers\nstylegan2_wrappers.install_stubs()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "modconv_export", str(tmp_path / f"{name}.pt"), str(tmp_path / "out.onnx"), "--trust-pickle",
         "--import-path", str(WRAPPERS), "--import-path", checkout, "--input", "z=1x64", "--torchscript", str(tmp_path / "out.ts")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "FAILED" not in proc.stdout
    assert conv_nodes(onnx.load(str(tmp_path / "out.onnx")))
    if name != "rosinality":  # NVlabs' persistence objects: built from the checkout's classes, their embedded source never run
        assert f"restored from {os.path.realpath(checkout)}" in proc.stdout and "identical to the source embedded" in proc.stdout

"""Whole StyleGAN2 / GFPGAN models through both ONNX exporters and TorchScript with a dynamic batch.

Each file must run at batch 1 and 3 within relative L2 1e-4 of the eager fp32 model on CPU, read
every Conv/ConvTranspose weight from a constant initializer and contain no random op. Upstream models
(GFPGAN 1.3.8 ``StyleGAN2GeneratorClean`` and ``GFPGANv1Clean``, basicsr 1.4.2 ``StyleGAN2Generator``)
are the real architecture files at the smallest size that runs every path; our own tiny generators
(tests/fixtures/stylegan2/layers.py) run everywhere, with noise as graph inputs.
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch

from modconv_export import ExportError, export_onnx, export_torchscript
from modconv_export.export.checks import computed_conv_weights, conv_nodes, dynamic_batch_axes

from fixtures.stylegan2 import models
from fixtures.stylegan2.layers import TinyGenerator
from fixtures.stylegan2.models import perturb
from fixtures.stylegan2.upstream import load_upstream, missing_reason
from helpers import relative_l2, run_exported

UPSTREAM_MISSING = missing_reason()
S = models.STYLE


def _tiny(flavour):
    torch.manual_seed(0)
    model = perturb(TinyGenerator(flavour), seed=2)

    def inputs(batch, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 8, generator=gen), torch.randn(batch, 1, 4, 4, generator=gen), torch.randn(batch, 1, 8, 8, generator=gen)

    return model, inputs


def _upstream(build, wrapper, shape):
    def make():
        model = wrapper(build(load_upstream()))
        return model, lambda batch, seed: (torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)),)

    return make


MODELS = {
    "ours-clean": lambda: _tiny("clean"),
    "ours-basicsr": lambda: _tiny("basicsr"),
    "gfpgan-stylegan2-clean": _upstream(models.clean_generator, models.FixedNoise, (S,)),
    "basicsr-stylegan2": _upstream(models.basicsr_generator, models.FixedNoise, (S,)),
    "gfpgan-v1-clean": _upstream(models.gfpgan_v1_clean, models.Restorer, (3, models.SIZE, models.SIZE)),
}
UPSTREAM = {"gfpgan-stylegan2-clean", "basicsr-stylegan2", "gfpgan-v1-clean"}
FORMATS = ("dynamo", "torchscript", "jit")


def _params():
    for name in MODELS:
        marks = (
            [pytest.mark.skipif(UPSTREAM_MISSING is not None, reason=f"upstream archives: {UPSTREAM_MISSING}")] if name in UPSTREAM else []
        )
        for fmt in FORMATS:
            yield pytest.param((name, fmt), marks=marks, id=f"{name}-{fmt}")


@pytest.fixture(scope="module")
def built():
    return functools.cache(lambda name: MODELS[name]())  # each model built once per module


@pytest.fixture(scope="module", params=list(_params()))
def exported(request, built, tmp_path_factory):
    name, fmt = request.param
    model, inputs = built(name)
    path = tmp_path_factory.mktemp(name) / f"{fmt}.{'pt' if fmt == 'jit' else 'onnx'}"
    if fmt == "jit":
        export_torchscript(model, inputs(2, 0), path)
    else:
        export_onnx(model, inputs(2, 0), path, exporter=fmt)
    return name, fmt, path, model, inputs


@pytest.mark.parametrize("batch", [1, 3])
def test_matches_eager_at_batch(exported, batch):
    name, fmt, path, model, inputs = exported
    args = inputs(batch, seed=10 + batch)
    with torch.no_grad():
        expected = model(*args).numpy()
    actual = run_exported(fmt, path, args)
    assert actual.shape == expected.shape and expected.shape[0] == batch
    assert relative_l2(actual, expected) <= 1e-4


def test_graph_has_constant_conv_weights_no_random_ops_and_a_symbolic_batch(exported):
    name, fmt, path, _, _ = exported
    if fmt == "jit":
        graph = torch.jit.load(str(path)).inlined_graph
        assert not [n.kind() for n in graph.nodes() if "normal" in n.kind() or n.kind() == "prim::PythonOp"]
        return
    proto = onnx.load(str(path))
    assert computed_conv_weights(proto) == []
    initializers = {i.name for i in proto.graph.initializer}
    assert conv_nodes(proto) and all(c.weight in initializers for c in conv_nodes(proto))
    assert not [n.op_type for n in proto.graph.node if n.op_type.startswith("Random")]
    assert all(isinstance(v, str) for v in dynamic_batch_axes(proto).values())
    # the modulated convs are group-1 (transposed) convs: nothing has group = batch
    assert all(c.group == 1 or c.group == c.weight_shape[0] for c in conv_nodes(proto))


# ---------------------------------------------------------------- noise choices on the real generators
needs_upstream = pytest.mark.skipif(UPSTREAM_MISSING is not None, reason=f"upstream archives: {UPSTREAM_MISSING}")


@needs_upstream
def test_missing_noise_exports_as_zero_noise(tmp_path):
    generator = models.basicsr_generator(load_upstream(), seed=3)
    with pytest.warns(UserWarning, match="draws random noise when called without noise; the export form adds zero noise"):
        path = export_onnx(models.MissingNoise(generator), (torch.randn(2, S),), tmp_path / "zero.onnx", exporter="torchscript")
    proto = onnx.load(str(path))
    assert not [n.op_type for n in proto.graph.node if "Random" in n.op_type]
    z = torch.randn(3, S)
    zeros = [torch.zeros_like(getattr(generator.noises, f"noise{i}")) for i in range(generator.num_layers)]
    with torch.no_grad():
        expected = generator([z], noise=zeros)[0].numpy()
    assert relative_l2(run_exported("onnx", path, (z,)), expected) <= 1e-4


@needs_upstream
def test_noise_as_graph_inputs(tmp_path):
    generator = models.clean_generator(load_upstream(), seed=4)
    shapes = [tuple(getattr(generator.noises, f"noise{i}").shape[1:]) for i in range(generator.num_layers)]
    example = (torch.randn(2, S), *[torch.randn(2, *s) for s in shapes])
    path = export_onnx(models.NoiseInputs(generator), example, tmp_path / "noise.onnx", exporter="torchscript")
    args = (torch.randn(3, S), *[torch.randn(3, *s) for s in shapes])
    with torch.no_grad():
        expected = generator([args[0]], noise=list(args[1:]))[0].numpy()
    assert relative_l2(run_exported("onnx", path, args), expected) <= 1e-4


@needs_upstream
def test_without_the_rules_export_fails(tmp_path):
    """The problem solved here: grouped convs with group = batch, and basicsr's autograd Function."""
    model = models.FixedNoise(models.basicsr_generator(load_upstream(), seed=5))
    with pytest.raises(ExportError):
        export_onnx(model, (torch.randn(2, S),), tmp_path / "stock.onnx", exporter="torchscript", rewrite=False)
    with pytest.raises(ExportError, match="PythonOp"):
        export_torchscript(model, (torch.randn(2, S),), tmp_path / "stock.pt", rewrite=False)
    assert not list(tmp_path.iterdir())

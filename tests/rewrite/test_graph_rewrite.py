"""The graph-level rewrite: batch-grouped convolutions found in the traced graph, whatever the code.

Every model here exports with the *module rules switched off*: the graph path alone must give ONNX files
(both exporters) and TorchScript files that run at batch 1, 3 and 8 within relative L2 1e-4 of eager, with
constant convolution weights, no convolution grouped by the batch and no per-sample ``[B, Cout, Cin, k, k]``
weight left in the graph. The models: a generator written from scratch with names unlike any upstream
(transposed up-conv, strided down-conv, a custom autograd Function blur), one that freezes its batch into a
Python int like NVlabs' code (captured twice and generalised; a depthwise blur with ``groups = C * batch``),
the seed layers (LATS) and GFPGAN's clean StyleGAN2 from the PyPI archive.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

from modconv_export import export_onnx, export_torchscript, make_exportable, rewrite_report
from modconv_export.export.checks import computed_conv_weights, conv_nodes, dynamic_batch_axes
from modconv_export.rewrite import RuleRegistry, use_rules

from fixtures.foreign_layers import frozen_batch, novel_stylegan
from fixtures.stylegan2 import models
from fixtures.stylegan2.upstream import load_upstream, missing_reason
from helpers import TinyDecoder, randomize, relative_l2, run_exported

UPSTREAM_MISSING = missing_reason()
CONV = "graph:batch_grouped_conv"
DEMOD = "graph:demodulation"


@pytest.fixture
def no_module_rules():
    """Only the graph path: the module rules registry is empty for the test."""
    with use_rules(RuleRegistry()):
        yield


def _novel():
    model = novel_stylegan.build()

    def inputs(batch, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, 16, 16, generator=gen), torch.randn(batch, 12, generator=gen)

    return model, inputs, {"stem", "down", "up", "out"}, 3


def _frozen():
    model = frozen_batch.build()

    def inputs(batch, seed):
        return (torch.randn(batch, 10, generator=torch.Generator().manual_seed(seed)),)

    # conv0 twice: its modulated conv and its blur on the folded batch (groups = channels * batch)
    return model, inputs, {"conv0", "conv1", "torgb"}, 2


def _seed():
    torch.manual_seed(0)
    model = randomize(TinyDecoder(), seed=0)

    def inputs(batch, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, 10, 10, generator=gen), torch.randn(batch, 16, generator=gen)

    return model, inputs, {"conv_in", "conv_up", "conv_down", "to_rgb"}, 3


def _gfpgan_clean():
    model = models.FixedNoise(models.clean_generator(load_upstream(), seed=1))

    def inputs(batch, seed):
        return (torch.randn(batch, models.STYLE, generator=torch.Generator().manual_seed(seed)),)

    paths = {"generator.style_conv1.modulated_conv", "generator.to_rgb1.modulated_conv"}
    paths |= {f"generator.style_convs.{i}.modulated_conv" for i in range(6)} | {f"generator.to_rgbs.{i}.modulated_conv" for i in range(3)}
    return model, inputs, paths, 7


CASES = {"novel": _novel, "frozen-batch": _frozen, "seed-layers": _seed, "gfpgan-clean": _gfpgan_clean}
UPSTREAM = {"gfpgan-clean"}


def _case_params(formats=None):
    for name in CASES:
        marks = (
            [pytest.mark.skipif(UPSTREAM_MISSING is not None, reason=f"upstream archives: {UPSTREAM_MISSING}")] if name in UPSTREAM else []
        )
        for fmt in formats or [None]:
            yield pytest.param(name if fmt is None else (name, fmt), marks=marks, id=name if fmt is None else f"{name}-{fmt}")


@pytest.fixture(scope="module")
def built():
    return functools.cache(lambda name: CASES[name]())  # each model built once per module


@pytest.mark.parametrize("name", list(_case_params()))
def test_report_names_every_modulated_conv(name, built, no_module_rules):
    model, inputs, paths, demodulations = built(name)
    form = make_exportable(model, inputs(1, 0), strict=True)
    report = rewrite_report(form)
    assert {done.path for done in report.rewritten if done.rule == CONV} == paths
    assert report.count(DEMOD) == demodulations
    assert report.near_misses == []
    for batch in (1, 4):
        args = inputs(batch, seed=batch)
        with torch.no_grad():
            assert relative_l2(form(*args), model(*args)) <= 1e-5


@pytest.fixture(scope="module", params=list(_case_params(["dynamo", "torchscript", "jit"])))
def exported(request, built, tmp_path_factory):
    name, fmt = request.param
    model, inputs, _, _ = built(name)
    path = tmp_path_factory.mktemp(name) / f"{fmt}.{'pt' if fmt == 'jit' else 'onnx'}"
    with use_rules(RuleRegistry()):
        if fmt == "jit":
            export_torchscript(model, inputs(1, 0), path)
        else:
            export_onnx(model, inputs(1, 0), path, exporter=fmt)
    return fmt, path, model, inputs


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_exported_file_matches_eager_at_any_batch(exported, batch):
    fmt, path, model, inputs = exported
    args = inputs(batch, seed=20 + batch)
    with torch.no_grad():
        expected = model(*args).numpy()
    actual = run_exported(fmt, path, args)
    assert actual.shape == expected.shape and actual.shape[0] == batch
    assert relative_l2(actual, expected) <= 1e-4


def test_exported_graph_has_constant_weights_and_no_per_sample_weight(exported):
    fmt, path, _, _ = exported
    if fmt == "jit":
        kinds = {n.kind() for n in torch.jit.load(str(path)).inlined_graph.nodes()}
        assert "prim::PythonOp" not in kinds and not any(k.startswith("modconv_export::") for k in kinds)
        return
    proto = onnx.load(str(path))
    assert computed_conv_weights(proto) == []
    assert all(isinstance(axis, str) for axis in dynamic_batch_axes(proto).values())
    # groups are per-channel constants (depthwise blurs) or 1; nothing grouped by the batch survives
    assert all(c.group == 1 or c.group == c.weight_shape[0] for c in conv_nodes(proto))
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = [
        [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
        if v.type.tensor_type.HasField("shape")
    ]
    # the demodulation no longer builds [B, Cout, Cin, k, k]: 5-D values are per-channel vectors at most
    assert shapes and all(sum(d != 1 for d in dims[1:]) <= 1 for dims in shapes if len(dims) == 5)


@pytest.mark.parametrize("name", list(_case_params()))
def test_half_precision_is_decided_on_the_graph(name, built, no_module_rules, tmp_path):
    """fp16 for code the toolkit has never seen: float16 convolutions, float32 islands and I/O, finite output."""
    model, inputs, _, _ = built(name)
    path = export_onnx(model, inputs(1, 0), tmp_path / "half.onnx", precision="fp16")
    proto = onnx.load(str(path))
    dtypes = {i.name: i.data_type for i in proto.graph.initializer}
    assert conv_nodes(proto) and all(dtypes[c.weight] == onnx.TensorProto.FLOAT16 for c in conv_nodes(proto))
    assert {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]} == {onnx.TensorProto.FLOAT}
    for batch in (1, 3):
        args = inputs(batch, seed=30 + batch)
        with torch.no_grad():
            expected = model(*args).numpy()
        actual = run_exported("onnx", path, args)
        assert np.isfinite(actual).all() and relative_l2(actual, expected) <= 1e-2

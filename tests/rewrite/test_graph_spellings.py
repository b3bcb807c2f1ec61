"""Other people's spellings of the modulated conv: found by what they compute, exported exactly.

Each layer of ``fixtures/foreign_layers/modconv_spellings.py`` writes one part of the modulated conv
differently (an einsum modulation, a square-root division, flatten/unflatten folding, a bias inside the
grouped conv, an in-place bias, ``K * (s + 1)``, per-sample groups, a squared style, 1-D plain and transposed convs). With the
module rules switched off, the graph rewrite alone must replace each one (and report it), and the files
must run at batch 1 and 3 within relative L2 1e-5 of eager with constant weights and no group that
depends on the batch. A channel-mixing einsum is a per-sample weight that is *not* a modulation: it is
reported with its reason and the export refuses it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modconv_export import RewriteError, export_onnx, export_torchscript, make_exportable, rewrite_report
from modconv_export.export.checks import computed_conv_weights, conv_nodes, dynamic_batch_axes
from modconv_export.rewrite import RuleRegistry, use_rules

from fixtures.foreign_layers import modconv_spellings as spellings
from helpers import relative_l2, run_exported

CONV = "graph:batch_grouped_conv"
#: every spelling through the dynamo exporter and TorchScript; the legacy exporter on a few
FORMATS = [(s, f) for s in spellings.SPELLINGS for f in ("dynamo", "jit")]
FORMATS += [(s, "torchscript") for s in ("einsum", "bias_in_conv", "conv1d", "conv_transpose1d")]


@pytest.fixture(autouse=True)
def no_module_rules():
    with use_rules(RuleRegistry()):
        yield


@pytest.mark.parametrize("spelling", spellings.SPELLINGS)
def test_the_graph_rewrite_finds_each_spelling(spelling):
    model = spellings.build(spelling)
    form = make_exportable(model, spellings.inputs(spelling, 2), strict=True)
    report = rewrite_report(form)
    assert report.count(CONV) == 1 and report.near_misses == []
    for batch in (1, 3):
        args = spellings.inputs(spelling, batch, seed=batch)
        with torch.no_grad():
            assert relative_l2(form(*args), model(*args)) <= 1e-6


@pytest.mark.parametrize(("spelling", "fmt"), FORMATS, ids=[f"{s}-{f}" for s, f in FORMATS])
def test_each_spelling_exports_with_a_dynamic_batch(spelling, fmt, tmp_path):
    model = spellings.build(spelling)
    path = tmp_path / ("m.pt" if fmt == "jit" else "m.onnx")
    if fmt == "jit":
        export_torchscript(model, spellings.inputs(spelling, 2), path)
    else:
        export_onnx(model, spellings.inputs(spelling, 2), path, exporter=fmt)
        proto = onnx.load(str(path))
        assert computed_conv_weights(proto) == []
        assert all(isinstance(axis, str) for axis in dynamic_batch_axes(proto).values())
        assert [c.group for c in conv_nodes(proto)] == [2 if spelling == "grouped" else 1]
    for batch in (1, 3):
        args = spellings.inputs(spelling, batch, seed=10 + batch)
        with torch.no_grad():
            expected = model(*args).numpy()
        actual = run_exported(fmt, path, args)
        assert actual.shape == expected.shape and np.isfinite(actual).all()
        assert relative_l2(actual, expected) <= 1e-5


class ChannelMixing(nn.Module):
    """A per-sample weight made by an einsum that *sums* (mixes input channels per sample): no modulation."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(6, 8, 3, 3))
        self.mix = nn.Linear(spellings.LATENT, 64)

    def forward(self, x, latent):
        b, c, h, w = x.shape
        weight = torch.einsum("oikl,bij->bojkl", self.kernel, self.mix(latent).view(b, 8, 8))
        return F.conv2d(x.reshape(1, -1, h, w), weight.reshape(-1, 8, 3, 3), padding=1, groups=b).view(b, 6, h, w)


def test_a_summing_einsum_is_a_near_miss_with_its_reason(tmp_path):
    torch.manual_seed(0)
    model = ChannelMixing().eval()
    args = spellings.inputs("mixing", 2)
    with pytest.raises(RewriteError, match="its factor einsum .* does not scale input or output channels"):
        export_onnx(model, args, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_in_place_ops_are_known_by_their_schema():
    """The capture functionalises a program with in-place ops; it must know them on every supported torch
    (``torch.Tag.inplace`` is missing from torch 2.11, where every capture failed on it)."""
    from modconv_export.rewrite.graph.capture import _mutates

    aten = torch.ops.aten
    assert _mutates(aten.add_.Tensor) and _mutates(aten.copy_.default) and _mutates(aten.normal_.default)
    assert not _mutates(aten.add.Tensor) and not _mutates(aten.convolution.default) and not _mutates(aten.view.default)

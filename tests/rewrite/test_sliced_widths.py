"""A generator that slices its parameters to the incoming width exports exactly at every width setting.

``fixtures/foreign_layers/width_dial.py`` holds one set of weights run at two dial settings (all channels,
half of them): kernels sliced to ``[:, :out, :in]``, ``narrow``-ed, gathered with a constant channel order
or cut down *after* the modulation; styles sliced, ``select``-ed from a bank, gathered; biases sliced to
``x.shape[1]`` in a module shaped like a fused bias + leaky ReLU. With the module rules on, as users run
it, both settings must export to ONNX and TorchScript with a dynamic batch and match eager within relative
L2 1e-5 at batch 1 and 3; the report must name every modulated conv as rewritten in the graph, and the
bias modules, plain torch already, must be left to the graph stage (no rule, no near miss).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from modconv_export import export_onnx, export_torchscript
from modconv_export.export.checks import computed_conv_weights, conv_nodes, dynamic_batch_axes
from modconv_export.export.prepare import prepare_export
from modconv_export.rewrite.graph.capture import capture
from modconv_export.rewrite.graph.facts import analyze
from modconv_export.rewrite.graph.products import SELECTIONS
from modconv_export.rewrite.graph.selections import push_selections, selection_blocker

from fixtures.foreign_layers import width_dial
from helpers import relative_l2, run_exported

CONV, DEMOD = "graph:batch_grouped_conv", "graph:demodulation"
MODCONVS = {"layers.0", "layers.1", "layers.2", "layers.3", "ink"}


@pytest.fixture(scope="module", params=width_dial.DIALS, ids=[f"dial-{d}" for d in width_dial.DIALS])
def exported(request, tmp_path_factory):
    """One rewrite per dial setting (as the command line shares it), then an ONNX and a TorchScript file."""
    model = width_dial.build(request.param)
    prepared = prepare_export(model, width_dial.inputs(2))
    folder = tmp_path_factory.mktemp(f"dial{request.param}")
    export_onnx(prepared.module, prepared.args, folder / "g.onnx", rewrite=False)
    export_torchscript(prepared.fp32, prepared.args, folder / "g.pt", rewrite=False)
    return model, prepared.report, {"dynamo": folder / "g.onnx", "jit": folder / "g.pt"}


def test_the_dial_changes_the_widths_the_layers_see():
    wide, narrow = (width_dial.build(d) for d in width_dial.DIALS)
    assert [layer.keep for layer in wide.layers] == [16, 12, 12, 8]
    assert [layer.keep for layer in narrow.layers] == [8, 6, 6, 4]
    assert all(torch.equal(a, b) for a, b in zip(wide.state_dict().values(), narrow.state_dict().values()))
    (z,) = width_dial.inputs(2)
    with torch.no_grad():
        assert relative_l2(narrow(z), wide(z)) > 1e-2  # a different sub-network, not the same output


def test_every_sliced_modulated_conv_is_rewritten_and_no_rule_touches_a_sliced_bias(exported):
    _, report, _ = exported
    assert {done.path for done in report.rewritten if done.rule == CONV} == MODCONVS
    assert {done.path for done in report.rewritten if done.rule == DEMOD} == MODCONVS - {"ink"}  # the to-image layer does not demodulate
    assert [done.path for done in report.rewritten if not done.rule.startswith("graph:")] == []
    assert report.near_misses == []


@pytest.mark.parametrize("fmt", ["dynamo", "jit"])
def test_each_width_exports_with_a_dynamic_batch_equal_to_eager(exported, fmt):
    model, _, files = exported
    if fmt == "dynamo":
        proto = onnx.load(str(files[fmt]))
        assert computed_conv_weights(proto) == [] and [c.group for c in conv_nodes(proto)] == [1] * 5
        assert all(isinstance(axis, str) for axis in dynamic_batch_axes(proto).values())
    for batch in (1, 3):
        args = width_dial.inputs(batch, seed=20 + batch)
        with torch.no_grad():
            expected = model(*args).numpy()
        actual = run_exported(fmt, files[fmt], args)
        assert actual.shape == expected.shape and np.isfinite(actual).all()
        assert relative_l2(actual, expected) <= 1e-5, (batch, relative_l2(actual, expected))


def _captured_selections(layer_path: str):
    captured = capture(width_dial.build(0.5), width_dial.inputs(2))
    graph = captured.module.graph
    facts = analyze(graph)
    in_layer = [
        n for n in graph.nodes if n.op == "call_function" and n.target in SELECTIONS and layer_path in str(n.meta.get("nn_module_stack"))
    ]
    return graph, facts, in_layer


def test_a_selection_of_the_modulated_weight_is_pushed_into_its_factors():
    """``Bobbin`` cuts the per-sample weight down after modulating (``whole[:, :keep, :c]``): both
    selections are pushed into the kernel (constant: folded) and the style (a factor of the conv's width)."""
    graph, facts, _ = _captured_selections("layers.2")
    assert push_selections(graph, facts) == 2
    graph.lint()
    facts = analyze(graph)
    left = [
        n for n in graph.nodes if n.op == "call_function" and n.target in SELECTIONS and "layers.2" in str(n.meta.get("nn_module_stack"))
    ]
    reasons = sorted(selection_blocker(n, facts).reason for n in left)
    # the kernel cut to [:, :keep] then [:, :, :c] (constant), the style to [:, :, :c] (broadcast along the outputs)
    assert reasons == ["it does not select from a product"] * 2 + ["it selects from a constant (folded with the kernel)"]
    assert [tuple(n.meta["val"].shape[1:]) for n in left if facts.is_value_dependent(n)] == [(1, 6, 1, 1)]

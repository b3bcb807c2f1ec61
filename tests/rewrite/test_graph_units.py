"""The graph stage's pieces on tiny hand-built FX graphs: the product walk, the grouped-conv finder, the
generalisation of two fixed-batch captures. No model, no capture: each graph is a few ATen nodes, so a
failure points at the piece, not at a model that goes through it.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from modconv_export.errors import RewriteError
from modconv_export.rewrite.graph.batch import AFFINE_META
from modconv_export.rewrite.graph.contract import NoMatch
from modconv_export.rewrite.graph.facts import analyze
from modconv_export.rewrite.graph.generalize import generalize, mul_add
from modconv_export.rewrite.graph.grouped_conv import find_grouped_convs
from modconv_export.rewrite.graph.products import Factor, product_factors

aten = torch.ops.aten


def _graph() -> tuple[fx.Graph, fx.Node, fx.Node, fx.Node]:
    """A graph with two inputs (``s``, ``t``: value-dependent) and one parameter (``kernel``: constant)."""
    graph = fx.Graph()
    s, t = graph.placeholder("s"), graph.placeholder("t")
    return graph, s, t, graph.get_attr("kernel")


def _factors(graph: fx.Graph, root: fx.Node):
    graph.output(root)
    return product_factors(root, analyze(graph))


def test_a_product_reads_as_its_per_sample_factors_with_powers():
    graph, s, t, kernel = _graph()
    laid_out = graph.call_function(aten.transpose.int, (graph.call_function(aten.reshape.default, (s, [1, -1, 1])), 0, 1))
    product = graph.call_function(aten.mul.Tensor, (kernel, laid_out))
    root = graph.call_function(aten.div.Tensor, (graph.call_function(aten.mul.Tensor, (product, s)), t))
    assert _factors(graph, root) == [Factor(t, -1), Factor(s, 2)]  # s twice (through layout ops and directly), t a divisor


def test_powers_that_cancel_drop_the_factor_and_integer_powers_count():
    graph, s, t, kernel = _graph()
    cancelled = graph.call_function(aten.div.Tensor, (graph.call_function(aten.mul.Tensor, (kernel, s)), s))
    root = graph.call_function(
        aten.mul.Tensor, (cancelled, graph.call_function(aten.reciprocal.default, (graph.call_function(aten.square.default, (t,)),)))
    )
    assert _factors(graph, root) == [Factor(t, -2)]


def test_an_outer_product_einsum_is_a_product_and_a_contraction_is_a_factor():
    graph, s, t, kernel = _graph()
    outer = graph.call_function(aten.einsum.default, ("oi,bi->boi", [kernel, s]))
    contraction = graph.call_function(aten.einsum.default, ("bi,oi->bo", [t, kernel]))
    root = graph.call_function(aten.mul.Tensor, (outer, contraction))
    assert _factors(graph, root) == [Factor(contraction, 1), Factor(s, 1)]


def test_a_non_product_is_one_factor_and_a_huge_product_is_no_match():
    graph, s, t, kernel = _graph()
    summed = graph.call_function(aten.add.Tensor, (s, t))
    assert _factors(graph, graph.call_function(aten.mul.Tensor, (kernel, summed))) == [Factor(summed, 1)]
    graph, s, _, _ = _graph()
    node = s
    for _ in range(10_001):
        node = graph.call_function(aten.mul.Tensor, (node, s))
    node.meta["nn_module_stack"] = {"m": ("body.conv", "Conv")}
    found = _factors(graph, node)
    assert found == NoMatch("body.conv", "its product has too many terms") and not found


def _conv_graph(groups_meta: tuple[int, int] | None, *, weight_from_style: bool = True) -> fx.Graph:
    """``conv2d(x, kernel * s.reshape(...), groups=g)`` where ``g`` is a size node marked ``a * batch + c``
    as generalisation marks it (or the literal 1 without ``groups_meta``)."""
    graph, s, x, kernel = _graph()
    weight = graph.call_function(aten.mul.Tensor, (kernel, graph.call_function(aten.reshape.default, (s, [-1, 1, 4, 1, 1]))))
    weight = graph.call_function(aten.reshape.default, (weight if weight_from_style else kernel, [-1, 4, 1, 1]))
    groups = 1
    if groups_meta is not None:
        batch = graph.call_function(aten.sym_size.int, (x, 0))
        groups = graph.call_function(mul_add, (batch, *groups_meta))
        groups.meta[AFFINE_META] = groups_meta
    conv = graph.call_function(aten.conv2d.default, (x, weight, None, [1, 1], [0, 0], [1, 1], groups))
    conv.meta["nn_module_stack"] = {"m": ("synthesis.conv0", "ModConv")}
    graph.output(conv)
    return graph


def test_a_conv_grouped_by_the_batch_is_a_candidate_with_its_factors():
    graph = _conv_graph((1, 0))
    (found,), misses = find_grouped_convs(graph, analyze(graph), None)
    style = next(n for n in graph.nodes if n.name == "s")
    assert misses == [] and found.path == "synthesis.conv0" and found.factors == (Factor(style, 1),) and found.per_sample == 1
    graph = _conv_graph((2, 0))  # two groups per sample: a grouped conv on the batch folded into channels
    (found,), _ = find_grouped_convs(graph, analyze(graph), None)
    assert found.per_sample == 2


def test_convs_that_look_per_sample_but_are_not_are_near_misses():
    graph = _conv_graph((1, 1))
    assert find_grouped_convs(graph, analyze(graph), None) == (
        [],
        [NoMatch("synthesis.conv0", "its groups are 1*batch+1: not a whole number of groups per sample", blocking=True)],
    )
    graph = _conv_graph(None)
    assert find_grouped_convs(graph, analyze(graph), None) == (
        [],
        [NoMatch("synthesis.conv0", "its weight depends on the inputs but its groups are not the batch size")],
    )
    graph = _conv_graph(None, weight_from_style=False)  # an ordinary conv: neither
    assert find_grouped_convs(graph, analyze(graph), None) == ([], [])


def _captured(batch: int, rows_per_sample: int = 2, scale: float = 0.5, op=aten.mul.Tensor) -> fx.GraphModule:
    """``op(x.reshape(rows_per_sample * batch, 3), scale)`` as a capture at ``batch`` records it: sizes as ints."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(batch, 6, device="meta")
    folded = graph.call_function(aten.reshape.default, (x, [rows_per_sample * batch, 3]))
    graph.output(graph.call_function(op, (folded, scale)))
    return fx.GraphModule(torch.nn.Module(), graph)


def test_two_fixed_batch_captures_generalise_to_any_batch():
    module = _captured(2)
    assert generalize(module, _captured(3), (2, 3)) == 1
    x = torch.randn(5, 6)
    assert torch.equal(module(x), x.reshape(10, 3) * 0.5)
    (size,) = [n for n in module.graph.nodes if n.target is mul_add]
    assert size.args[1:] == (2, 0) and size.meta[AFFINE_META] == (2, 0)


def test_captures_that_differ_in_more_than_batch_sizes_are_refused():
    with pytest.raises(RewriteError, match=r"^mul_tensor differs between batch sizes 2 and 3: a constant changes from 0.5 to 0.25$"):
        generalize(_captured(2), _captured(3, scale=0.25), (2, 3))
    with pytest.raises(
        RewriteError, match=r"^reshape_default differs between batch sizes 2 and 4: a size changes from 4 to 7, not linearly"
    ):
        generalize(_captured(2), _nonlinear(), (2, 4))
    with pytest.raises(RewriteError, match=r"^the model computes differently at batch sizes 2 and 3 \(from mul_tensor\)"):
        generalize(_captured(2), _captured(3, op=aten.add.Tensor), (2, 3))


def _nonlinear() -> fx.GraphModule:
    """The batch-4 twin of ``_captured(2)`` whose reshape has 7 rows: not ``a * batch + c`` with whole ``a``."""
    module = _captured(4)
    reshape = next(n for n in module.graph.nodes if n.target is aten.reshape.default)
    reshape.args = (reshape.args[0], [7, 3])
    return module

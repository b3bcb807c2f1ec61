"""Half precision on the rewritten graph: feature maps in float16, style, demodulation and statistics in float32.

A dtype is chosen for every op of the graph, whatever code it came from:

* **float16** -- convolutions always (the work worth halving), and every op that reads a float16 value
  (resampling, padding, activations, the ``x * s`` and ``y * d`` scalings of the rewrite): the feature-map
  flow. Rank >= 3 float inputs enter it through a cast; outputs leave it as float32, so callers feed and
  read the same arrays as for the float32 file.
* **float32 islands** -- matrix products (mapping and style MLPs, the demodulation ``s^2 @ sum W^2``),
  reductions and normalisations (a mean of squares overflows float16 once activations pass 256; ``eps``
  of 1e-8 sits below its smallest value), and every op all of whose inputs are float32 (``rsqrt(. + eps)``).
  Where a reduction reads a square of a feature map, the square is computed in float32 too.

Values crossing between the two are cast where they are read; constants are stored in the dtype their
readers need. The result is proven against the float32 graph on the probe by the caller.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from .edit import inherit_meta, register_constant
from .evaluate import attribute
from .facts import node_inputs
from .grouped_conv import CONV_OPS

aten = torch.ops.aten

__all__ = ["to_half_graph"]

_HALF, _FLOAT = torch.float16, torch.float32
#: Ops computed in float32 whatever they read.
_ISLANDS = {
    aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default, aten.linear.default, aten.einsum.default,
    aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default, aten.var.correction, aten.var_mean.correction,
    aten.std.correction, aten.linalg_vector_norm.default, aten.norm.ScalarOpt_dim, aten.amax.default, aten.logsumexp.default,
    aten.instance_norm.default, aten.group_norm.default, aten.layer_norm.default, aten.batch_norm.default,
    aten.native_layer_norm.default, aten.native_group_norm.default, aten._softmax.default, aten.softmax.int,
}  # fmt: skip
_SQUARES = {aten.pow.Tensor_Scalar, aten.square.default, aten.mul.Tensor}


def _float_value(node: Any) -> bool:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _cast(graph: fx.Graph, value: fx.Node, dtype: torch.dtype, before: fx.Node, cache: dict) -> fx.Node:
    key = (value, dtype)
    if key not in cache:
        with graph.inserting_before(before):
            cache[key] = inherit_meta(graph.call_function(aten._to_copy.default, (value,), {"dtype": dtype}), value)
    return cache[key]


def _statistic_squares(graph: fx.Graph) -> set[fx.Node]:
    """Squares whose only reader is a reduction (a mean or sum of squares): computed in float32."""
    found = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _SQUARES and len(node.users) == 1:
            if node.target is aten.mul.Tensor and node.args[0] is not node.args[1]:
                continue
            if next(iter(node.users)).target in _ISLANDS:
                found.add(node)
    return found


def to_half_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` (float32, functional, with value metadata) in place to the mixed precision above."""
    graph = gm.graph
    dtype: dict[fx.Node, torch.dtype] = {}
    casts: dict = {}
    halves: dict[str, str] = {}
    squares = _statistic_squares(graph)
    for node in list(graph.nodes):
        if node.op == "placeholder":
            if _float_value(node):
                dtype[node] = _FLOAT
                value = node.meta["val"]
                if value.dim() >= 3:  # images and feature maps enter the float16 flow
                    users = list(node.users)
                    with graph.inserting_after(node):
                        half = graph.call_function(aten._to_copy.default, (node,), {"dtype": _HALF})
                    for user in users:
                        user.replace_input_with(node, half)
                    dtype[half] = _HALF
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":

            def to_float(value: Any, node: fx.Node = node) -> Any:
                if isinstance(value, fx.Node) and dtype.get(value) == _HALF:
                    return _cast(graph, value, _FLOAT, node, casts)
                return value

            node.args = fx.node.map_arg(node.args, to_float)
            continue
        if node.op != "call_function" or not _float_value(node) or node in dtype:
            continue
        inputs = [n for n in node_inputs(node) if n.op != "get_attr" and _float_value(n)]
        if node.target in CONV_OPS:
            wanted = _HALF
        elif node.target in _ISLANDS or node in squares:
            wanted = _FLOAT
        else:
            wanted = _HALF if any(dtype.get(n) == _HALF for n in inputs) else _FLOAT
        dtype[node] = wanted

        def convert(value: Any, node: fx.Node = node, wanted: torch.dtype = wanted) -> Any:
            if not isinstance(value, fx.Node) or not _float_value(value):
                return value
            if value.op == "get_attr":
                if wanted != _HALF:
                    return value
                name = halves.get(value.target)
                if name is None:
                    halved = attribute(gm, value.target).detach().to(_HALF)
                    name = halves[value.target] = register_constant(gm, "half", len(halves), halved)
                with graph.inserting_before(node):
                    return graph.get_attr(name)
            if dtype.get(value, _FLOAT) != wanted:
                return _cast(graph, value, wanted, node, casts)
            return value

        node.args, node.kwargs = fx.node.map_arg((node.args, node.kwargs), convert)
        # the model's own float casts and float creations follow the flow they are in
        if node.kwargs.get("dtype") in (_FLOAT, _HALF):
            node.kwargs = {**node.kwargs, "dtype": wanted}
        elif node.target is aten.to.dtype and node.args[1] in (_FLOAT, _HALF):
            node.args = (node.args[0], wanted, *node.args[2:])
    graph.eliminate_dead_code()
    gm.recompile()
    return gm

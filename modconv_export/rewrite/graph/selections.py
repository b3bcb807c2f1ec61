"""Constant selections on a modulated weight: sliced kernels, sliced styles, a sliced per-sample weight.

Slimmable, once-for-all and any-cost generators run a narrower copy of themselves on the same weights:
each layer slices its parameters to the width it receives (``weight[:, :out, :in]``, ``style[:, :, :in]``,
``kernel.narrow(2, 0, c)``, ``style.index_select(1, order)``). For the grouped-conv proof
(:mod:`.grouped_conv`) such a selection falls in one of three places:

* on the **kernel** (parameters only): it is constant, evaluated and folded into ``W`` with the rest;
* on a **factor** (``s[:, :, :in]``): the selected value is the factor (the product walk of
  :mod:`.products` stops at a selection), so the factor has the conv's own width and is proven like every
  other one;
* on the **product** itself (``(K * s)[:, :out, :in]``): :func:`push_selections` rewrites it as the
  product of the selected operands (``K[:, :out, :in] * s[:, :, :in]``, each operand's broadcast axes
  left alone), which is exact, after which the two cases above apply.

A selection is pushed only when it is *constant* -- its axis, bounds and indices do not depend on the
inputs' values -- and not along the batch axis; :func:`selection_blocker` says why one is not pushed, as
a :class:`NotPushed` value (the conv's proof then reports the factor it could not read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .contract import GraphContext, GraphPass, PassResult
from .edit import inherit_meta
from .facts import GraphFacts
from .grouped_conv import conv_call
from .products import LAYOUT_OPS, SELECTIONS, is_whole_slice, recorded_shape, selection_arguments

aten = torch.ops.aten

__all__ = ["SELECTIONS_PASS", "NotPushed", "push_selections", "selection_blocker"]

#: Element-wise products a selection can be pushed through, into both operands.
_PRODUCTS = frozenset({aten.mul.Tensor, aten.div.Tensor})


@dataclass(frozen=True)
class NotPushed:
    """Why the selection ``node`` stays where it is."""

    node: fx.Node
    reason: str

    def __str__(self) -> str:
        return f"{self.node.name}: {self.reason}"


def selection_blocker(node: fx.Node, facts: GraphFacts) -> NotPushed | None:
    """``None`` when ``node`` is a constant selection of a value-dependent product whose operands have known
    shapes, so that :func:`push_selections` can push it into them; otherwise why not."""
    if node.op != "call_function" or node.target not in SELECTIONS:
        return NotPushed(node, "it is not a selection")
    source = node.args[0]
    if not (isinstance(source, fx.Node) and source.op == "call_function" and source.target in _PRODUCTS):
        return NotPushed(node, "it does not select from a product")
    if not facts.is_value_dependent(source):
        return NotPushed(node, "it selects from a constant (folded with the kernel)")
    arguments = selection_arguments(node)
    if not all(facts.is_constant(a) for a in arguments[1:]):
        return NotPushed(node, "its axis, bounds or indices are not constant")
    shape = recorded_shape(source)
    if shape is None or any(isinstance(o, fx.Node) and recorded_shape(o) is None for o in source.args[:2]):
        return NotPushed(node, "its operands have no recorded shapes")
    dim = arguments[1]
    if not isinstance(dim, int) or not isinstance(shape[dim % len(shape)], int):
        return NotPushed(node, "it selects along an axis of variable size (the batch)")
    return None


def _operand_selection(node: fx.Node, operand: fx.Node, rank: int) -> tuple[Any, tuple] | None:
    """How to select ``operand`` (broadcast to ``rank`` axes) as ``node`` selects the product: the op and
    its arguments, or ``None`` where the operand stays as it is (broadcast along the axis, or without it)."""
    shape = recorded_shape(operand)
    arguments = selection_arguments(node)
    dim = arguments[1] % rank
    local = dim - (rank - len(shape))  # broadcasting aligns trailing axes
    if local < 0:
        return None  # no such axis: the selection leaves the operand's alignment as it is
    if shape[local] == 1 and recorded_shape(node.args[0])[dim] != 1:
        if node.target is aten.select.int:  # the axis goes away, so must the operand's broadcast one
            return aten.select.int, (operand, local, 0)
        return None
    return node.target, (operand, local, *arguments[2:])


def _add_value_meta(node: fx.Node) -> None:
    """``meta["val"]`` for a new node from the fake values of its inputs (later passes read ranks from it)."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([n.meta.get("val") for n in node.all_input_nodes])
    if mode is None:
        return
    try:
        with mode:
            node.meta["val"] = node.target(*fx.node.map_arg(node.args, lambda n: n.meta.get("val")))
    except Exception:  # no shape for this node: passes that need one skip it
        pass


def _call(graph: fx.Graph, like: fx.Node, target: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
    with graph.inserting_before(like):
        node = graph.call_function(target, args, kwargs or {})
    inherit_meta(node, like)
    _add_value_meta(node)
    return node


def _settle(graph: fx.Graph, node: fx.Node, facts: GraphFacts, pushed: list[fx.Node]) -> fx.Node:
    """``node`` with the selections below it and itself pushed as far down as they go; the node that now
    computes its value (a product where ``node`` was pushed, else ``node``). New products go to ``pushed``."""
    source = node.args[0]
    if isinstance(source, fx.Node) and source.op == "call_function" and (is_whole_slice(source) or source.target in SELECTIONS):
        if is_whole_slice(source):  # an identity: read what it reads
            node.replace_input_with(source, source.args[0])
            if not source.users:
                graph.erase_node(source)
        else:
            _settle(graph, source, facts, pushed)  # a pushed source hands its uses, ``node`` among them, on
    if selection_blocker(node, facts) is not None:
        return node
    product = node.args[0]
    rank = len(recorded_shape(product))
    operands = []
    for operand in product.args[:2]:
        how = _operand_selection(node, operand, rank) if isinstance(operand, fx.Node) else None
        if how is None:
            operands.append(operand)
            continue
        selected = _call(graph, node, *how)
        if facts.is_value_dependent(operand):
            facts.value_dependent.add(selected)
            selected = _settle(graph, selected, facts, pushed)  # the operand may be a product in turn
        operands.append(selected)
    result = _call(graph, node, product.target, tuple(operands), dict(product.kwargs))
    facts.value_dependent.add(result)
    node.replace_all_uses_with(result)
    graph.erase_node(node)
    pushed.append(result)
    return result


def push_selections(graph: fx.Graph, facts: GraphFacts) -> int:
    """Push every constant selection of a product on a per-sample convolution weight into the product's
    operands (see the module docstring); the number pushed. Analyse the graph again after a push."""
    stack = [call.weight for node in graph.nodes if (call := conv_call(node)) is not None and facts.is_value_dependent(call.weight)]
    seen: set[fx.Node] = set()
    pushed: list[fx.Node] = []
    while stack:
        node = stack.pop()
        if not isinstance(node, fx.Node) or node in seen or not facts.is_value_dependent(node):
            continue
        seen.add(node)
        target = node.target if node.op == "call_function" else None
        if target in SELECTIONS and not is_whole_slice(node):
            settled = _settle(graph, node, facts, pushed)
            if settled is not node:
                stack.append(settled)
        elif target in _PRODUCTS or target in LAYOUT_OPS or is_whole_slice(node):
            stack.extend(a for a in node.args if isinstance(a, fx.Node))
    return len(pushed)


def _push(context: GraphContext) -> PassResult:
    return PassResult(push_selections(context.gm.graph, context.facts) > 0)


#: The pass: ``(K * s)[:, :out, :in] -> K[:, :out, :in] * s[:, :, :in]``, exact, so the capture stays exportable as is.
SELECTIONS_PASS = GraphPass("graph:selections", _push, keeps_program=True)

"""What a captured FX ATen graph computes from what: the facts every graph pass reads.

A node is *value-dependent* when its value changes with the values of the model's inputs (a style, a
feature map), *shape-dependent* when it changes only with their shapes (``sym_size``, a ``zeros`` of the
batch size), and *constant* otherwise: computed from parameters, buffers and literals alone, so it can be
evaluated once and stored (a scaled, flipped or transposed kernel). Random ops are never constant.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

aten = torch.ops.aten

__all__ = ["GraphFacts", "analyze", "module_path", "node_inputs", "target_name"]

#: Ops whose result depends only on the *shape* of their tensor arguments, not on the values.
_SHAPE_ONLY = {
    aten.sym_size.int,
    aten.sym_numel.default,
    aten.sym_stride.int,
    aten.new_zeros.default,
    aten.new_ones.default,
    aten.new_empty.default,
    aten.new_full.default,
    aten.zeros_like.default,
    aten.ones_like.default,
    aten.empty_like.default,
    aten.full_like.default,
}


def _is_random(target: Any) -> bool:
    tags = getattr(target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


def node_inputs(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads, in argument order (nested lists included)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def target_name(node: fx.Node) -> str:
    target = node.target
    return str(getattr(target, "__name__", target)) if not isinstance(target, str) else target


@dataclass
class GraphFacts:
    """Dependence classes of every node of one graph (see the module docstring)."""

    value_dependent: set[fx.Node] = field(default_factory=set)
    shape_dependent: set[fx.Node] = field(default_factory=set)
    random: set[fx.Node] = field(default_factory=set)

    def is_constant(self, node: Any) -> bool:
        """True for literals and for nodes computed from parameters, buffers and literals only."""
        if not isinstance(node, fx.Node):
            return True
        return node not in self.value_dependent and node not in self.shape_dependent

    def is_value_dependent(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node in self.value_dependent


def analyze(graph: fx.Graph) -> GraphFacts:
    """Classify every node of ``graph`` in one pass over its (topologically ordered) nodes."""
    facts = GraphFacts()
    for node in graph.nodes:
        if node.op == "placeholder":
            facts.value_dependent.add(node)
            continue
        if node.op in ("get_attr", "output"):
            continue
        inputs = node_inputs(node)
        if _is_random(node.target):
            facts.random.add(node)
            facts.value_dependent.add(node)
        elif node.target in _SHAPE_ONLY or (node.op == "call_method" and node.target == "size"):
            if any(n in facts.value_dependent or n in facts.shape_dependent for n in inputs):
                facts.shape_dependent.add(node)
        elif any(n in facts.value_dependent for n in inputs):
            facts.value_dependent.add(node)
        elif any(n in facts.shape_dependent for n in inputs):
            facts.shape_dependent.add(node)
    return facts


def module_path(node: fx.Node) -> str:
    """The dotted path of the innermost module that produced ``node`` (``""`` for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [value[0] for value in stack.values() if isinstance(value, tuple) and value and isinstance(value[0], str)]
    paths = [p for p in paths if not p.startswith("_empty_nn_module_stack")]
    return paths[-1] if paths else ""


#: ``operator`` functions that compute sizes (SymInt arithmetic) in captured graphs.
SIZE_ARITHMETIC: dict[Callable, str] = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.neg: "-",
}


def iter_calls(graph: fx.Graph, targets: Iterable[Any]) -> list[fx.Node]:
    wanted = set(targets)
    return [n for n in graph.nodes if n.op == "call_function" and n.target in wanted]

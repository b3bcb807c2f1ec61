"""Turn a graph captured at a fixed batch size into one for any batch size, from two captures.

Code such as NVlabs' ``batch_size = int(batch_size)`` before its grouped convolution makes torch.export
bake the batch into the graph as plain integers: reshape sizes, ``groups``, a ``repeat`` count. Captured at
batch sizes ``b1`` and ``b2``, the two graphs are the same program, node for node, except for those
integers. Every integer that differs is a size computed from the batch; with two points it is
``a * batch + c``. It is replaced by a node computing exactly that from ``sym_size(input, 0)``, marked
with ``(a, c)`` (:data:`.batch.AFFINE_META`) so later passes know it is the batch.

Anything else that differs -- the ops, a float, a tensor constant -- means the program itself depends on
the batch size; that is an error naming the module, never a silently frozen batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ...errors import RewriteError
from .batch import AFFINE_META
from .evaluate import attribute
from .facts import module_path

aten = torch.ops.aten

__all__ = ["generalize"]


class _Mismatch(Exception):
    pass


def _where(node: fx.Node) -> str:
    path = module_path(node)
    return f"{node.name} in {path}" if path else node.name


def _compare(a: Any, b: Any, mapping: dict[fx.Node, fx.Node], sizes: tuple[int, int], found: list) -> Any:
    """``a`` with every batch-dependent int replaced by a marker ``(a_coef, c)``; raises on other differences."""
    if isinstance(a, fx.Node):
        if not isinstance(b, fx.Node) or mapping.get(a) is not b:
            raise _Mismatch("they read different values")
        return a
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise _Mismatch("an argument list changes length")
        return type(a)(_compare(x, y, mapping, sizes, found) for x, y in zip(a, b))
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise _Mismatch("keyword arguments differ")
        return {k: _compare(a[k], b[k], mapping, sizes, found) for k in a}
    if isinstance(a, int) and not isinstance(a, bool) and isinstance(b, int) and not isinstance(b, bool):
        if a == b:
            return a
        (b1, b2) = sizes
        coef, rest = divmod(b - a, b2 - b1)
        if rest:
            raise _Mismatch(f"a size changes from {a} to {b}, not linearly with the batch")
        marker = (coef, a - coef * b1)
        found.append(marker)
        return _Affine(*marker)
    if type(a) is not type(b) or a != b:
        raise _Mismatch(f"a constant changes from {a!r} to {b!r}")
    return a


class _Affine:
    """Placeholder in an argument structure for the size ``a * batch + c``."""

    def __init__(self, a: int, c: int) -> None:
        self.a, self.c = a, c


def _batched_input(graph: fx.Graph, batch: int) -> fx.Node:
    for node in graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return node
    raise RewriteError("no input has the batch axis the graph was captured with")


def generalize(module: fx.GraphModule, other: fx.GraphModule, sizes: tuple[int, int]) -> int:
    """Make ``module`` (captured at batch ``sizes[0]``) batch-generic using ``other`` (at ``sizes[1]``).

    Returns the number of sizes generalised. Raises :class:`RewriteError` naming the first node where the
    two captures differ in anything but batch-dependent integers.
    """
    nodes, others = list(module.graph.nodes), list(other.graph.nodes)
    mapping: dict[fx.Node, fx.Node] = {}
    changes: list[tuple[fx.Node, tuple, dict]] = []
    for i, (a, b) in enumerate(zip(nodes, others)):
        if a.op != b.op or a.target != b.target:
            where = _where(a) if a.op != "output" else _where(nodes[i - 1])
            raise RewriteError(
                f"the model computes differently at batch sizes {sizes[0]} and {sizes[1]} (from {where}): its batch cannot be made dynamic"
            )
        found: list = []
        try:
            args = _compare(a.args, b.args, mapping, sizes, found)
            kwargs = _compare(a.kwargs, b.kwargs, mapping, sizes, found)
            if a.op == "get_attr":
                x, y = attribute(module, a.target), attribute(other, b.target)
                if isinstance(x, torch.Tensor) and (x.shape != y.shape or not torch.equal(x, y)):
                    raise _Mismatch("it holds a tensor constant that depends on the batch size")
        except _Mismatch as exc:
            raise RewriteError(f"{_where(a)} differs between batch sizes {sizes[0]} and {sizes[1]}: {exc}") from None
        mapping[a] = b
        if found:
            changes.append((a, args, kwargs))
    if len(nodes) != len(others):
        raise RewriteError(f"the model computes differently at batch sizes {sizes[0]} and {sizes[1]}: its batch cannot be made dynamic")
    if not changes:
        return 0

    graph = module.graph
    source = _batched_input(graph, sizes[0])
    first_user = next(n for n in graph.nodes if n.op not in ("placeholder", "get_attr"))
    with graph.inserting_before(first_user):
        batch = graph.call_function(aten.sym_size.int, (source, 0))
    batch.meta[AFFINE_META] = (1, 0)
    made: dict[tuple[int, int], fx.Node] = {(1, 0): batch}

    def size_node(anchor: fx.Node, a: int, c: int) -> fx.Node:
        if (a, c) not in made:
            with graph.inserting_before(anchor):
                node = graph.call_function(mul_add, (batch, a, c))
            node.meta[AFFINE_META] = (a, c)
            made[(a, c)] = node
        return made[(a, c)]

    count = 0

    def substitute(value: Any) -> Any:
        nonlocal count
        if isinstance(value, _Affine):
            count += 1
            return size_node(first_user, value.a, value.c)
        if isinstance(value, (list, tuple)):
            return type(value)(substitute(v) for v in value)
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        return value

    for node, args, kwargs in changes:
        node.args, node.kwargs = substitute(args), substitute(kwargs)
    module.recompile()
    return count


def mul_add(batch: Any, a: int, c: int) -> Any:
    """``a * batch + c`` (an FX call target, so that tracing sees plain int arithmetic on the batch size)."""
    return batch * a + c

"""Numbers for graph passes: evaluate chosen nodes of a graph from known values, holding only what is still needed.

Graph passes find candidates by pattern and accept them only on numbers. :func:`evaluate_many` computes
the values of chosen nodes from a dictionary of known values -- the probe inputs, sizes, and values a pass
substitutes for some nodes (ones for the per-sample factors of a modulated weight) -- running only their
ancestors that the known values do not cover, in graph order, and dropping every intermediate value after
its last use there, as ``torch.fx.Interpreter`` does for a whole run. A proof that needs the style of a
layer therefore runs the mapping network, not the generator: feature maps are computed only where a
wanted value depends on them, and then one at a time. :func:`sizes_at` gives the graph's size values at a
batch size from the capture's symbolic shapes, without running anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sympy
import torch
import torch.fx as fx

from ..._util.memory import give_back

__all__ = ["annotate", "attribute", "concrete_shape", "evaluate", "evaluate_many", "sizes_at"]


def attribute(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def annotate(gm: fx.GraphModule, args: tuple) -> None:
    """Give every node without value metadata (those the passes added) a ``meta["val"]``: a ``meta``-device
    tensor of its dtype and shape, from one run on ``args``."""

    class _Annotator(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            value = super().run_node(node)
            if "val" not in node.meta:
                node.meta["val"] = torch.empty(value.shape, dtype=value.dtype, device="meta") if isinstance(value, torch.Tensor) else value
            return value

    with torch.no_grad():
        _Annotator(gm).run(*args)


def _ancestors(nodes: Iterable[fx.Node], known: dict[fx.Node, Any]) -> set[fx.Node]:
    """The nodes that computing ``nodes`` needs (themselves included), stopping at known values."""
    needed: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        current = stack.pop()
        if current in needed or current in known:
            continue
        if current.op == "placeholder":
            raise KeyError(f"evaluating needs the input {current.name}")
        needed.add(current)
        fx.node.map_arg((current.args, current.kwargs), lambda n: stack.append(n))
    return needed


def _run(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    if node.op == "get_attr":
        return attribute(gm, node.target)
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    raise ValueError(f"cannot evaluate {node.op} node {node.name}")


def evaluate_many(gm: fx.GraphModule, nodes: Iterable[fx.Node], known: dict[fx.Node, Any]) -> dict[fx.Node, Any]:
    """The values of ``nodes``: from ``known`` where given, else computed from their inputs.

    Only the ancestors of ``nodes`` that ``known`` does not cover are computed, in graph order, and each
    computed value is released after its last reader among them (the wanted values excepted). A
    placeholder that is not in ``known`` is a ``KeyError`` (the value depends on an input nobody gave).
    """
    wanted = list(dict.fromkeys(nodes))
    needed = _ancestors(wanted, known)
    order = [n for n in gm.graph.nodes if n in needed]
    readers: dict[fx.Node, int] = {}
    for current in order:
        for source in dict.fromkeys(_inputs(current)):
            readers[source] = readers.get(source, 0) + 1
    keep = set(wanted)
    env = dict(known)
    freed = 0
    with torch.no_grad():
        for current in order:
            env[current] = _run(gm, current, env)
            for source in dict.fromkeys(_inputs(current)):
                readers[source] -= 1
                if readers[source] == 0 and source not in keep and source not in known:
                    value = env.pop(source)  # its last reader has run: free it now, not at the end
                    freed += _nbytes(value) if source.op != "get_attr" else 0  # a parameter stays the module's
            if freed >= _GIVE_BACK_BYTES:
                give_back()
                freed = 0
    return {n: env[n] for n in wanted}


#: Freed bytes after which an evaluation hands the allocator's free memory back (see ``give_back``).
_GIVE_BACK_BYTES = 16 << 20


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) and value.device.type == "cpu" else 0


def _inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def evaluate(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Any]) -> Any:
    """The value of ``node`` (see :func:`evaluate_many`)."""
    return evaluate_many(gm, [node], known)[node]


def _concrete(value: Any, batch: int, symbol: Any) -> int | None:
    """``value`` (an int or a SymInt of the capture) at ``batch``, or ``None`` if it depends on more."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, torch.SymInt):
        return None
    expr = value.node.expr
    if not expr.free_symbols:
        return int(expr)
    if symbol is None or expr.free_symbols != {symbol}:
        return None
    result = expr.subs(symbol, batch)
    return int(result) if isinstance(result, sympy.Integer) else None


def sizes_at(graph: fx.Graph, batch: int, symbol: Any) -> dict[fx.Node, int]:
    """Every size node of a dynamic capture (an int, or a ``SymInt`` of the batch symbol ``symbol``) at ``batch``.

    What a probe run would compute for them, read from the capture's symbolic shapes instead: a size
    taken from a feature map (``x.shape[0]``) then costs nothing. Nodes of other kinds are left out.
    """
    sizes: dict[fx.Node, int] = {}
    for node in graph.nodes:
        value = node.meta.get("val")
        if node.op == "call_function" and isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
            size = _concrete(value, batch, symbol)
            if size is not None:
                sizes[node] = size
    return sizes


def concrete_shape(node: Any, batch: int, symbol: Any) -> tuple[int, ...] | None:
    """The shape of ``node``'s value at ``batch`` from its capture metadata, ``None`` where unknown."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        return None
    dims = [_concrete(d, batch, symbol) for d in value.shape]
    return None if any(d is None for d in dims) else tuple(dims)

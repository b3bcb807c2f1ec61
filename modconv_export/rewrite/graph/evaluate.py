"""Numbers for graph passes: record chosen node values on a probe run, evaluate pieces of a graph.

Graph passes find candidates by pattern and accept them only on numbers: :func:`record` runs the whole
graph once on probe inputs and keeps the values a pass asked for (plus every size, which is cheap);
:func:`evaluate` then computes any node from a dictionary of known values -- substituting chosen values
for some nodes (e.g. ones for the per-sample factors of a modulated weight) -- without running the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

__all__ = ["annotate", "attribute", "evaluate", "record"]


def attribute(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def record(gm: fx.GraphModule, args: tuple, wanted: Iterable[fx.Node]) -> tuple[dict[fx.Node, Any], Any]:
    """Run ``gm`` on ``args`` once: the values of ``wanted`` nodes and of every non-tensor node, and the outputs."""
    wanted = set(wanted)
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            value = super().run_node(node)
            if not isinstance(value, torch.Tensor):
                values[node] = value
            elif node in wanted:
                values[node] = value.clone()  # a later op of the run must not change what was recorded
            return value

    with torch.no_grad():
        outputs = _Recorder(gm).run(*args)
    return values, outputs


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


def evaluate(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Any]) -> Any:
    """The value of ``node``: from ``known`` where given, else computed from its inputs (recursively).

    Only the ancestors of ``node`` that ``known`` does not cover are computed, in graph order. A
    placeholder that is not in ``known`` is an error (the value depends on an input nobody gave).
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    needed: list[fx.Node] = []
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen or current in known:
            continue
        seen.add(current)
        if current.op == "placeholder":
            raise KeyError(f"evaluating {node.name} needs the input {current.name}")
        needed.append(current)
        fx.node.map_arg((current.args, current.kwargs), lambda n: stack.append(n))
    env = dict(known)
    with torch.no_grad():
        for current in sorted(needed, key=order.__getitem__):
            if current.op == "get_attr":
                env[current] = attribute(gm, current.target)
                continue
            args, kwargs = fx.node.map_arg((current.args, current.kwargs), env.__getitem__)
            if current.op == "call_method":
                env[current] = getattr(args[0], current.target)(*args[1:], **kwargs)
            elif current.op == "call_function":
                env[current] = current.target(*args, **kwargs)
            else:
                raise ValueError(f"cannot evaluate {current.op} node {current.name}")
    return env[node]

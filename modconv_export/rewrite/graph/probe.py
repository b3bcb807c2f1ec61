"""The probe run: the values every graph rule's proof reads, at batch size :data:`PROBE_BATCH`.

One run serves every candidate of every rule (:func:`probe_values`): a dynamic capture computes only
what the candidates' needed values depend on (:func:`.evaluate.evaluate_many`: the mapping network of a
StyleGAN2, not its synthesis) and reads sizes and shapes off its symbolic shapes. A graph generalised
from fixed batch sizes has no symbolic shapes: it is run whole, at the probe batch and at batch 1, and
both runs are compared with the model -- which also proves the generalisation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..._util import relative_l2
from ...errors import RewriteError
from .capture import GraphCapture, at_batch
from .contract import Probe
from .evaluate import concrete_shape, evaluate_many, sizes_at

__all__ = ["GRAPH_TOLERANCE", "PROBE_BATCH", "compare_outputs", "flat_tensors", "probe_values"]

#: Batch size of the probe run that proves each replacement (distinct from the capture's 2).
PROBE_BATCH = 3
#: Relative L2 a graph generalised from fixed batch sizes may differ from the model (float reassociation).
GRAPH_TOLERANCE = 1e-4


def flat_tensors(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a model's (nested) outputs, in pytree order: what is compared."""
    from torch.utils import _pytree as pytree

    return [o for o in pytree.tree_leaves(outputs) if isinstance(o, torch.Tensor)]


def compare_outputs(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest relative L2 error between matching outputs; infinite where their number or shapes differ."""
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return float("inf")
    return max((relative_l2(a, e) for a, e in zip(actual, expected)), default=0.0)


def _recorded_run(gm: fx.GraphModule, inputs: tuple, wanted: set, shaped: set) -> tuple[dict, dict, list]:
    """One run of ``gm``: the values of ``wanted`` nodes and of every non-tensor node, the shapes of
    ``shaped`` nodes, and the flat outputs (every other value is freed after its last use)."""
    values: dict[fx.Node, Any] = {}
    shapes: dict[fx.Node, tuple] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            value = super().run_node(node)
            if not isinstance(value, torch.Tensor):
                values[node] = value
            elif node in wanted:
                values[node] = value.clone()  # a later op of the run must not change what was recorded
            if node in shaped and isinstance(value, torch.Tensor):
                shapes[node] = tuple(value.shape)
            return value

    with torch.no_grad():
        outputs = flat_tensors(_Recorder(gm).run(*inputs))
    return values, shapes, outputs


def probe_values(model: nn.Module, captured: GraphCapture, args: tuple, wanted: set, shaped: set) -> Probe:
    """The probe's values of ``wanted`` (and of every size node) and shapes of ``shaped`` nodes."""
    gm, probe = captured.module, at_batch(args, PROBE_BATCH, seed=0)
    if not captured.generalized:
        sizes = sizes_at(gm.graph, PROBE_BATCH, captured.symbol)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        values = evaluate_many(gm, wanted, {**dict(zip(placeholders, probe)), **sizes})
        shapes = {n: concrete_shape(n, PROBE_BATCH, captured.symbol) for n in shaped}
        return Probe({**sizes, **values}, shapes, PROBE_BATCH)
    values, shapes, outputs = _recorded_run(gm, probe, wanted, shaped)
    for batch, inputs in ((PROBE_BATCH, probe), (1, at_batch(args, 1, seed=1))):
        with torch.no_grad():
            actual = outputs if batch == PROBE_BATCH else flat_tensors(gm(*inputs))
            error = compare_outputs(actual, flat_tensors(model(*inputs)))
        if not error <= GRAPH_TOLERANCE:
            raise RewriteError(
                f"the model's graph, generalised from fixed batch sizes, does not reproduce it at batch size {batch} (relative L2 {error:.2e})"
            )
        del actual
    return Probe(values, shapes, PROBE_BATCH)

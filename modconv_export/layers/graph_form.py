"""The export form of a graph-level rewrite: a captured, rewritten GraphModule behind a model-like module."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

__all__ = ["GraphExportForm"]


class GraphExportForm(nn.Module):
    """``forward(*inputs)`` runs the rewritten graph and returns the outputs in the model's own structure.

    ``graph_module`` is a plain :class:`torch.fx.GraphModule` of ATen ops (flat tensor inputs, a flat tuple of
    outputs) with a symbolic batch: it runs at any batch size, and its convolution weights are constants.
    """

    def __init__(self, graph: fx.GraphModule, out_spec: Any, lowerings: list | None = None, program: Any = None) -> None:
        super().__init__()
        self.graph_module = graph
        self.out_spec = out_spec
        #: The Function lowerings the graph was captured with (their custom ops are in the graph).
        self.lowerings = list(lowerings or [])
        #: The ``torch.export`` program this graph was captured as, kept only while the graph is unchanged
        #: (no rewrite applied): the ONNX exporter takes it directly instead of tracing the graph again.
        self.program = program
        #: The outputs' shapes and dtypes at batch size ``example_batch`` (``meta`` tensors in the model's
        #: output structure), read from the capture: what an export needs to know of them without running
        #: the model. ``None`` where the capture does not say (the exporter then runs the form once).
        self.example_outputs: Any = None
        self.example_batch: int | None = None
        #: The dynamic capture's :class:`~modconv_export.rewrite.graph.program.ProgramSignature` (its batch's
        #: range, its call's pytree specs): what turns the rewritten graph into a program again without a
        #: second trace. ``None`` for a graph generalised from fixed batch sizes.
        self.signature: Any = None

    def forward(self, *inputs: Any) -> Any:
        return pytree.tree_unflatten(list(self.graph_module(*inputs)), self.out_spec)

"""TorchScript: the rewritten graph traced into a file that ``torch.jit.load`` runs at any batch size."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._util import as_tuple, first_line, quiet
from .._util.files import atomic_output, write_bytes
from ..errors import ExportError
from ..layers.graph_form import GraphExportForm
from ..rewrite.graph.capture import at_batch
from ..rewrite.graph.traceable import traceable
from .prepare import batch_of_two, prepare_export

__all__ = ["export_torchscript", "trace_torchscript"]


def _traced_ops(module: torch.jit.ScriptModule) -> set[str]:
    kinds = {node.kind() for node in module.inlined_graph.nodes()}
    return {k for k in kinds if k.startswith("modconv_export::") or k == "prim::PythonOp"}


def trace_torchscript(
    model: nn.Module, args: Any, *, rewrite: bool = True, strict: bool = False, check: bool = True
) -> torch.jit.ScriptModule:
    """Rewrite ``model`` and trace it into a ScriptModule that runs at any batch size.

    The rewrite (:func:`prepare_export`, without ONNX lowerings) captures the model as an ATen graph,
    tracing through its autograd Functions, so the trace holds only ``aten`` ops (what a plain
    ``torch.jit.load`` runs). With ``check`` the trace is replayed at another batch size and compared
    with eager (the parity check measures that itself, so it traces with ``check=False``). Raises
    :class:`~modconv_export.errors.ExportError` (or ``RewriteError``).
    """
    prepared = prepare_export(model, args, rewrite=rewrite, strict=strict, lowerings=False)
    exportable, args = prepared.module, prepared.args
    traced_form = traceable(exportable) if isinstance(exportable, GraphExportForm) else exportable
    try:
        with quiet(), torch.no_grad():
            traced = torch.jit.trace(traced_form, batch_of_two(args), check_trace=False)
    except Exception as exc:
        raise ExportError(f"torch.jit.trace failed: {type(exc).__name__}: {first_line(exc)}") from exc
    foreign = _traced_ops(traced)
    if foreign:
        raise ExportError(f"the traced graph calls ops a plain torch.jit.load cannot run: {', '.join(sorted(foreign))}")
    if check:
        other = at_batch(args, 3, seed=7)
        with torch.no_grad():
            expected, actual = exportable(*other), traced(*other)
        for e, a in zip(as_tuple(expected), as_tuple(actual)):
            if e.shape != a.shape or not torch.allclose(e, a, rtol=1e-4, atol=1e-5):
                raise ExportError("the traced TorchScript module does not reproduce eager at another batch size (batch frozen?)")
    return traced


def export_torchscript(
    model: nn.Module, args: Any, path: str | os.PathLike, *, rewrite: bool = True, strict: bool = False, check: bool = True
) -> Path:
    """Rewrite ``model``, trace it and save a TorchScript file that runs at any batch size.

    The file holds only ``aten`` ops, so ``torch.jit.load`` runs it in a process that never imports
    this package or the user's model code. The trace is replayed at another batch size and compared
    with eager before anything is written -- unless ``check=False``, for a caller that checks the file
    itself next (the command line's verification runs it at every verified batch size).
    """
    traced = trace_torchscript(model, args, rewrite=rewrite, strict=strict, check=check)
    buffer = io.BytesIO()  # torch.jit.save's own file writer aborts the process on a full disk
    torch.jit.save(traced, buffer)
    with atomic_output(path) as tmp:
        write_bytes(tmp, buffer.getvalue())
    return Path(path)

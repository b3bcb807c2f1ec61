"""The rewrite stage as one export needs it: module rules, graph capture and rewrite, precision.

:func:`prepare_export` is what :func:`~modconv_export.export.export_onnx` and
:func:`~modconv_export.export.export_torchscript` call first, and what the command line calls once to
share one rewrite between the ONNX file, the TorchScript file and the parity check.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .._util import as_tuple, first_line, quiet
from ..errors import CaptureError, ExportError, RewriteError
from ..layers.graph_form import GraphExportForm
from ..rewrite import RewriteReport, copy_module, rewrite_model
from ..rewrite.graph import captured_form, half_form, rewrite_graph
from ..rewrite.recorded import failing_module
from ..symbolic import lowerings_installed, registered_lowerings
from ..symbolic.install import function_of_op

__all__ = ["PRECISIONS", "Prepared", "batch_of_two", "prepare_export"]

PRECISIONS = ("fp32", "fp16")
#: The opset lowerings are built for while capturing (the exporter re-translates at its own opset).
CAPTURE_OPSET = 18


@dataclass
class Prepared:
    """The rewrite stage's result for one export: the module to export, its example inputs and outputs.

    ``outputs`` tells the exporter the outputs' structure, shapes and dtypes: for a captured graph they are
    ``meta`` tensors read from the capture (running a 1024 px generator to learn its output shape would cost
    more than the whole export); for a module exported as it is, its outputs on ``args``.
    """

    module: nn.Module
    args: tuple
    outputs: Any
    report: RewriteReport | None
    #: The model as modules, after the module rules and before graph capture: where failures are located.
    source: nn.Module | None = None
    #: The float32 export form (``module`` itself unless ``precision="fp16"``): what TorchScript and the
    #: eager parity row are made from.
    fp32: nn.Module | None = None


def _shapes(args: tuple) -> list[tuple]:
    return [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]


def _run_eager(module: nn.Module, args: tuple) -> Any:
    try:
        with torch.no_grad():
            return module(*args)
    except Exception as exc:
        raise ExportError(f"the model rejects the example inputs {_shapes(args)}: {first_line(exc)}") from exc


def _accepts(model: nn.Module, args: tuple) -> bool:
    try:
        with torch.no_grad():
            copy_module(model).eval()(*args)
    except Exception:
        return False
    return True


def _run_rewritten(module: nn.Module, model: nn.Module, args: tuple, report: RewriteReport | None) -> Any:
    """:func:`_run_eager` on the module rules' result; where it fails on inputs the user's ``model`` accepts,
    the error says that the rewrite is at fault and names the first rule applied where it fails."""
    try:
        return _run_eager(module, args)
    except ExportError as exc:
        if report is None or not report.rewritten or not _accepts(model, args):
            raise
        path = failing_module(module, args)
        culprit = report.first_rewrite_at(path) if path is not None else None
        where = f" in {path or '<root>'}" if path is not None else ""
        blame = f"; the module rule {culprit[1]} rewrote {culprit[0] or '<root>'} first there" if culprit else ""
        raise ExportError(
            f"the rewritten model (not the model itself, which accepts them) rejects the example inputs {_shapes(args)}{where}: "
            f"{first_line(exc.__cause__ or exc)}{blame}"
        ) from exc


def _outputs(form: GraphExportForm, args: tuple) -> Any:
    """What the capture says the outputs are at ``args``' batch size, else one run of the form."""
    batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    if form.example_outputs is not None and form.example_batch == batch:
        return form.example_outputs
    return _run_eager(form, args)


def prepare_export(
    model: nn.Module,
    args: Any,
    *,
    rewrite: bool = True,
    strict: bool = False,
    precision: str = "fp32",
    lowerings: bool = True,
) -> Prepared:
    """Rewrite ``model`` for export on example ``args``: module rules, precision, graph-level rewrite.

    ``lowerings=True`` captures the graph with the registered ``autograd.Function`` lowerings in place
    (for ONNX); ``False`` traces through every Function's forward (for TorchScript, which has no use for
    ONNX lowerings). ``rewrite=False`` exports the model as it is: unchanged, or -- for
    ``precision="fp16"``, which is decided on a graph -- captured and converted without any rewrite. A
    :class:`GraphExportForm` from an earlier call is taken as it is. Raises
    :class:`ExportError`/:class:`RewriteError` with one line.
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    args = as_tuple(args)
    if isinstance(model, GraphExportForm):  # prepared earlier: exported as it is
        return Prepared(model, args, _outputs(model, args), None, source=model, fp32=None if precision == "fp16" else model)
    if rewrite:
        module, report = rewrite_model(model, strict=strict, example_inputs=args, graph=False)
    else:
        module, report = copy_module(model).eval(), None
    if not rewrite and precision == "fp32":
        return Prepared(module, args, _run_eager(module, args), None, source=module, fp32=module)
    # The capture traces through every autograd Function's forward, except those the user registered an
    # ONNX lowering for: they stay one custom op each, for the exporter to translate.
    found = registered_lowerings() if lowerings else []
    try:
        with quiet(), lowerings_installed(found, "dynamo", CAPTURE_OPSET):
            form = rewrite_graph(module, args, report) if report is not None else captured_form(module, args)
    except CaptureError:
        # A model that rejects its inputs says that (and, where only the rewritten one does, which rule
        # is at fault) rather than why its capture failed; an eager run costs nothing otherwise.
        _run_rewritten(module, model, args, report)
        raise
    called = {function_of_op(n.target) for n in form.graph_module.graph.nodes if getattr(n.target, "namespace", None) == "modconv_export"}
    form.lowerings = [lowering for lowering in found if lowering.function in called]
    if strict and report is not None and report.near_misses:
        raise RewriteError("; ".join(report.describe_near_misses()))
    for line in report.describe_notes() if report is not None else []:  # e.g. random noise became zero noise
        warnings.warn(f"modconv_export: {line}", UserWarning, stacklevel=3)
    fp32 = form
    if precision == "fp16":  # decided on the graph, op by op (rewrite.graph.half), whatever code it came from
        form = half_form(form, args)
    return Prepared(form, args, _outputs(form, args), report, source=module, fp32=fp32)


def batch_of_two(args: tuple) -> tuple:
    """Batch-1 examples make torch.export specialise the batch to 1; trace at batch 2 instead."""
    return tuple(
        a.repeat(2, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a for a in args
    )

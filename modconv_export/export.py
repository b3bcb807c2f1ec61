"""Export: rewritten model -> ONNX (dynamo or legacy exporter) or TorchScript, checked and written atomically.

Both ONNX paths export with a symbolic batch axis on every input and output, install the Function
lowerings the model needs (:mod:`modconv_export.symbolic`) only for the duration of the export, run
``onnx.checker`` and strict shape inference, and refuse a graph with non-standard ops or computed
convolution weights. The default opset is one that the exporter and the installed ONNX Runtime both
support (onnxruntime-gpu 1.31 stops at 26).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass
import torch
import torch.nn as nn

from . import __version__
from .errors import ExportError, RewriteError
from .files import atomic_output, write_bytes
from .graph import computed_conv_weights, non_standard_ops
from .metadata import export_properties, name_nodes_by_module, parity_properties, rewrite_properties, strip_debug_metadata
from .precision import PRECISIONS, to_half
from .rewrite import RewriteReport, copy_module, rewrite_model
from .rewrite.graph import GraphExportForm, half_form, rewrite_graph
from .rewrite.graph.capture import at_batch, dynamic_batch_shapes, first_line
from .rewrite.graph.traceable import traceable
from .symbolic import lowerings_for, lowerings_installed, registered_lowerings
from .symbolic.install import function_of_op

__all__ = [
    "DEFAULT_OPSET", "Prepared", "export_onnx", "export_torchscript", "max_supported_opset", "prepare_export", "resolve_opset",
    "trace_torchscript",
]  # fmt: skip

#: torch.onnx's op library (torch_lib) is written against opset 18; every supported ORT runs it.
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


def _as_args(args: Any) -> tuple:
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)


@functools.lru_cache(maxsize=None)
def ort_max_opset() -> int:
    """Highest default-domain opset the installed ONNX Runtime accepts, found by loading tiny models."""
    import onnxruntime as ort

    def loads(version: int) -> bool:
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:
            return False

    for version in range(onnx.defs.onnx_opset_version(), DEFAULT_OPSET - 1, -1):
        if loads(version):
            return version
    return DEFAULT_OPSET


def max_supported_opset(exporter: str = "dynamo") -> int:
    """The highest opset that ``exporter``, the onnx package and the installed ONNX Runtime all support."""
    from torch.onnx import _constants

    if exporter == "torchscript":
        exporter_max = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    else:
        exporter_max = _constants.ONNX_MAX_OPSET
    return min(exporter_max, onnx.defs.onnx_opset_version(), ort_max_opset())


def resolve_opset(opset: int | None, exporter: str = "dynamo") -> int:
    top = max_supported_opset(exporter)
    if opset is None:
        return min(DEFAULT_OPSET, top)
    if not isinstance(opset, int) or opset < 13 or opset > top:
        raise ExportError(f"opset {opset} is not supported here: use 13..{top} ({exporter} exporter, installed onnx and ONNX Runtime)")
    return opset


def _input_names(model: nn.Module, args: tuple, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(args):
            raise ExportError(f"{len(names)} input names for {len(args)} inputs")
        return list(names)
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[: len(args)] if len(params) >= len(args) else [f"input_{i}" for i in range(len(args))]


def _output_names(outputs: Any, names: Sequence[str] | None) -> list[str]:
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    if names is not None:
        if len(names) != count:
            raise ExportError(f"{len(names)} output names for {count} outputs")
        return list(names)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _batch_of_two(args: tuple) -> tuple:
    """Batch-1 examples make torch.export specialise the batch to 1; trace at batch 2 instead."""
    return tuple(a.repeat(2, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a for a in args)


@contextlib.contextmanager
def _quiet_exporters():
    """Silence the exporters' progress prints and known-noise warnings; errors still propagate."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@dataclass
class Prepared:
    """The rewrite stage's result for one export: the module to export, its example inputs and outputs."""

    module: nn.Module
    args: tuple
    outputs: Any
    report: RewriteReport | None
    #: The model as modules, after the module rules and before graph capture: where failures are located.
    source: nn.Module | None = None
    #: The float32 export form (``module`` itself unless ``precision="fp16"``): what TorchScript and the
    #: eager parity row are made from.
    fp32: nn.Module | None = None


def _run_eager(module: nn.Module, args: tuple) -> Any:
    try:
        with torch.no_grad():
            return module(*args)
    except Exception as exc:
        raise ExportError(f"the model rejects the example inputs {[tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]}: {first_line(exc)}") from exc


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
    ONNX lowerings). ``rewrite=False`` exports the model as it is (a :class:`GraphExportForm` from an
    earlier call, or any module). Raises :class:`ExportError`/:class:`RewriteError` with one line.
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    args = _as_args(args)
    report = None
    if not rewrite:
        module = model if isinstance(model, GraphExportForm) else copy_module(model).eval()
        if precision == "fp16" and not isinstance(model, GraphExportForm):
            module = to_half(module, args)
        return Prepared(module, args, _run_eager(module, args), report, source=module, fp32=module if precision == "fp32" else None)
    module, report = rewrite_model(model, strict=strict)
    _run_eager(module, args)  # a model that rejects its inputs says so before the slower capture
    # The capture traces through every autograd Function's forward, except those the user registered an
    # ONNX lowering for: they stay one custom op each, for the exporter to translate.
    found = registered_lowerings() if lowerings else []
    with _quiet_exporters(), lowerings_installed(found, "dynamo", DEFAULT_OPSET):
        form = rewrite_graph(module, args, report)
    called = {function_of_op(n.target) for n in form.graph_module.graph.nodes if getattr(n.target, "namespace", None) == "modconv_export"}
    form.lowerings = [lowering for lowering in found if lowering.function in called]
    if strict and report.near_misses:
        raise RewriteError("; ".join(report.describe_near_misses()))
    fp32 = form
    if precision == "fp16":
        form = half_form(form, args)
    return Prepared(form, args, _run_eager(form, args), report, source=module, fp32=fp32)


class _WithModuleNames(nn.Module):
    """Runs a graph form node by node, so that re-tracing it keeps each node's module path.

    Under ``torch.fx.traceback.preserve_node_meta`` the interpreter hands every node's metadata
    (``nn_module_stack``) to the new trace: the ONNX file then names nodes after the model's own
    modules, not after one opaque graph module.
    """

    def __init__(self, form: GraphExportForm) -> None:
        super().__init__()
        self.form = form

    def forward(self, *inputs: Any) -> Any:
        from torch.utils import _pytree as pytree

        flat = torch.fx.Interpreter(self.form.graph_module).run(*inputs)
        return pytree.tree_unflatten(list(flat), self.form.out_spec)


def _export_dynamo(model, args, input_names, output_names, opset, dynamic_batch, table) -> onnx.ModelProto:
    import torch.fx.traceback as fx_traceback

    dynamic_shapes = dynamic_batch_shapes(model, args) if dynamic_batch else None
    context = contextlib.nullcontext()
    if isinstance(model, GraphExportForm) and model.program is not None and dynamic_batch:
        model, dynamic_shapes = model.program, None  # captured as is, nothing rewritten: no second trace
    elif isinstance(model, GraphExportForm):
        model, context = _WithModuleNames(model), fx_traceback.preserve_node_meta()
    with context:
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=table,
            optimize=True,
            verbose=False,
            report=False,
        )
    return program.model_proto


def _export_legacy(model, args, input_names, output_names, opset, dynamic_batch) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    torch.onnx.export(
        model,
        args,
        buffer,
        dynamo=False,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_axes=axes,
        do_constant_folding=True,
    )
    # The legacy exporter deduplicates equal initializers behind Identity nodes (all blur kernels of one
    # width are equal); eliminate those so every Conv reads its initializer directly.
    model = ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))
    IdentityEliminationPass()(model)
    return ir.serde.serialize_model(model)


def _pin_output_shapes(model: ir.Model, outputs: Any, dynamic_batch: bool) -> None:
    """Only the batch axis is dynamic: write the eager outputs' other sizes into the graph outputs
    (the legacy exporter leaves e.g. the size after a reflection pad symbolic)."""
    tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for value, tensor in zip(model.graph.outputs, tensors):
        if not isinstance(tensor, torch.Tensor) or value.shape is None or len(value.shape) != tensor.dim():
            continue
        dims = list(tensor.shape)
        if dynamic_batch and tensor.dim() > 0:
            dims[0] = value.shape[0] if not isinstance(value.shape[0], int) else ir.SymbolicDim("batch")
        value.shape = ir.Shape(dims)


def _finish(proto: onnx.ModelProto, outputs: Any, dynamic_batch: bool, keep_debug_metadata: bool, properties: dict[str, str]) -> onnx.ModelProto:
    """Pinned output shapes, module paths in node names, no exporter debug metadata, our properties."""
    model = ir.serde.deserialize_model(proto)
    _pin_output_shapes(model, outputs, dynamic_batch)
    name_nodes_by_module(model)  # dynamo files only: the legacy exporter's names hold the scopes already
    if not keep_debug_metadata:
        strip_debug_metadata(model)
    model.metadata_props.update(properties)
    return ir.serde.serialize_model(model)


def opset_of(proto: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset a model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _with_opset(proto: onnx.ModelProto, opset: int, exporter: str) -> onnx.ModelProto:
    """The file must have the opset asked for: the dynamo exporter writes opset 18 and converts down on a
    best-effort basis, keeping 18 when that fails. Convert with onnx's converter once more, else refuse."""
    if opset_of(proto) == opset:
        return proto
    written = opset_of(proto)
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    else:
        if opset_of(converted) == opset:
            return converted
        reason = f"the converter wrote opset {opset_of(converted)}"
    raise ExportError(f"the {exporter} exporter wrote opset {written}, not the requested {opset}, and converting it failed ({reason}); "
                      f"use --opset {written} or the other exporter")  # fmt: skip


def _check_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    bad = non_standard_ops(proto)
    if bad:
        raise ExportError(f"the exported graph has non-standard ops: {', '.join(sorted(set(bad))[:5])}")
    computed = computed_conv_weights(proto)
    if computed:
        raise ExportError(f"convolution weights computed in the graph (not constants): {', '.join(computed[:5])}")
    try:
        onnx.checker.check_model(proto, full_check=True)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker/shape inference: {exc}") from exc


def export_onnx(
    model: nn.Module,
    args: Any,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "dynamo",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    rewrite: bool = True,
    strict: bool = False,
    precision: str = "fp32",
    keep_debug_metadata: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Rewrite ``model``, export it to ONNX at ``path`` and return the path.

    ``args`` are example inputs (a tensor or a tuple, in ``forward`` order); their axis 0 becomes the
    symbolic ``batch`` axis when ``dynamic_batch``. The rewrite (:func:`prepare_export`) runs the module
    rules, then captures the model as a graph and replaces every convolution grouped by the batch with its
    constant-weight form, whatever code the model comes from. ``exporter="torchscript"`` uses the legacy
    TorchScript-based exporter. ``rewrite=False`` exports the model as it is (e.g. the module of an
    earlier :func:`prepare_export`), with only the Function lowerings installed. ``precision="fp16"``
    computes feature maps in float16 and keeps the style and demodulation arithmetic in float32 (see
    :mod:`modconv_export.precision`); inputs and outputs stay float32. The file's nodes are named by
    module path and the exporter's debug metadata (stack traces with this machine's paths) is stripped
    unless ``keep_debug_metadata``; its ``metadata_props`` hold the toolkit version, exporter, precision,
    dynamic axes, the rewrite summary and ``metadata`` (see :mod:`modconv_export.metadata`). Raises
    :class:`~modconv_export.errors.ExportError` (or ``RewriteError``) with a one-line reason.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    opset = resolve_opset(opset, exporter)
    prepared = prepare_export(model, args, rewrite=rewrite, strict=strict, precision=precision)
    exportable, args, outputs = prepared.module, prepared.args, prepared.outputs
    report = prepared.report or getattr(model, "_modconv_export_report", None)
    rewritten = rewrite_properties(report) if report is not None else {}
    names_in = _input_names(model, args, input_names)
    names_out = _output_names(outputs, output_names)
    axes = {name: {0: "batch"} for name in [*names_in, *names_out]} if dynamic_batch else {}
    properties = {
        **export_properties(version=__version__, exporter=exporter, precision=precision, dynamic_axes=axes),
        **rewritten,
        **parity_properties(None),  # "verified": false until metadata.record_parity finalises a verified file
        **(metadata or {}),
    }
    trace_args = _batch_of_two(args) if dynamic_batch else args
    lowerings = exportable.lowerings if isinstance(exportable, GraphExportForm) else lowerings_for(exportable, trace_args)
    try:
        with _quiet_exporters(), lowerings_installed(lowerings, exporter, opset) as table:
            if exporter == "dynamo":
                proto = _export_dynamo(exportable, trace_args, names_in, names_out, opset, dynamic_batch, table)
            else:
                traced = traceable(exportable, keep_lowerings=True) if isinstance(exportable, GraphExportForm) else exportable
                proto = _export_legacy(traced, trace_args, names_in, names_out, opset, dynamic_batch)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{exporter} export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    proto = _check_graph(_finish(_with_opset(proto, opset, exporter), outputs, dynamic_batch, keep_debug_metadata, properties))
    data = proto.SerializeToString()
    with atomic_output(path) as tmp:
        write_bytes(tmp, data)
    return Path(path)


def _traced_ops(module: torch.jit.ScriptModule) -> set[str]:
    kinds = {node.kind() for node in module.inlined_graph.nodes()}
    return {k for k in kinds if k.startswith("modconv_export::") or k == "prim::PythonOp"}


def trace_torchscript(model: nn.Module, args: Any, *, rewrite: bool = True, strict: bool = False, check: bool = True) -> torch.jit.ScriptModule:
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
        with _quiet_exporters(), torch.no_grad():
            traced = torch.jit.trace(traced_form, _batch_of_two(args), check_trace=False)
    except Exception as exc:
        raise ExportError(f"torch.jit.trace failed: {type(exc).__name__}: {first_line(exc)}") from exc
    foreign = _traced_ops(traced)
    if foreign:
        raise ExportError(f"the traced graph calls ops a plain torch.jit.load cannot run: {', '.join(sorted(foreign))}")
    if check:
        other = at_batch(args, 3, seed=7)
        with torch.no_grad():
            expected, actual = exportable(*other), traced(*other)
        for e, a in zip(_as_args(expected), _as_args(actual)):
            if e.shape != a.shape or not torch.allclose(e, a, rtol=1e-4, atol=1e-5):
                raise ExportError("the traced TorchScript module does not reproduce eager at another batch size (batch frozen?)")
    return traced


def export_torchscript(model: nn.Module, args: Any, path: str | os.PathLike, *, rewrite: bool = True, strict: bool = False) -> Path:
    """Rewrite ``model``, trace it and save a TorchScript file that runs at any batch size.

    The file holds only ``aten`` ops, so ``torch.jit.load`` runs it in a process that never imports
    this package or the user's model code. The trace is replayed at another batch size and compared
    with eager before anything is written.
    """
    traced = trace_torchscript(model, args, rewrite=rewrite, strict=strict)
    buffer = io.BytesIO()  # torch.jit.save's own file writer aborts the process on a full disk
    torch.jit.save(traced, buffer)
    with atomic_output(path) as tmp:
        write_bytes(tmp, buffer.getvalue())
    return Path(path)

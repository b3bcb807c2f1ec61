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
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx.version_converter
import onnx_ir as ir
import torch
import torch.nn as nn
from onnx_ir.passes.common import IdentityEliminationPass

from .. import __version__
from .._util import first_line, forward_parameters, quiet
from .._util.files import atomic_output
from .._util.progress import step
from ..errors import ExportError
from ..layers.graph_form import GraphExportForm
from ..rewrite.graph.capture import dynamic_batch_shapes
from ..rewrite.graph.program import exported_program
from ..rewrite.graph.traceable import traceable
from ..rewrite.registry import registered_rule
from ..symbolic import lowerings_for, lowerings_installed
from .checks import check_graph
from .metadata import export_properties, name_nodes_by_module, rewrite_properties, strip_debug_metadata, unverified_properties
from .onnx_write import write_onnx
from .prepare import batch_of_two, prepare_export

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "export_onnx", "max_supported_opset", "opset_of", "resolve_opset"]


DEFAULT_OPSET = 18


EXPORTERS = ("dynamo", "torchscript")
#: Other names of the exporters: "legacy" is what torch.onnx calls its TorchScript-based exporter.
EXPORTER_ALIASES = {"legacy": "torchscript"}


@functools.cache
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

    if EXPORTER_ALIASES.get(exporter, exporter) == "torchscript":
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
    params, _, _ = forward_parameters(model)
    return params[: len(args)] if len(params) >= len(args) else [f"input_{i}" for i in range(len(args))]


def _output_names(outputs: Any, names: Sequence[str] | None) -> list[str]:
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    if names is not None:
        if len(names) != count:
            raise ExportError(f"{len(names)} output names for {count} outputs")
        return list(names)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


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


def _program_of(form: GraphExportForm) -> torch.export.ExportedProgram | None:
    """The program the dynamo exporter can take without tracing ``form`` again, if there is one."""
    if form.program is not None:
        return form.program  # captured as is, nothing rewritten
    if form.signature is None:
        return None  # generalised from fixed batch sizes: only a trace gives it a symbolic batch
    try:
        return exported_program(form.graph_module, form.signature)
    except Exception:  # a graph torch.export's verifier does not accept as it is: trace it instead
        return None


def _export_dynamo(model, args, input_names, output_names, opset, dynamic_batch, table) -> ir.Model:
    import torch.fx.traceback as fx_traceback

    dynamic_shapes = dynamic_batch_shapes(model, args) if dynamic_batch else None
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    program = _program_of(model) if isinstance(model, GraphExportForm) and dynamic_batch else None
    if program is not None:
        model, dynamic_shapes = program, None  # the capture's own program, or the rewritten graph as one: no second trace
    elif isinstance(model, GraphExportForm):
        model, context = _WithModuleNames(model), fx_traceback.preserve_node_meta()
    with context:
        exported = torch.onnx.export(
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
    assert exported is not None  # dynamo=True always returns its ONNXProgram
    if dynamic_shapes is None and dynamic_batch:
        _name_batch_axis(exported)
    return exported.model


def _name_batch_axis(program: Any) -> None:
    """A program exported as it is names the batch after its symbol (``s0``); call it ``batch``, as an
    export with ``dynamic_shapes`` does (every input's axis 0 is the one batch)."""
    symbols = {v.shape[0].value for v in program.model.graph.inputs if v.shape and isinstance(v.shape[0], ir.SymbolicDim)}
    if len(symbols) == 1 and None not in symbols and hasattr(program, "rename_axes"):
        program.rename_axes({symbols.pop(): "batch"})


def _export_legacy(model, args, input_names, output_names, opset, dynamic_batch) -> ir.Model:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    torch.onnx.export(
        model,
        args,
        buffer,  # type: ignore[arg-type]  # the legacy exporter writes to a file object too
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
    return model


def _pin_output_shapes(model: ir.Model, outputs: Any, dynamic_batch: bool) -> None:
    """Only the batch axis is dynamic: write the eager outputs' other sizes into the graph outputs
    (the legacy exporter leaves e.g. the size after a reflection pad symbolic)."""
    tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for value, tensor in zip(model.graph.outputs, tensors):
        if not isinstance(tensor, torch.Tensor) or value.shape is None or len(value.shape) != tensor.dim():
            continue
        dims: list[int | ir.SymbolicDim] = list(tensor.shape)
        if dynamic_batch and tensor.dim() > 0:
            dims[0] = value.shape[0] if not isinstance(value.shape[0], int) else ir.SymbolicDim("batch")
        value.shape = ir.Shape(dims)


def _finish(model: ir.Model, outputs: Any, dynamic_batch: bool, keep_debug_metadata: bool, properties: dict[str, str]) -> None:
    """Pinned output shapes, module paths in node names, no exporter debug metadata, our properties."""
    _pin_output_shapes(model, outputs, dynamic_batch)
    name_nodes_by_module(model)  # dynamo files only: the legacy exporter's names hold the scopes already
    if not keep_debug_metadata:
        strip_debug_metadata(model)
    model.metadata_props.update(properties)


def opset_of(model: onnx.ModelProto | ir.Model) -> int | None:
    """The default-domain (``ai.onnx``) opset a model imports."""
    if isinstance(model, ir.Model):
        return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _with_opset(model: ir.Model, opset: int, exporter: str) -> ir.Model:
    """The file must have the opset asked for: the dynamo exporter writes opset 18 and converts down on a
    best-effort basis, keeping 18 when that fails. Convert with onnx's converter once more, else refuse."""
    if opset_of(model) == opset:
        return model
    written = opset_of(model)
    try:
        converted = onnx.version_converter.convert_version(ir.serde.serialize_model(model), opset)
    except Exception as exc:
        reason = first_line(exc, 200)
    else:
        if opset_of(converted) == opset:
            return ir.serde.deserialize_model(converted)
        reason = f"the converter wrote opset {opset_of(converted)}"
    raise ExportError(f"the {exporter} exporter wrote opset {written}, not the requested {opset}, and converting it failed ({reason}); "
                      f"use --opset {written} or the other exporter")  # fmt: skip


def _blur_test():
    """The blur rule's structural test (its Functions get the depthwise-conv lowering), if the rule is registered."""
    rule = registered_rule("blur")
    return rule.looks_like if rule is not None else None


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
    constant-weight form, whatever code the model comes from. ``exporter="legacy"`` (or ``"torchscript"``)
    uses the legacy TorchScript-based exporter. ``rewrite=False`` exports the model as it is (e.g. the module of an
    earlier :func:`prepare_export`), with only the Function lowerings installed. ``precision="fp16"``
    computes feature maps in float16 and keeps the style and demodulation arithmetic in float32 (see
    :mod:`modconv_export.rewrite.graph.half`); inputs and outputs stay float32. The file's nodes are named by
    module path and the exporter's debug metadata (stack traces with this machine's paths) is stripped
    unless ``keep_debug_metadata``; its ``metadata_props`` hold the toolkit version, exporter, precision,
    dynamic axes, the rewrite summary and ``metadata`` (see :mod:`modconv_export.export.metadata`). Raises
    :class:`~modconv_export.errors.ExportError` (or ``RewriteError``) with a one-line reason.
    """
    exporter = EXPORTER_ALIASES.get(exporter, exporter)
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of dynamo, legacy")
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
        **unverified_properties(),  # until verify.record_parity finalises a verified file
        **(metadata or {}),
    }
    trace_args = batch_of_two(args) if dynamic_batch else args
    lowerings = exportable.lowerings if isinstance(exportable, GraphExportForm) else lowerings_for(exportable, trace_args, _blur_test())
    step(f"export: translating to ONNX ({exporter} exporter, opset {opset})")
    try:
        with quiet(), lowerings_installed(lowerings, exporter, opset) as table:
            if exporter == "dynamo":
                onnx_model = _export_dynamo(exportable, trace_args, names_in, names_out, opset, dynamic_batch, table)
            else:
                traced = traceable(exportable, keep_lowerings=True) if isinstance(exportable, GraphExportForm) else exportable
                onnx_model = _export_legacy(traced, trace_args, names_in, names_out, opset, dynamic_batch)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{exporter} export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    onnx_model = _with_opset(onnx_model, opset, exporter)
    _finish(onnx_model, outputs, dynamic_batch, keep_debug_metadata, properties)
    step("export: checking the graph (onnx.checker, strict shape inference)")
    value_info = check_graph(onnx_model)
    step("export: writing the file")
    with atomic_output(path) as tmp:
        write_onnx(onnx_model, tmp, value_info)
    return Path(path)

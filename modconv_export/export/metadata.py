"""What an exported ONNX file says about itself, and what it no longer leaks.

torch.onnx's dynamo exporter annotates every node with debug metadata: the Python stack trace of the
op (absolute paths of the exporting machine's source files and virtual environment), the FX node,
the class hierarchy and ``namespace``, and every value with its ``torch.export`` signature entry.
That is half of a small generator's file and tells a user of the file nothing. By default it is
removed with onnx-ir's :class:`~onnx_ir.passes.common.ClearMetadataAndDocStringPass` (nodes, graphs,
functions) plus the values' ``metadata_props``; ``keep_debug_metadata=True`` keeps it.

The useful part of it -- which module a node belongs to (``pkg.torch.onnx.name_scopes``) -- is kept
in the node's *name*, ``decoder.StyledConvBlock_0.conv0/Conv``, and its outputs are named after the
node, so a reader of the graph in Netron finds the module (the legacy exporter names nodes like this
already: ``/decoder/StyledConvBlock_0/conv0/Conv``).

Instead, the file carries short ``metadata_props`` (keys under :data:`PREFIX`, structured values as
JSON), readable with ONNX Runtime's ``InferenceSession(...).get_modelmeta().custom_metadata_map`` or
:func:`read_properties`: toolkit version, exporter, precision, dynamic axes, the family and what its
inputs and outputs mean, the rewrite summary and the parity result: ``{"verified": false}`` here, replaced by
:func:`modconv_export.verify.record_parity` after the file was verified, with the SHA-256 of the graph it was
judged on (:func:`graph_sha256`). Export never imports verify: the verdict is verify's to write.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ClearMetadataAndDocStringPass

if TYPE_CHECKING:
    from ..rewrite import RewriteReport

__all__ = [
    "PARITY_KEY",
    "PREFIX",
    "dumps_property",
    "export_properties",
    "family_properties",
    "graph_sha256",
    "name_nodes_by_module",
    "read_properties",
    "rewrite_properties",
    "strip_debug_metadata",
    "unverified_properties",
]

PREFIX = "modconv_export."
#: The key of the parity result (see :func:`unverified_properties`).
PARITY_KEY = f"{PREFIX}parity"
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def dumps_property(value: Any) -> str:
    """A structured property value as compact JSON (no NaN: every reader must parse it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _module_path(node: ir.Node) -> str | None:
    """The path of the module that called the node's op (``""``: the root); ``None`` if not recorded."""
    text = node.metadata_props.get(_NAME_SCOPES)
    if not text:
        return None
    try:
        scopes = ast.literal_eval(text)  # the exporter writes repr(list[str]): [root, ..., module, fx node]
    except (ValueError, SyntaxError):
        return None
    # torch.export leaves ops it adds itself (the batch size read for a dynamic axis) outside the module
    # tree: their scopes do not start at the root module ("") and they keep the exporter's name.
    if not isinstance(scopes, list) or len(scopes) < 2 or scopes[0] != "":
        return None
    return str(scopes[-2])


def name_nodes_by_module(model: ir.Model) -> int:
    """Rename dynamo-exported nodes ``<module path>/<op type>[_k]`` and their outputs ``<node>_output_<i>``.

    Reads the exporter's ``name_scopes`` metadata, so it must run before :func:`strip_debug_metadata`.
    Graph inputs, outputs and initializers keep their names. Returns the number of renamed nodes.
    """
    graph = model.graph
    fixed = {v.name for v in (*graph.inputs, *graph.outputs)} | set(graph.initializers)
    used = set(fixed)
    counts: dict[str, int] = {}
    renamed = 0
    for node in graph:
        path = _module_path(node)
        if path is None:
            continue
        base = f"{path}/{node.op_type}" if path else node.op_type
        name = base
        while name in used:
            counts[base] = counts.get(base, 0) + 1
            name = f"{base}_{counts[base]}"
        used.add(name)
        node.name = name
        renamed += 1
        for i, value in enumerate(node.outputs):
            if value.name in fixed or value.is_graph_output():
                continue
            value_name = f"{name}_output_{i}"
            while value_name in used:
                value_name += "_"
            used.add(value_name)
            value.name = value_name
    return renamed


def strip_debug_metadata(model: ir.Model) -> None:
    """Remove the exporter's debug metadata and doc strings from nodes, graphs, functions and values."""
    ClearMetadataAndDocStringPass()(model)
    graph = model.graph
    values = [*graph.inputs, *graph.outputs, *graph.initializers.values(), *(v for node in graph for v in node.outputs)]
    for function in model.functions.values():
        values += [*function.inputs, *function.outputs, *(v for node in function for v in node.outputs)]
    for value in values:
        value.metadata_props.clear()
        value.doc_string = None


# -- properties -----------------------------------------------------------------------------------


class _DescribesTensors(Protocol):
    """What :func:`family_properties` reads of a family (a :class:`modconv_export.families.Family`): export
    sits below the families in the import order, so it names the shape of one, not the class."""

    @property
    def name(self) -> str: ...

    @property
    def outputs(self) -> Sequence[str]: ...

    @property
    def tensors(self) -> Mapping[str, Any]: ...  # name -> TensorInfo (with ``to_json()``)


def family_properties(family: _DescribesTensors | None, input_names: Sequence[str] | None = None) -> dict[str, str]:
    """``family``, ``inputs`` and ``outputs`` (what each tensor means) as the family declares them; ``input_names``
    keeps the inputs the file has (a generator family declares ``z`` and ``ws``, a file takes one of them)."""
    if family is None:
        return {}
    props = {f"{PREFIX}family": family.name}
    declared = {name: info.to_json() for name, info in family.tensors.items()}
    outputs = {n: declared[n] for n in family.outputs if n in declared}
    inputs = {n: v for n, v in declared.items() if n not in family.outputs and (input_names is None or n in input_names)}
    if inputs:
        props[f"{PREFIX}inputs"] = dumps_property(inputs)
    if outputs:
        props[f"{PREFIX}outputs"] = dumps_property(outputs)
    return props


def rewrite_properties(report: RewriteReport) -> dict[str, str]:
    """``rewrite``: modules rewritten per rule, near misses left alone, and the notes a user must know."""
    summary: dict[str, Any] = {"rewritten": report.counts(), "near_misses": len(report.near_misses)}
    if report.notes:
        summary["notes"] = report.describe_notes()
    return {f"{PREFIX}rewrite": dumps_property(summary)}


def unverified_properties() -> dict[str, str]:
    """``parity`` as every file is written: ``{"verified": false}``, until
    :func:`modconv_export.verify.record_parity` finalises a verified file."""
    return {PARITY_KEY: dumps_property({"verified": False})}


def graph_sha256(model: onnx.ModelProto | str | os.PathLike) -> str:
    """SHA-256 of the serialized graph (nodes, initializers, I/O), not of the model-level metadata."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """The file's ``metadata_props`` (what ORT's ``custom_metadata_map`` returns), without loading weights."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_properties(*, version: str, exporter: str, precision: str, dynamic_axes: Mapping[str, Mapping[int, str]]) -> dict[str, str]:
    """What every export records: toolkit version, exporter, precision and the dynamic axes by name."""
    return {
        f"{PREFIX}version": version,
        f"{PREFIX}exporter": exporter,
        f"{PREFIX}precision": precision,
        f"{PREFIX}dynamic_axes": dumps_property(
            {name: {str(axis): label for axis, label in axes.items()} for name, axes in dynamic_axes.items()}
        ),
    }

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
inputs and outputs mean, the rewrite summary and -- written by :func:`record_parity` after the file was
verified -- the parity result with the SHA-256 of the graph it was judged on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ClearMetadataAndDocStringPass

from .._util.files import atomic_output, write_bytes
from ..errors import ExportError

if TYPE_CHECKING:
    from ..families import Family
    from ..rewrite import RewriteReport
    from ..verify import ParityReport

__all__ = [
    "PREFIX",
    "family_properties",
    "graph_sha256",
    "name_nodes_by_module",
    "parity_properties",
    "read_properties",
    "record_parity",
    "rewrite_properties",
    "strip_debug_metadata",
]

PREFIX = "modconv_export."
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def _dumps(value: Any) -> str:
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


def family_properties(family: Family | None, input_names: Sequence[str] | None = None) -> dict[str, str]:
    """``family``, ``inputs`` and ``outputs`` (what each tensor means) as the family declares them; ``input_names``
    keeps the inputs the file has (a generator family declares ``z`` and ``ws``, a file takes one of them)."""
    if family is None:
        return {}
    props = {f"{PREFIX}family": family.name}
    declared = {name: info.to_json() for name, info in family.tensors.items()}
    outputs = {n: declared[n] for n in family.outputs if n in declared}
    inputs = {n: v for n, v in declared.items() if n not in family.outputs and (input_names is None or n in input_names)}
    if inputs:
        props[f"{PREFIX}inputs"] = _dumps(inputs)
    if outputs:
        props[f"{PREFIX}outputs"] = _dumps(outputs)
    return props


def rewrite_properties(report: RewriteReport) -> dict[str, str]:
    """``rewrite``: modules rewritten per rule, near misses left alone, and the notes a user must know."""
    summary: dict[str, Any] = {"rewritten": report.counts(), "near_misses": len(report.near_misses)}
    if report.notes:
        summary["notes"] = report.describe_notes()
    return {f"{PREFIX}rewrite": _dumps(summary)}


def parity_properties(report: ParityReport | None, graph_digest: str | None = None) -> dict[str, str]:
    """``parity``: the verdict, the worst relative L2 per backend that ran, and the verified graph's hash."""
    if report is None:
        return {f"{PREFIX}parity": _dumps({"verified": False})}
    worst: dict[str, float] = {}
    for row in report.rows:
        if row.rel_l2 is not None and row.rel_l2 == row.rel_l2 and not row.is_eager:  # skip NaN
            worst[row.backend] = max(worst.get(row.backend, 0.0), float(f"{row.rel_l2:.2e}"))
    data: dict[str, Any] = {
        "verified": True,
        "passed": report.passed,
        "summary": report.summary,
        "precision": report.precision,
        "batch_sizes": list(report.batch_sizes),
        "worst_rel_l2": worst,
    }
    if graph_digest:
        data["graph_sha256"] = graph_digest
    return {f"{PREFIX}parity": _dumps(data)}


def graph_sha256(model: onnx.ModelProto | str | os.PathLike) -> str:
    """SHA-256 of the serialized graph (nodes, initializers, I/O), not of the model-level metadata."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """The file's ``metadata_props`` (what ORT's ``custom_metadata_map`` returns), without loading weights."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def record_parity(path: str | os.PathLike, report: ParityReport | None, *, graph_digest: str) -> None:
    """Finalise a verified file: add the ``parity`` property, leaving the graph byte for byte as it was.

    ``graph_digest`` is :func:`graph_sha256` of the file that was verified; if the graph at ``path`` is
    no longer that one, nothing is written (:class:`ExportError`): a verdict describes one graph only.
    """
    proto = onnx.load(str(path))
    if graph_sha256(proto) != graph_digest:
        raise ExportError(f"{path} changed after it was verified; its parity result is not recorded")
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(parity_properties(report, graph_digest))
    onnx.helper.set_model_props(proto, props)
    data = proto.SerializeToString()
    with atomic_output(path) as tmp:
        write_bytes(tmp, data)


def export_properties(*, version: str, exporter: str, precision: str, dynamic_axes: Mapping[str, Mapping[int, str]]) -> dict[str, str]:
    """What every export records: toolkit version, exporter, precision and the dynamic axes by name."""
    return {
        f"{PREFIX}version": version,
        f"{PREFIX}exporter": exporter,
        f"{PREFIX}precision": precision,
        f"{PREFIX}dynamic_axes": _dumps({name: {str(axis): label for axis, label in axes.items()} for name, axes in dynamic_axes.items()}),
    }

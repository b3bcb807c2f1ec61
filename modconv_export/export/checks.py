"""Read-only checks on exported ONNX graphs: the properties this toolkit promises about its files.

* only standard-domain ops (no ``PythonOp``, no custom domains, no local functions left behind);
* every ``Conv``'s weight is a constant initializer, never computed in the graph (TensorRT, CoreML
  and ncnn reject computed conv weights);
* the batch axis of inputs and outputs is symbolic;
* the graph passes ``onnx.checker`` and strict shape inference (:func:`check_graph`), run on the graph
  without its weights: what the checker reads of a large initializer is its type and shape, so a 1024 px
  generator is checked without copying its 120 MB of weights twice more.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx import helper

from ..errors import ExportError
from .onnx_write import weights_apart

__all__ = ["ConvInfo", "check_graph", "conv_nodes", "non_standard_ops", "computed_conv_weights", "dynamic_batch_axes"]


_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ConvInfo:
    name: str
    group: int
    weight: str
    weight_is_initializer: bool
    weight_shape: tuple[int, ...] | None


def _constant_outputs(model: onnx.ModelProto) -> set[str]:
    return {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}


def _ir_conv_nodes(model: ir.Model) -> list[ConvInfo]:
    found = []
    for node in model.graph:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in _STANDARD_DOMAINS or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        producer = weight.producer() if weight is not None else None
        initializer = weight is not None and (weight.is_initializer() or (producer is not None and producer.op_type == "Constant"))
        shape = weight.const_value.shape if weight is not None and weight.is_initializer() and weight.const_value is not None else None
        found.append(
            ConvInfo(
                name=node.name or (node.outputs[0].name or "" if node.outputs else ""),
                group=int(node.attributes["group"].as_int()) if "group" in node.attributes else 1,
                weight=(weight.name or "") if weight is not None else "",
                weight_is_initializer=bool(initializer),
                weight_shape=tuple(shape.numpy()) if shape is not None else None,
            )
        )
    return found


def conv_nodes(model: onnx.ModelProto | ir.Model) -> list[ConvInfo]:
    """Every ``Conv``/``ConvTranspose`` in the main graph with its group and where its weight comes from
    (a ``ModelProto``, or an ``onnx_ir`` model as the exporter gives it: no copy of the weights)."""
    if isinstance(model, ir.Model):
        return _ir_conv_nodes(model)
    inits = {init.name: tuple(init.dims) for init in model.graph.initializer}
    constants = _constant_outputs(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in _STANDARD_DOMAINS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        found.append(
            ConvInfo(
                name=node.name or node.output[0],
                group=int(attrs.get("group", 1)),
                weight=weight,
                weight_is_initializer=weight in inits or weight in constants,
                weight_shape=inits.get(weight),
            )
        )
    return found


def computed_conv_weights(model: onnx.ModelProto | ir.Model) -> list[str]:
    """Names of convolutions whose weight is computed in the graph (should be empty)."""
    return [c.name for c in conv_nodes(model) if not c.weight_is_initializer]


def non_standard_ops(model: onnx.ModelProto | ir.Model) -> list[str]:
    """``domain::op`` of every node outside the standard ONNX domain, plus any local function."""
    if isinstance(model, ir.Model):
        bad = [f"{n.domain}::{n.op_type}" for n in model.graph if n.domain not in _STANDARD_DOMAINS]
        return bad + [f"function {f.domain}::{f.name}" for f in model.functions.values()]
    bad = [f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in _STANDARD_DOMAINS]
    bad += [f"function {f.domain}::{f.name}" for f in model.functions]
    return bad


def dynamic_batch_axes(model: onnx.ModelProto) -> dict[str, str | int]:
    """Axis 0 of each graph input and output: its symbolic name, or its fixed size."""
    axes: dict[str, str | int] = {}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            axes[value.name] = dims[0].dim_param or dims[0].dim_value
    return axes


def check_graph(model: ir.Model) -> list[onnx.ValueInfoProto]:
    """Refuse what this toolkit promises its files never hold -- non-standard ops, computed convolution
    weights -- and a graph that fails ``onnx.checker`` or strict shape inference; the inferred
    ``value_info`` (every intermediate value's type and shape) for the file. Raises :class:`ExportError`."""
    bad = non_standard_ops(model)
    if bad:
        raise ExportError(f"the exported graph has non-standard ops: {', '.join(sorted(set(bad))[:5])}")
    computed = computed_conv_weights(model)
    if computed:
        raise ExportError(f"convolution weights computed in the graph (not constants): {', '.join(computed[:5])}")
    with weights_apart(model, as_inputs=True):
        proto = ir.serde.serialize_model(model)
    try:
        onnx.checker.check_model(proto)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker/shape inference: {exc}") from exc
    inputs = {v.name for v in proto.graph.input}
    return [v for v in inferred.graph.value_info if v.name not in inputs]

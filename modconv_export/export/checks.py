"""Read-only checks on exported ONNX graphs: the properties this toolkit promises about its files.

* only standard-domain ops (no ``PythonOp``, no custom domains, no local functions left behind);
* every ``Conv``'s weight is a constant initializer, never computed in the graph (TensorRT, CoreML
  and ncnn reject computed conv weights);
* the batch axis of inputs and outputs is symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

__all__ = ["ConvInfo", "conv_nodes", "non_standard_ops", "computed_conv_weights", "dynamic_batch_axes"]

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


def conv_nodes(model: onnx.ModelProto) -> list[ConvInfo]:
    """Every ``Conv``/``ConvTranspose`` in the main graph with its group and where its weight comes from."""
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


def computed_conv_weights(model: onnx.ModelProto) -> list[str]:
    """Names of convolutions whose weight is computed in the graph (should be empty)."""
    return [c.name for c in conv_nodes(model) if not c.weight_is_initializer]


def non_standard_ops(model: onnx.ModelProto) -> list[str]:
    """``domain::op`` of every node outside the standard ONNX domain, plus any local function."""
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

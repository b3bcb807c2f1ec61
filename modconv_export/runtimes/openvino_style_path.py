"""OpenVINO graph pass: cut a model in two at its *style path*, so that path can run in f32 under bf16.

The style path is every op computing per-sample vectors from vector inputs (the age code / latent): mapping
and style MLPs with their pixel norms, the per-sample scale ``s`` and the demodulation
``rsqrt(s²·ΣW² + 1e-5)``. :class:`~.openvino_model.OpenVINOModel` compiles it as a model of its own in f32
and feeds its outputs to the rest (the feature maps), compiled in bf16 -- see there for the measurements.
"""

from __future__ import annotations

from typing import Any

__all__ = ["split_style_path"]


def _is_vector_shape(shape: Any) -> bool:
    """``[B, C]``, or ``[B, C, 1, 1]``-like: per-sample vectors, whatever their rank (batch may be dynamic)."""
    if shape.rank.is_dynamic:
        return False
    dims = list(shape)
    return len(dims) <= 2 or all(d.is_static and d.get_length() == 1 for d in dims[2:])


def _is_vector_op(op: Any) -> bool:
    return op.get_output_size() > 0 and all(_is_vector_shape(op.get_output_partial_shape(i)) for i in range(op.get_output_size()))


def split_style_path(model: Any) -> tuple[Any, Any] | None:
    """``(style, features)``: ``model`` cut in two at its style path, or ``None`` if it has none.

    The style path is every vector-shaped op (:func:`_is_vector_shape`) fed by vector inputs, constants
    and other style-path ops only. ``style`` takes those inputs and returns every style-path tensor the
    rest uses; ``features`` takes the other inputs followed by those tensors (inputs named ``style:<k>``)
    and returns ``model``'s outputs. ``model`` is consumed (its nodes are rewired into ``features``).
    """
    import openvino as ov

    const: set[Any] = set()
    style: set[Any] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if kind == "Constant" or (kind != "Parameter" and sources and all(s in const for s in sources)):
            const.add(op)
        elif kind == "Parameter":
            if _is_vector_shape(op.get_output_partial_shape(0)):
                style.add(op)
        elif kind != "Result" and _is_vector_op(op) and any(s in style for s in sources) and all(s in style or s in const for s in sources):
            style.add(op)
    cuts = []
    for op in model.get_ordered_ops():
        if op in style:
            for output in op.outputs():
                users = [t for t in output.get_target_inputs() if t.get_node() not in style]
                if users:
                    cuts.append((output, users))
    style_inputs = [p for p in model.get_parameters() if p in style]
    if not style_inputs or all(output.get_node().get_type_name() == "Parameter" for output, _ in cuts):
        return None
    style_model = ov.Model([ov.opset13.result(output) for output, _ in cuts], style_inputs, "style")
    cut_inputs = []
    for k, (output, users) in enumerate(cuts):
        parameter = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type(), name=f"style:{k}")
        parameter.output(0).set_names({f"style:{k}"})
        for user in users:
            user.replace_source_output(parameter.output(0))
        cut_inputs.append(parameter)
    features = ov.Model(model.get_results(), [p for p in model.get_parameters() if p not in style] + cut_inputs, "features")
    return style_model, features

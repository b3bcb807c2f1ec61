"""Built-in lowering: a depthwise blur becomes exactly one ONNX ``Conv(group=C)``.

Used for the export form's ``modconv_export::depthwise_conv2d`` custom op (dynamo exporter) and for
the seed's own ``BlurFunction`` -- or any user Function called by a seed-style ``Blur`` module --
when a model is exported without rewriting (legacy exporter ``symbolic``, dynamo custom op).
The kernel stays the module's buffer, i.e. a constant initializer of the graph.
"""

from __future__ import annotations

from typing import Any

from ..errors import LoweringError
from .builders import TracedOpBuilder, onnxscript_opset

__all__ = ["lower_depthwise_conv", "depthwise_conv2d_translation"]


def lower_depthwise_conv(op: Any, input: Any, kernel: Any, *unused: Any, padding: int | None = None) -> Any:
    """``Conv(input, kernel, group=C, pads=[p]*4)`` for a ``[C, 1, k, k]`` kernel; extra args are ignored
    (the seed's Function also receives the flipped kernel, which only its backward uses)."""
    shape = op.shape(kernel)
    if shape is None or len(shape) != 4 or any(d is None for d in shape) or shape[1] != 1:
        raise LoweringError(f"depthwise blur needs a static [C, 1, k, k] kernel, got shape {shape}")
    channels, _, k_h, k_w = shape
    pad = k_h // 2 if padding is None else int(padding)
    return op.Conv(input, kernel, group=int(channels), pads=[pad] * 4, kernel_shape=[int(k_h), int(k_w)], strides=[1, 1])


def depthwise_conv2d_translation(opset_version: int):
    """The ``custom_translation_table`` entry for ``modconv_export::depthwise_conv2d``."""
    builder = TracedOpBuilder(onnxscript_opset(opset_version))

    def depthwise_conv2d(input, kernel, padding: int):
        return lower_depthwise_conv(builder, input, kernel, padding=padding)

    return depthwise_conv2d

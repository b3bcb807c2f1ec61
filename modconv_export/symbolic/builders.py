"""Op builders handed to lowerings: one interface over the two exporters' graph APIs.

``op.<OpType>(*inputs, **attributes)`` adds a node and returns its output; ``op.shape(v)`` returns
the static shape of a value (``None`` for dynamic dimensions). For the dynamo exporter the builder
delegates to an onnxscript opset in tracing mode; for the legacy exporter it calls
``GraphContext.op`` with the attribute type suffixes (``_i``, ``_f``, ``_s``, ``_t``) that API needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxscript
import torch

__all__ = ["LegacyOpBuilder", "TracedOpBuilder", "onnxscript_opset"]


def onnxscript_opset(version: int):
    """The onnxscript default-domain opset object for ``version`` (nearest available below it)."""
    for v in range(version, 0, -1):
        opset = getattr(onnxscript, f"opset{v}", None)
        if opset is not None:
            return opset
    raise ValueError(f"no onnxscript opset <= {version}")


def _attribute_suffix(name: str, value: Any) -> str:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, torch.Tensor):
        return "t"
    if all(isinstance(v, (bool, int)) for v in items):
        return "i"
    if all(isinstance(v, (bool, int, float)) for v in items):
        return "f"
    if all(isinstance(v, str) for v in items):
        return "s"
    raise TypeError(f"attribute {name!r}: unsupported value {value!r}")


class LegacyOpBuilder:
    """Builder over the TorchScript exporter's ``GraphContext`` (inside a ``symbolic`` method)."""

    def __init__(self, graph_context: Any) -> None:
        self._g = graph_context

    def shape(self, value: Any) -> tuple | None:
        sizes = value.type().sizes() if hasattr(value.type(), "sizes") else None
        return tuple(sizes) if sizes is not None else None

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def build(*inputs: Any, **attributes: Any):
            typed = {f"{k}_{_attribute_suffix(k, v)}": v for k, v in attributes.items()}
            return self._g.op(op_type, *inputs, **typed)

        return build


class TracedOpBuilder:
    """Builder over an onnxscript opset, for translation functions of the dynamo exporter."""

    def __init__(self, opset: Any) -> None:
        self._opset = opset

    def shape(self, value: Any) -> tuple | None:
        shape: Sequence | None = getattr(value, "shape", None)
        if shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in shape)

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return getattr(self._opset, op_type)

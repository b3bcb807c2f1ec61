"""Install registered lowerings for one export and remove them afterwards, even on error.

* Legacy (TorchScript-based) exporter: the Function class gets a temporary ``symbolic`` staticmethod,
  which that exporter calls instead of inlining the Function (also with ``autograd_inlining=False``).
* Dynamo exporter: torch.export traces through ``Function.forward``, so ``forward`` is temporarily
  replaced by a call to a per-class ``torch.library`` custom op (fake kernel: the original forward on
  fake tensors) and the op is mapped to the lowering in ``custom_translation_table``. Patching
  ``forward`` rather than ``apply`` also catches ``blur = BlurFunction.apply`` aliases.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import LoweringError
from ..layers import ops  # noqa: F401  (registers modconv_export::depthwise_conv2d)
from .builders import LegacyOpBuilder, TracedOpBuilder, onnxscript_opset
from .builtin import depthwise_conv2d_translation
from .registry import FunctionLowering, _arity, _uses_ctx

__all__ = ["function_of_op", "lowerings_installed"]

_MISSING = object()
_OPS: dict[type, Any] = {}  # Function class -> its custom op packet (torch.library registrations are global)


class _NullContext:
    """Stands in for ``ctx`` when a Function's forward runs inside a custom op: nothing to save."""

    needs_input_grad = ()

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _custom_op_for(function: type, original_forward: Callable) -> Any:
    if function in _OPS:
        return _OPS[function]
    n = _arity(function)
    uses_ctx = _uses_ctx(function)
    name = "fn_" + re.sub(r"\W", "_", function.__qualname__).lower() + f"_{len(_OPS)}"

    def run(*args: torch.Tensor) -> torch.Tensor:
        out = original_forward(_NullContext(), *args) if uses_ctx else original_forward(*args)
        if not isinstance(out, torch.Tensor):
            raise LoweringError(f"{function.__qualname__}: only single-tensor outputs can be lowered")
        return out.clone() if any(out is a for a in args) else out

    schema = "(" + ", ".join(f"Tensor a{i}" for i in range(n)) + ") -> Tensor"
    op = torch.library.custom_op(f"modconv_export::{name}", run, mutates_args=(), schema=schema)
    op.register_fake(run)
    _OPS[function] = getattr(torch.ops.modconv_export, name)
    return _OPS[function]


def function_of_op(target: Any) -> type | None:
    """The ``autograd.Function`` whose forward the custom op ``target`` (an overload) stands in for."""
    packet = getattr(target, "overloadpacket", target)
    for function, op in _OPS.items():
        if op is packet:
            return function
    return None


def _legacy_symbolic(lowering: FunctionLowering) -> Callable:
    def symbolic(g, *args):
        return lowering.lower(LegacyOpBuilder(g), *args)

    return staticmethod(symbolic)


def _dynamo_forward(function: type, packet: Any) -> Callable:
    def check(args: tuple) -> tuple:
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise LoweringError(f"{function.__qualname__}: the dynamo exporter lowers Functions whose arguments are all tensors")
        return args

    if _uses_ctx(function):
        return staticmethod(lambda ctx, *args: packet(*check(args)))
    return staticmethod(lambda *args: packet(*check(args)))


def _translation(lowering: FunctionLowering, opset_version: int) -> Callable:
    builder = TracedOpBuilder(onnxscript_opset(opset_version))

    def translate(*args):
        return lowering.lower(builder, *args)

    return translate


@contextlib.contextmanager
def lowerings_installed(lowerings: list[FunctionLowering], exporter: str, opset_version: int) -> Iterator[dict]:
    """Patch the Function classes of ``lowerings`` for ``exporter``; yields the dynamo translation table."""
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}")
    table: dict = {}
    saved: list[tuple[type, str, Any]] = []
    try:
        if exporter == "dynamo":
            table[torch.ops.modconv_export.depthwise_conv2d.default] = depthwise_conv2d_translation(opset_version)
        for lowering in lowerings:
            cls = lowering.function
            if exporter == "torchscript":
                saved.append((cls, "symbolic", cls.__dict__.get("symbolic", _MISSING)))
                setattr(cls, "symbolic", _legacy_symbolic(lowering))  # noqa: B010  (the legacy exporter's hook)
            else:
                packet = _custom_op_for(cls, cls.forward)
                saved.append((cls, "forward", cls.__dict__.get("forward", _MISSING)))
                setattr(cls, "forward", _dynamo_forward(cls, packet))  # noqa: B010  (a method replaced for the capture)
                table[packet.default] = _translation(lowering, opset_version)
        yield table
    finally:
        for cls, attr, value in reversed(saved):
            if value is _MISSING:
                delattr(cls, attr)
            else:
                setattr(cls, attr, value)

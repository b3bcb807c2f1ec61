"""Registry of ONNX lowerings for ``torch.autograd.Function`` classes, shared by both exporters.

A lowering is a plain function ``lower(op, *args)`` that builds ONNX nodes with an op builder:
``op.Relu(x)``, ``op.Conv(x, w, group=4, pads=[1, 1, 1, 1])``, and ``op.shape(value)`` for static
shapes. The toolkit hands it a builder for whichever exporter runs (see :mod:`.builders`), so one
registration serves the legacy TorchScript exporter (as the Function's ``symbolic``) and the dynamo
exporter (through a custom op and ``custom_translation_table``). Registrations are global; the
patches that make exporters use them are installed only for the duration of one export.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import _is_setup_context_defined

from ..errors import LoweringError

__all__ = [
    "FunctionLowering",
    "register_function_lowering",
    "unregister_function_lowering",
    "lowering_for",
    "registered_lowerings",
]

LowerFn = Callable[..., Any]


@dataclass(frozen=True)
class FunctionLowering:
    function: type[torch.autograd.Function]
    lower: LowerFn

    @property
    def name(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"


_LOWERINGS: dict[type, FunctionLowering] = {}


def _validate_function(function: Any) -> None:
    if not (isinstance(function, type) and issubclass(function, torch.autograd.Function)):
        raise LoweringError(f"a lowering is registered for a torch.autograd.Function subclass, got {function!r}")


def _uses_ctx(function: type[torch.autograd.Function]) -> bool:
    return not _is_setup_context_defined(function.setup_context)


def _arity(function: type[torch.autograd.Function]) -> int:
    params = list(inspect.signature(function.forward).parameters.values())
    if _uses_ctx(function):
        params = params[1:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in params):
        raise LoweringError(f"{function.__qualname__}.forward must take plain positional tensor arguments")
    return len(params)


def register_function_lowering(function: type, lower: LowerFn | None = None, *, replace: bool = False):
    """Register ``lower(op, *args)`` as the ONNX form of ``function``; usable as a decorator.

    >>> @register_function_lowering(MyReLU)
    ... def relu(op, x):
    ...     return op.Relu(x)
    """
    _validate_function(function)
    _arity(function)  # the dynamo path needs plain positional arguments: fail now, not mid-export

    def decorate(fn: LowerFn) -> LowerFn:
        if not callable(fn):
            raise LoweringError(f"the lowering for {function.__qualname__} must be callable")
        if function in _LOWERINGS and not replace:
            raise LoweringError(f"{function.__qualname__} already has a lowering; pass replace=True to change it")
        _LOWERINGS[function] = FunctionLowering(function, fn)
        return fn

    return decorate if lower is None else decorate(lower)


def unregister_function_lowering(function: type) -> None:
    _LOWERINGS.pop(function, None)


def lowering_for(function: type) -> FunctionLowering | None:
    return _LOWERINGS.get(function)


def registered_lowerings() -> list[FunctionLowering]:
    return list(_LOWERINGS.values())

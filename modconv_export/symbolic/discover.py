"""Find the ``torch.autograd.Function`` classes a model calls, and which of them are seed-style blurs.

One forward pass with inputs that require grad leaves a ``grad_fn`` node per Function call; each such
node's class carries ``_forward_cls``, the user's Function class. This finds the classes however the
user's code reaches them (``blur = BlurFunction.apply`` aliases included) without reading source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from .builtin import lower_depthwise_conv
from .registry import FunctionLowering, lowering_for, registered_lowerings

__all__ = ["functions_called", "lowerings_for"]


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _with_grad(args: tuple) -> tuple:
    return tuple(a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _function_classes(outputs: Any) -> set[type]:
    found: set[type] = set()
    seen: set[int] = set()
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(type(node), "_forward_cls", None)
        if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
            found.add(cls)
        stack.extend(next_fn for next_fn, _ in node.next_functions if next_fn is not None)
    return found


def functions_called(model: nn.Module, args: tuple, *, watch: Iterable[nn.Module] = ()) -> tuple[set[type], dict[type, list[nn.Module]]]:
    """All Function classes in one forward of ``model`` on ``args``; and, for each module in ``watch``,
    the Function class that produced its output (module -> class mapping inverted)."""
    called_by: dict[type, list[nn.Module]] = {}

    def hook(module, _inputs, output):
        for cls in {getattr(type(t.grad_fn), "_forward_cls", None) for t in _tensors(output) if t.grad_fn is not None}:
            if isinstance(cls, type):
                called_by.setdefault(cls, []).append(module)

    handles = [m.register_forward_hook(hook) for m in watch]
    try:
        with torch.enable_grad():
            outputs = model(*_with_grad(args))
    finally:
        for h in handles:
            h.remove()
    return _function_classes(outputs), called_by


def lowerings_for(model: nn.Module, args: tuple, is_blur: Callable[[nn.Module], bool] | None = None) -> list[FunctionLowering]:
    """The lowerings to install for exporting ``model``: a registered one for every Function it calls,
    and the built-in depthwise-conv lowering for unregistered Functions called by the modules ``is_blur``
    accepts (the export passes the blur rule's structural test; found with one grad-enabled forward, run
    only when such modules are present)."""
    watch = [m for m in model.modules() if is_blur is not None and is_blur(m)]
    if not watch:
        # Nothing blur-like left (the usual case after rewriting): no forward pass is needed, and
        # installing a registered lowering for a Function the model never calls is harmless.
        return registered_lowerings()
    classes, called_by = functions_called(model, args, watch=watch)
    chosen = []
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        lowering = lowering_for(cls)
        if lowering is None and cls in called_by:
            lowering = FunctionLowering(cls, lower_depthwise_conv)
        if lowering is not None:
            chosen.append(lowering)
    return chosen

"""Half precision: feature maps in float16, style/demodulation and normalisation statistics in float32.

``to_half(exportable, args)`` returns a copy of an export-ready model for ``precision="fp16"``:

* float inputs of rank >= 3 (images, feature maps) are cast to float16 on entry; vector inputs
  (latents, age codes) stay float32; float outputs are returned as float32, so callers feed and read
  the same arrays as for the fp32 file;
* *declared islands* -- every export form names what stays float32 (``float32_modules``: its style or
  modulation MLP; ``float32_buffers``: the ``sum W^2`` of its demodulation) and computes its
  demodulation in float32 (:func:`~modconv_export.export_forms.demodulation`): summed over hundreds of
  channels ``s^2`` leaves the fp16 range and an ``eps`` of 1e-5 or 1e-8 sits below it, which is where
  NaN and Inf would come from. A new export form declares the same two attributes; nothing here
  knows the classes;
* *vector islands* -- other modules that only ever see rank <= 2 inputs (a mapping MLP) run in float32
  too. This is vector work, negligible next to the convolutions;
* *normalisation islands* -- parameter-free modules on feature maps whose output does not change
  when the input is scaled (PixelNorm, InstanceNorm without affine): computing the mean of squares
  in fp16 overflows once activations exceed 256, so their statistics run in float32 too.
Convolutions, resampling, padding and activations on feature maps run in float16.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "Float32Island", "to_half"]

PRECISIONS = ("fp32", "fp16")


class Float32Island(nn.Module):
    """Runs ``module`` in float32; returns its output in the dtype of its first float input, or in float32
    (``keep_float32``: a declared island, whose owner casts what it needs itself)."""

    def __init__(self, module: nn.Module, keep_float32: bool = False) -> None:
        super().__init__()
        self.module = module.float()
        self.keep_float32 = keep_float32

    def forward(self, *args: Any) -> Any:
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        out_dtype = torch.float32 if self.keep_float32 or not floats else floats[0].dtype
        out = self.module(*[a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != out_dtype:
            out = out.to(out_dtype)
        return out


class _HalfBoundary(nn.Module):
    """Casts rank >= 3 float inputs to float16 and float outputs back to float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        cast = [a.half() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 3 else a for a in args]
        out = self.model(*cast)
        if isinstance(out, (tuple, list)):
            return type(out)(o.float() if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def _observe_inputs(model: nn.Module, args: tuple) -> dict[str, list[torch.Tensor]]:
    """Float tensor inputs each submodule receives in one forward (first call only)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inputs, _name=name):
            seen.setdefault(_name, [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


def _is_scale_invariant(module: nn.Module, x: torch.Tensor) -> bool:
    if list(module.parameters()) or list(module.buffers()) or list(module.children()):
        return False
    with torch.no_grad():
        try:
            a, b = module(x), module(x * 8.0)
        except Exception:
            return False
    if not isinstance(a, torch.Tensor) or a.shape != x.shape or torch.allclose(a, x):
        return False
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


def _islands(model: nn.Module, args: tuple) -> list[str]:
    seen = _observe_inputs(model, args)
    chosen: list[str] = []
    for name, inputs in seen.items():  # named_modules order: parents before children
        if any(name.startswith(parent + ".") for parent in chosen) or not inputs:
            continue
        module = model.get_submodule(name)
        vector = all(t.dim() <= 2 for t in inputs)
        if vector or (len(inputs) == 1 and inputs[0].dim() >= 3 and _is_scale_invariant(module, inputs[0])):
            chosen.append(name)
    return chosen


def declared_islands(model: nn.Module) -> tuple[list[str], list[tuple[nn.Module, str]]]:
    """Submodules and buffers that export forms declare float32 (``float32_modules``/``float32_buffers``)."""
    modules, buffers = [], []
    for name, module in model.named_modules():
        for child in getattr(module, "float32_modules", ()):
            if getattr(module, child, None) is not None:
                modules.append(f"{name}.{child}" if name else child)
        buffers += [(module, b) for b in getattr(module, "float32_buffers", ()) if getattr(module, b, None) is not None]
    return modules, buffers


def to_half(exportable: nn.Module, args: tuple) -> nn.Module:
    """A float16 copy of ``exportable`` (see the module docstring); its I/O stays float32."""
    model = copy.deepcopy(exportable)
    declared, buffers = declared_islands(model)
    found = [n for n in _islands(model, args) if not any(n == d or n.startswith(d + ".") for d in declared)]
    model.half()
    for name in sorted({*declared, *found}, key=lambda n: -n.count(".")):  # the deepest first: paths stay valid
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        parent._modules[child] = Float32Island(parent._modules[child], keep_float32=name in declared)
    for module, buffer in buffers:
        setattr(module, buffer, getattr(module, buffer).float())
    return _HalfBoundary(model).eval()

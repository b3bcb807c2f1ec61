"""basicsr's upfirdn2d modules (``UpFirDnUpsample``, ``UpFirDnDownsample``, ``UpFirDnSmooth``) ->
:class:`~modconv_export.layers.stylegan2_forms.UpFirDn2d`, one convolution with the FIR kernel as a constant.

Structure: a leaf without parameters holding a 2-D ``kernel`` tensor and ``pad = (lo, hi)``, plus
either ``upsample_factor``/``downsample_factor`` (the smooth blur: upfirdn with up = down = 1) or
``factor``. With ``factor`` the upsampler is the one whose kernel is scaled by ``factor**2``; the
downsampler's kernel sums to 1. basicsr's own code is a CUDA extension (CPU: a ``reshape(-1, ...)``
pure-torch path that loses the batch axis in the legacy exporter); the export form needs neither.
The probe compares both on a random input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...layers.stylegan2_forms import UpFirDn2d
from ..registry import probe_tensor, register_rule


def _kernel(module: nn.Module) -> torch.Tensor | None:
    kernel = getattr(module, "kernel", None)
    return kernel if isinstance(kernel, torch.Tensor) and kernel.dim() == 2 else None


def _looks_like(module: nn.Module) -> bool:
    if isinstance(module, UpFirDn2d) or module._modules or module._parameters or _kernel(module) is None:
        return False
    pad = getattr(module, "pad", None)
    has_factor = hasattr(module, "factor") or (hasattr(module, "upsample_factor") and hasattr(module, "downsample_factor"))
    return isinstance(pad, (tuple, list)) and len(pad) == 2 and has_factor


def _factors(module: nn.Module) -> tuple[int, int] | str:
    """``(up, down)`` of the module, or the reason they cannot be told."""
    if hasattr(module, "upsample_factor") and hasattr(module, "downsample_factor"):
        return 1, 1
    factor = module.factor
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        return f"its factor {factor!r} is not an int >= 2"
    total = float(_kernel(module).double().sum())
    if abs(total - factor**2) <= 1e-4 * factor**2:
        return factor, 1
    if abs(total - 1.0) <= 1e-4:
        return 1, factor
    return f"its kernel sums to {total:.6g}: neither an upsampler's ({factor**2}) nor a downsampler's (1)"


def _check(module: nn.Module) -> str | None:
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in module.pad):
        return f"its pad {module.pad!r} is not two ints"
    factors = _factors(module)
    return factors if isinstance(factors, str) else None


def _probe(module: nn.Module):
    return (probe_tensor(module, 2, 3, 7, 9, seed=3).to(_kernel(module).dtype),)


@register_rule("upfirdn2d", looks_like=_looks_like, check=_check, probe_inputs=_probe)
def replace_upfirdn2d(module: nn.Module) -> nn.Module:
    """basicsr ``UpFirDn*`` module -> (transposed) convolution with the FIR kernel as a constant."""
    factors = _factors(module)
    if isinstance(factors, str):  # check() refused it already; a direct call says why
        raise ValueError(factors)
    up, down = factors
    return UpFirDn2d(_kernel(module), up=up, down=down, pad=tuple(module.pad))

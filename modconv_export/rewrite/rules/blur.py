"""Replace a seed-style ``Blur`` (a fixed per-channel kernel applied through a custom autograd
Function) by :class:`~modconv_export.export_forms.DepthwiseBlur`, one depthwise conv.

Structure: a leaf module with no parameters and a ``weight`` buffer of shape ``[C, 1, k, k]`` (odd
``k``). The probe confirms it computes exactly ``conv2d(x, weight, padding=k//2, groups=C)``.
"""

from __future__ import annotations

import torch.nn as nn

from ...export_forms import DepthwiseBlur
from ..registry import probe_tensor, register_rule


def looks_like_blur(module: nn.Module) -> bool:
    if isinstance(module, DepthwiseBlur) or list(module.children()) or module._parameters:
        return False
    weight = module._buffers.get("weight")
    return weight is not None and weight.dim() == 4 and weight.shape[1] == 1


def _check(module: nn.Module) -> str | None:
    k_h, k_w = module._buffers["weight"].shape[-2:]
    if k_h != k_w or k_h % 2 == 0:
        return f"its kernel is {k_h}x{k_w}; only square odd kernels keep the size with symmetric padding"
    return None


def _probe(module: nn.Module):
    channels = module._buffers["weight"].shape[0]
    return (probe_tensor(module, 2, channels, 9, 8),)


@register_rule("blur", looks_like=looks_like_blur, check=_check, probe_inputs=_probe)
def replace_blur(module: nn.Module) -> nn.Module:
    """Seed ``Blur`` -> depthwise ``Conv(group=C)`` with the kernel as a constant."""
    return DepthwiseBlur(module._buffers["weight"])

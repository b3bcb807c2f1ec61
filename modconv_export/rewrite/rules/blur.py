"""Replace a seed-style ``Blur`` (a fixed per-channel kernel applied through a custom autograd
Function) by :class:`~modconv_export.layers.seed_forms.DepthwiseBlur`, one depthwise conv.

Structure: a leaf module with no parameters whose buffers are all kernels of one shape ``[C, 1, k, k]``
(odd ``k`` <= 7) -- the seed's ``weight``, or under another name in a user's copy; where there are
several (the seed also keeps ``weight_flip`` for its backward), the one the module actually convolves
with is chosen on a probe input. The engine's probe then confirms the module computes exactly
``conv2d(x, kernel, padding=k//2, groups=C)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers.seed_forms import DepthwiseBlur
from ..registry import probe_tensor, register_rule


def _kernels(module: nn.Module) -> list[torch.Tensor]:
    """Candidate kernels, the seed's ``weight`` first."""
    named = sorted(module._buffers.items(), key=lambda item: item[0] != "weight")
    return [b for _, b in named if b is not None and b.dim() == 4 and b.shape[1] == 1]


#: Blur kernels are small; a parameter-free holder of larger [N, 1, H, W] maps (StyleGAN2's fixed
#: noise buffers) is not a blur.
MAX_KERNEL = 7


def looks_like_blur(module: nn.Module) -> bool:
    if isinstance(module, DepthwiseBlur) or list(module.children()) or module._parameters:
        return False
    buffers = [b for b in module._buffers.values() if b is not None]
    kernels = _kernels(module)
    # every buffer a kernel of one common shape (the seed: weight and weight_flip), and a small one
    return (
        bool(kernels)
        and len(kernels) == len(buffers)
        and len({tuple(k.shape) for k in kernels}) == 1
        and max(kernels[0].shape[-2:]) <= MAX_KERNEL
    )


def _check(module: nn.Module) -> str | None:
    k_h, k_w = _kernels(module)[0].shape[-2:]
    if k_h != k_w or k_h % 2 == 0:
        return f"its kernel is {k_h}x{k_w}; only square odd kernels keep the size with symmetric padding"
    return None


def _probe(module: nn.Module):
    channels = _kernels(module)[0].shape[0]
    return (probe_tensor(module, 2, channels, 9, 8),)


@register_rule("blur", looks_like=looks_like_blur, check=_check, probe_inputs=_probe)
def replace_blur(module: nn.Module) -> nn.Module:
    """Seed ``Blur`` -> depthwise ``Conv(group=C)`` with the kernel as a constant."""
    kernels = _kernels(module)
    if len(kernels) > 1:
        (x,) = _probe(module)
        with torch.no_grad():
            expected = module(x)
            errors = [float((F.conv2d(x, k, padding=k.shape[-1] // 2, groups=k.shape[0]) - expected).abs().max()) for k in kernels]
        kernels = [kernels[errors.index(min(errors))]]
    return DepthwiseBlur(kernels[0])

"""Pure-torch references for basicsr's CUDA ops, written from their definitions (not from basicsr's code).

* ``upfirdn2d(x, k, up, down, pad)``: insert ``up - 1`` zeros after every sample, pad ``(lo, hi)`` on
  both spatial axes (negative: crop), convolve each channel with ``k`` (a true convolution), keep
  every ``down``-th sample (scipy.signal.upfirdn in 2-D).
* ``fused_bias_act`` with ``act=3`` (basicsr's ``fused_leaky_relu``): ``y = x + b`` (``b`` along axis
  1), ``y if y > 0 else y * slope``, times ``scale`` -- the CUDA kernel's arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    b, c, h, w = x.shape
    if up > 1:
        stuffed = x.new_zeros(b, c, h * up, w * up)
        stuffed[:, :, ::up, ::up] = x
        x = stuffed
    lo, hi = pad
    x = F.pad(x, [lo, hi, lo, hi])
    taps = torch.flip(kernel.to(x), [0, 1]).expand(c, 1, *kernel.shape)
    return F.conv2d(x, taps, groups=c)[:, :, ::down, ::down]


def _fused(x: torch.Tensor, bias, negative_slope: float, scale: float) -> torch.Tensor:
    y = x if bias is None else x + bias.reshape(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(y > 0, y, y * negative_slope) * scale


class FusedLeakyReLUFunction(torch.autograd.Function):
    """Same structure as basicsr's (an autograd Function the rewrite must remove), CPU arithmetic."""

    @staticmethod
    def forward(ctx, input, bias, negative_slope, scale):
        out = _fused(input, bias, negative_slope, scale)
        ctx.save_for_backward(out)
        ctx.negative_slope, ctx.scale, ctx.has_bias = negative_slope, scale, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        grad_input = grad_output * torch.where(out > 0, 1.0, ctx.negative_slope) * ctx.scale
        dims = [0, *range(2, grad_input.dim())]
        return grad_input, grad_input.sum(dims) if ctx.has_bias else None, None, None


def fused_leaky_relu(input, bias, negative_slope=0.2, scale=2**0.5):
    return FusedLeakyReLUFunction.apply(input, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """basicsr's module interface: a ``bias`` of ``channel`` values, slope 0.2, gain sqrt(2)."""

    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = 2**0.5) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input):
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)

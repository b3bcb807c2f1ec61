"""The ``modconv_export::depthwise_conv2d`` custom op: the export form of the seed's blur.

A custom op (rather than a plain ``F.conv2d``) keeps the blur one opaque node through
``torch.export``'s decompositions, so the dynamo exporter lowers it through
:mod:`modconv_export.symbolic.builtin` to exactly one ONNX ``Conv(group=C)`` whose weight is the
kernel initializer. Autograd is registered with the flipped kernel, as the seed's ``BlurFunction``
does, so first and second derivatives match the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d"]


@torch.library.custom_op("modconv_export::depthwise_conv2d", mutates_args=())
def depthwise_conv2d(input: torch.Tensor, kernel: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-channel 2-D convolution, stride 1, zero padding ``padding``; ``kernel`` is ``[C, 1, k, k]``."""
    return F.conv2d(input, kernel, padding=padding, groups=kernel.shape[0])


@depthwise_conv2d.register_fake
def _depthwise_conv2d_fake(input: torch.Tensor, kernel: torch.Tensor, padding: int) -> torch.Tensor:
    return F.conv2d(input, kernel, padding=padding, groups=kernel.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    _, kernel, padding = inputs
    ctx.save_for_backward(kernel)
    ctx.padding = padding


def _backward(ctx, grad_output: torch.Tensor):
    (kernel,) = ctx.saved_tensors
    # The adjoint of a same-size stride-1 correlation is the correlation with the flipped kernel.
    grad_input = depthwise_conv2d(grad_output, torch.flip(kernel, [2, 3]), ctx.padding)
    return grad_input, None, None


depthwise_conv2d.register_autograd(_backward, setup_context=_setup_context)

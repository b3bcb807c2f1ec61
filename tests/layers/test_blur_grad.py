"""The export-form blur has the seed BlurFunction's first and second derivatives."""

from __future__ import annotations

import torch

from modconv_export.layers.ops import depthwise_conv2d
from modconv_export.layers.seed import Blur, BlurFunction
from modconv_export.layers.seed_forms import DepthwiseBlur


def _kernels(channels: int):
    seed = Blur(channels).double()
    return seed, seed.weight, seed.weight_flip


def test_gradcheck_and_gradgradcheck_float64():
    _, kernel, _ = _kernels(3)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: depthwise_conv2d(t, kernel, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: depthwise_conv2d(t, kernel, 1), (x,))


def test_gradcheck_asymmetric_kernel():
    """A non-symmetric kernel catches a backward that forgets to flip."""
    kernel = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: depthwise_conv2d(t, kernel, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: depthwise_conv2d(t, kernel, 1), (x,))


def test_first_and_second_derivatives_equal_seed():
    seed, kernel, kernel_flip = _kernels(4)
    export_form = DepthwiseBlur(kernel)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    v = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    grads = []
    for fn in (lambda t: BlurFunction.apply(t, kernel, kernel_flip), export_form):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (g,) = torch.autograd.grad((out * out * v).sum(), xi, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), xi)
        grads.append((out.detach(), g.detach(), gg))
    for seed_t, ours in zip(grads[0], grads[1]):
        torch.testing.assert_close(ours, seed_t, rtol=1e-12, atol=1e-12)


def test_blur_forward_equals_seed_float32():
    seed = Blur(5)
    x = torch.randn(3, 5, 9, 8)
    torch.testing.assert_close(DepthwiseBlur(seed.weight)(x), seed(x), rtol=0, atol=1e-6)

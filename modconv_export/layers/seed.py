"""The eager baseline: the seed's modulated-convolution layers and the helpers they use.

These are the layers that users' generators (LATS and its relatives) are built from. They keep the
seed's exact arithmetic and its parameter and buffer names (``weight``, ``bias``, ``mlp_class_std``,
``weight_orig``, ``weight_flip`` ...), so checkpoints saved from those projects load into them unchanged.
They are *not* exportable with a dynamic batch; :func:`modconv_export.make_exportable` turns them (and
structurally identical copies of them) into the export forms in :mod:`modconv_export.layers.seed_forms`.
"""

from __future__ import annotations

from math import sqrt

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function

__all__ = [
    "EqualLR",
    "equal_lr",
    "EqualLinear",
    "EqualConv2d",
    "PixelNorm",
    "BlurFunctionBackward",
    "BlurFunction",
    "blur",
    "Blur",
    "ModulatedConv2d",
]


class EqualLR:
    """Equalized learning rate as a forward pre-hook.

    The stored parameter is ``<name>_orig``; before every forward the hook sets
    ``<name> = <name>_orig * sqrt(2 / fan_in)`` with ``fan_in = in_features * kernel elements``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def compute_weight(self, module: nn.Module) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        fan_in = weight.data.size(1) * weight.data[0][0].numel()
        return weight * sqrt(2 / fan_in)

    @staticmethod
    def apply(module: nn.Module, name: str) -> EqualLR:
        hook = EqualLR(name)
        weight = getattr(module, name)
        del module._parameters[name]
        module.register_parameter(name + "_orig", nn.Parameter(weight.data))
        module.register_forward_pre_hook(hook)
        return hook

    def __call__(self, module: nn.Module, inputs) -> None:
        setattr(module, self.name, self.compute_weight(module))


def equal_lr(module: nn.Module, name: str = "weight") -> nn.Module:
    EqualLR.apply(module, name)
    return module


class EqualLinear(nn.Module):
    """``nn.Linear`` with N(0, 1) weights, zero bias and the :class:`EqualLR` hook (key ``linear.weight_orig``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim)
        linear.weight.data.normal_()
        linear.bias.data.zero_()
        self.linear = equal_lr(linear)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.linear(input)


class EqualConv2d(nn.Module):
    """``nn.Conv2d`` with N(0, 1) weights, zero bias and the :class:`EqualLR` hook (key ``conv.weight_orig``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        conv = nn.Conv2d(*args, **kwargs)
        conv.weight.data.normal_()
        conv.bias.data.zero_()
        self.conv = equal_lr(conv)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.conv(input)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit RMS over channels (eps 1e-5)."""

    def __init__(self, num_channels: int | None = None) -> None:
        super().__init__()  # num_channels only matches the signature of other norm layers

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input / torch.sqrt(torch.mean(input**2, dim=1, keepdim=True) + 1e-5)


class BlurFunctionBackward(Function):
    @staticmethod
    def forward(ctx, grad_output, kernel, kernel_flip):
        ctx.save_for_backward(kernel, kernel_flip)
        return F.conv2d(grad_output, kernel_flip, padding=1, groups=grad_output.shape[1])

    @staticmethod
    def backward(ctx, gradgrad_output):
        kernel, kernel_flip = ctx.saved_tensors
        grad_input = F.conv2d(gradgrad_output, kernel, padding=1, groups=gradgrad_output.shape[1])
        return grad_input, None, None


class BlurFunction(Function):
    @staticmethod
    def forward(ctx, input, kernel, kernel_flip):
        ctx.save_for_backward(kernel, kernel_flip)
        return F.conv2d(input, kernel, padding=1, groups=input.shape[1])

    @staticmethod
    def backward(ctx, grad_output):
        kernel, kernel_flip = ctx.saved_tensors
        grad_input = BlurFunctionBackward.apply(grad_output, kernel, kernel_flip)
        return grad_input, None, None


blur = BlurFunction.apply


class Blur(nn.Module):
    """3x3 binomial blur ([1,2,1] outer [1,2,1] / 16) per channel, through :class:`BlurFunction`."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        weight = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32)
        weight = weight.view(1, 1, 3, 3)
        weight = weight / weight.sum()
        weight_flip = torch.flip(weight, [2, 3])
        self.register_buffer("weight", weight.repeat(channel, 1, 1, 1))
        self.register_buffer("weight_flip", weight_flip.repeat(channel, 1, 1, 1))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return blur(input, self.weight, self.weight_flip)


class ModulatedConv2d(nn.Module):
    """The seed layer: per-sample modulated and demodulated weights, run as one grouped conv (groups = batch)."""

    def __init__(
        self,
        fin: int,
        fout: int,
        kernel_size: int,
        padding_type: str = "reflect",
        upsample: bool = False,
        downsample: bool = False,
        latent_dim: int = 256,
        normalize_mlp: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = fin
        self.out_channels = fout
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.downsample = downsample
        padding_size = kernel_size // 2
        self.demudulate = kernel_size != 1  # (sic) the seed's attribute name

        self.weight = nn.Parameter(torch.Tensor(fout, fin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.Tensor(1, fout, 1, 1))
        self.conv = F.conv2d

        self.mlp_class_std: nn.Module
        if normalize_mlp:
            self.mlp_class_std = nn.Sequential(EqualLinear(latent_dim, fin), PixelNorm())
        else:
            self.mlp_class_std = EqualLinear(latent_dim, fin)

        self.blur = Blur(fout)

        self.padding: nn.Module
        if padding_type == "reflect":
            self.padding = nn.ReflectionPad2d(padding_size)
        else:
            self.padding = nn.ZeroPad2d(padding_size)

        if self.upsample:
            self.upsampler = nn.Upsample(scale_factor=2, mode="nearest")

        if self.downsample:
            self.downsampler = nn.AvgPool2d(2)

        self.weight.data.normal_()
        self.bias.data.zero_()

    def forward(self, input: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        fan_in = self.weight.data.size(1) * self.weight.data[0][0].numel()
        weight = self.weight * sqrt(2 / fan_in)
        weight = weight.view(1, self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

        s = 1 + self.mlp_class_std(latent).view(-1, 1, self.in_channels, 1, 1)
        weight = s * weight
        if self.demudulate:
            d = torch.rsqrt((weight**2).sum(4).sum(3).sum(2) + 1e-5).view(-1, self.out_channels, 1, 1, 1)
            weight = (d * weight).view(-1, self.in_channels, self.kernel_size, self.kernel_size)
        else:
            weight = weight.view(-1, self.in_channels, self.kernel_size, self.kernel_size)

        if self.upsample:
            input = self.upsampler(input)

        if self.downsample:
            input = self.blur(input)

        b, _, h, w = input.shape
        input = input.view(1, -1, h, w)
        input = self.padding(input)
        out = self.conv(input, weight, groups=b).view(b, self.out_channels, h, w) + self.bias

        if self.downsample:
            out = self.downsampler(out)

        if self.upsample:
            out = self.blur(out)

        return out

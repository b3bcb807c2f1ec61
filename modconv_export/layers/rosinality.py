"""rosinality/stylegan2-pytorch's generator layers, key-compatible with upstream (``model.py`` at bef283a).

Our own code with upstream's attribute names, parameter shapes and arithmetic -- the *reference* layers:
per-sample weight modulation with a convolution grouped by the batch, the ``upfirdn2d`` resampling filter,
the fused bias + leaky ReLU -- so ``Generator.state_dict()`` files load with ``strict=True`` and the graph
rewrite finds and proves the modulated convolutions as it does in upstream's own code. Upstream's ``op``
package compiles CUDA code when imported, so it cannot be imported on a CPU; its CPU branches (the native
``upfirdn2d`` and ``fused_leaky_relu``) are the arithmetic reproduced here.
:mod:`modconv_export.families.rosinality` assembles them into the family's model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gfpgan import NormStyleCode as PixelNorm

__all__ = [
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "FusedLeakyReLU",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyledConv",
    "Synthesis",
    "ToRGB",
    "Upsample",
    "fused_leaky_relu",
    "make_kernel",
    "upfirdn2d",
]

LEAK = 0.2


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The 2-D FIR kernel of 1-D ``taps`` (their outer product), normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.dim() == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (``lo, hi`` on both axes; negative crops), convolve with ``kernel``,
    keep every ``down``-th sample: upstream's ``upfirdn2d``, as one depthwise convolution per channel."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    lo, hi = pad
    x = F.pad(x, [max(lo, 0), max(hi, 0)] * 2)
    if lo < 0 or hi < 0:
        x = x[:, :, max(-lo, 0) : x.shape[2] - max(-hi, 0), max(-lo, 0) : x.shape[3] - max(-hi, 0)]
    taps = torch.flip(kernel, [0, 1]).to(x.dtype)  # a correlation with the flipped kernel is its convolution
    out = F.conv2d(x, taps.expand(c, 1, *taps.shape), groups=c)
    return out[:, :, ::down, ::down] if down > 1 else out


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, scale: float = math.sqrt(2)) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * scale``, the bias along axis 1 (upstream's CPU branch)."""
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.dim() - 2)), LEAK) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope, self.scale = LEAK, math.sqrt(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.scale)


class EqualLinear(nn.Module):
    """Linear layer with its weight scaled at run time by ``lr_mul / sqrt(in)``; optionally fused leaky ReLU."""

    def __init__(self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init)))
        self.activation, self.lr_mul, self.scale = activation, lr_mul, lr_mul / math.sqrt(d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Blur(nn.Module):
    """The FIR filter after a transposed convolution (``kernel`` scaled by the upsampling factor squared)."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling of the skip image: zero insertion, then the FIR filter."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Per-sample modulated (and demodulated) convolution, the batch folded into the groups (upstream's
    ``fused=True`` path); ``upsample``: a stride-2 transposed convolution, then :class:`Blur`."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        taps: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = c_in, c_out, k
        self.demodulate, self.upsample, self.eps, self.padding = demodulate, upsample, 1e-8, k // 2
        if upsample:
            p = (len(taps) - 2) - (k - 1)
            self.blur = Blur(taps, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1 / math.sqrt(c_in * k * k)
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k))
        self.modulation = EqualLinear(style_dim, c_in, bias_init=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c_in, h, w = x.shape
        k, c_out = self.kernel_size, self.out_channel
        weight = self.scale * self.weight * self.modulation(style).view(b, 1, c_in, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps).view(b, c_out, 1, 1, 1)
        x = x.reshape(1, b * c_in, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c_in, c_out, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
            return self.blur(out.view(b, c_out, *out.shape[2:]))
        out = F.conv2d(x, weight.view(b * c_out, c_in, k, k), padding=self.padding, groups=b)
        return out.view(b, c_out, *out.shape[2:])


class NoiseInjection(nn.Module):
    """``x + weight * noise``; without noise, fresh N(0, 1) noise per call (upstream's ``randomize_noise``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool = False, taps: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, style_dim, upsample=upsample, taps=taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(c_out)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    def __init__(self, c_in: int, style_dim: int, upsample: bool = True, taps: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(taps)
        self.conv = ModulatedConv2d(c_in, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class Synthesis(nn.Module):
    """The synthesis half of upstream's ``Generator`` (its attributes, so its keys): W+ latents -> image.

    ``channels`` are the widths at 4, 8, ..., ``size`` px. ``noise=True`` registers upstream's fixed noise
    buffers ``noises.noise_<i>`` and uses them (``randomize_noise=False``); without them every layer draws
    fresh noise, as upstream does when its file has none.
    """

    def __init__(self, channels: Sequence[int], style_dim: int, taps: Sequence[float], noise: bool) -> None:
        super().__init__()
        self.log_size = len(channels) + 1
        self.num_layers, self.n_latent = 2 * len(channels) - 1, 2 * len(channels)
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], channels[0], style_dim, taps=taps)
        self.to_rgb1 = ToRGB(channels[0], style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        if noise:
            self.noises = nn.Module()
            for i in range(self.num_layers):
                self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)))
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.convs.append(StyledConv(c_in, c_out, style_dim, upsample=True, taps=taps))
            self.convs.append(StyledConv(c_out, c_out, style_dim, taps=taps))
            self.to_rgbs.append(ToRGB(c_out, style_dim, taps=taps))

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent`` [B, n_latent, style_dim] -> image [B, 3, size, size] (upstream's forward after the styles)."""
        holder = getattr(self, "noises", None)
        noise = [getattr(holder, f"noise_{i}") if holder is not None else None for i in range(self.num_layers)]
        out = self.conv1(self.input(latent), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1
            out = self.convs[2 * level](out, latent[:, i], noise=noise[i])
            out = self.convs[2 * level + 1](out, latent[:, i + 1], noise=noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip

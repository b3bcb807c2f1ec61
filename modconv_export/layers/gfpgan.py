"""GFPGAN's StyleGAN2 layers (``arch='clean'``: no custom CUDA ops), key-compatible with upstream.

Our own code with upstream's attribute names, shapes and arithmetic (``gfpgan.archs.stylegan2_clean_arch``
and the CS-SFT decoder of ``gfpganv1_clean_arch``), so released checkpoints load with ``strict=True``.
:mod:`modconv_export.families.gfpgan` assembles them into ``GFPGANv1Clean``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CleanModulatedConv2d",
    "ConstantInput",
    "LEAK",
    "NormStyleCode",
    "ResBlock",
    "StyleConv",
    "StyleGAN2Decoder",
    "ToRGB",
    "sft",
    "widths",
]

LEAK = 0.2


def widths(narrow: float, channel_multiplier: float) -> dict[int, int]:
    """Channels per resolution, as StyleGAN2 (and GFPGAN's U-Net with ``narrow / 2``) lay them out."""
    base = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    table = {res: int(512 * narrow) for res in (4, 8, 16, 32)}
    table.update({res: int(c * channel_multiplier * narrow) for res, c in base.items()})
    return table


class CleanModulatedConv2d(nn.Module):
    """Per-sample modulated (and demodulated) conv, bilinear resampling first; no bias (GFPGAN clean)."""

    def __init__(self, c_in: int, c_out: int, k: int, style: int, demodulate: bool = True, sample_mode: str | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, k
        self.demodulate, self.sample_mode, self.eps, self.padding = demodulate, sample_mode, 1e-8, k // 2
        self.modulation = nn.Linear(style, c_in)
        nn.init.ones_(self.modulation.bias)
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k) / math.sqrt(c_in * k * k))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        w = self.weight * self.modulation(style).reshape(b, 1, -1, 1, 1)
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4], keepdim=True) + self.eps)
        if self.sample_mode is not None:
            x = F.interpolate(x, scale_factor=2 if self.sample_mode == "upsample" else 0.5, mode="bilinear", align_corners=False)
        k = self.kernel_size
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, self.in_channels, k, k), padding=self.padding, groups=b)
        return out.reshape(b, self.out_channels, *out.shape[2:])


class StyleConv(nn.Module):
    """Modulated conv * sqrt(2) + strength * noise + bias, leaky ReLU. Noise is always given here."""

    def __init__(self, c_in: int, c_out: int, style: int, sample_mode: str | None = None) -> None:
        super().__init__()
        self.modulated_conv = CleanModulatedConv2d(c_in, c_out, 3, style, sample_mode=sample_mode)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.activate = nn.LeakyReLU(LEAK)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.modulated_conv(x, style) * 2**0.5 + self.weight * noise + self.bias)


class ToRGB(nn.Module):
    def __init__(self, c_in: int, style: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = CleanModulatedConv2d(c_in, 3, 1, style, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False) if self.upsample else skip)
        return out


class NormStyleCode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))


class StyleGAN2Decoder(nn.Module):
    """GFPGAN's ``StyleGAN2GeneratorCSFT``: StyleGAN2 whose first conv per level is SFT-modulated."""

    def __init__(self, out_size: int, style: int, num_mlp: int, widths: dict[int, int], sft_half: bool) -> None:
        super().__init__()
        self.log_size, self.sft_half = int(math.log2(out_size)), sft_half
        self.num_layers, self.num_latent = (self.log_size - 2) * 2 + 1, self.log_size * 2 - 2
        self.style_mlp = nn.Sequential(NormStyleCode(), *[m for _ in range(num_mlp) for m in (nn.Linear(style, style), nn.LeakyReLU(LEAK))])
        self.constant_input = ConstantInput(widths[4])
        self.style_conv1 = StyleConv(widths[4], widths[4], style)
        self.to_rgb1 = ToRGB(widths[4], style, upsample=False)
        self.style_convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, res, res))
        c_in = widths[4]
        for level in range(3, self.log_size + 1):
            c = widths[2**level]
            self.style_convs.extend([StyleConv(c_in, c, style, sample_mode="upsample"), StyleConv(c, c, style)])
            self.to_rgbs.append(ToRGB(c, style))
            c_in = c

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        out = self.constant_input.weight.repeat(latent.shape[0], 1, 1, 1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 2 * level + 1
            out = self.style_convs[2 * level](out, latent[:, i], noise[i])
            scale, shift = conditions[2 * level], conditions[2 * level + 1]
            if self.sft_half:
                kept, sft = torch.split(out, out.shape[1] // 2, dim=1)
                out = torch.cat([kept, sft * scale + shift], dim=1)
            else:
                out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, scale: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_in, 3, 1, 1), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.scale_factor = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resize = lambda t: F.interpolate(t, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)  # noqa: E731
        out = F.leaky_relu(self.conv2(resize(F.leaky_relu(self.conv1(x), LEAK))), LEAK)
        return out + self.skip(resize(x))


def sft(c: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(LEAK), nn.Conv2d(c, c_out, 3, 1, 1))

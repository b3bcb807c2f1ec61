"""Our own small copies of the upstream StyleGAN2 layers, for testing the rules without the packages.

They mirror GFPGAN 1.3.8 ``gfpgan/archs/stylegan2_clean_arch.py`` and basicsr 1.4.2
``basicsr/archs/stylegan2_arch.py``: the same attribute names, parameter shapes, flags and per-sample
weight-modulated grouped convolutions (``groups = batch``), the same resampling and the same noise
behaviour (``new_empty().normal_()`` when no noise is given). basicsr's CUDA ops come from
:mod:`.reference_ops`. The code is ours; where the upstream files are available, the tests also run
against them (:mod:`.upstream`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .reference_ops import FusedLeakyReLU, fused_leaky_relu, upfirdn2d


def _grouped(x: torch.Tensor, weight: torch.Tensor, **conv) -> torch.Tensor:
    """Apply per-sample weights ``[b, Cout, Cin, k, k]`` as one grouped conv over a batch folded into channels."""
    b, c_out, c_in, k, _ = weight.shape
    out = F.conv2d(x.reshape(1, b * c_in, *x.shape[2:]), weight.reshape(b * c_out, c_in, k, k), groups=b, **conv)
    return out.reshape(b, c_out, *out.shape[2:])


def _modulate(weight: torch.Tensor, s: torch.Tensor, demodulate: bool, eps: float) -> torch.Tensor:
    w = weight * s[:, None, :, None, None]  # [b, Cout, Cin, k, k]
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + eps)[:, :, None, None, None]
    return w


# --------------------------------------------------------------------------- GFPGAN (clean, no CUDA)
class CleanModulatedConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, demodulate=True, sample_mode=None, eps=1e-8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.sample_mode, self.eps = demodulate, sample_mode, eps
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        nn.init.ones_(self.modulation.bias)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(in_channels * kernel_size**2))
        self.padding = kernel_size // 2

    def forward(self, x, style):
        weight = _modulate(self.weight, self.modulation(style), self.demodulate, self.eps)
        if self.sample_mode == "upsample":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.sample_mode == "downsample":
            x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return _grouped(x, weight, padding=self.padding)


class CleanStyleConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, demodulate=True, sample_mode=None):
        super().__init__()
        self.modulated_conv = CleanModulatedConv2d(in_channels, out_channels, kernel_size, num_style_feat, demodulate, sample_mode)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.activate = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x, style, noise=None):
        out = self.modulated_conv(x, style) * 2**0.5
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        return self.activate(out + self.weight * noise + self.bias)


# --------------------------------------------------------------------------- basicsr (CUDA ops)
def _fir(taps) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


class UpFirDnUpsample(nn.Module):
    def __init__(self, resample_kernel=(1, 3, 3, 1), factor=2):
        super().__init__()
        self.kernel = _fir(resample_kernel) * factor**2  # a plain attribute upstream, not a buffer
        self.factor = factor
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class UpFirDnDownsample(nn.Module):
    def __init__(self, resample_kernel=(1, 3, 3, 1), factor=2):
        super().__init__()
        self.kernel = _fir(resample_kernel)
        self.factor = factor
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=1, down=self.factor, pad=self.pad)


class UpFirDnSmooth(nn.Module):
    def __init__(self, resample_kernel=(1, 3, 3, 1), upsample_factor=1, downsample_factor=1, kernel_size=1):
        super().__init__()
        self.upsample_factor, self.downsample_factor = upsample_factor, downsample_factor
        self.kernel = _fir(resample_kernel) * (upsample_factor**2 if upsample_factor > 1 else 1)
        k = self.kernel.shape[0]
        if upsample_factor > 1:
            p = (k - upsample_factor) - (kernel_size - 1)
            self.pad = ((p + 1) // 2 + upsample_factor - 1, p // 2 + 1)
        else:
            p = (k - downsample_factor) + (kernel_size - 1)
            self.pad = ((p + 1) // 2, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=1, down=1, pad=self.pad)


class EqualLinear(nn.Module):
    def __init__(self, in_channels, out_channels, bias=True, bias_init_val=0, lr_mul=1, activation=None):
        super().__init__()
        self.in_channels, self.out_channels, self.lr_mul, self.activation = in_channels, out_channels, lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init_val))) if bias else None

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, demodulate=True, sample_mode=None, resample_kernel=(1, 3, 3, 1), eps=1e-8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.sample_mode, self.eps = demodulate, sample_mode, eps
        if sample_mode == "upsample":
            self.smooth = UpFirDnSmooth(resample_kernel, upsample_factor=2, kernel_size=kernel_size)
        elif sample_mode == "downsample":
            self.smooth = UpFirDnSmooth(resample_kernel, downsample_factor=2, kernel_size=kernel_size)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(num_style_feat, in_channels, bias=True, bias_init_val=1)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.padding = kernel_size // 2

    def forward(self, x, style):
        b, c, h, w = x.shape
        weight = _modulate(self.scale * self.weight, self.modulation(style), self.demodulate, self.eps)
        if self.sample_mode == "upsample":
            k = self.kernel_size
            w_t = weight.transpose(1, 2).reshape(b * c, self.out_channels, k, k)  # per sample [Cin, Cout, k, k]
            out = F.conv_transpose2d(x.reshape(1, b * c, h, w), w_t, stride=2, groups=b)
            return self.smooth(out.reshape(b, self.out_channels, *out.shape[2:]))
        if self.sample_mode == "downsample":
            return _grouped(self.smooth(x), weight, stride=2)
        return _grouped(x, weight, padding=self.padding)


class StyleConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, demodulate=True, sample_mode=None):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, kernel_size, num_style_feat, demodulate, sample_mode)
        self.weight = nn.Parameter(torch.zeros(1))
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x, style, noise=None):
        out = self.modulated_conv(x, style)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        return self.activate(out + self.weight * noise)


# --------------------------------------------------------------------------- tiny generators
class TinyGenerator(nn.Module):
    """Constant input -> StyleConv -> upsampling StyleConv -> 1x1 to-RGB with an upsampled skip, in
    either flavour (``"clean"``: GFPGAN, ``"basicsr"``). ``forward(w, noise0, noise1)``."""

    def __init__(self, flavour: str, channels: int = 6, style: int = 8) -> None:
        super().__init__()
        clean = flavour == "clean"
        conv, mod = (CleanStyleConv, CleanModulatedConv2d) if clean else (StyleConv, ModulatedConv2d)
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        self.style_mlp = nn.Sequential(nn.Linear(style, style), nn.LeakyReLU(0.2)) if clean else EqualLinear(style, style, lr_mul=0.01, activation="fused_lrelu")
        self.conv1 = conv(channels, channels, 3, style)
        self.conv_up = conv(channels, channels, 3, style, sample_mode="upsample")
        self.rgb1 = mod(channels, 3, 1, style, demodulate=False)
        self.rgb2 = mod(channels, 3, 1, style, demodulate=False)
        self.skip_up = None if clean else UpFirDnUpsample()

    def forward(self, w, noise0=None, noise1=None):
        w = self.style_mlp(w)
        x = self.conv1(self.const.repeat(w.shape[0], 1, 1, 1), w, noise0)
        skip = self.rgb1(x, w)
        skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False) if self.skip_up is None else self.skip_up(skip)
        return self.rgb2(self.conv_up(x, w, noise1), w) + skip

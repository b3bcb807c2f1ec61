"""GFPGAN v1.2/v1.3/v1.4 (``arch='clean'``, Wang et al., CVPR 2021) face restoration as a family.

GFPGAN's released checkpoints (``GFPGANv1.3.pth``, ``GFPGANv1.4.pth``) are dicts with ``params_ema``
(and ``params``) holding the ``state_dict`` of ``gfpgan.archs.gfpganv1_clean_arch.GFPGANv1Clean``:
a U-Net whose bottleneck gives the style code and whose decoder features give per-level SFT
scale/shift maps for a StyleGAN2 decoder without custom CUDA ops. The modules below are our own code
with the same attribute names, shapes and arithmetic, so those files load with ``strict=True``; the
decoder's layers are then rewritten by the ``stylegan2_clean_modulated_conv`` and
``style_conv_noise`` rules.

What GFPGAN's inference (``GFPGANer``) fixes is built in: ``input_is_latent=True`` and no
intermediate RGB outputs. Widths, output size, style width, MLP depth, ``different_w`` and
``sft_half`` are read from tensor shapes. Noise: upstream draws fresh noise at every call; this
family uses the checkpoint's stored noise buffers (``stylegan_decoder.noises.noise<i>``), so the
export is deterministic and equals upstream's ``randomize_noise=False``.
Images are RGB in [-1, 1] (GFPGANer normalises with mean 0.5, std 0.5); so is the output, unclamped.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._shapes import indices, shape_of
from .registry import Family, InputSpec, TensorInfo, register_family

__all__ = ["GFPGANv1Clean", "GFPGAN_FAMILY", "build", "infer_config", "inputs"]

LEAK = 0.2
_DEFAULTS = {"num_style_feat": 512, "channel_multiplier": 2, "narrow": 1.0, "num_mlp": 8, "different_w": True, "sft_half": True, "input_is_latent": True}


def _widths(narrow: float, channel_multiplier: float) -> dict[int, int]:
    """Channels per resolution, as StyleGAN2 (and GFPGAN's U-Net with ``narrow / 2``) lay them out."""
    base = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    table = {res: int(512 * narrow) for res in (4, 8, 16, 32)}
    table.update({res: int(c * channel_multiplier * narrow) for res, c in base.items()})
    return table


class ModulatedConv2d(nn.Module):
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
        self.modulated_conv = ModulatedConv2d(c_in, c_out, 3, style, sample_mode=sample_mode)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.activate = nn.LeakyReLU(LEAK)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.modulated_conv(x, style) * 2**0.5 + self.weight * noise + self.bias)


class ToRGB(nn.Module):
    def __init__(self, c_in: int, style: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(c_in, 3, 1, style, demodulate=False)
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


def _sft(c: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(LEAK), nn.Conv2d(c, c_out, 3, 1, 1))


class GFPGANv1Clean(nn.Module):
    """Key-compatible with GFPGAN's ``GFPGANv1Clean``; ``forward(image) -> restored image``."""

    def __init__(self, out_size: int = 512, **config: Any) -> None:
        super().__init__()
        cfg = {**_DEFAULTS, **config}
        style, self.different_w, self.input_is_latent = cfg["num_style_feat"], cfg["different_w"], cfg["input_is_latent"]
        unet = _widths(cfg["narrow"] * 0.5, cfg["channel_multiplier"])
        log_size = int(math.log2(out_size))
        self.log_size, self.num_style_feat = log_size, style
        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        self.conv_body_down, self.conv_body_up, self.toRGB = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = unet[out_size]
        for level in range(log_size, 2, -1):
            self.conv_body_down.append(ResBlock(c, unet[2 ** (level - 1)], 0.5))
            c = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(c, unet[4], 3, 1, 1)
        for level in range(3, log_size + 1):
            self.conv_body_up.append(ResBlock(c, unet[2**level], 2))
            c = unet[2**level]
            self.toRGB.append(nn.Conv2d(c, 3, 1))  # GFPGAN's intermediate RGB heads: loaded, unused by inference
        self.final_linear = nn.Linear(unet[4] * 16, (log_size * 2 - 2) * style if self.different_w else style)
        self.stylegan_decoder = StyleGAN2Decoder(out_size, style, cfg["num_mlp"], _widths(cfg["narrow"], cfg["channel_multiplier"]), cfg["sft_half"])
        sft_width = (lambda c: c) if cfg["sft_half"] else (lambda c: 2 * c)
        self.condition_scale = nn.ModuleList(_sft(unet[2**lv], sft_width(unet[2**lv])) for lv in range(3, log_size + 1))
        self.condition_shift = nn.ModuleList(_sft(unet[2**lv], sft_width(unet[2**lv])) for lv in range(3, log_size + 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_body_first(image), LEAK)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), LEAK)
        style = self.final_linear(feat.flatten(1))
        decoder = self.stylegan_decoder
        if self.different_w:
            style = style.reshape(style.shape[0], -1, self.num_style_feat)
        if not self.input_is_latent:
            style = decoder.style_mlp(style)
        latent = style if self.different_w else style.unsqueeze(1).repeat(1, decoder.num_latent, 1)
        conditions = []
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[i])
            conditions += [self.condition_scale[i](feat), self.condition_shift[i](feat)]
        return decoder(latent, conditions)


def _clean(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """Read the configuration off the key names and tensor shapes of a ``GFPGANv1Clean`` state_dict."""
    levels = len(indices(state, r"conv_body_down\.(\d+)\.conv1\.weight"))
    if levels < 1:
        raise ValueError("no 'conv_body_down.<i>.conv1.weight' keys")
    log_size = levels + 2
    style = shape_of(state, "stylegan_decoder.style_conv1.modulated_conv.modulation.weight", 2)[1]
    narrow = shape_of(state, "stylegan_decoder.constant_input.weight", 4)[1] / 512
    multiplier = _DEFAULTS["channel_multiplier"]
    if log_size >= 6:  # the first width that depends on the channel multiplier is at 64x64
        multiplier = shape_of(state, "stylegan_decoder.style_convs.6.modulated_conv.weight", 5)[1] / (256 * narrow)
    linear_out = shape_of(state, "final_linear.weight", 2)[0]
    if linear_out not in (style, (2 * log_size - 2) * style):
        raise ValueError(f"'final_linear.weight' has {linear_out} outputs: neither {style} nor {(2 * log_size - 2) * style}")
    sft_out, sft_in = shape_of(state, "condition_scale.0.2.weight", 4)[0], shape_of(state, "condition_scale.0.0.weight", 4)[0]
    return {
        "out_size": 2**log_size,
        "num_style_feat": style,
        "channel_multiplier": _clean(multiplier),
        "narrow": _clean(narrow),
        "num_mlp": len(indices(state, r"stylegan_decoder\.style_mlp\.(\d+)\.weight")),
        "different_w": linear_out != style,
        "sft_half": sft_out == sft_in,
        "input_is_latent": True,  # GFPGANer's setting for every clean model; not visible in the weights
    }


def build(config: Mapping[str, Any]) -> GFPGANv1Clean:
    config = dict(config)
    return GFPGANv1Clean(config.pop("out_size"), **config).eval()


def inputs(config: Mapping[str, Any]) -> list[InputSpec]:
    size = int(config["out_size"])
    return [InputSpec("image", (1, 3, size, size), make=lambda shape, gen: torch.rand(*shape, generator=gen) * 2 - 1)]


GFPGAN_FAMILY = register_family(
    Family(
        name="gfpgan",
        description="GFPGAN v1.2-v1.4 clean face restoration (U-Net + SFT StyleGAN2 decoder); noise: the checkpoint's fixed buffers",
        key_patterns=(r"^conv_body_first\.weight$", r"^stylegan_decoder\.style_conv1\.modulated_conv\.weight$", r"^condition_scale\.0\.0\.weight$"),
        infer_config=infer_config,
        build=build,
        inputs=inputs,
        outputs=("restored",),
        dynamic_axes={"image": {0: "batch"}, "restored": {0: "batch"}},
        tensors={
            "image": TensorInfo("aligned face crop, RGB, normalised as GFPGANer does: (pixel / 255 - 0.5) / 0.5", "NCHW", (-1.0, 1.0),
                                {"size": "out_size x out_size (released models: 512x512)"}),
            "restored": TensorInfo("restored face, RGB, unclamped: clamp to [-1, 1] before converting to pixels, as GFPGANer does", "NCHW", None,
                                   {"nominal_range": [-1.0, 1.0]}),
        },
        presets={
            "full": {"out_size": 512, **_DEFAULTS},
            "small": {**_DEFAULTS, "out_size": 32, "num_style_feat": 16, "narrow": 0.03125, "num_mlp": 2},
        },
    )
)

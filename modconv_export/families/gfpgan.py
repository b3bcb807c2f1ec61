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
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.gfpgan import LEAK, ResBlock, StyleGAN2Decoder, sft, widths
from ._shapes import indices, shape_of
from .registry import Family, InputSpec, TensorInfo, register_family

__all__ = ["GFPGANv1Clean", "GFPGAN_FAMILY", "build", "infer_config", "inputs"]

_DEFAULTS = {
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "narrow": 1.0,
    "num_mlp": 8,
    "different_w": True,
    "sft_half": True,
    "input_is_latent": True,
}


class GFPGANv1Clean(nn.Module):
    """Key-compatible with GFPGAN's ``GFPGANv1Clean``; ``forward(image) -> restored image``."""

    def __init__(self, out_size: int = 512, **config: Any) -> None:
        super().__init__()
        cfg = {**_DEFAULTS, **config}
        style, self.different_w, self.input_is_latent = cfg["num_style_feat"], cfg["different_w"], cfg["input_is_latent"]
        unet = widths(cfg["narrow"] * 0.5, cfg["channel_multiplier"])
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
        self.stylegan_decoder = StyleGAN2Decoder(
            out_size, style, cfg["num_mlp"], widths(cfg["narrow"], cfg["channel_multiplier"]), cfg["sft_half"]
        )
        sft_width = (lambda c: c) if cfg["sft_half"] else (lambda c: 2 * c)
        self.condition_scale = nn.ModuleList(sft(unet[2**lv], sft_width(unet[2**lv])) for lv in range(3, log_size + 1))
        self.condition_shift = nn.ModuleList(sft(unet[2**lv], sft_width(unet[2**lv])) for lv in range(3, log_size + 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_body_first(image), LEAK)
        skips: list[torch.Tensor] = []
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
        key_patterns=(
            r"^conv_body_first\.weight$",
            r"^stylegan_decoder\.style_conv1\.modulated_conv\.weight$",
            r"^condition_scale\.0\.0\.weight$",
        ),
        infer_config=infer_config,
        build=build,
        inputs=inputs,
        outputs=("restored",),
        tensors={
            "image": TensorInfo(
                "aligned face crop, RGB, normalised as GFPGANer does: (pixel / 255 - 0.5) / 0.5",
                "NCHW",
                (-1.0, 1.0),
                {"size": "out_size x out_size (released models: 512x512)"},
            ),
            "restored": TensorInfo(
                "restored face, RGB, unclamped: clamp to [-1, 1] before converting to pixels, as GFPGANer does",
                "NCHW",
                None,
                {"nominal_range": [-1.0, 1.0]},
            ),
        },
        presets={
            "full": {"out_size": 512, **_DEFAULTS},
            "small": {**_DEFAULTS, "out_size": 32, "num_style_feat": 16, "narrow": 0.03125, "num_mlp": 2},
        },
    )
)

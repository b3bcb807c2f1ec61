"""A StyleGAN2-style decoder built from the seed layers: the toolkit's own sample architecture.

latent ``[B, D]`` -> mapping MLP (pixel norm, then ``n_mlp`` x EqualLinear + leaky ReLU) -> styles for
every modulated conv. The image starts from a learned constant ``[1, C0, 4, 4]``; each styled block
is two 3x3 modulated convs (all blocks but the first upsample 2x in their first conv), each followed
by leaky ReLU times sqrt(2); a 1x1 modulated conv (no demodulation) maps to RGB and tanh bounds it
to [-1, 1]. There is no noise input, so the output is a deterministic function of the latent.

Resolution is ``4 * 2**(len(channels) - 1)``: ``channels`` lists each block's width, 4x4 first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from math import sqrt
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.seed import EqualLinear, ModulatedConv2d, PixelNorm
from ._shapes import indices, known_fields, shape_of
from .registry import Family, InputSpec, TensorInfo, register_family

__all__ = ["DECODER_FAMILY", "DecoderConfig", "StyledImageDecoder", "build", "infer_config", "inputs"]

LEAK = 0.2


@dataclass(frozen=True)
class DecoderConfig:
    """Latent width, mapping depth and per-block channels (defaults: 512-D latent, 256x256 output)."""

    latent_dim: int = 512
    n_mlp: int = 8
    channels: tuple[int, ...] = (512, 512, 512, 512, 256, 128, 64)
    output_nc: int = 3

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> DecoderConfig:
        values = known_fields(cls, config, "decoder")
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        ints = [v for k, v in values.items() if k != "channels"] + list(values.get("channels", ()))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ints):
            raise ValueError(f"decoder config values must be positive integers: {dict(values)}")
        cfg = cls(**values)
        if not cfg.channels:
            raise ValueError("decoder config channels must list at least one block width")
        return cfg

    @property
    def size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out


class StyledBlock(nn.Module):
    """Two modulated 3x3 convs; the first upsamples 2x when ``upsample``."""

    def __init__(self, fin: int, fout: int, latent_dim: int, upsample: bool) -> None:
        super().__init__()
        self.conv0 = ModulatedConv2d(fin, fout, 3, upsample=upsample, latent_dim=latent_dim, normalize_mlp=True)
        self.conv1 = ModulatedConv2d(fout, fout, 3, latent_dim=latent_dim, normalize_mlp=True)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv0(x, w), LEAK) * sqrt(2)
        return F.leaky_relu(self.conv1(x, w), LEAK) * sqrt(2)


class StyledImageDecoder(nn.Module):
    """``forward(latent) -> image`` in [-1, 1], ``[B, output_nc, size, size]``."""

    def __init__(self, config: Mapping[str, Any] | DecoderConfig | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, DecoderConfig) else DecoderConfig.from_mapping(config or {})
        self.config = cfg
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(cfg.n_mlp):
            layers += [EqualLinear(cfg.latent_dim, cfg.latent_dim), nn.LeakyReLU(LEAK)]
        self.mapping = nn.Sequential(*layers)
        self.const = nn.Parameter(torch.randn(1, cfg.channels[0], 4, 4))
        widths = [cfg.channels[0], *cfg.channels]
        self.blocks = nn.ModuleList(
            StyledBlock(fin, fout, cfg.latent_dim, upsample=i > 0) for i, (fin, fout) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.to_rgb = ModulatedConv2d(cfg.channels[-1], cfg.output_nc, 1, latent_dim=cfg.latent_dim, normalize_mlp=True)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        w = self.mapping(latent)
        x = self.const.repeat(latent.shape[0], 1, 1, 1)  # the seed conv needs a contiguous input
        for block in self.blocks:
            x = block(x, w)
        return torch.tanh(self.to_rgb(x, w))


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Latent width and mapping depth from the mapping MLP; block widths from each block's first conv."""
    layers = indices(state_dict, r"mapping\.(\d+)\.linear\.weight_orig")
    blocks = indices(state_dict, r"blocks\.(\d+)\.conv0\.weight")
    if not layers or not blocks:
        raise ValueError("no mapping.<i>.linear.weight_orig or blocks.<i>.conv0.weight keys: not a styled decoder")
    if blocks != list(range(len(blocks))):
        raise ValueError(f"decoder blocks are not numbered 0..{len(blocks) - 1}: {blocks}")
    latent_dim = shape_of(state_dict, f"mapping.{layers[0]}.linear.weight_orig", 2)[1]
    channels = [shape_of(state_dict, f"blocks.{i}.conv0.weight", 4)[0] for i in blocks]
    output_nc = shape_of(state_dict, "to_rgb.weight", 4)[0]
    return DecoderConfig(latent_dim=latent_dim, n_mlp=len(layers), channels=tuple(channels), output_nc=output_nc).as_dict()


def build(config: Mapping[str, Any]) -> StyledImageDecoder:
    """A decoder with random weights, in eval mode."""
    return StyledImageDecoder(config).eval()


def inputs(config: Mapping[str, Any]) -> list[InputSpec]:
    """``latent`` [B, latent_dim], standard normal."""
    return [InputSpec("latent", (1, DecoderConfig.from_mapping(config).latent_dim))]


FULL = DecoderConfig().as_dict()
SMALL = DecoderConfig(latent_dim=64, n_mlp=4, channels=(64, 64, 32, 32, 16)).as_dict()

DECODER_FAMILY = register_family(
    Family(
        name="decoder",
        description="StyleGAN2-style decoder (the toolkit's sample): latent -> image from a learned constant",
        key_patterns=(r"^mapping\.\d+\.linear\.weight_orig$", r"^const$", r"^blocks\.0\.conv0\.weight$", r"^to_rgb\.weight$"),
        infer_config=infer_config,
        build=build,
        inputs=inputs,
        outputs=("image",),
        presets={"full": FULL, "small": SMALL},
        tensors={
            "latent": TensorInfo(
                "latent vector, standard normal; the mapping MLP turns it into the style", "NC", None, {"distribution": "N(0, 1)"}
            ),
            "image": TensorInfo("RGB image (tanh)", "NCHW", (-1.0, 1.0)),
        },
    )
)

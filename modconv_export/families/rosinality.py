"""rosinality/stylegan2-pytorch's ``Generator`` as a family, with no configuration to give.

The files StyleGAN users hold -- ``train.py`` checkpoints (``g_ema``, ``g``), ``convert_weight.py`` output
(``g_ema`` + ``latent_avg``: ``stylegan2-ffhq-config-f.pt``), bare state_dicts, and the decoder of pSp / e4e
checkpoints (under ``decoder.``) -- hold the ``state_dict`` of upstream's ``Generator(size, style_dim, n_mlp,
channel_multiplier)``. Every width is read off the tensor shapes (so narrowed forks load too); the model is
built from :mod:`modconv_export.layers.rosinality`, key-compatible with upstream, and loaded strictly.

What the export computes is upstream's ``forward`` with ``randomize_noise=False`` (the stored
``noises.noise_<i>``; a file without them draws noise, which the export makes zero and says so):

* ``latent="z"``: ``z`` [B, style_dim] -> mapping -> the same ``w`` for every layer -> image;
* ``latent="w"``: ``ws`` [B, n_latent, style_dim] (``input_is_latent=True``: what pSp / e4e produce) -> image;
* ``truncation=psi``: ``w_avg + psi * (w - w_avg)`` towards the file's ``latent_avg`` (upstream applies it only
  for psi < 1; here the formula holds for every psi), ``"input"``: psi per sample as ``truncation_psi`` [B].

The image is RGB, nominally in [-1, 1] and unclamped (upstream saves it with ``normalize, range=(-1, 1)``).
``lr_mlp`` (0.01 in every upstream script) does not show in the weights; give it in a config if yours differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from ..layers.gfpgan import widths
from ..layers.rosinality import EqualLinear, PixelNorm, Synthesis, make_kernel
from ._shapes import indices, known_fields, shape_of
from .registry import Family, InputSpec, TensorInfo, register_family

__all__ = ["ROSINALITY_FAMILY", "RosinalityConfig", "RosinalityGenerator", "build", "configure_generator", "infer_config", "inputs"]

_TAPS = (1.0, 3.0, 3.0, 1.0)


def standard_channels(size: int, channel_multiplier: float) -> tuple[int, ...]:
    """Upstream's widths at 4, 8, ..., ``size`` px (512 up to 32 px, then ``16384 / res * multiplier``)."""
    table = widths(1.0, channel_multiplier)
    return tuple(table.get(2**i, int(16 * 1024 // 2**i * channel_multiplier)) for i in range(2, int(math.log2(size)) + 1))


@dataclass(frozen=True)
class RosinalityConfig:
    """Upstream's constructor arguments, the widths they imply, and what to export (``latent``, ``truncation``)."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    #: ``None`` where the widths follow no multiplier of upstream's table (a narrowed fork).
    channel_multiplier: float | None = 2
    #: Widths at 4, 8, ..., ``size`` px; empty: upstream's table for ``channel_multiplier``.
    channels: tuple[int, ...] = ()
    lr_mlp: float = 0.01
    blur_kernel: tuple[float, ...] = _TAPS
    #: Whether the file holds the fixed noise buffers ``noises.noise_<i>``.
    noise: bool = True
    latent: str = "z"
    truncation: float | str | None = None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RosinalityConfig:
        values = known_fields(cls, config, "rosinality")
        for key in ("channels", "blur_kernel"):
            if key in values:
                values[key] = tuple(values[key])
        cfg = cls(**values)
        cfg.check()
        if not cfg.channels:
            if cfg.channel_multiplier is None:
                raise ValueError("rosinality config needs channels or a channel_multiplier")
            cfg = cls(**{**values, "channels": standard_channels(cfg.size, cfg.channel_multiplier)})
        if len(cfg.channels) != cfg.log_size - 1:
            raise ValueError(
                f"rosinality config lists {len(cfg.channels)} widths for {cfg.size} px, which needs {cfg.log_size - 1} (4 .. {cfg.size} px)"
            )
        return cfg

    def check(self) -> None:
        ints = [self.size, self.style_dim, *self.channels]
        bad_mlp = isinstance(self.n_mlp, bool) or not isinstance(self.n_mlp, int) or self.n_mlp < 0
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ints) or bad_mlp:
            raise ValueError(
                f"rosinality config sizes must be positive integers (n_mlp >= 0): size {self.size}, style_dim {self.style_dim}, "
                f"n_mlp {self.n_mlp!r}, channels {self.channels}"
            )
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"rosinality size must be a power of two >= 4, got {self.size}")
        for name, value in (("channel_multiplier", self.channel_multiplier), ("lr_mlp", self.lr_mlp)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"rosinality {name} must be a positive number, got {value!r}")
        if self.latent not in ("z", "w"):
            raise ValueError(f"rosinality latent must be 'z' or 'w', got {self.latent!r}")
        psi = self.truncation
        if not (psi is None or psi == "input" or (isinstance(psi, (int, float)) and not isinstance(psi, bool) and math.isfinite(psi))):
            raise ValueError(f"rosinality truncation must be a number, 'input' or None, got {self.truncation!r}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    def as_dict(self) -> dict:
        out = asdict(self)
        out["channels"], out["blur_kernel"] = list(self.channels), list(self.blur_kernel)
        return out


class RosinalityGenerator(Synthesis):
    """Key-compatible with upstream's ``Generator`` (plus ``latent_avg`` when truncating); ``forward`` exports
    what the config says (see the module docstring): ``forward(z | ws[, truncation_psi]) -> image``."""

    def __init__(self, config: Mapping[str, Any] | RosinalityConfig | None = None) -> None:
        cfg = config if isinstance(config, RosinalityConfig) else RosinalityConfig.from_mapping(config or {})
        super().__init__(cfg.channels, cfg.style_dim, cfg.blur_kernel, cfg.noise)
        self.config, self.size, self.style_dim = cfg, cfg.size, cfg.style_dim
        mlp = [EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation="fused_lrelu") for _ in range(cfg.n_mlp)]
        self.style = nn.Sequential(PixelNorm(), *mlp)
        if cfg.truncation is not None:
            self.register_buffer("latent_avg", torch.zeros(cfg.n_latent, cfg.style_dim))

    def forward(self, latent: torch.Tensor, truncation_psi: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        ws = latent if cfg.latent == "w" else self.style(latent).unsqueeze(1).repeat(1, self.n_latent, 1)
        if cfg.truncation is not None:
            avg = self.get_buffer("latent_avg")
            if cfg.truncation == "input":
                if truncation_psi is None:
                    raise ValueError("this generator takes truncation_psi [B] after the latents")
                ws = avg + truncation_psi.reshape(-1, 1, 1) * (ws - avg)
            else:
                ws = avg + float(cfg.truncation) * (ws - avg)
        return self.synthesize(ws)


def _blur_taps(state: Mapping[str, torch.Tensor]) -> tuple[float, ...]:
    """The 1-D taps of the stored FIR kernel: ``(1, 3, 3, 1)`` when it is upstream's, else its row profile."""
    kernel = state.get("convs.0.conv.blur.kernel")
    if kernel is None or kernel.is_meta or kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        return _TAPS
    if kernel.shape == (4, 4) and torch.allclose(kernel.float(), make_kernel(_TAPS) * 4, atol=1e-6):
        return _TAPS
    profile = kernel.double().sum(1)
    return tuple(float(v) for v in profile / profile.abs().max())


def infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """Size from the to-RGB layers, widths from the convolutions, style width and MLP depth from the mapping."""
    mlp = indices(state, r"style\.(\d+)\.weight")
    if mlp != list(range(1, len(mlp) + 1)):
        raise ValueError(f"mapping layers are not numbered style.1 .. style.{len(mlp)}: {mlp}")
    levels = indices(state, r"to_rgbs\.(\d+)\.conv\.weight")
    if levels != list(range(len(levels))):
        raise ValueError(f"to-RGB layers are not numbered to_rgbs.0 .. to_rgbs.{len(levels) - 1}: {levels}")
    if len(levels) > 12:
        raise ValueError(f"{len(levels)} to-RGB layers mean {4 * 2 ** len(levels)} px, beyond any StyleGAN2")
    style_dim = shape_of(state, "conv1.conv.modulation.weight", 2)[1]
    channels = [shape_of(state, "input.input", 4)[1]]
    channels += [shape_of(state, f"convs.{2 * i}.conv.weight", 5)[1] for i in levels]
    size = 4 * 2 ** len(levels)
    multiplier = channels[4] / 256 if len(channels) > 4 else 2
    multiplier = int(multiplier) if float(multiplier).is_integer() else multiplier
    standard = tuple(channels) == standard_channels(size, multiplier)
    noises = indices(state, r"noises\.noise_(\d+)")
    return RosinalityConfig(
        size=size, style_dim=style_dim, n_mlp=len(mlp), channel_multiplier=multiplier if standard else None, channels=tuple(channels),
        blur_kernel=_blur_taps(state), noise=bool(noises),
    ).as_dict()  # fmt: skip


def build(config: Mapping[str, Any]) -> RosinalityGenerator:
    """A generator with random weights, in eval mode."""
    return RosinalityGenerator(config).eval()


def _latent_avg(value: Any, n_latent: int, style_dim: int) -> torch.Tensor:
    """A file's ``latent_avg`` ([D], [1, D], [n_latent, D] or [1, n_latent, D]) as one row per layer."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"its latent_avg is a {type(value).__name__}, not a floating-point tensor")
    shape = tuple(value.shape)
    rows = value.reshape(-1, style_dim) if shape and shape[-1] == style_dim and value.numel() in (style_dim, n_latent * style_dim) else None
    if rows is None or value.dim() > 3 or (value.dim() == 3 and shape[0] != 1):
        raise ValueError(f"its latent_avg has shape {list(shape)}; expected [{style_dim}], [1, {style_dim}] or [{n_latent}, {style_dim}]")
    return rows.expand(n_latent, style_dim).float().clone()


def configure_generator(
    config: Mapping[str, Any], latent: str, truncation: float | str | None, extras: Mapping[str, Any]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Fold ``--latent`` / ``--truncation`` into the config; ``latent_avg`` (from the file) loads with the weights."""
    cfg = RosinalityConfig.from_mapping({**config, "latent": latent, "truncation": truncation})
    tensors = {}
    if truncation is not None:
        if "latent_avg" not in extras:
            raise ValueError(
                "truncation pulls towards the file's average latent, and this file holds no latent_avg "
                "(convert_weight.py and pSp / e4e checkpoints do; train.py checkpoints do not)"
            )
        tensors["latent_avg"] = _latent_avg(extras["latent_avg"], cfg.n_latent, cfg.style_dim)
    return cfg.as_dict(), tensors


def _psi(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return 0.5 + 0.5 * torch.rand(*shape, generator=gen)


def inputs(config: Mapping[str, Any]) -> list[InputSpec]:
    """``z`` [B, style_dim] or ``ws`` [B, n_latent, style_dim], standard normal; ``truncation_psi`` [B] in [0.5, 1)."""
    cfg = RosinalityConfig.from_mapping(config)
    specs = [InputSpec("z", (1, cfg.style_dim)) if cfg.latent == "z" else InputSpec("ws", (1, cfg.n_latent, cfg.style_dim))]
    if cfg.truncation == "input":
        specs.append(InputSpec("truncation_psi", (1,), make=_psi))
    return specs


TENSORS = {
    "z": TensorInfo("latent vector, standard normal; the mapping network turns it into w", "NC", None, {"distribution": "N(0, 1)"}),
    "ws": TensorInfo("W+ latents, one style vector per layer (input_is_latent=True: what pSp / e4e encoders produce)", "NLC"),
    "truncation_psi": TensorInfo("truncation psi per sample: w_avg + psi * (w - w_avg); 1 leaves w as it is", "N"),
    "image": TensorInfo("RGB image, unclamped: clamp to [-1, 1] before converting to pixels", "NCHW", None, {"nominal_range": [-1.0, 1.0]}),
}

FULL = RosinalityConfig.from_mapping({}).as_dict()  # config-f: 1024 px, channel_multiplier 2
SMALL = RosinalityConfig(size=32, style_dim=32, n_mlp=2, channel_multiplier=None, channels=(32, 32, 16, 16)).as_dict()
SYNTHESIS = {**SMALL, "latent": "w", "truncation": "input"}

ROSINALITY_FAMILY = register_family(
    Family(
        name="rosinality",
        description="rosinality/stylegan2-pytorch Generator (train.py, convert_weight.py, pSp/e4e decoder): z or W+ -> image",
        key_patterns=(r"^conv1\.conv\.weight$", r"^style\.\d+\.weight$", r"^convs\.\d+\.conv\.modulation\.weight$", r"^to_rgb1\.conv\.weight$", r"^input\.input$"),
        infer_config=infer_config,
        build=build,
        inputs=inputs,
        outputs=("image",),
        presets={"full": FULL, "small": SMALL, "synthesis": SYNTHESIS},
        tensors=TENSORS,
        generator=configure_generator,
        extras=("latent_avg",),
    )
)  # fmt: skip

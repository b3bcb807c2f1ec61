"""The LATS generator (Lifespan Age Transformation Synthesis, Or-El et al., ECCV 2020) as a family.

The upstream training code (royorel/Lifespan_Age_Transformation_Synthesis) saves the moving-average
generator's bare ``state_dict()`` as ``latest_net_g_running.pth``. The modules below are our own
code built from :mod:`modconv_export.layers.seed`, with the same attribute names and ``Sequential``
layouts, so that file loads with ``strict=True``.

What LATS's default options fix is built in: equalized-learning-rate convolutions
(``conv_weight_norm``), ReLU + pixel norm in the identity encoder, a four-step age encoder, a
pixel-normalised 8-layer mapping MLP (``normalize_mlp``), modulated convolutions with pixel norm in
the decoder, two upsampling blocks and a tanh output. Widths -- ``ngf``, the number of identity
downsamplings and residual blocks, style/MLP/latent widths -- are read from tensor shapes.

The exported graph is ``Generator.infer`` without the deploy-mode repeat: row ``i`` of ``output``
is image ``i`` rendered at age code ``i``, so one dynamic batch holds any mix of images and ages.
Images are RGB in [-1, 1] (LATS normalises with mean 0.5, std 0.5); the output is in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from math import sqrt
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.seed import EqualConv2d, EqualLinear, ModulatedConv2d, PixelNorm
from ._shapes import indices, known_fields, shape_of
from .registry import Family, InputSpec, TensorInfo, register_family

__all__ = ["LATSConfig", "LATSGenerator", "LATS_FAMILY", "age_code", "build", "infer_config", "inputs"]

#: The age encoder always halves the resolution four times (fixed upstream, not an option).
AGE_ENCODER_DOWNSAMPLINGS = 4
LEAK = 0.2


@dataclass(frozen=True)
class LATSConfig:
    """Everything that shapes the generator; defaults are LATS's released models (256x256, 6 classes)."""

    input_nc: int = 3
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 2
    n_blocks: int = 4
    style_dim: int = 300  # num_classes * dim_per_class
    mlp_dim: int = 256
    latent_dim: int = 256
    n_mlp: int = 8
    num_classes: int = 6
    image_size: int = 256  # only the default example resolution; any multiple of 2**n_downsampling runs

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> LATSConfig:
        values = known_fields(cls, config, "LATS")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "n_blocks" else 1):
                raise ValueError(f"LATS config {key}={value!r} must be a positive integer")
        cfg = cls(**values)
        if cfg.n_mlp < 2:
            raise ValueError(f"LATS config n_mlp={cfg.n_mlp}: the mapping MLP has at least 2 layers")
        if cfg.style_dim % cfg.num_classes:
            raise ValueError(f"LATS config style_dim={cfg.style_dim} is not a multiple of num_classes={cfg.num_classes}")
        return cfg

    @property
    def dim_per_class(self) -> int:
        return self.style_dim // self.num_classes

    @property
    def bottleneck_channels(self) -> int:
        return self.ngf * 2**self.n_downsampling


# --------------------------------------------------------------------------- modules


class ResnetBlock(nn.Module):
    """``x + f(x)`` with f = reflect-pad, 3x3 conv, pixel norm, ReLU, reflect-pad, 3x3 conv, pixel norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), EqualConv2d(dim, dim, 3), PixelNorm(), nn.ReLU(),
            nn.ReflectionPad2d(1), EqualConv2d(dim, dim, 3), PixelNorm(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class IdentityEncoder(nn.Module):
    """Image -> identity features at 1/2**n_downsampling resolution, ``ngf * 2**n_downsampling`` channels."""

    def __init__(self, cfg: LATSConfig) -> None:
        super().__init__()
        width = cfg.ngf
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), EqualConv2d(cfg.input_nc, width, 7), PixelNorm(), nn.ReLU()]
        for _ in range(cfg.n_downsampling):
            layers += [nn.ReflectionPad2d(1), EqualConv2d(width, 2 * width, 3, stride=2), PixelNorm(), nn.ReLU()]
            width *= 2
        layers += [ResnetBlock(width) for _ in range(cfg.n_blocks)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class AgeEncoder(nn.Module):
    """Image -> age code estimate (``style_dim`` values); LATS uses it only in training losses."""

    def __init__(self, cfg: LATSConfig) -> None:
        super().__init__()
        width = cfg.ngf
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), EqualConv2d(cfg.input_nc, width, 7), nn.LeakyReLU(LEAK)]
        for _ in range(AGE_ENCODER_DOWNSAMPLINGS):
            layers += [nn.ReflectionPad2d(1), EqualConv2d(width, 2 * width, 3, stride=2), nn.LeakyReLU(LEAK)]
            width *= 2
        layers.append(EqualConv2d(width, cfg.style_dim, 1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image).mean(dim=3).mean(dim=2)


class MappingMLP(nn.Module):
    """Age code -> decoder latent: pixel norm around every EqualLinear, leaky ReLU between them."""

    def __init__(self, cfg: LATSConfig) -> None:
        super().__init__()
        widths = [cfg.style_dim] + [cfg.mlp_dim] * (cfg.n_mlp - 1) + [cfg.latent_dim]
        layers: list[nn.Module] = [PixelNorm()]
        for i, (fin, fout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(EqualLinear(fin, fout))
            if i < cfg.n_mlp - 1:
                layers.append(nn.LeakyReLU(LEAK))
            layers.append(PixelNorm())
        self.model = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.model(code)


class StyledConvBlock(nn.Module):
    """Two modulated 3x3 convs (the first may upsample), each followed by gained leaky ReLU and pixel norm."""

    def __init__(self, fin: int, fout: int, latent_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv0 = ModulatedConv2d(fin, fout, 3, upsample=upsample, latent_dim=latent_dim, normalize_mlp=True)
        self.conv1 = ModulatedConv2d(fout, fout, 3, latent_dim=latent_dim, normalize_mlp=True)
        self.pixel_norm = PixelNorm()

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        # sqrt(2) restores the second moment leaky ReLU removes, as in StyleGAN2.
        x = self.pixel_norm(F.leaky_relu(self.conv0(x, latent), LEAK) * sqrt(2))
        return self.pixel_norm(F.leaky_relu(self.conv1(x, latent), LEAK) * sqrt(2))


class StyledDecoder(nn.Module):
    """Identity features + age code -> image: 4 styled blocks, 2 upsampling blocks, 1x1 conv, tanh."""

    def __init__(self, cfg: LATSConfig) -> None:
        super().__init__()
        width = cfg.bottleneck_channels
        for i in range(4):
            setattr(self, f"StyledConvBlock_{i}", StyledConvBlock(width, width, cfg.latent_dim))
        self.StyledConvBlock_up0 = StyledConvBlock(width, width // 2, cfg.latent_dim, upsample=True)
        self.StyledConvBlock_up1 = StyledConvBlock(width // 2, width // 4, cfg.latent_dim, upsample=True)
        self.conv_img = nn.Sequential(EqualConv2d(width // 4, cfg.output_nc, 1), nn.Tanh())
        self.mlp = MappingMLP(cfg)
        self.block_names = [f"StyledConvBlock_{i}" for i in range(4)] + ["StyledConvBlock_up0", "StyledConvBlock_up1"]

    def forward(self, features: torch.Tensor, target_age: torch.Tensor) -> torch.Tensor:
        latent = self.mlp(target_age)
        for name in self.block_names:
            features = getattr(self, name)(features, latent)
        return self.conv_img(features)


class LATSGenerator(nn.Module):
    """``forward(image, target_age)`` = upstream ``Generator.infer(image, target_age)`` (no deploy repeat)."""

    def __init__(self, config: Mapping[str, Any] | LATSConfig | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LATSConfig) else LATSConfig.from_mapping(config or {})
        self.config = cfg
        self.id_encoder = IdentityEncoder(cfg)
        self.age_encoder = AgeEncoder(cfg)
        self.decoder = StyledDecoder(cfg)

    def forward(self, image: torch.Tensor, target_age: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.id_encoder(image), target_age)

    def encode_age(self, image: torch.Tensor) -> torch.Tensor:
        """The age encoder's estimate of ``image``'s age code (not part of the exported graph)."""
        return self.age_encoder(image)


# --------------------------------------------------------------------------- family entry


def age_code(
    age_class: int | Iterable[int],
    *,
    batch: int | None = None,
    num_classes: int = 6,
    dim_per_class: int = 50,
    noise: float = 0.2,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LATS's ``target_age`` code, ``[B, num_classes * dim_per_class]``.

    Row ``i`` is ``noise * N(0, 1)`` over the whole row plus 1 on the ``dim_per_class`` entries of its
    class -- the construction of LATS's ``get_conditions``. LATS adds that noise (std 0.2) at test and
    deploy time too unless run with ``--no_cond_noise`` (here ``noise=0``). Rows are drawn one after the
    other from ``generator`` (default: a CPU generator seeded with ``seed``), so a code is reproducible.
    ``age_class`` is one class for ``batch`` rows (default 1), or one class per row.
    """
    if isinstance(age_class, int):
        classes = [age_class] * (1 if batch is None else batch)
    else:
        classes = [int(c) for c in age_class]
    if batch is not None and len(classes) != batch:
        raise ValueError(f"{len(classes)} age classes for a batch of {batch}")
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"age classes must be in 0..{num_classes - 1}, got {classes}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    width = num_classes * dim_per_class
    code = torch.zeros(len(classes), width)
    for row, cls in enumerate(classes):
        if noise:
            code[row] = noise * torch.randn(1, width, generator=gen)
        code[row, cls * dim_per_class : (cls + 1) * dim_per_class] += 1
    return code


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read ngf, downsamplings, residual blocks and the style/MLP/latent widths off a LATS state_dict."""
    ngf, input_nc = shape_of(state_dict, "id_encoder.encoder.1.conv.weight_orig", 4)[:2]
    convs = indices(state_dict, r"id_encoder\.encoder\.(\d+)\.conv\.weight_orig")
    blocks = indices(state_dict, r"id_encoder\.encoder\.(\d+)\.conv_block\.1\.conv\.weight_orig")
    mlp = indices(state_dict, r"decoder\.mlp\.model\.(\d+)\.linear\.weight_orig")
    if not mlp:
        raise ValueError("no decoder.mlp.model.<i>.linear.weight_orig keys: not a LATS mapping MLP")
    if "decoder.StyledConvBlock_0.conv0.mlp_class_std.0.linear.weight_orig" not in state_dict:
        raise ValueError("decoder styles are not pixel-normalised: only LATS's default normalize_mlp=True is supported")
    mlp_dim, style_dim = shape_of(state_dict, f"decoder.mlp.model.{mlp[0]}.linear.weight_orig", 2)
    latent_dim = shape_of(state_dict, f"decoder.mlp.model.{mlp[-1]}.linear.weight_orig", 2)[0]
    output_nc = shape_of(state_dict, "decoder.conv_img.0.conv.weight_orig", 4)[0]
    n_downsampling = len(convs) - 1
    bottleneck = shape_of(state_dict, "decoder.StyledConvBlock_0.conv0.weight", 4)[1]
    if bottleneck != ngf * 2**n_downsampling:
        raise ValueError(f"decoder input width {bottleneck} != ngf {ngf} * 2**{n_downsampling} identity downsamplings")
    # The code width alone cannot tell classes from per-class width: assume LATS's 50 per class first.
    num_classes = style_dim // 50 if style_dim % 50 == 0 else (6 if style_dim % 6 == 0 else 1)
    return asdict(
        LATSConfig(
            input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_downsampling, n_blocks=len(blocks),
            style_dim=style_dim, mlp_dim=mlp_dim, latent_dim=latent_dim, n_mlp=len(mlp), num_classes=num_classes,
        )
    )  # fmt: skip


def build(config: Mapping[str, Any]) -> LATSGenerator:
    """A LATS generator with random weights, in eval mode."""
    return LATSGenerator(config).eval()


def _example_image(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.rand(*shape, generator=gen) * 2 - 1


def inputs(config: Mapping[str, Any]) -> list[InputSpec]:
    """``image`` [B, 3, S, S] in [-1, 1], then ``target_age`` [B, style_dim] cycling through the classes."""
    cfg = LATSConfig.from_mapping(config)

    def make_code(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        if len(shape) != 2 or shape[1] != cfg.style_dim:
            raise ValueError(f"target_age must be [batch, {cfg.style_dim}], got {list(shape)}")
        classes = [i % cfg.num_classes for i in range(shape[0])]
        return age_code(classes, num_classes=cfg.num_classes, dim_per_class=cfg.dim_per_class, generator=gen)

    size = cfg.image_size
    return [
        InputSpec("image", (1, cfg.input_nc, size, size), make=_example_image),
        InputSpec("target_age", (1, cfg.style_dim), make=make_code),
    ]


#: The age classes of LATS's released models (upstream ``--sort_order``), in code order.
AGE_CLASSES = ("0-2", "3-6", "7-9", "15-19", "30-39", "50-69")

TENSORS = {
    "image": TensorInfo(
        "RGB face image, normalised as LATS does: (pixel / 255 - 0.5) / 0.5",
        "NCHW",
        (-1.0, 1.0),
        {"size": "any multiple of 2**n_downsampling (released models: 256x256)"},
    ),
    "target_age": TensorInfo(
        "age code of the target age: row i is 1 on the dim_per_class entries of its class plus N(0, noise_std) noise "
        "over the whole row (LATS get_conditions; no noise with --no_cond_noise); a blend of two codes interpolates "
        "between their ages; modconv_export.families.lats.age_code builds it",
        "NC",
        None,
        {"classes_years": list(AGE_CLASSES), "dim_per_class": 50, "noise_std": 0.2},
    ),
    "output": TensorInfo("RGB image of row i's face at row i's target age (tanh)", "NCHW", (-1.0, 1.0)),
}

FULL = asdict(LATSConfig())
SMALL = asdict(LATSConfig(ngf=8, n_blocks=2, mlp_dim=64, latent_dim=64, image_size=64))

LATS_FAMILY = register_family(
    Family(
        name="lats",
        description="LATS generator (Lifespan Age Transformation Synthesis): image + target age code -> image at that age",
        # The parts the exported graph uses; a file lacking the age encoder is then recognised and
        # strict loading names the missing keys, instead of "no known family".
        key_patterns=(
            r"^id_encoder\.encoder\.1\.conv\.weight_orig$",
            r"^decoder\.StyledConvBlock_0\.conv0\.weight$",
            r"^decoder\.mlp\.model\.\d+\.linear\.weight_orig$",
        ),
        infer_config=infer_config,
        build=build,
        inputs=inputs,
        outputs=("output",),
        presets={"full": FULL, "small": SMALL},
        tensors=TENSORS,
    )
)

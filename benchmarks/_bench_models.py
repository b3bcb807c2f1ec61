"""What bench.py measures: the models (LATS whole or its decoder alone, GFPGAN; seeded random weights), their
inputs, and the ``NAME[:SIZE[:BATCHES]]`` specs the command line names them by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modconv_export.families import gfpgan, lats

__all__ = ["DEFAULT_MODELS", "DEFAULT_SIZES", "DecoderOnly", "Spec", "build", "parse_models"]

DEFAULT_MODELS = ["lats:256:1,4", "gfpgan:512:1"]
DEFAULT_SIZES = {"lats": 256, "decoder": 256, "gfpgan": 512}


@dataclass
class Spec:
    name: str
    size: int
    batches: list[int]


class DecoderOnly(nn.Module):
    """The LATS decoder as a model of its own: identity features + age code -> image."""

    def __init__(self, generator: lats.LATSGenerator) -> None:
        super().__init__()
        self.decoder = generator.decoder

    def forward(self, features: torch.Tensor, target_age: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, target_age)


def build(spec: Spec, quick: bool) -> tuple[nn.Module, Callable[[int, int], tuple]]:
    """The model (reference layers, seeded random weights) and ``inputs(batch, seed)``."""
    torch.manual_seed(0)
    if spec.name == "gfpgan":
        config = gfpgan.GFPGAN_FAMILY.preset("small" if quick else "full")
        config["out_size"] = spec.size
        model = gfpgan.build(config).eval()

        def gfpgan_inputs(batch: int, seed: int) -> tuple:
            gen = torch.Generator().manual_seed(seed)
            return (torch.rand(batch, 3, spec.size, spec.size, generator=gen) * 2 - 1,)

        return model, gfpgan_inputs
    config = dict(lats.SMALL if quick else lats.FULL)
    generator = lats.build(config).eval()
    cfg = lats.LATSConfig.from_mapping(config)
    if spec.name == "decoder":
        feat = spec.size // 2**cfg.n_downsampling

        def decoder_inputs(batch: int, seed: int) -> tuple:
            gen = torch.Generator().manual_seed(seed)
            return torch.randn(batch, cfg.bottleneck_channels, feat, feat, generator=gen), lats.age_code(
                seed % 6, batch=batch, num_classes=cfg.num_classes, seed=seed
            )

        return DecoderOnly(generator).eval(), decoder_inputs

    def lats_inputs(batch: int, seed: int) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, 3, spec.size, spec.size, generator=gen) * 2 - 1, lats.age_code(
            seed % 6, batch=batch, num_classes=cfg.num_classes, seed=seed
        )

    return generator, lats_inputs


def parse_models(items: list[str], size: int | None, batches: list[int]) -> list[Spec]:
    """``["lats:256:1,4", "gfpgan"]`` (or the older ``"decoder,lats"``) -> specs; ``--size``/``--batches`` fill gaps."""
    specs = []
    for item in items:
        names = item.split(",") if ":" not in item else [item]
        for text in names:
            name, _, rest = text.partition(":")
            size_text, _, batch_text = rest.partition(":")
            if name not in DEFAULT_SIZES:
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(DEFAULT_SIZES)}")
            specs.append(
                Spec(
                    name,
                    int(size_text) if size_text else (size or DEFAULT_SIZES[name]),
                    [int(b) for b in batch_text.split(",")] if batch_text else batches,
                )
            )
    return specs

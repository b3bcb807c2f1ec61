"""Small StyleGAN2/GFPGAN models for export tests, and wrappers that fix their calling convention.

Upstream generators take ``forward([styles], noise=None, randomize_noise=True, ...)`` and return
``(image, latents)``; GFPGAN takes ``forward(x, return_rgb=True, randomize_noise=True)`` and returns
``(image, rgbs)``. The wrappers make them one-tensor-in/one-tensor-out with explicit noise.
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: Smallest configurations that still run every path: 32x32 output (two upsampling stages), narrow.
SIZE, STYLE, NARROW, MLP = 32, 16, 1 / 32, 2


def perturb(model: nn.Module, seed: int) -> nn.Module:
    """Upstream initialises biases and noise strengths to constants (often 0), which would hide
    mistakes in those paths; give them random values, keep every other weight as initialised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.numel() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


class FixedNoise(nn.Module):
    """``generator([w], randomize_noise=False)[0]``: the generator's own stored noise buffers."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, styles: torch.Tensor) -> torch.Tensor:
        return self.generator([styles], randomize_noise=False)[0]


class NoiseInputs(nn.Module):
    """``generator([w], noise=[...])[0]``: noise as extra inputs (graph inputs once exported)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, styles: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return self.generator([styles], noise=list(noise))[0]


class MissingNoise(nn.Module):
    """``generator([w])[0]``: upstream draws random noise here; the export form uses zero noise."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, styles: torch.Tensor) -> torch.Tensor:
        return self.generator([styles])[0]


class Restorer(nn.Module):
    """``gfpgan(x, return_rgb=False, randomize_noise=False)[0]``, as GFPGAN's inference with fixed noise."""

    def __init__(self, gfpgan: nn.Module) -> None:
        super().__init__()
        self.gfpgan = gfpgan

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.gfpgan(image, return_rgb=False, randomize_noise=False)[0]


def clean_generator(up: dict, seed: int = 0, size: int = SIZE, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"num_style_feat": STYLE, "num_mlp": MLP, "narrow": NARROW, **kw}
    return perturb(up["stylegan2_clean_arch"].StyleGAN2GeneratorClean(size, **kw), seed)


def basicsr_generator(up: dict, seed: int = 0, size: int = SIZE, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"num_style_feat": STYLE, "num_mlp": MLP, "narrow": NARROW, **kw}
    return perturb(up["stylegan2_arch"].StyleGAN2Generator(size, **kw), seed)


def gfpgan_v1_clean(up: dict, seed: int = 0, size: int = SIZE, **kw) -> nn.Module:
    """The configuration GFPGANer builds for v1.3/v1.4 (``arch='clean'``), narrowed unless told otherwise."""
    torch.manual_seed(seed)
    kw = {
        "num_style_feat": STYLE, "channel_multiplier": 2, "decoder_load_path": None, "fix_decoder": False, "num_mlp": MLP,
        "input_is_latent": True, "different_w": True, "narrow": NARROW, "sft_half": True, **kw,
    }  # fmt: skip
    return perturb(up["gfpganv1_clean_arch"].GFPGANv1Clean(size, **kw), seed)

"""An NVlabs generator (StyleGAN2-ADA, StyleGAN3) with the one calling convention its exported file has.

NVlabs' ``G(z, c, truncation_psi=1, noise_mode='random')`` draws noise unless told otherwise and takes ψ as a
Python number it branches on. :class:`NVlabsGenerator` calls the user's own network the way NVlabs' generate
scripts do for a deterministic image -- ``noise_mode='const'``, ``force_fp32=True`` (the float32 network; half
precision is the toolkit's policy, applied to the exported graph) -- with inputs in the order
:mod:`modconv_export.families.nvlabs` declares: ``z`` [, ``c``] or ``ws``, then ``truncation_psi`` when ψ is an
input. A ψ baked in is the network's own truncation (``mapping(..., truncation_psi=ψ)``); ψ as an input moves
every w towards ``mapping.w_avg`` per sample, ``w_avg + ψ (w - w_avg)``, as NVlabs' mapping does for one ψ.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["NVlabsGenerator"]


class NVlabsGenerator(nn.Module):
    """``forward(z[, c][, truncation_psi])`` or ``forward(ws[, truncation_psi])`` -> image [B, C, H, W] in [-1, 1]."""

    def __init__(
        self, generator: nn.Module, *, latent: str = "z", conditional: bool = False, truncation: float | str | None = None
    ) -> None:
        super().__init__()
        self.generator = generator
        self.latent = latent
        self.conditional = conditional and latent == "z"
        self.psi_input = truncation == "input"
        self.psi = float(truncation) if isinstance(truncation, (int, float)) and float(truncation) != 1.0 else None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        rest = list(inputs)
        generator: Any = self.generator  # the user's network: mapping, synthesis, mapping.w_avg
        if self.latent == "z":
            z = rest.pop(0)
            c = rest.pop(0) if self.conditional else None
            ws = generator.mapping(z, c, truncation_psi=1 if self.psi is None else self.psi)
        else:
            ws = rest.pop(0)
            if self.psi is not None:
                ws = generator.mapping.w_avg.lerp(ws, self.psi)
        if self.psi_input:
            w_avg = generator.mapping.w_avg
            ws = w_avg + (ws - w_avg) * rest.pop(0).reshape(-1, 1, 1)
        return generator.synthesis(ws, noise_mode="const", force_fp32=True)

    def extra_repr(self) -> str:
        psi = "input" if self.psi_input else self.psi or 1
        return f"latent={self.latent}, conditional={self.conditional}, truncation_psi={psi}, noise_mode=const"

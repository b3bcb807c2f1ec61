"""rosinality's StyleGAN2 ``Generator`` as a one-tensor model: ``z -> g([z], randomize_noise=False)[0]``.

Benchmark code only (``export_cost.py``): it imports the upstream checkout's ``model`` module, which must
be importable (``MODCONV_UPSTREAM_ROSINALITY`` on ``sys.path``, its CUDA op builds stubbed out as
``tests/fixtures/upstream_codebases/stylegan2_wrappers.py`` does). A top-level class, so that a
``torch.save`` of it loads with ``--trust-pickle --import-path benchmarks --import-path <checkout>``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RosinalityLayout(nn.Module):
    """The generator with its own fixed noise buffers (``randomize_noise=False``)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2) -> None:
        super().__init__()
        import model as upstream  # the checkout's model.py

        self.style_dim = style_dim
        self.generator = upstream.Generator(size, style_dim, n_mlp, channel_multiplier=channel_multiplier)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator([z], randomize_noise=False)[0]

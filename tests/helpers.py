"""What the tests share besides fixtures: small seed-layer models, their inputs, random weights.

``relative_l2`` is the package's own (one definition of the metric for code and tests alike).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from modconv_export._util import relative_l2
from modconv_export.layers.seed import Blur, EqualLinear, ModulatedConv2d, PixelNorm

__all__ = ["TINY_DECODER_BLURS", "TinyDecoder", "patch_file_writes", "randomize", "relative_l2", "tiny_inputs"]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seed layers start with zero biases; give every parameter random values so biases matter too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if name.endswith("bias") else 1.0
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


class TinyDecoder(nn.Module):
    """A small styled decoder from the seed layers: mapping MLP, up/down-sampling modulated convs, blur."""

    def __init__(self, latent_dim: int = 16, channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.mapping = nn.Sequential(PixelNorm(), EqualLinear(latent_dim, latent_dim), nn.LeakyReLU(0.2))
        self.conv_in = ModulatedConv2d(3, c, 3, latent_dim=latent_dim, normalize_mlp=True)
        self.conv_up = ModulatedConv2d(c, c, 3, upsample=True, latent_dim=latent_dim, normalize_mlp=True)
        self.conv_down = ModulatedConv2d(c, c, 3, padding_type="zero", downsample=True, latent_dim=latent_dim)
        self.blur = Blur(c)
        self.to_rgb = ModulatedConv2d(c, 3, 1, latent_dim=latent_dim)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        w = self.mapping(latent)
        x = torch.nn.functional.leaky_relu(self.conv_in(image, w), 0.2)
        x = torch.nn.functional.leaky_relu(self.conv_up(x, w), 0.2)
        x = self.blur(self.conv_down(x, w))
        return torch.tanh(self.to_rgb(x, w))


#: (module path, channels) of every blur a TinyDecoder uses at run time.
TESTS = Path(__file__).resolve().parent  # the tests mirror the package's stage folders below this one
FIXTURES = TESTS / "fixtures"  # the one fixtures root
ROOT = TESTS.parent  # the repository: samples/, benchmarks/, modconv_export/

TINY_DECODER_BLURS = {"conv_up.blur": 8, "conv_down.blur": 8, "blur": 8}


def tiny_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 10, 10, generator=gen), torch.randn(batch, 16, generator=gen)


def patch_file_writes(monkeypatch, replacement) -> None:
    """Route every ``write_bytes`` the package's modules imported from ``_util.files`` through ``replacement``
    (found by identity, so a module that moves keeps being covered)."""
    import sys

    import modconv_export.cli  # noqa: F401  (the writers a run uses, loaded before they are looked for)
    import modconv_export.handoff  # noqa: F401
    import modconv_export.verify.picture  # noqa: F401
    from modconv_export._util import files

    real = files.write_bytes
    for name, module in list(sys.modules.items()):
        if name.startswith("modconv_export") and getattr(module, "write_bytes", None) is real:
            monkeypatch.setattr(module, "write_bytes", replacement)


def run_exported(fmt: str, path: Path, args: tuple[torch.Tensor, ...]):
    """The first output (numpy) of an exported file: ``fmt == "jit"`` a TorchScript file loaded with plain
    ``torch.jit.load``, otherwise an ONNX file on ONNX Runtime's CPU provider (asserted, not assumed)."""
    if fmt == "jit":
        with torch.no_grad():
            return torch.jit.load(str(path))(*args).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers()[0] == "CPUExecutionProvider"
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]

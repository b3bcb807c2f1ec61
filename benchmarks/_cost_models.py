"""The models ``export_cost.py`` measures, one pluggable entry each in :data:`MODELS`.

``rosinality`` is rosinality's StyleGAN2 ``Generator`` as a one-tensor model, ``z -> g([z],
randomize_noise=False)[0]``, from the upstream checkout ``MODCONV_UPSTREAM_ROSINALITY`` names (its CUDA op
builds stubbed out as ``tests/fixtures/upstream_codebases/stylegan2_wrappers.py`` does) -- until the
toolkit's own rosinality family replaces the entry. :class:`RosinalityLayout` is top-level, so that a
``torch.save`` of it loads with ``--trust-pickle --import-path benchmarks --import-path <checkout>``.
``lats`` and ``gfpgan`` are the toolkit's families at a chosen image size.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_ENV = "MODCONV_UPSTREAM_ROSINALITY"


class RosinalityLayout(nn.Module):
    """The generator with its own fixed noise buffers (``randomize_noise=False``)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2) -> None:
        super().__init__()
        import model as upstream  # the checkout's model.py

        self.style_dim = style_dim
        self.generator = upstream.Generator(size, style_dim, n_mlp, channel_multiplier=channel_multiplier)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator([z], randomize_noise=False)[0]


def _rosinality(size: int, quick: bool):
    """rosinality's Generator from the upstream checkout (its CUDA op builds stubbed out on the CPU)."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "upstream_codebases"))
    from stylegan2_wrappers import rosinality

    rosinality()  # the checkout on sys.path, its CUDA op builds stubbed
    torch.manual_seed(0)
    model = RosinalityLayout(size, 64 if quick else 512, 2 if quick else 8, 1 if quick else 2).eval()
    return model, (torch.randn(1, model.style_dim),), None


def _family(name: str, size_key: str):
    def build(size: int, quick: bool):
        from modconv_export.families import get_family

        family = get_family(name)
        config = dict(family.preset("small" if quick else "full"), **{size_key: size})
        torch.manual_seed(0)
        model = family.build(config).eval()
        return model, tuple(s.example(s.shape, seed=i) for i, s in enumerate(family.inputs(config))), config

    return build


#: name -> (builder(size, quick) -> (model, example args, family config or None), why it cannot run here or None).
#: The rosinality entry reads upstream's code until the toolkit's own rosinality family replaces it.
MODELS = {
    "rosinality": (_rosinality, lambda: None if os.environ.get(UPSTREAM_ENV) else f"set {UPSTREAM_ENV} to the rosinality checkout"),
    "lats": (_family("lats", "image_size"), lambda: None),
    "gfpgan": (_family("gfpgan", "out_size"), lambda: None),
}

#: What a command-line child needs to import upstream code: the fixture's stubs, as a sitecustomize.
SITE = (
    f"import sys\nsys.path.insert(0, {str(ROOT / 'tests' / 'fixtures' / 'upstream_codebases')!r})\n"
    "import stylegan2_wrappers\nstylegan2_wrappers.install_stubs()\n"
)


def model_file(name: str, size: int, quick: bool, path: Path) -> list[str]:
    """Write the model as a file the command line loads; the extra arguments it needs."""
    model, args, config = MODELS[name][0](size, quick)
    if config is None:  # no family: a pickled module, with its code on the import path
        torch.save(model, path)
        return ["--trust-pickle", "--import-path", str(ROOT / "benchmarks"), "--import-path", os.environ[UPSTREAM_ENV],
                "--input", f"z=1x{args[0].shape[1]}"]  # fmt: skip
    from modconv_export.load.checkpoint import save_checkpoint

    save_checkpoint(path, name, config, model.state_dict())
    return []

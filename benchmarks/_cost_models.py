"""The models ``export_cost.py`` measures, one pluggable entry each in :data:`MODELS`.

Each is a toolkit family at a chosen image size, its weights seeded random (cost does not depend on
them): ``rosinality`` -- the rosinality family's ``Generator(size, 512, 8, channel_multiplier=2)``
(upstream's own arithmetic: a convolution grouped by the batch with a per-sample weight, ``upfirdn2d``,
``z -> image`` with its fixed noise buffers, as ``randomize_noise=False``); ``lats`` -- the full LATS
generator on a size x size image; ``gfpgan`` -- GFPGAN v1.4 clean at output size ``size``. ``--quick``
takes each family's small preset at 32 px. A file of each is a toolkit checkpoint, which the command
line opens with no options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _config(name: str, size: int, quick: bool) -> dict[str, Any]:
    from modconv_export.families import get_family

    family = get_family(name)
    if name == "rosinality":  # channels follow the size: the family's default config at that size
        from modconv_export.families.rosinality import RosinalityConfig

        return family.preset("small") if quick else RosinalityConfig.from_mapping({"size": size}).as_dict()
    size_key = {"lats": "image_size", "gfpgan": "out_size"}[name]
    return dict(family.preset("small" if quick else "full"), **{size_key: size})


def _family(name: str):
    def build(size: int, quick: bool):
        from modconv_export.families import get_family

        family = get_family(name)
        config = _config(name, size, quick)
        torch.manual_seed(0)
        model = family.build(config).eval()
        return model, tuple(s.example(s.shape, seed=i) for i, s in enumerate(family.inputs(config))), config

    return build


#: name -> (builder(size, quick) -> (model, example args, family config), why it cannot run here or None).
MODELS = {name: (_family(name), lambda: None) for name in ("rosinality", "lats", "gfpgan")}


def model_file(name: str, size: int, quick: bool, path: Path) -> list[str]:
    """Write the model as a toolkit checkpoint; the extra arguments the command line needs (none)."""
    from modconv_export.load.checkpoint import save_checkpoint

    model, _, config = MODELS[name][0](size, quick)
    save_checkpoint(path, name, config, model.state_dict())
    return []

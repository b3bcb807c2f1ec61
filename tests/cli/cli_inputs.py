"""Model files the robustness tests share: a decoder checkpoint (and its legacy-format state_dict),
pickled tricky models and an older ONNX file to find untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from modconv_export import export_onnx, save_checkpoint
from modconv_export.families import get_family

from helpers import FIXTURES

FOREIGN_LAYERS = FIXTURES / "foreign_layers"
CONFIG = {"latent_dim": 16, "n_mlp": 2, "channels": [8, 8], "output_nc": 3}


def write_cli_inputs(d: Path) -> Path:
    """``dec.pt``, ``legacy_sd.pt``, ``batch.pt`` (fails parity), ``module.pt`` (batch 2 only) and ``old.onnx`` in ``d``."""
    torch.manual_seed(0)
    model = get_family("decoder").build(CONFIG)
    save_checkpoint(d / "dec.pt", "decoder", CONFIG, model.state_dict())
    torch.save(model.state_dict(), d / "legacy_sd.pt", _use_new_zipfile_serialization=False)
    sys.path.insert(0, str(FOREIGN_LAYERS))
    try:
        import tricky_models
    finally:
        sys.path.remove(str(FOREIGN_LAYERS))
    torch.save(tricky_models.head("batch"), d / "batch.pt")
    torch.save(tricky_models.head("fixed"), d / "module.pt")
    export_onnx(nn.Linear(4, 4).eval(), torch.randn(1, 4), d / "old.onnx", exporter="torchscript")
    return d

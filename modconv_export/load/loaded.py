"""What the load stage hands on: the module, what kind of file it came from, its family and example inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from ..families import Family, InputSpec

__all__ = ["LoadedModel", "count_parameters"]


@dataclass
class LoadedModel:
    """What :func:`~modconv_export.load.load_model` returns; ``module`` is in eval mode with the original layers."""

    module: nn.Module
    kind: str  # "checkpoint" | "state_dict" | "pickle" | "nvlabs" | "arch"
    family: Family | None
    config: dict = field(default_factory=dict)
    #: Example inputs in forward order when known (from the family), else ``None``.
    inputs: list[InputSpec] | None = None
    path: Path | None = None
    #: What the user should know about how the model was loaded (e.g. which files its classes came from).
    notes: list[str] = field(default_factory=list)
    #: Where in the file the model was, e.g. ``"at 'state_dict' under 'decoder.'"``; empty for the file itself.
    where: str = ""

    def describe(self) -> str:
        what = {"checkpoint": "modconv-export checkpoint", "state_dict": "state_dict", "pickle": "pickled module",
                "nvlabs": "NVlabs network pickle", "arch": "state_dict in --arch"}[self.kind]  # fmt: skip
        cls = f"{self.config['network']}: {self.config['class']}" if self.kind == "nvlabs" else type(self.module).__name__
        fam = f", family {self.family.name!r}" if self.family else ""
        return f"{what}{' ' + self.where if self.where else ''} ({cls}{fam}, {count_parameters(self.module):,} parameters)"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""What to export from a generator file: which network, which latent space, which truncation.

A StyleGAN-family file holds a generator that is more than one graph: a mapping network ``z -> w``, a
synthesis network ``ws -> image``, the average latent ``w_avg`` truncation pulls towards, and often several
networks (a training checkpoint's ``g_ema`` and ``g``, an NVlabs pickle's ``G_ema``, ``G`` and ``D``). The
command line's ``--network``, ``--latent`` and ``--truncation`` say which graph the user wants; every loader
that reads such files honours them with the same input names, so exported files of every codebase look alike:

* ``z`` [B, z_dim] (``latent="z"``): mapping + synthesis; ``c`` [B, c_dim] follows for class-conditional models;
* ``ws`` [B, num_ws, w_dim] (``latent="w"``): the synthesis network alone on W+ (what inversion and editing
  pipelines such as pSp and e4e produce);
* ``truncation_psi`` [B] (``truncation="input"``): ψ per sample as a graph input, after the latents;
* the output ``image`` [B, C, H, W] in the codebase's own range ([-1, 1] for rosinality and NVlabs).

A file that is not a generator refuses any non-default option in one line (:meth:`GeneratorOptions.refusal`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["GeneratorOptions", "LATENTS", "MODULE_NAME", "TRUNCATION_INPUT", "parse_arch", "parse_arch_kwargs", "parse_truncation"]

#: ``--latent`` values: ``z`` (mapping + synthesis) or ``w`` (synthesis alone on W+).
LATENTS = ("z", "w")
#: ``--truncation input``: ψ becomes the graph input ``truncation_psi``.
TRUNCATION_INPUT = "input"


@dataclass(frozen=True)
class GeneratorOptions:
    """``--network`` / ``--latent`` / ``--truncation`` as data (see the module docstring)."""

    #: Which network of a file that holds several; ``None``: the file's default (``g_ema``, ``G_ema``).
    network: str | None = None
    #: ``"z"`` or ``"w"`` (:data:`LATENTS`).
    latent: str = "z"
    #: ``None`` (ψ = 1), a ψ baked in towards the file's average latent, or :data:`TRUNCATION_INPUT`.
    truncation: float | str | None = None

    def __post_init__(self) -> None:
        if self.latent not in LATENTS:
            raise ValueError(f"latent must be one of {', '.join(LATENTS)}, got {self.latent!r}")
        if isinstance(self.truncation, str) and self.truncation != TRUNCATION_INPUT:
            raise ValueError(f"truncation must be a number or {TRUNCATION_INPUT!r}, got {self.truncation!r}")
        if isinstance(self.truncation, float) and not math.isfinite(self.truncation):
            raise ValueError(f"truncation psi must be finite, got {self.truncation!r}")

    @property
    def is_default(self) -> bool:
        return self == GeneratorOptions()

    def flags(self) -> str:
        """The options as the user typed them, e.g. ``--network g --truncation 0.7``."""
        parts = [f"--network {self.network}" if self.network is not None else "", f"--latent {self.latent}" if self.latent != "z" else ""]
        parts.append(f"--truncation {self.truncation}" if self.truncation is not None else "")
        return " ".join(p for p in parts if p)

    def refusal(self, what: str) -> str | None:
        """Why these options cannot apply to ``what`` (a file that is not a generator); ``None`` when default."""
        if self.is_default:
            return None
        return f"{self.flags()} apply to generator files (rosinality checkpoints, NVlabs pickles); this file is a {what}"


def parse_truncation(text: str) -> float | str:
    """``--truncation`` text: a finite ψ, or ``input``; :class:`ValueError` otherwise."""
    if text.strip().lower() == TRUNCATION_INPUT:
        return TRUNCATION_INPUT
    value = float(text)  # ValueError for anything else
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


# -- --arch / --arch-kwargs: checked without torch, before anything slow ------------------------------------

#: A dotted module name, as ``--arch MODULE:CLASS`` takes it.
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def parse_arch(text: str) -> tuple[str, str]:
    """``"path/to/model.py:Generator"`` or ``"package.module:Generator"`` -> ``(source, class name)``."""
    source, _, name = text.rpartition(":")
    if not source or not MODULE_NAME.fullmatch(name):
        raise UsageError(f"--arch takes FILE.py:CLASS or MODULE:CLASS (e.g. model.py:Generator), got {text!r}")
    return source, name


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """``--arch-kwargs``: a JSON object of the class's keyword arguments."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--arch-kwargs is not JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"--arch-kwargs must be a JSON object of keyword arguments, e.g. '{{\"size\": 256}}', got a {type(value).__name__}"
        )
    return value

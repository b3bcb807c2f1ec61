"""Small helpers for reading a configuration off a state_dict's key names and tensor shapes.

Families infer their configuration from the checkpoint instead of assuming defaults, so a model
trained with other widths loads as it is. Every helper raises ``ValueError`` with the key it needed,
which the loader shows to the user as the reason a checkpoint was not understood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

__all__ = ["indices", "known_fields", "shape_of"]


def shape_of(state_dict: Mapping[str, Any], key: str, dims: int | None = None) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``; ``ValueError`` if it is missing or has the wrong rank."""
    if key not in state_dict:
        raise ValueError(f"expected key {key!r} is missing")
    shape = tuple(int(n) for n in getattr(state_dict[key], "shape", ()))
    if dims is not None and len(shape) != dims:
        raise ValueError(f"{key!r} has shape {shape}, expected a {dims}-D tensor")
    return shape


def indices(state_dict: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers captured by the first group of ``pattern`` (full match) over the keys."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for key in state_dict if (m := regex.fullmatch(key))}
    return sorted(found)


def known_fields(config_cls: type, config: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The entries of ``config`` that are fields of the dataclass ``config_cls``; unknown keys are an error."""
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {label} config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return {k: config[k] for k in known if k in config}

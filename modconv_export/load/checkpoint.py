"""The toolkit's checkpoint format: a plain dict that loads with ``torch.load(weights_only=True)``.

``{"format": "modconv-export", "version": 1, "family": str, "config": dict, "state_dict": dict}``.
Only tensors and plain Python containers/scalars are stored, so loading never runs pickled code.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._util import short_repr
from .._util.files import atomic_output, write_bytes
from ..errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "is_toolkit_checkpoint",
]

CHECKPOINT_FORMAT = "modconv-export"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    family: str
    config: dict
    state_dict: dict[str, torch.Tensor] = field(repr=False)


def is_toolkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise CheckpointError(f"{where}: {type(value).__name__} values cannot be stored in a checkpoint config")


def save_checkpoint(path: str | os.PathLike, family: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write a toolkit checkpoint atomically and return its path."""
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        tensors[str(key)] = value.detach().cpu().contiguous()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "family": str(family),
        "config": _plain(dict(config), "config"),
        "state_dict": tensors,
    }
    buffer = io.BytesIO()  # torch.save's own file writer aborts the process on a full disk
    torch.save(payload, buffer)
    with atomic_output(path) as tmp:
        write_bytes(tmp, buffer.getvalue())
    return Path(path)


def checkpoint_from_dict(obj: Mapping[str, Any], source: str = "checkpoint") -> Checkpoint:
    """Validate an already loaded toolkit-checkpoint dict."""
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{source}: unsupported modconv-export checkpoint version {short_repr(version, 40)} (this toolkit reads {CHECKPOINT_VERSION})"
        )
    family, config, state = obj.get("family"), obj.get("config"), obj.get("state_dict")
    if not isinstance(family, str) or not isinstance(config, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: a modconv-export checkpoint needs 'family' (str), 'config' (dict) and 'state_dict' (dict)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {', '.join(short_repr(k, 60) for k in bad[:3])}")
    return Checkpoint(family, dict(config), dict(state))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a toolkit checkpoint with ``weights_only=True`` (no code runs while loading)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not is_toolkit_checkpoint(obj):
        raise CheckpointError(f"{path}: not a modconv-export checkpoint (no format marker)")
    return checkpoint_from_dict(obj, str(path))

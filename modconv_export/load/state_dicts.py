"""Data files: a toolkit checkpoint, or a bare ``state_dict`` recognised as a registered family and loaded strictly.

A state_dict nested under an obvious key (``"state_dict"``, ``"params_ema"``, ...) is found there; a
mismatch with the family's model is one line naming the first missing, unexpected or wrongly shaped keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._util import first_line, short_repr
from ..errors import LoadError, ModconvExportError
from ..families import Family, get_family, recognize
from .checkpoint import checkpoint_from_dict, is_toolkit_checkpoint
from .loaded import LoadedModel

__all__ = ["NESTED_STATE_KEYS", "build", "check_real", "from_data", "is_state_dict", "listing", "strict_mismatch", "unwrap_state_dict"]

#: Keys under which training scripts commonly nest the weights (first match wins).
NESTED_STATE_KEYS = ("state_dict", "params_ema", "g_ema", "params", "model", "generator", "netG", "G_ema")


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: Any) -> dict | None:
    state = obj if is_state_dict(obj) else None
    if state is None and isinstance(obj, Mapping):
        state = next((obj[k] for k in NESTED_STATE_KEYS if is_state_dict(obj.get(k))), None)
    if state is None:
        return None
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(short_repr(k, 60) for k in itertools.islice(obj, 5))
        return f"dict with keys {keys}{' ...' if len(obj) > 5 else ''}" if obj else "empty dict"
    return type(obj).__name__


def from_data(obj: Any, path: Path) -> LoadedModel:
    if is_toolkit_checkpoint(obj):
        ckpt = checkpoint_from_dict(obj, str(path))
        try:
            family = get_family(ckpt.family)
        except ModconvExportError as exc:
            raise LoadError(f"{path}: {exc}") from exc
        module, config = build(family, ckpt.state_dict, ckpt.config, path)
        return LoadedModel(module, "checkpoint", family, config, family.inputs(config))
    state = unwrap_state_dict(obj)
    if state is None:
        raise LoadError(f"{path}: holds a {describe(obj)}, not a model, a state_dict or a modconv-export checkpoint")
    try:
        family = recognize(state)
    except ModconvExportError as exc:
        raise LoadError(f"{path}: {exc}") from exc
    module, config = build(family, state, None, path)
    return LoadedModel(module, "state_dict", family, config, family.inputs(config))


def build(family: Family, state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, path: Path) -> tuple[nn.Module, dict]:
    check_real(list(state.items()), path)
    converted = family.convert_state_dict(state) if family.convert_state_dict else state
    try:
        config = dict(config) if config is not None else family.infer_config(converted)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise LoadError(f"{path}: looks like family {family.name!r} but its config cannot be inferred: {first_line(exc)}") from exc
    try:
        module = family.load(state, config)
    except RuntimeError as exc:
        raise LoadError(f"{path}: does not fit family {family.name!r} ({strict_mismatch(family, config, converted, exc)})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(
            f"{path}: family {family.name!r} cannot be built with config {short_repr(config, 160)}: {first_line(exc, 200)}"
        ) from exc
    return module, config


def listing(keys: Sequence[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def strict_mismatch(family: Family, config: Mapping[str, Any], given: Mapping[str, torch.Tensor], exc: Exception) -> str:
    """torch's multi-line strict-load message as one line: the first few missing/unexpected/mismatched keys."""
    try:
        expected = family.build(config).state_dict()
    except Exception:
        return " ".join(str(exc).split())[:300]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} (file {list(given[k].shape)}, model {list(v.shape)})" for k, v in expected.items() if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{label}: {listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    return "; ".join(parts) or " ".join(str(exc).split())[:300]


def check_real(tensors: Sequence[tuple[str, torch.Tensor]], path: Path) -> None:
    """Complex weights would lose their imaginary part when copied into a real model: refuse them."""
    bad = [f"{name} ({str(t.dtype).replace('torch.', '')})" for name, t in tensors if isinstance(t, torch.Tensor) and t.is_complex()]
    if bad:
        raise LoadError(f"{path}: holds complex (non-real) tensors, which no exported graph can take: {listing(bad)}")

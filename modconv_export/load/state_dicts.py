"""Data files: a toolkit checkpoint, or a ``state_dict`` recognised as a registered family and loaded strictly.

:mod:`.selection` finds the state_dict (nested under an obvious key, named by ``--network`` /
``--state-dict-key``, or under a key prefix such as pSp's ``decoder.``). Its shapes are compared with the
family's model, built on the meta device, before anything is allocated: a mismatch is one line naming the
first missing, unexpected or wrongly shaped keys. Generator families fold ``--latent`` / ``--truncation``
into their config and take file-level tensors (``latent_avg``) beside the weights; other families refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._util import first_line, short_repr
from .._util.memory import is_allocation_failure
from ..errors import LoadError, ModconvExportError
from ..families import Family, get_family
from .checkpoint import checkpoint_from_dict, is_toolkit_checkpoint
from .loaded import LoadedModel
from .options import GeneratorOptions
from .selection import NESTED_STATE_KEYS, is_state_dict, select_state_dict, with_family

__all__ = [
    "NESTED_STATE_KEYS",
    "check_real",
    "fit",
    "from_data",
    "is_state_dict",
    "key_mismatch",
    "listing",
    "load_family",
    "shape_mismatch",
]


#: Why ``--latent`` / ``--truncation`` do not apply to a family that is not a generator (the words of :mod:`.options`).
_GENERATORS_ONLY = "apply to generator files (rosinality checkpoints, NVlabs pickles)"


def from_data(obj: Any, path: Path, options: GeneratorOptions | None = None, state_dict_key: str | None = None) -> LoadedModel:
    """The model a loaded (weights-only) object holds: a toolkit checkpoint, or a family's state_dict in it."""
    options = options or GeneratorOptions()
    if is_toolkit_checkpoint(obj):
        return _from_checkpoint(obj, path, options, state_dict_key)
    selection = with_family(select_state_dict(obj, path, network=options.network, key=state_dict_key), path)
    family = selection.family
    assert family is not None  # with_family returns a recognised model
    try:
        return load_family(family, selection.state, None, path, options, selection.extras(family.extras), where=selection.where)
    except LoadError as exc:
        if not selection.prefix or "does not fit" not in str(exc):
            raise
        # found by its keys inside a larger model: maybe another codebase's variant (GPEN's generator)
        raise LoadError(f"{exc}; its keys {selection.where} looked like that family's: if it is another codebase's model, "
                        "give its code (--arch FILE.py:CLASS)") from exc  # fmt: skip


def _from_checkpoint(obj: Mapping, path: Path, options: GeneratorOptions, state_dict_key: str | None) -> LoadedModel:
    ckpt = checkpoint_from_dict(obj, str(path))
    try:
        family = get_family(ckpt.family)
    except ModconvExportError as exc:
        raise LoadError(f"{path}: {exc}") from exc
    if family.generator is None and not options.is_default:
        raise LoadError(f"{path}: {options.flags()} {_GENERATORS_ONLY}; this file is a modconv-export checkpoint of family {family.name!r}")
    if options.network is not None or state_dict_key is not None:
        raise LoadError(f"{path}: is a modconv-export checkpoint, which holds one model: --network / --state-dict-key do not apply")
    state, extras = dict(ckpt.state_dict), {}
    if not options.is_default and family.generator is not None:  # the stored latent_avg serves a new truncation
        extras = {k: state.pop(k) for k in family.extras if k in state}
    return load_family(family, state, ckpt.config, path, options, extras, kind="checkpoint")


def load_family(
    family: Family,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None,
    path: Path,
    options: GeneratorOptions,
    extras: Mapping[str, Any],
    *,
    kind: str = "state_dict",
    where: str = "",
) -> LoadedModel:
    """Infer the config (unless given), apply the generator options, check the shapes, build and load strictly."""
    check_real(list(state.items()), path)
    converted = family.convert_state_dict(state) if family.convert_state_dict else state
    try:
        config = dict(config) if config is not None else family.infer_config(converted)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise LoadError(f"{path}: looks like family {family.name!r} but its config cannot be inferred: {first_line(exc)}") from exc
    if kind != "checkpoint" or not options.is_default:
        config, tensors = _generator_config(family, config, options, extras, path)
        state = {**state, **tensors}
    module = fit(family, state, config, path)
    return LoadedModel(module, kind, family, config, family.inputs(config), where=where)


def _generator_config(
    family: Family, config: dict, options: GeneratorOptions, extras: Mapping[str, Any], path: Path
) -> tuple[dict, dict[str, torch.Tensor]]:
    flags = GeneratorOptions(latent=options.latent, truncation=options.truncation).flags()
    if family.generator is None:
        if flags:
            raise LoadError(f"{path}: {flags} {_GENERATORS_ONLY}; this file is a state_dict of family {family.name!r}")
        return config, {}
    try:
        return family.generator(config, options.latent, options.truncation, extras)
    except (ValueError, TypeError) as exc:
        raise LoadError(f"{path}: {flags or 'family ' + repr(family.name)}: {first_line(exc, 200)}") from exc


def fit(family: Family, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], path: Path) -> nn.Module:
    """``family``'s model for ``config`` with ``state`` loaded strictly, its shapes checked before allocating."""
    converted = family.convert_state_dict(state) if family.convert_state_dict else state
    try:
        mismatch = shape_mismatch(family, config, converted)
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(
            f"{path}: family {family.name!r} cannot be built with config {short_repr(config, 160)}: {first_line(exc, 200)}"
        ) from exc
    if mismatch:
        raise LoadError(f"{path}: does not fit family {family.name!r} ({mismatch})")
    try:
        return family.load(state, config)
    except RuntimeError as exc:
        if is_allocation_failure(exc):
            raise
        raise LoadError(f"{path}: does not fit family {family.name!r} ({' '.join(str(exc).split())[:300]})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(
            f"{path}: family {family.name!r} cannot be built with config {short_repr(config, 160)}: {first_line(exc, 200)}"
        ) from exc


def listing(keys: Sequence[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def shape_mismatch(family: Family, config: Mapping[str, Any], given: Mapping[str, torch.Tensor]) -> str | None:
    """The first few missing / unexpected / wrongly shaped keys against ``family``'s model for ``config``, built
    on the meta device (no memory); ``None`` when they fit. ``ValueError`` for a config the family cannot build."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in family.build(config).state_dict().items()}
    return key_mismatch(expected, given)


def key_mismatch(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, torch.Tensor]) -> str | None:
    """One line for a strict load that would fail (``expected``: the model's key -> shape), or ``None``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} (file {list(given[k].shape)}, model {list(shape)})"
        for k, shape in expected.items()
        if k in given and tuple(given[k].shape) != shape
    ]
    parts = [
        f"{label}: {listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    return "; ".join(parts) or None


def check_real(tensors: Sequence[tuple[str, torch.Tensor]], path: Path) -> None:
    """Complex weights would lose their imaginary part when copied into a real model: refuse them."""
    bad = [f"{name} ({str(t.dtype).replace('torch.', '')})" for name, t in tensors if isinstance(t, torch.Tensor) and t.is_complex()]
    if bad:
        raise LoadError(f"{path}: holds complex (non-real) tensors, which no exported graph can take: {listing(bad)}")

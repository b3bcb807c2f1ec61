"""Which state_dict of a data file to load: the file's default, ``--network``, ``--state-dict-key``, or the one
model of a known family found under a key prefix.

Training scripts nest their weights (``{'g_ema': ..., 'g': ..., 'args': ...}``), hubs wrap them
(``{'state_dict': ...}``), and composite models hold a generator among other parts: pSp and e4e keep
rosinality's ``Generator`` under ``decoder.`` beside the ``encoder.``. Without options the file's own default
is taken (the first of :data:`NESTED_STATE_KEYS`, so ``g_ema`` before ``g``); if it matches no family as a
whole, each registered family is looked for under every key prefix. One model found is loaded; two (a
prefix with two generators, two networks, two families) are refused with the names to choose from --
a guess could export the wrong network.

``--state-dict-key a.b.c`` walks the file's dicts key by key; once it reaches a state_dict, the rest is a key
prefix (``state_dict.decoder`` is pSp's decoder). ``--network NAME`` names one entry of the file, or a prefix of
its state_dict.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._util import short_repr
from ..errors import AmbiguousFamilyError, LoadError, UnknownFamilyError
from ..families import Family, prefixes_of, recognize, registered_families

__all__ = ["NESTED_STATE_KEYS", "Selection", "describe", "is_state_dict", "select_state_dict", "with_family"]

#: Keys under which training scripts commonly nest the weights (first match wins).
NESTED_STATE_KEYS = ("state_dict", "params_ema", "g_ema", "params", "model", "generator", "netG", "G_ema")


@dataclass
class Selection:
    """A state_dict picked out of a file, and the way there (dict keys, then a key prefix)."""

    state: dict[str, torch.Tensor]
    route: list[str] = field(default_factory=list)
    prefix: str = ""
    #: The dicts passed on the way, outermost first (where file-level extras such as ``latent_avg`` sit).
    containers: list[Mapping] = field(default_factory=list)
    family: Family | None = None

    @property
    def where(self) -> str:
        """``"at 'state_dict' under 'decoder.'"``, ``""`` for the file itself."""
        parts = [f"at {'.'.join(self.route)!r}" if self.route else "", f"under {self.prefix!r}" if self.prefix else ""]
        return " ".join(p for p in parts if p)

    def key_option(self) -> str:
        """The ``--state-dict-key`` value that selects this state_dict."""
        return ".".join([*self.route, *[p for p in self.prefix.split(".") if p]])

    def extras(self, names: Sequence[str]) -> dict[str, Any]:
        """The entries ``names`` of the innermost dict on the way that holds them (``latent_avg`` beside ``g_ema``)."""
        found: dict[str, Any] = {}
        for container in reversed(self.containers):
            for name in names:
                if name in container and name not in found:
                    found[name] = container[name]
        return found


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def describe(obj: Any) -> str:
    """What ``obj`` is, with its article: ``"a dict with keys 'g', 'd'"``, ``"an int"``."""
    if isinstance(obj, Mapping):
        keys = ", ".join(short_repr(k, 60) for k in itertools.islice(obj, 5))
        return f"a dict with keys {keys}{' ...' if len(obj) > 5 else ''}" if obj else "an empty dict"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _unwrap(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        return _under(state, "module."), "module."
    return dict(state), ""


def _walk(obj: Any, dotted: str, option: str, path: Path) -> Selection:
    """Follow ``dotted`` through the file's dicts; inside a state_dict the rest is a key prefix."""
    parts, current = dotted.split("."), obj
    route: list[str] = []
    containers: list[Mapping] = []
    i = 0
    while i < len(parts):
        if is_state_dict(current):
            prefix = ".".join(parts[i:]) + "."
            state = _under(current, prefix)
            if not state:
                raise LoadError(f"{path}: {option} {dotted}: no keys start with {prefix!r} in the state_dict{_at(route)}")
            return Selection(state, route, prefix, containers)
        if not isinstance(current, Mapping):
            raise LoadError(f"{path}: {option} {dotted}: {'.'.join(route)!r} holds {describe(current)}, not a dict")
        containers.append(current)
        names = [".".join(parts[i:j]) for j in range(len(parts), i, -1)]  # the longest key first: keys may hold dots
        name = next((n for n in names if n in current), None)
        if name is None:
            raise LoadError(f"{path}: {option} {dotted}: no entry {parts[i]!r}{_at(route)} (it holds {describe(current)})")
        route.append(name)
        current, i = current[name], i + len(name.split("."))
    if not is_state_dict(current):
        raise LoadError(f"{path}: {option} {dotted}: holds {describe(current)}, not a state_dict (names to tensors)")
    state, prefix = _unwrap(current)
    return Selection(state, route, prefix, containers)


def _at(route: list[str]) -> str:
    return f" at {'.'.join(route)!r}" if route else ""


def _entry(obj: Mapping, name: str, option: str) -> Selection | str:
    value = obj[name]
    if not is_state_dict(value):
        return f"{option} {name}: holds {describe(value)}, not a state_dict (names to tensors)"
    state, prefix = _unwrap(value)
    return Selection(state, [name], prefix, [obj])


def _default(obj: Any) -> list[Selection]:
    """The file itself, else its first :data:`NESTED_STATE_KEYS` entry, else every state_dict among its entries."""
    if is_state_dict(obj):
        state, prefix = _unwrap(obj)
        return [Selection(state, prefix=prefix)]
    if not isinstance(obj, Mapping):
        return []
    named = next((k for k in NESTED_STATE_KEYS if is_state_dict(obj.get(k))), None)
    keys = [named] if named else [k for k, v in obj.items() if isinstance(k, str) and is_state_dict(v)]
    return [s for k in keys if isinstance(s := _entry(obj, k, ""), Selection)]


def _network(obj: Any, network: str, path: Path) -> Selection:
    """``--network NAME``: an entry of the file, else a key prefix of its one state_dict."""
    if isinstance(obj, Mapping) and not is_state_dict(obj) and network in obj:
        picked = _entry(obj, network, "--network")
        if isinstance(picked, str):
            raise LoadError(f"{path}: {picked}")
        return picked
    found = _default(obj)
    if len(found) == 1 and any(k.startswith(network + ".") for k in found[0].state):
        base = found[0]
        return Selection(_under(base.state, network + "."), base.route, base.prefix + network + ".", base.containers)
    entries = [str(k) for k, v in obj.items() if is_state_dict(v)] if isinstance(obj, Mapping) and not is_state_dict(obj) else []
    listed = f"its networks: {', '.join(entries)}" if entries else "no entry and no key prefix of that name"
    raise LoadError(f"{path}: --network {network}: no network of that name ({listed})")


def select_state_dict(obj: Any, path: Path, *, network: str | None = None, key: str | None = None) -> list[Selection]:
    """The candidate state_dicts of ``obj`` (one when an option names it); :class:`LoadError` when there is none."""
    if network is not None and key is not None:
        raise LoadError(f"{path}: --network and --state-dict-key both say what to load: give one of them")
    if key is not None:
        return [_walk(obj, key, "--state-dict-key", path)]
    if network is not None:
        return [_network(obj, network, path)]
    found = _default(obj)
    if not found:
        raise LoadError(f"{path}: holds {describe(obj)}, not a model, a state_dict or a modconv-export checkpoint")
    return found


def _families_under(selection: Selection) -> list[tuple[str, Family]]:
    keys = list(selection.state)
    return [
        (prefix, family)
        for family in registered_families()
        for prefix in prefixes_of(family, keys)
        if prefix and family.matches(_under(selection.state, prefix))
    ]


def with_family(candidates: list[Selection], path: Path) -> Selection:
    """The one candidate that is (or holds, under one key prefix) a model of one registered family."""
    found: list[Selection] = []
    unknown: tuple[Selection, UnknownFamilyError] | None = None
    for candidate in candidates:
        try:
            found.append(Selection(candidate.state, candidate.route, candidate.prefix, candidate.containers, recognize(candidate.state)))
            continue
        except AmbiguousFamilyError as exc:
            raise LoadError(f"{path}: {_named(candidate, exc)}") from None
        except UnknownFamilyError as exc:
            unknown = unknown or (candidate, exc)
        for prefix, family in _families_under(candidate):
            found.append(
                Selection(_under(candidate.state, prefix), candidate.route, candidate.prefix + prefix, candidate.containers, family)
            )
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(f"{s.family.name if s.family else '?'} {s.where}" for s in found[:4]) + (
            f" (+{len(found) - 4} more)" if len(found) > 4 else ""
        )
        raise LoadError(f"{path}: holds {len(found)} models ({listed}): choose one with --state-dict-key {found[0].key_option()}")
    assert unknown is not None  # candidates are never empty (select_state_dict)
    raise LoadError(f"{path}: {_named(*unknown)}") from None


def _named(candidate: Selection, exc: Exception) -> str:
    """The registry's "state_dict matches ..." with where the state_dict is: "state_dict at 'd' matches ..."."""
    text = str(exc)
    return f"state_dict {candidate.where} {text.removeprefix('state_dict ')}" if candidate.where else text

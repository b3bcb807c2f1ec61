"""Model families: declarative entries that recognise a bare state_dict and build an exportable model.

Like Optimum's export configs, each family is data plus a few small functions, registered under a
checked name (a duplicate is an error at import time). The loader asks :func:`recognize` which family
a state_dict belongs to; the CLI asks the family for its inputs, outputs and example shapes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import AmbiguousFamilyError, UnknownFamilyError

__all__ = [
    "FAMILIES",
    "AmbiguousFamilyError",
    "Family",
    "FamilyRegistry",
    "InputSpec",
    "TensorInfo",
    "UnknownFamilyError",
    "get_family",
    "recognize",
    "register_family",
    "registered_families",
    "families_tried",
    "prefixes_of",
    "GeneratorHook",
]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, example shape (axis 0 is the batch) and how to make example data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    #: ``make(shape, generator) -> Tensor``; default standard normal.
    make: Callable[[tuple[int, ...], torch.Generator], torch.Tensor] | None = None

    def example(self, shape: Sequence[int] | None = None, seed: int = 0) -> torch.Tensor:
        shape = tuple(shape or self.shape)
        gen = torch.Generator().manual_seed(seed)
        if self.make is not None:
            return self.make(shape, gen)
        return torch.randn(*shape, generator=gen, dtype=self.dtype)


@dataclass(frozen=True)
class TensorInfo:
    """What one graph input or output means, declared as data by its family.

    The exporter writes it into the ONNX file's metadata (``modconv_export.inputs``/``.outputs``), so a
    user of the file alone knows the layout, the value range and how to build a value -- what the
    graph's names and shapes cannot say (e.g. what LATS's ``target_age`` encodes).
    """

    meaning: str
    #: Axis order, e.g. ``"NCHW"`` (``N`` is the batch) or ``"NC"``.
    layout: str = ""
    #: ``(low, high)`` of valid values, or ``None`` where unbounded.
    value_range: tuple[float, float] | None = None
    #: Structured extras (JSON-ready), e.g. the age classes of a code.
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"meaning": self.meaning}
        if self.layout:
            data["layout"] = self.layout
        if self.value_range is not None:
            data["range"] = list(self.value_range)
        data.update(self.details)
        return data


#: ``(config, latent, truncation, extras) -> (config, tensors)``: see :attr:`Family.generator`.
GeneratorHook = Callable[[Mapping[str, Any], str, "float | str | None", Mapping[str, Any]], "tuple[dict, dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class Family:
    """A registered model family (see the module docstring)."""

    name: str
    description: str
    #: Regular expressions; a state_dict belongs to the family when each matches at least one key.
    key_patterns: tuple[str, ...]
    #: ``infer_config(state_dict) -> config`` from tensor shapes; raise ``ValueError`` with a reason.
    infer_config: Callable[[Mapping[str, torch.Tensor]], dict]
    #: ``build(config) -> nn.Module`` in eval mode, with reference (unrewritten) layers and random weights;
    #: its ``forward`` takes the inputs in ``inputs(config)`` order and returns the outputs.
    build: Callable[[Mapping[str, Any]], nn.Module]
    #: ``inputs(config) -> [InputSpec]`` in forward order.
    inputs: Callable[[Mapping[str, Any]], list[InputSpec]]
    #: Output names in return order. Axis 0 of every input and output is the batch, the only dynamic axis
    #: (the export makes it symbolic for all of them; the files record it in their metadata).
    outputs: tuple[str, ...]
    #: Optional ``convert_state_dict(state_dict) -> state_dict`` for checkpoints saved with other keys.
    convert_state_dict: Callable[[Mapping[str, torch.Tensor]], dict] | None = None
    #: Named example configurations (e.g. ``"full"``, ``"small"``) for samples and tests.
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: What every input and output means, by name (written into exported files).
    tensors: Mapping[str, TensorInfo] = field(default_factory=dict)
    #: Set for generator families, which honour the command line's ``--latent`` / ``--truncation``:
    #: ``generator(config, latent, truncation, extras) -> (config, tensors)`` folds them into the config and
    #: returns the tensors to load beside the state_dict, made from ``extras`` (the file-level entries named
    #: in :attr:`extras`, e.g. ``latent_avg``); ``ValueError`` with the reason an option cannot apply.
    generator: GeneratorHook | None = None
    #: Top-level entries of a file that :attr:`generator` reads beside the state_dict (``"latent_avg"``).
    extras: tuple[str, ...] = ()

    def preset(self, name: str) -> dict:
        """A copy of the named preset configuration; ``ValueError`` naming the known ones otherwise."""
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ValueError(f"family {self.name!r} has no preset {name!r} (known: {known})")
        return copy.deepcopy(dict(self.presets[name]))

    def matches(self, state_dict: Mapping[str, Any]) -> bool:
        keys = list(state_dict.keys())
        return all(any(re.search(p, k) for k in keys) for p in self.key_patterns)

    def load(self, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> nn.Module:
        """Build the model for ``config`` (inferred if ``None``) and load ``state_dict`` strictly."""
        if self.convert_state_dict is not None:
            state_dict = self.convert_state_dict(state_dict)
        config = dict(config) if config is not None else self.infer_config(state_dict)
        model = self.build(config)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()


def _readable(pattern: str) -> str:
    """A key pattern as a person reads it: ``^mapping\\.\\d+\\.weight$`` -> ``mapping.N.weight``."""
    return pattern.strip("^$").replace(r"\d+", "N").replace("\\", "")


def _validate(family: Family) -> None:
    """A malformed family fails where it is declared (import time), not when a file meets it."""
    if not re.fullmatch(r"[a-z][a-z0-9_\-]*", family.name):
        raise ValueError(f"family name must be lower-case identifier-like, got {family.name!r}")
    if not family.key_patterns or not family.outputs:
        raise ValueError(f"family {family.name!r} needs key_patterns and outputs")
    if family.tensors:  # optional, but a declared name must be a real input or output (typos fail here)
        names = set(family.outputs) | {spec.name for config in family.presets.values() for spec in family.inputs(config)}
        unknown = sorted(set(family.tensors) - names) if family.presets else []
        if unknown:
            raise ValueError(f"family {family.name!r} declares tensors it does not have: {', '.join(unknown)}")


class FamilyRegistry:
    """The families a load can recognise, by name, in registration order; a call can be given one
    (``recognize(state_dict, families=FamilyRegistry([...]))``). :data:`FAMILIES` is the toolkit's."""

    def __init__(self, families: Iterable[Family] = ()) -> None:
        self._families: dict[str, Family] = {}
        for family in families:
            self.register(family)

    def register(self, family: Family) -> Family:
        _validate(family)
        if family.name in self._families:
            raise ValueError(f"model family {family.name!r} is registered twice")
        self._families[family.name] = family
        return family

    def unregister(self, name: str) -> None:
        del self._families[name]

    def __iter__(self) -> Iterator[Family]:
        return iter(list(self._families.values()))

    def get(self, name: str) -> Family:
        try:
            return self._families[name]
        except KeyError:
            known = ", ".join(sorted(self._families)) or "none"
            raise UnknownFamilyError(f"unknown model family {name!r} (known: {known})") from None

    def tried(self) -> str:
        """Every family with the keys it looks for, as a person reads them."""
        described = (f"{f.name} (keys like {', '.join(map(_readable, f.key_patterns))})" for f in self)
        return "; ".join(described) or "no families registered"

    def recognize(self, state_dict: Mapping[str, Any]) -> Family:
        """The one family whose key patterns all match ``state_dict``; :class:`UnknownFamilyError` when none
        does, :class:`AmbiguousFamilyError` (a :class:`LoadError`) naming them when several do: a guess
        between them could load the wrong model."""
        found = [family for family in self if family.matches(state_dict)]
        if len(found) > 1:
            raise AmbiguousFamilyError(
                f"state_dict matches {len(found)} model families ({', '.join(f.name for f in found)}): it is ambiguous"
            )
        if found:
            return found[0]
        raise UnknownFamilyError(f"state_dict matches no known model family; looked for: {self.tried()}")


#: The toolkit's families (each ``families/<name>.py`` registers its own) and the user's.
FAMILIES = FamilyRegistry()


def register_family(family: Family) -> Family:
    """Add ``family`` to :data:`FAMILIES`; a duplicate or malformed family is an error."""
    return FAMILIES.register(family)


def registered_families() -> list[Family]:
    return list(FAMILIES)


def get_family(name: str) -> Family:
    return FAMILIES.get(name)


def families_tried() -> str:
    return FAMILIES.tried()


def recognize(state_dict: Mapping[str, Any], families: FamilyRegistry | None = None) -> Family:
    """The one family of ``families`` (default :data:`FAMILIES`) that ``state_dict`` belongs to (see
    :meth:`FamilyRegistry.recognize`)."""
    return (families if families is not None else FAMILIES).recognize(state_dict)


def prefixes_of(family: Family, keys: Sequence[str]) -> list[str]:
    """The key prefixes (``"decoder."``, ``""``) under which ``family``'s first key pattern matches: where a model of
    that family may sit inside a larger state_dict (pSp's decoder, a wrapper's submodule)."""
    first = family.key_patterns[0]
    body = first[1:] if first.startswith("^") else f".*?{first}"
    anchor = re.compile(rf"((?:[^.]+\.)*){body}")
    found = {m.group(1) for key in keys if (m := anchor.match(key))}
    return sorted(found)

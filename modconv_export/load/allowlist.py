"""``--trust-pickle``: the allowlist a pickled model is loaded under, enforced by torch's ``weights_only`` unpickler.

Trust model: the *file* is never trusted, the *code* is -- torch.nn, an explicit list of pure math
functions, the Python files in the directories the user named (``--import-path`` and the current
directory) and what ``--allow-global`` names. A pickle may build objects of those classes and refer
to those functions; anything else is refused before any object is built.

How it is enforced:

* :func:`~modconv_export.load.pickle_scan.unsafe_globals` lists the globals the file names; each is
  decided here (:func:`decide`); one refusal refuses the file with the list of refused names.
* The file is then read by ``torch.load(weights_only=True)`` inside
  ``torch.serialization.safe_globals(...)`` holding exactly the decided objects, so the unpickler
  itself refuses whatever a listing could miss (a name computed while unpickling, say).
* Classes are registered as :class:`~.class_guard.ClassGuard` s: the unpickler may create an *empty* instance
  (``NEWOBJ``: how ``torch.save`` writes a module) and hand it its saved state (``BUILD``: the class's
  ``__setstate__`` or a ``__dict__`` update), but a pickle that *calls* a class with arguments of its
  choosing (``REDUCE``, ``_rebuild_from_type_v2``) is refused: no constructor ever runs with hostile
  arguments (a class whose ``__init__`` opens files, downloads weights or starts threads stays inert).
  Torch's own default allowlist (tensors, storages, ``torch.Size``, ``OrderedDict``, ...) is unchanged.
* ``getattr`` is never allowed; pickle spells ``torch.tanh`` as ``getattr(torch._C._VariableFunctionsClass,
  "tanh")``, so that one pattern is served by :func:`_torch_function`, for the pure names only.
* NumPy data (:mod:`.numpy_data`) and NVlabs' persistence protocol (:mod:`.persistence`: a persistence object
  becomes a record, its embedded source code is never run) are data.

What is trusted lives beside this module: torch's classes and the pure functions in :mod:`.trusted_torch`,
the user's own classes in :mod:`.trusted_code`, the class guards in :mod:`.class_guard`.

Modules are never imported on a pickle's say-so, except a file under a trusted directory whose source
defines the class the pickle names (found by its file, not by a name prefix).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch

from .class_guard import ClassGuard
from .numpy_data import NUMPY_DATA, numpy_instance_classes, numpy_value
from .persistence import PERSISTENCE_GLOBALS
from .records import DATA_RECORDS
from .trusted_code import untrusted_base, user_module
from .trusted_torch import TORCH_FUNCTIONS_CLASS, name_of, pure_functions, torch_classes

__all__ = ["OUTSIDE", "Allowlist", "Decision", "decide", "resolve_allowed"]

#: The reason given for a global that is simply not on the list.
OUTSIDE = "outside the allowlist"
_GETATTR = "builtins.getattr"


@dataclass(frozen=True)
class Decision:
    """What the unpickler gets for one global (``value``), or why it is refused (``refused``)."""

    name: str
    value: Any = None
    refused: str | None = None
    #: Set when the class is defined where the allowlist trusts it, but its module fails to import: the module
    #: and the first line of the error (``refused`` says the same in words).
    import_error: tuple[str, str] | None = None


_TORCH_FUNCTIONS_TOKEN = ClassGuard(getattr(torch._C, "_VariableFunctionsClass"), TORCH_FUNCTIONS_CLASS)  # noqa: B009  (no stub)


def _torch_function(owner: Any, name: Any) -> Any:
    """``getattr`` as pickle uses it for ``torch.tanh`` and friends; nothing else."""
    fn = pure_functions().get(f"{TORCH_FUNCTIONS_CLASS}.{name}") if owner is _TORCH_FUNCTIONS_TOKEN else None
    if fn is None:
        raise UnpicklingError(
            f"the file calls getattr({owner!r}, {name!r}) (only pure torch functions such as torch.tanh are looked up so)"
        )
    return fn


def _user_class(name: str, dirs: Sequence[Path]) -> Decision | None:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        modname, qual = ".".join(parts[:cut]), parts[cut:]
        module = user_module(modname, qual[0], dirs)
        if module is None:
            continue
        if isinstance(module, str):
            return Decision(name, refused=f"defined in {modname}, which fails to import: {module}", import_error=(modname, module))
        obj: Any = module
        for part in qual:
            obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if not isinstance(obj, type) or name_of(obj) != name:
            return Decision(name, refused=f"not a class defined in {modname}")
        culprit = untrusted_base(obj, dirs, torch_classes().values())
        if culprit is not None:
            return Decision(name, refused=f"derives from {culprit}")
        return Decision(name, ClassGuard(obj, name))
    return None


def decide(name: str, dirs: Sequence[Path], allowed: dict[str, Any] | None = None) -> Decision:
    """Whether a pickle may use global ``name`` (``module.qualname``), and what it gets for it.

    NVlabs' persistence globals are read as data (:mod:`.persistence`) whatever ``allowed`` says: the code
    embedded in such a file is never run."""
    if name in PERSISTENCE_GLOBALS:
        return Decision(name, PERSISTENCE_GLOBALS[name])
    if allowed and name in allowed:
        return Decision(name, allowed[name])
    if name in DATA_RECORDS:  # a training script's argparse.Namespace: read as data (load/records.py)
        return Decision(name, DATA_RECORDS[name])
    if name in NUMPY_DATA and importlib.util.find_spec("numpy") is not None:
        return Decision(name, numpy_value(name))
    if name == _GETATTR:
        return Decision(name, _torch_function)
    if name == TORCH_FUNCTIONS_CLASS:
        return Decision(name, _TORCH_FUNCTIONS_TOKEN)
    if name in pure_functions():
        return Decision(name, pure_functions()[name])
    if name in torch_classes():
        return Decision(name, ClassGuard(torch_classes()[name], name))
    if name.startswith("__main__."):
        return Decision(name, refused="defined in a script run as __main__ (move the class into a module)")
    top = name.split(".")[0]
    found = _user_class(name, dirs) if top != "torch" else None
    if found is None and top.isidentifier() and top not in sys.modules and importlib.util.find_spec(top) is None:
        found = Decision(name, refused=f"module {top!r} is in no --import-path directory nor the current directory")
    return found or Decision(name, refused=OUTSIDE)


def resolve_allowed(names: Sequence[str]) -> dict[str, Any]:
    """``--allow-global MODULE.NAME`` values: imported by the user's request, allowed as they are."""
    from ..errors import LoadError

    allowed = {}
    for full in names:
        parts = full.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except Exception:
                continue
            for part in parts[cut:]:
                obj = getattr(obj, part, None)
            if obj is not None:
                allowed[full] = obj
                break
        else:
            raise LoadError(f"--allow-global {full}: no such module attribute (expected MODULE.NAME, e.g. functools.partial)")
    return allowed


class Allowlist:
    """The decided globals of one file, as ``torch.serialization.safe_globals`` entries."""

    def __init__(self, decisions: Sequence[Decision]) -> None:
        self.decisions = list(decisions)
        self.refused = [d for d in decisions if d.refused]

    def safe_globals(self) -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
        entries: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = []
        for d in self.decisions:
            entries.append((d.value, d.name))
            if d.name in NUMPY_DATA and not d.refused:
                entries += numpy_instance_classes(d.name)
            if isinstance(d.value, ClassGuard):
                # BUILD checks ``type(instance)`` against the allowed values: the real class goes in under a
                # name no pickle can spell (GLOBAL names end at a newline), so it is reachable only that way.
                entries.append((d.value.cls, f"{d.name}\n(instances only)"))
        return entries

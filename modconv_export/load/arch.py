"""``--arch FILE.py:CLASS`` (or ``MODULE:CLASS``): the weights of any codebase, loaded into the class the user names.

The class is code the user trusts, as ``--import-path`` is: its file is imported (its folder and the
``--import-path`` folders on ``sys.path`` meanwhile) and the class is called with ``--arch-kwargs``. The
checkpoint is still only data (``weights_only``); the state_dict is picked as for families
(:mod:`.selection`: the file's default, ``--state-dict-key``, ``--network``). The class is built on the meta
device first, so keys and shapes are compared with the file's before any memory is spent, then for real,
and loaded strictly. A forward that is not tensors in, tensors out (rosinality's ``g([z])`` returns
``(image, latents)``) is served by a small wrapper class in the user's own file (docs/command-line.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._util import exception_line
from .._util.memory import is_allocation_failure
from ..errors import LoadError, UsageError
from .loaded import LoadedModel
from .options import MODULE_NAME, parse_arch, parse_arch_kwargs
from .pickled import on_sys_path
from .selection import select_state_dict
from .state_dicts import check_real, key_mismatch

__all__ = ["build_arch", "from_arch", "import_arch", "parse_arch", "parse_arch_kwargs"]


def _import_file(file: Path, text: str, import_paths: Sequence[Path]) -> Any:
    name = file.stem if file.stem.isidentifier() else "modconv_arch_" + re.sub(r"\W", "_", file.stem)
    known = sys.modules.get(name)
    known_file = getattr(known, "__file__", None)
    if known is not None and known_file and Path(known_file).resolve() == file:
        return known
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise LoadError(f"--arch {text}: {file} cannot be imported as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its classes (dataclasses, pickling) look themselves up there
    try:
        with on_sys_path([file.parent, *import_paths]):
            spec.loader.exec_module(module)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        if known is not None:
            sys.modules[name] = known
        else:
            sys.modules.pop(name, None)
        raise LoadError(f"--arch {text}: importing {file.name} failed: {exception_line(exc, 200)}{_import_hint(exc)}") from exc
    return module


def _import_hint(exc: BaseException) -> str:
    return " (--import-path DIR puts the folders its imports need on the path)" if isinstance(exc, ImportError) else ""


def import_arch(text: str, import_paths: Sequence[str | os.PathLike] = ()) -> type[nn.Module]:
    """The ``nn.Module`` subclass ``--arch`` names, imported from its file or module."""
    source, name = parse_arch(text)
    paths = [Path(p).expanduser().resolve() for p in import_paths]
    if source.endswith(".py") or "/" in source or "\\" in source:
        file = Path(source).expanduser().resolve()
        if not file.is_file():
            raise LoadError(f"--arch {text}: no such file {source}")
        module = _import_file(file, text, paths)
    elif not MODULE_NAME.fullmatch(source):
        raise UsageError(f"--arch {text}: {source!r} is neither a .py file nor a module name")
    else:
        try:
            with on_sys_path([Path.cwd(), *paths]):
                module = importlib.import_module(source)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise LoadError(f"--arch {text}: importing {source} failed: {exception_line(exc, 200)}{_import_hint(exc)}") from exc
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        classes = sorted(
            k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__
        )
        what = "no class" if obj is None else f"a {type(obj).__name__}, not an nn.Module class, as"
        raise LoadError(f"--arch {text}: {source} defines {what} {name} (its nn.Module classes: {', '.join(classes) or 'none'})")
    return obj


def _construct(cls: type[nn.Module], kwargs: Mapping[str, Any], text: str) -> nn.Module:
    try:
        return cls(**kwargs)
    except Exception as exc:
        if is_allocation_failure(exc):
            raise
        raise LoadError(f"--arch {text}: {cls.__name__}(**{json.dumps(dict(kwargs))[:120]}) failed: {exception_line(exc, 200)}") from exc


def build_arch(cls: type[nn.Module], kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor], text: str, path: Path) -> nn.Module:
    """``cls(**kwargs)`` with ``state`` loaded strictly; keys and shapes compared on the meta device first."""
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise LoadError(f"--arch-kwargs do not fit {cls.__name__}{_signature(cls)}: {exc}") from None
    except ValueError:
        pass  # a signature inspect cannot read: the call itself will tell
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(**kwargs).state_dict().items()}
    except Exception:  # a constructor that needs real values (.item(), NumPy): checked after the real build
        expected = None
    mismatch = key_mismatch(expected, state) if expected is not None else None
    if mismatch:
        raise LoadError(f"{path}: does not fit --arch {text} with these --arch-kwargs ({mismatch})")
    module = _construct(cls, kwargs, text)
    if expected is None:
        mismatch = key_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
        if mismatch:
            raise LoadError(f"{path}: does not fit --arch {text} with these --arch-kwargs ({mismatch})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"{path}: does not fit --arch {text} ({' '.join(str(exc).split())[:300]})") from exc
    return module.eval()


def _signature(cls: type) -> str:
    try:
        return str(inspect.signature(cls).replace(return_annotation=inspect.Signature.empty))
    except (TypeError, ValueError):
        return "(...)"


def from_arch(
    obj: Any,
    path: Path,
    text: str,
    kwargs: Mapping[str, Any],
    *,
    network: str | None = None,
    state_dict_key: str | None = None,
    import_paths: Sequence[str | os.PathLike] = (),
) -> LoadedModel:
    """The state_dict of a loaded (weights-only) object in the ``--arch`` class."""
    found = select_state_dict(obj, path, network=network, key=state_dict_key)
    if len(found) > 1:
        listed = ", ".join(repr(s.route[-1]) for s in found[:5])
        raise LoadError(f"{path}: holds {len(found)} state_dicts ({listed}): choose one with --state-dict-key")
    selection = found[0]
    check_real(list(selection.state.items()), path)
    cls = import_arch(text, import_paths)
    module = build_arch(cls, kwargs, selection.state, text, path)
    config = {"arch": text, "kwargs": dict(kwargs)}
    return LoadedModel(module, "arch", None, config, None, where=selection.where)

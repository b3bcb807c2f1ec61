"""The user's own code a trusted pickle may use: classes defined in the Python files of the directories the
user named (``--import-path`` and the current directory), found by their file -- read with :mod:`ast`
before anything is imported -- not by a name prefix.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import torch.nn as nn

from .._util import exception_line
from .trusted_torch import name_of

__all__ = ["top_level_classes", "trusted_module", "untrusted_base", "user_module"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _under(path: str | None, dirs: Sequence[Path]) -> bool:
    if not path:
        return False
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(d) for d in dirs)


def trusted_module(module: ModuleType | None, dirs: Sequence[Path]) -> bool:
    """A module whose file lives under a trusted directory (or this package's own)."""
    if module is None:
        return False
    file = getattr(module, "__file__", None)
    own = module.__name__.split(".")[0] == __name__.split(".")[0] and _under(file, [_PACKAGE_DIR])
    return own or _under(file, dirs)


def top_level_classes(source: Path) -> set[str]:
    """The classes ``source`` defines at top level (also under a top-level ``if``/``try``), read without running it."""
    try:
        tree = ast.parse(source.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return set()
    found = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ClassDef):
            found.add(node.name)
        if isinstance(node, (ast.If, ast.Try)):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []), *[s for h in getattr(node, "handlers", []) for s in h.body]]
    return found


def _source_of(modname: str, dirs: Sequence[Path]) -> Path | None:
    parts = modname.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    for d in [*dirs, _PACKAGE_DIR.parent] if parts[0] == __name__.split(".")[0] else dirs:
        base = d.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def user_module(modname: str, first: str, dirs: Sequence[Path]) -> ModuleType | str | None:
    """The module ``modname`` if its file lives under ``dirs`` and defines class ``first``; imported only then.
    A string: the first line of the error importing it raised (upstream code that builds CUDA code at import)."""
    source = _source_of(modname, dirs)
    if source is None or first not in top_level_classes(source):
        return None
    module = sys.modules.get(modname)
    if module is None:
        saved = list(sys.path)
        sys.path[:0] = [str(d) for d in dirs]
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(modname)
        except BaseException as exc:  # SystemExit too: a module that exits when its build fails
            if isinstance(exc, KeyboardInterrupt):
                raise
            return exception_line(exc, 200)
        finally:
            sys.path[:] = saved
    file = getattr(module, "__file__", None)
    return module if file and Path(file).resolve() == source.resolve() else None


def untrusted_base(cls: type, dirs: Sequence[Path], allowed_torch: Iterable[type] = ()) -> str | None:
    """``None`` if every base of ``cls`` is ``object``, an allowed torch class or a trusted class; else the culprit."""
    torch_ok = set(allowed_torch)
    for base in cls.__mro__[1:]:
        if base is object or base is nn.Module or base in torch_ok:
            continue
        if not trusted_module(sys.modules.get(base.__module__), dirs):
            return name_of(base)
    return None

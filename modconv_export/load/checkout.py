"""NVlabs persistence records restored from the user's checkout: its classes, created empty and given their state.

A record (:class:`~.persistence.PersistentRecord`) names a class and carries the source of the module that
defined it, which is never run. The class comes from the Python files under ``--import-path`` instead: the
file whose source (read with :mod:`ast`) defines ``class_name`` -- the one identical to the embedded source when
there is one, else the one sharing most of its lines (StyleGAN3's checkout defines ``Generator`` twice). Only
that file is imported. The object is created without its constructor (``cls.__new__``) and handed its saved
state, as torch.save'd modules are; the restore is strict, so a checkout that differs from the code that wrote
the file is refused rather than run on a state it does not expect:

* the state holds nothing but attributes (no name of a method, property or dunder of the class), a module's
  own dictionaries hold parameters, buffers and modules only, and no hooks;
* every attribute the checkout's ``__init__`` sets unconditionally (``self.x = ...``, ``register_buffer('x',
  ...)``) is in the state; and every attribute of the state is one the checkout's classes use (unless they
  name attributes at run time, as ``setattr(self, f'b{res}', block)`` does).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import sys
import textwrap
import tokenize
import types
import warnings
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._util import exception_line
from ..errors import LoadError
from .persistence import PersistentRecord
from .state_dicts import listing
from .trusted_code import top_level_classes, untrusted_base
from .trusted_torch import torch_classes

__all__ = ["Checkout", "ClassSource"]

#: Folders never searched for classes, and how many Python files a checkout may have.
_SKIPPED = {"__pycache__", "site-packages", "node_modules"}
_MAX_FILES = 5000
_MAX_DEPTH = 64
#: nn.Module's own attributes (current and older torch versions); the ``*hooks*`` ones must be empty.
_MODULE_INTERNALS = {
    "training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_is_full_backward_hook",
    "_backward_hooks", "_backward_pre_hooks", "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
}  # fmt: skip
#: What the persistence protocol itself keeps on every object (the constructor's arguments, as data).
_BOOKKEEPING = {"_init_args", "_init_kwargs"}
_REGISTER = {"register_buffer", "register_parameter", "register_module", "add_module"}


@dataclass(frozen=True)
class ClassSource:
    """Where a record's class came from: the checkout file, and how its source compares to the embedded one."""

    cls: type
    file: Path
    identical: bool
    common: float  # share of the embedded source's lines that the file has

    def describe(self) -> str:
        if self.identical:
            return f"{self.file}, identical to the source embedded in the file"
        return f"{self.file}, which differs from the source embedded in the file ({self.common:.0%} of its lines in common)"


@dataclass(frozen=True)
class _Names:
    """What a class's own source says about its attributes (read with :mod:`ast`)."""

    set_in_init: frozenset[str]  # unconditionally, at the top level of ``__init__``
    used: frozenset[str]  # anywhere in the class
    dynamic: bool  # names attributes at run time (``setattr(self, name, ...)``)


class Checkout:
    """The user's checkout (``dirs``), as the source of classes for the records of one file (``label``)."""

    def __init__(self, dirs: Sequence[Path], label: str) -> None:
        self.dirs = list(dirs)
        self.label = label
        self._index: dict[str, list[tuple[Path, str]]] | None = None
        self._sources: dict[tuple[str, str], ClassSource] = {}
        self._built: dict[int, Any] = {}
        self._texts: dict[Path, tuple[str | None, Counter]] = {}
        #: The checkout classes restored so far, by the file they came from.
        self.used: dict[ClassSource, list[str]] = {}

    # -- finding classes ---------------------------------------------------------------------------------

    def _files(self) -> dict[str, list[tuple[Path, str]]]:
        """Class name -> (file, module name) of every importable Python file under the checkout."""
        if self._index is not None:
            return self._index
        index: dict[str, list[tuple[Path, str]]] = defaultdict(list)
        count = 0
        for root in self.dirs:
            for folder, subdirs, names in os.walk(root):
                subdirs[:] = sorted(d for d in subdirs if d.isidentifier() and d not in _SKIPPED)
                package = Path(folder).relative_to(root).parts
                for name in sorted(n for n in names if n.endswith(".py") and n[:-3].isidentifier()):
                    count += 1
                    if count > _MAX_FILES:
                        raise LoadError(
                            f"{self.label}: --import-path holds more than {_MAX_FILES} Python files; point it at the checkout itself"
                        )
                    parts = [*package, name[:-3]] if name != "__init__.py" else list(package)
                    for cls_name in top_level_classes(Path(folder, name)) if parts else ():
                        index[cls_name].append((Path(folder, name), ".".join(parts)))
        self._index = index
        return index

    def source_of(self, record: PersistentRecord, where: str) -> ClassSource:
        """The checkout class for ``record`` (cached per class name and embedded source)."""
        key = (record.class_name, record.module_src)
        if key not in self._sources:
            self._sources[key] = self._find(record, where)
        return self._sources[key]

    def _find(self, record: PersistentRecord, where: str) -> ClassSource:
        name = record.class_name
        candidates = [(file, module, self._text(file)) for file, module in self._files().get(name, [])]
        candidates = [c for c in candidates if c[2] is not None]
        if not candidates:
            dirs = ", ".join(map(str, self.dirs))
            raise LoadError(
                f"{self.label}: {where} is a persistence object of class {name}, which no Python file under --import-path {dirs} defines"
            )
        embedded = record.module_src
        same = [c for c in candidates if c[2] == embedded]
        lines = _lines(embedded)
        file, module_name, text = same[0] if same else max(candidates, key=lambda c: _common(lines, self._lines(c[0])))
        module = self._import(module_name, file)
        cls = vars(module).get(name)
        if not isinstance(cls, type):
            raise LoadError(f"{self.label}: {where}: {name} in {file} is a {type(cls).__name__}, not a class")
        culprit = untrusted_base(cls, self.dirs, torch_classes().values())
        if culprit is not None:
            raise LoadError(
                f"{self.label}: {where}: class {name} of {file} derives from {culprit}, which is not a class of the checkout or torch.nn"
            )
        return ClassSource(cls, file, bool(same), 1.0 if same else _common(lines, self._lines(file)))

    def _text(self, file: Path) -> str | None:
        """A candidate file's text, read once however many records name its classes."""
        if file not in self._texts:
            text = _read(file)
            self._texts[file] = (text, _lines(text or ""))
        return self._texts[file][0]

    def _lines(self, file: Path) -> Counter:
        self._text(file)
        return self._texts[file][1]

    def _import(self, module_name: str, file: Path) -> types.ModuleType:
        module = sys.modules.get(module_name)
        if module is None:
            saved = list(sys.path)
            sys.path[:0] = [str(d) for d in self.dirs]
            importlib.invalidate_caches()
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # the checkout's own code failed (a missing dependency, say)
                raise LoadError(f"{self.label}: importing {module_name} from the checkout ({file}) failed: {exception_line(exc)}") from exc
            finally:
                sys.path[:] = saved
        loaded = getattr(module, "__file__", None)
        if not loaded or Path(loaded).resolve() != file.resolve():
            raise LoadError(f"{self.label}: {module_name} is already imported from {loaded}, not from the checkout's {file}")
        return module

    # -- restoring ---------------------------------------------------------------------------------------

    def restore(self, record: PersistentRecord, where: str, depth: int = 0) -> Any:
        """``record`` as an object of its checkout class, its children first (each record built once)."""
        if id(record) in self._built:
            return self._built[id(record)]
        if depth > _MAX_DEPTH:  # also a record that holds itself
            raise LoadError(f"{self.label}: {where}: nests data deeper than {_MAX_DEPTH} levels")
        source = self.source_of(record, where)
        if not source.identical and source.describe() not in {s.describe() for s in self.used}:
            warnings.warn(f"{self.label}: classes restored from {source.describe()}", stacklevel=2)
        classes = self.used.setdefault(source, [])
        if source.cls.__name__ not in classes:
            classes.append(source.cls.__name__)
        state = {k: self._value(v, where if k == "_modules" else f"{where}.{k}", depth + 1) for k, v in record.state.items()}
        self._check(source, state, where)
        cls: Any = source.cls
        try:
            obj = cls.__new__(cls)
            setstate = getattr(obj, "__setstate__", None)
            setstate(state) if callable(setstate) else obj.__dict__.update(state)
        except Exception as exc:
            raise LoadError(f"{self.label}: {where}: restoring {cls.__name__} from its state failed ({exception_line(exc)})") from exc
        self._built[id(record)] = obj
        return obj

    def _value(self, value: Any, where: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise LoadError(f"{self.label}: {where}: nests data deeper than {_MAX_DEPTH} levels")
        if isinstance(value, PersistentRecord):
            return self.restore(value, where, depth + 1)
        if isinstance(value, dict):
            out = OrderedDict() if isinstance(value, OrderedDict) else {}
            for k, v in value.items():
                out[k] = self._value(v, f"{where}.{k}", depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            items = [self._value(v, where, depth + 1) for v in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    def restore_within(self, obj: Any) -> Any:
        """``obj`` with every record in it restored, wherever it sits (a torch.save'd module holding an NVlabs
        network keeps the record in its ``_modules``)."""
        seen: set[int] = set()

        def walk(value: Any, where: str, depth: int) -> Any:
            if isinstance(value, PersistentRecord):
                return self.restore(value, where or value.class_name, depth)
            if depth > _MAX_DEPTH:
                raise LoadError(f"{self.label}: {where}: nests objects deeper than {_MAX_DEPTH} levels")
            if id(value) in seen or isinstance(value, (str, bytes, int, float, torch.Tensor, type)):
                return value
            seen.add(id(value))
            if type(value) is tuple:
                items = tuple(walk(v, where, depth + 1) for v in value)
                return items if any(a is not b for a, b in zip(items, value)) else value
            if isinstance(value, list):
                value[:] = [walk(v, where, depth + 1) for v in value]
                return value
            table: Any = value if isinstance(value, dict) else getattr(value, "__dict__", None)
            for key, item in list(table.items()) if isinstance(table, dict) else ():
                new = walk(item, where if key == "_modules" else f"{where}.{key}".lstrip("."), depth + 1)
                if new is not item:
                    table[key] = new
            return value

        return walk(obj, "", 0)

    def notes(self) -> list[str]:
        """One line per checkout file used: which classes came from it, and whether it is the embedded source."""
        by_file: dict[str, list[str]] = {}
        for source, classes in self.used.items():
            by_file.setdefault(source.describe(), []).extend(c for c in classes if c not in by_file.get(source.describe(), []))
        return [f"{', '.join(classes)} restored from {where} (that source is never run)" for where, classes in by_file.items()]

    # -- the strict restore ------------------------------------------------------------------------------

    def _check(self, source: ClassSource, state: Mapping[str, Any], where: str) -> None:
        cls = source.cls
        what = f"{self.label}: {where} ({cls.__name__} from {source.file})"
        for key in state:
            if key.startswith("__") and key.endswith("__"):
                raise LoadError(f"{what}: its state sets {key}")
            attr = inspect.getattr_static(cls, key, None)
            if callable(attr) or isinstance(attr, (property, classmethod, staticmethod)) or hasattr(type(attr), "__set__"):
                raise LoadError(f"{what}: its state sets {key!r}, which the class defines as a method or property")
        members: set[str] = set()
        if issubclass(cls, nn.Module):
            members = _check_module_state(state, what)
        names = [n for n in map(_names_of, _own_classes(cls, self.dirs))]
        present = set(state) | members
        missing = sorted(set().union(*(n.set_in_init for n in names if n)) - present)
        unexpected: list[str] = []
        if all(n is not None and not n.dynamic for n in names):
            used = set().union(*(n.used for n in names if n)) | set(dir(cls))
            unexpected = sorted(present - used - _MODULE_INTERNALS - _BOOKKEEPING)
        if missing or unexpected:
            parts = [f"the checkout's class sets {listing(missing)}, which the file's state lacks" if missing else "",
                     f"the file's state holds {listing(unexpected)}, which the checkout's class never uses" if unexpected else ""]  # fmt: skip
            hint = (
                ""
                if source.identical
                else f"; the file was written by other code ({source.common:.0%} of its lines in common): pass the checkout it was written with"
            )
            raise LoadError(f"{what} does not restore strictly: {'; '.join(p for p in parts if p)}{hint}")


def _check_module_state(state: Mapping[str, Any], what: str) -> set[str]:
    """A module's own dictionaries hold what they should and no hooks; returns its parameter/buffer/module names."""
    kinds = {"_parameters": (nn.Parameter, "parameters"), "_buffers": (torch.Tensor, "tensors"), "_modules": (nn.Module, "modules")}
    names: set[str] = set()
    for key, (kind, label) in kinds.items():
        table = state.get(key)
        if not isinstance(table, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, kind)) for k, v in table.items()):
            raise LoadError(f"{what}: its state's {key} is not a dict of {label}")
        names |= set(table)
    hooks = [k for k in state if "hook" in k and k in _MODULE_INTERNALS and k != "_is_full_backward_hook" and state[k]]
    if hooks:
        raise LoadError(f"{what}: its state registers hooks ({', '.join(hooks)}), which a saved network never holds")
    if not isinstance(state.get("training", False), bool) or not isinstance(
        state.get("_non_persistent_buffers_set", set()), (set, frozenset)
    ):
        raise LoadError(f"{what}: its state's training flag or non-persistent buffer set is malformed")
    return names


def _own_classes(cls: type, dirs: Sequence[Path]) -> list[type]:
    """The classes of ``cls.__mro__`` defined in the checkout (not torch's, not builtins)."""
    found = []
    for klass in cls.__mro__:
        file = getattr(sys.modules.get(klass.__module__), "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(d) for d in dirs):
            found.append(klass)
    return found


@functools.cache
def _names_of(klass: type) -> _Names | None:
    """The attributes ``klass``'s own source sets and uses; ``None`` when its source cannot be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError, RecursionError):
        return None
    node = tree.body[0] if tree.body and isinstance(tree.body[0], ast.ClassDef) else None
    if node is None:
        return None
    used, dynamic = set(), False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
            used.add(sub.attr)
        named = _named_attribute(sub)
        if named is not None:
            dynamic |= named == ""
            used.add(named)
    init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    set_in_init = set()
    for stmt in init.body if init else ():
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value else []
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    set_in_init.add(t.attr)
        named = _named_attribute(stmt.value) if isinstance(stmt, ast.Expr) else None
        if named:
            set_in_init.add(named)
    return _Names(frozenset(set_in_init), frozenset(used - {""}), dynamic)


def _named_attribute(node: ast.AST) -> str | None:
    """The attribute a ``setattr(self, 'x', ...)`` or ``self.register_buffer('x', ...)`` call names: ``'x'``,
    ``''`` when the name is computed, ``None`` for any other node."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    if isinstance(func, ast.Name) and func.id == "setattr" and isinstance(node.args[0], ast.Name) and node.args[0].id == "self":
        name = node.args[1] if len(node.args) > 1 else None
    elif isinstance(func, ast.Attribute) and func.attr in _REGISTER and isinstance(func.value, ast.Name) and func.value.id == "self":
        name = node.args[0]
    else:
        return None
    return name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else ""


def _read(file: Path) -> str | None:
    """A source file's text as ``inspect.getsource`` reads it (its coding cookie, universal newlines)."""
    try:
        with tokenize.open(file) as f:
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _lines(text: str) -> Counter:
    return Counter(line.strip() for line in text.splitlines() if line.strip())


def _common(embedded: Counter, text: Counter) -> float:
    """The share of the embedded source's non-blank lines that the file also has (as multisets; of the longer one)."""
    return sum((embedded & text).values()) / max(sum(embedded.values()), sum(text.values()), 1)

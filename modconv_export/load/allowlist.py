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
* Classes are registered as :class:`_ClassGuard` s: the unpickler may create an *empty* instance
  (``NEWOBJ``: how ``torch.save`` writes a module) and hand it its saved state (``BUILD``: the class's
  ``__setstate__`` or a ``__dict__`` update), but a pickle that *calls* a class with arguments of its
  choosing (``REDUCE``, ``_rebuild_from_type_v2``) is refused: no constructor ever runs with hostile
  arguments (a class whose ``__init__`` opens files, downloads weights or starts threads stays inert).
  Torch's own default allowlist (tensors, storages, ``torch.Size``, ``OrderedDict``, ...) is unchanged.
* ``getattr`` is never allowed; pickle spells ``torch.tanh`` as ``getattr(torch._C._VariableFunctionsClass,
  "tanh")``, so that one pattern is served by :func:`_torch_function`, for the pure names only.
* NumPy data (:mod:`.numpy_data`) and NVlabs' persistence protocol (:mod:`.persistence`: a persistence object
  becomes a record, its embedded source code is never run) are data.

Modules are never imported on a pickle's say-so, except a file under a trusted directory whose source
defines the class the pickle names (found by its file, not by a name prefix).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import math
import operator
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import exception_line
from .numpy_data import NUMPY_DATA, numpy_instance_classes, numpy_value
from .persistence import PERSISTENCE_GLOBALS
from .records import DATA_RECORDS

__all__ = [
    "Decision",
    "PURE_FUNCTIONS",
    "Allowlist",
    "decide",
    "for_python_unpickler",
    "restore_classes",
    "top_level_classes",
    "torch_classes",
    "untrusted_base",
]

#: Functions a model may hold as attributes (``self.conv = F.conv2d``, ``self.act = torch.tanh``), by module:
#: tensor math and plain arithmetic. All are pure: they compute a value from their arguments and touch
#: nothing else. Deliberately absent: whatever reaches attributes or calls what it is given (``getattr``,
#: ``operator.attrgetter``/``methodcaller``/``itemgetter``, ``functools.partial``), mutators
#: (``operator.setitem``, in-place ops), functions whose cost an argument controls without bound
#: (``math.factorial``/``comb``/``perm``, ``operator.pow`` on ints), random sampling, and every torch
#: function that does I/O (``torch.load``, ``torch.from_file``, ``torch.hub``).
_CONV = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_ACTIVATIONS = (
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "sigmoid",
    "tanh",
    "softsign",
    "softplus",
    "softshrink",
    "tanhshrink",
    "logsigmoid",
    "log_sigmoid",
    "softmax",
    "log_softmax",
    "glu",
    "prelu",
)
PURE_FUNCTIONS: dict[Any, tuple[str, ...]] = {
    F: (*_CONV, *_ACTIVATIONS, "linear", "pad", "interpolate", "normalize", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool2d", "instance_norm", "layer_norm", "group_norm",
        "batch_norm", "pixel_shuffle", "pixel_unshuffle"),
    torch._C._nn: (*_ACTIVATIONS, "linear", "pad", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d"),
    torch._C._VariableFunctions: (*_CONV, *_ACTIVATIONS, "sin", "cos", "exp", "abs", "sqrt", "rsqrt", "erf", "neg", "sign",
                                  "clamp", "log", "log1p", "expm1", "sinh", "cosh", "atan", "square", "add", "sub", "mul",
                                  "div", "matmul", "mm", "bmm", "cat", "stack", "avg_pool1d", "max_pool2d", "pixel_shuffle"),
    math: ("sqrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "tanh", "erf", "erfc", "fabs", "floor", "ceil",
           "isfinite", "hypot", "atan2"),
    operator: ("add", "sub", "mul", "truediv", "neg", "pos", "abs"),
}  # fmt: skip

#: torch classes beyond nn.Module subclasses that pickled models hold (weight/spectral norm hooks, wrapped hooks).
_TORCH_HELPER_CLASSES = (
    "torch.nn.utils.weight_norm.WeightNorm",
    "torch.nn.utils.spectral_norm.SpectralNorm",
    "torch.nn.utils.spectral_norm.SpectralNormStateDictHook",
    "torch.nn.utils.spectral_norm.SpectralNormLoadStateDictPreHook",
    "torch.nn.modules.module._WrappedHook",
    "torch.nn.parallel.data_parallel.DataParallel",
)
_PACKAGE_DIR = Path(__file__).resolve().parent
#: The reason given for a global that is simply not on the list.
OUTSIDE = "outside the allowlist"
_GETATTR = "builtins.getattr"
_TORCH_FUNCTIONS_CLASS = "torch._C._VariableFunctionsClass"


def _name_of(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


@functools.lru_cache(maxsize=1)
def _pure_functions() -> dict[str, Any]:
    """Pure functions by the name a pickle gives them (``torch.tanh`` -> ``torch._C._VariableFunctionsClass.tanh``)."""
    found = {}
    for module, names in PURE_FUNCTIONS.items():
        for name in names:
            fn = getattr(module, name, None)
            if callable(fn):
                key = f"{_TORCH_FUNCTIONS_CLASS}.{name}" if module is torch._C._VariableFunctions else _name_of(fn)
                found[key] = fn
    return found


@functools.lru_cache(maxsize=1)
def torch_classes() -> dict[str, type]:
    """Every ``nn.Module`` subclass defined in ``torch.nn.modules``, and the helper classes above, by name."""
    found: dict[str, type] = {}
    for modname, module in list(sys.modules.items()):
        if not (modname == "torch.nn.modules" or modname.startswith("torch.nn.modules.")) or module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == modname:
                found[_name_of(value)] = value
    for full in _TORCH_HELPER_CLASSES:
        modname, _, qualname = full.rpartition(".")
        cls = getattr(importlib.import_module(modname), qualname, None)
        if isinstance(cls, type):
            found[full] = cls
    return found


class _ClassGuard:
    """What the unpickler gets for an allowed class: it can make an empty instance, never call the class."""

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name
        self.__dict__["__new__"] = self._new  # NEWOBJ runs ``cls.__new__(cls, *args)``

    def _new(self, _guard: Any, *args: Any) -> Any:
        if args:
            raise UnpicklingError(
                f"the file creates {self.name} with arguments of its own (a trusted pickle may only restore saved objects)"
            )
        return self.cls.__new__(self.cls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnpicklingError(f"the file calls {self.name}(...) (a trusted pickle may only restore saved objects, not construct them)")

    def __repr__(self) -> str:
        return f"<guarded class {self.name}>"

    def as_type(self) -> type:
        """The guard as a class, for Python's own unpickler (its ``NEWOBJ`` takes types only): creating it
        yields an empty instance of the guarded class, calling it with arguments is refused the same way."""
        guard = self

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
            if args or kwargs:
                guard(*args, **kwargs)  # raises
            return guard.cls.__new__(guard.cls)

        return type(f"Guarded{guard.cls.__name__}", (), {"__new__": __new__, "_modconv_guard": guard})


_TORCH_FUNCTIONS_TOKEN = _ClassGuard(torch._C._VariableFunctionsClass, _TORCH_FUNCTIONS_CLASS)


def _torch_function(owner: Any, name: Any) -> Any:
    """``getattr`` as pickle uses it for ``torch.tanh`` and friends; nothing else."""
    fn = _pure_functions().get(f"{_TORCH_FUNCTIONS_CLASS}.{name}") if owner is _TORCH_FUNCTIONS_TOKEN else None
    if fn is None:
        raise UnpicklingError(
            f"the file calls getattr({owner!r}, {name!r}) (only pure torch functions such as torch.tanh are looked up so)"
        )
    return fn


@dataclass(frozen=True)
class Decision:
    """What the unpickler gets for one global (``value``), or why it is refused (``refused``)."""

    name: str
    value: Any = None
    refused: str | None = None
    #: Set when the class is defined where the allowlist trusts it, but its module fails to import: the module
    #: and the first line of the error (``refused`` says the same in words).
    import_error: tuple[str, str] | None = None


def _under(path: str | None, dirs: Sequence[Path]) -> bool:
    if not path:
        return False
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(d) for d in dirs)


def _trusted_module(module: ModuleType | None, dirs: Sequence[Path]) -> bool:
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


def _user_module(modname: str, first: str, dirs: Sequence[Path]) -> ModuleType | str | None:
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
        if not _trusted_module(sys.modules.get(base.__module__), dirs):
            return _name_of(base)
    return None


def _user_class(name: str, dirs: Sequence[Path]) -> Decision | None:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        modname, qual = ".".join(parts[:cut]), parts[cut:]
        module = _user_module(modname, qual[0], dirs)
        if module is None:
            continue
        if isinstance(module, str):
            return Decision(name, refused=f"defined in {modname}, which fails to import: {module}", import_error=(modname, module))
        obj: Any = module
        for part in qual:
            obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if not isinstance(obj, type) or _name_of(obj) != name:
            return Decision(name, refused=f"not a class defined in {modname}")
        culprit = untrusted_base(obj, dirs, torch_classes().values())
        if culprit is not None:
            return Decision(name, refused=f"derives from {culprit}")
        return Decision(name, _ClassGuard(obj, name))
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
    if name == _TORCH_FUNCTIONS_CLASS:
        return Decision(name, _TORCH_FUNCTIONS_TOKEN)
    if name in _pure_functions():
        return Decision(name, _pure_functions()[name])
    if name in torch_classes():
        return Decision(name, _ClassGuard(torch_classes()[name], name))
    if name.startswith("__main__."):
        return Decision(name, refused="defined in a script run as __main__ (move the class into a module)")
    top = name.split(".")[0]
    found = _user_class(name, dirs) if top != "torch" else None
    if found is None and top.isidentifier() and top not in sys.modules and importlib.util.find_spec(top) is None:
        found = Decision(name, refused=f"module {top!r} is in no --import-path directory nor the current directory")
    return found or Decision(name, refused=OUTSIDE)


def for_python_unpickler(value: Any) -> Any:
    """A decided value as Python's own unpickler takes it (a guarded class as a type; see :meth:`_ClassGuard.as_type`)."""
    return value.as_type() if isinstance(value, _ClassGuard) else value


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

    def safe_globals(self) -> list[tuple[Any, str]]:
        entries = []
        for d in self.decisions:
            entries.append((d.value, d.name))
            if d.name in NUMPY_DATA and not d.refused:
                entries += numpy_instance_classes(d.name)
            if isinstance(d.value, _ClassGuard):
                # BUILD checks ``type(instance)`` against the allowed values: the real class goes in under a
                # name no pickle can spell (GLOBAL names end at a newline), so it is reachable only that way.
                entries.append((d.value.cls, f"{d.name}\n(instances only)"))
        return entries


def restore_classes(obj: Any) -> Any:
    """Replace class guards left in a loaded object graph (a class held as an attribute) by the classes."""
    seen: set[int] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, _ClassGuard):
            return value.cls
        if isinstance(value, type) and isinstance(vars(value).get("_modconv_guard"), _ClassGuard):
            return value._modconv_guard.cls
        if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), torch.Tensor, type)):
            return value
        seen.add(id(value))
        if isinstance(value, dict):
            for key in list(value):
                value[key] = walk(value[key])
        elif isinstance(value, list):
            value[:] = [walk(v) for v in value]
        elif type(value) is tuple:
            items = tuple(walk(v) for v in value)
            return value if all(a is b for a, b in zip(items, value)) else items
        if hasattr(value, "__dict__") and not isinstance(value, type):
            for key, item in list(vars(value).items()):
                new = walk(item)
                if new is not item:
                    vars(value)[key] = new
        return value

    return walk(obj)

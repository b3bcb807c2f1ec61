"""What the unpickler gets for an allowed class: a guard that may make an *empty* instance (``NEWOBJ``, then
``BUILD`` hands it its saved state) but never calls the class with arguments of the file's choosing.

:func:`restore_classes` puts the real classes back where a loaded object graph holds a guard (a class held
as an attribute); :func:`for_python_unpickler` gives Python's own unpickler a guard it can use.
"""

from __future__ import annotations

from pickle import UnpicklingError
from typing import Any

import torch

__all__ = ["ClassGuard", "for_python_unpickler", "restore_classes"]


class ClassGuard:
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
        guarded: Any = self.cls  # any class: its own __new__, as NEWOBJ calls it
        return guarded.__new__(guarded)

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
            guarded: Any = guard.cls  # any class: its own __new__, as NEWOBJ calls it
            return guarded.__new__(guarded)

        return type(f"Guarded{guard.cls.__name__}", (), {"__new__": __new__, "_modconv_guard": guard})


def for_python_unpickler(value: Any) -> Any:
    """A decided value as Python's own unpickler takes it (a guarded class as a type; see :meth:`ClassGuard.as_type`)."""
    return value.as_type() if isinstance(value, ClassGuard) else value


def restore_classes(obj: Any) -> Any:
    """Replace class guards left in a loaded object graph (a class held as an attribute) by the classes."""
    seen: set[int] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, ClassGuard):
            return value.cls
        if isinstance(value, type) and isinstance(vars(value).get("_modconv_guard"), ClassGuard):
            return vars(value)["_modconv_guard"].cls
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

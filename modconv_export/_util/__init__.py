"""Small helpers every stage uses, each in one place: error lines, bounded reprs, relative L2, forward signatures, quiet.

The submodules hold the shared machinery of the command line and the file writers: :mod:`.files` (atomic
outputs and the output transaction), :mod:`.interrupts` (signals) and :mod:`.memory` (allocation limits).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import logging
import reprlib
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import plain_text

__all__ = ["as_tuple", "exception_line", "first_line", "forward_parameters", "quiet", "relative_l2", "short_repr"]

#: Loggers of the exporters and of torch.export, silenced while they run (their errors still propagate).
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript")


def as_tuple(value: Any) -> tuple:
    """Example inputs as a tuple: a tuple or list as it is, anything else as the only element."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message in plain text (no terminal colours), or its type's name."""
    text = plain_text(str(exc)).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"`` (the type alone for an empty message)."""
    text = plain_text(str(exc)).strip()
    return f"{type(exc).__name__}: {first_line(exc, limit)}" if text else type(exc).__name__


class _Bounded(reprlib.Repr):
    """:mod:`reprlib` with few items per container and few levels, keeping a dict's own order (reprlib sorts
    the keys first, which costs seconds on a million of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple, self.maxset = 3, 4, 6, 6, 6
        self.maxstring, self.maxother, self.maxlong = 60, 60, 40

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_set(self, x: set, level: int) -> str:
        return self._repr_iterable(x, level, "{", "}", self.maxset) if x else "set()"


_BOUNDED = _Bounded()


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to a few items, three levels and ``limit`` characters: safe on data from a file
    (a list nested a million deep, a config of a million numbers, an object whose repr fails)."""
    try:
        text = _BOUNDED.repr(value)
    except Exception:  # RecursionError, an int too long to print, a __repr__ that raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def relative_l2(actual: Any, expected: Any) -> float:
    """``|actual - expected| / |expected|`` in float64 (absolute where ``expected`` is zero); tensors or arrays."""
    import numpy as np  # here, not at import: the signal handlers load this package before anything heavy

    a, e = (np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, dtype=np.float64) for v in (actual, expected))
    diff, ref = float(np.linalg.norm(a - e)), float(np.linalg.norm(e))
    return diff / ref if ref > 0 else diff


def forward_parameters(module: Any) -> tuple[list[str], list[str], bool]:
    """``module.forward``'s positional parameter names, those without a default, and whether it takes ``*args``."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return [], [], True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    return [p.name for p in positional], required, any(p.kind == p.VAR_POSITIONAL for p in params)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and torch.export's logs, prints and warnings; errors still propagate."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

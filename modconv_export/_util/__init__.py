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
import os
import reprlib
import sys
import sysconfig
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
        if not x:
            return "set()"
        if level <= 0:
            return "{...}"
        items = [self.repr1(v, level - 1) for v in itertools.islice(x, self.maxset)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxset else "") + "}"


_BOUNDED = _Bounded()


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to a few items, three levels and ``limit`` characters: safe on data from a file
    (a list nested a million deep, a config of a million numbers, an object whose repr fails)."""
    try:
        text = _BOUNDED.repr(value)
    except Exception:  # RecursionError, an int too long to print, a __repr__ that raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Elements per step of :func:`relative_l2`: its working copies stay this small, whatever the tensors.
_CHUNK = 1 << 22


def _as_tensor(value: Any) -> Any:
    """A CPU tensor of ``value`` without copying it where it is one already (or a numpy array)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    else:
        value = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else torch.as_tensor(value)
    if value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value if value.is_floating_point() else value.double()


def relative_l2(actual: Any, expected: Any) -> float:
    """``|actual - expected| / |expected|`` (absolute where ``expected`` is zero); tensors or arrays of one
    shape (or ``expected`` broadcastable to ``actual``'s).

    Computed a chunk at a time in the inputs' own precision (float32 stays float32: its norms are summed
    with pairwise accuracy, ~1e-7 of the value), the chunks' squares added in float64 -- comparing two
    feature maps never holds float64 copies of them, and takes a quarter of the time it would.
    """
    import torch

    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.shape != e.shape:
        a, e = torch.broadcast_tensors(a, e)
    a, e = a.reshape(-1), e.reshape(-1)
    diff = ref = 0.0
    for start in range(0, a.numel(), _CHUNK):
        ea, aa = e[start : start + _CHUNK], a[start : start + _CHUNK]
        ref += float(torch.linalg.vector_norm(ea)) ** 2
        diff += float(torch.linalg.vector_norm(aa - ea)) ** 2
    diff, ref = diff**0.5, ref**0.5
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


#: Packages whose warnings :func:`quiet` drops; a warning from anywhere else is the model's own code speaking.
_LIBRARIES = ("torch", "onnx", "onnxscript", "onnx_ir", "sympy", "numpy", "onnxruntime", "openvino")


def _library_file(filename: str) -> bool:
    """Whether ``filename`` is a library's or the toolkit's machinery (libraries attribute their warnings
    to the caller, often a toolkit file), not model code -- the toolkit's own layers are model code."""
    import importlib.util

    package = os.path.dirname(os.path.abspath(__file__ + "/.."))
    if filename.startswith(package + os.sep):
        return not filename.startswith(os.path.join(package, "layers") + os.sep)
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name) if name in sys.modules else None
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        if any(filename.startswith(root) for root in roots):
            return True
    return filename.startswith(sysconfig.get_paths()["stdlib"])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and torch.export's logs, prints and warnings; errors still propagate.

    Warnings raised by the model's own code while it is traced (a layer saying it uses zero noise) are
    not the exporters' noise: they are issued again, once, when the block ends.
    """
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    seen: list[warnings.WarningMessage] = []
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(record=True) as seen, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        issued = set()
        for w in seen or []:
            key = (str(w.message), w.category, w.filename, w.lineno)
            if key not in issued and not _library_file(w.filename):
                issued.add(key)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

"""Progress of the long steps: the stages say where they are, whoever runs them decides who sees it.

A 1024 px export runs for minutes; the stages (:func:`~modconv_export.export.prepare_export`,
:func:`~modconv_export.export_onnx`, :func:`~modconv_export.check_parity`) call :func:`step` as they go
("capturing the graph", "proving convolution 7 of 20", "ort-cpu at batch 3"). Nothing is printed by them:
a caller that wants the lines installs a reporter for a block with :func:`reporting` (the command line
does, see :class:`~modconv_export.cli.console.Console`); without one, :func:`step` costs a lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Step", "counted", "reporting", "step"]

T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """Where a stage is: ``text``, and for a counted step which item of how many (``done`` of ``total``)."""

    text: str
    done: int | None = None
    total: int | None = None


_REPORTER: ContextVar[Callable[[Step], None] | None] = ContextVar("modconv_export_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Callable[[Step], None]) -> Iterator[None]:
    """Send every :func:`step` of the block to ``callback``."""
    token = _REPORTER.set(callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def step(text: str, done: int | None = None, total: int | None = None) -> None:
    """Say that a stage is now doing ``text`` (item ``done`` of ``total``, for a counted step)."""
    callback = _REPORTER.get()
    if callback is not None:
        callback(Step(text, done, total))


def counted(items: Iterable[T], text: str) -> Iterator[T]:
    """``items``, saying ``text`` with the count before each one and once more when all are done."""
    items = list(items)
    for index, item in enumerate(items):
        step(text, index, len(items))
        yield item
    if items:
        step(text, len(items), len(items))

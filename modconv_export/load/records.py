"""Plain Python records that training scripts store beside their weights, read as data without trust.

rosinality's ``train.py`` (and GPEN's, and most scripts descended from it) saves its command line as
``"args": argparse.Namespace(...)``; torch's ``weights_only`` unpickler refuses the class, so the whole file
would need ``--trust-pickle``. A Namespace is pickled as "make an empty instance, give it this dict", so
that is all :class:`ArgsRecord` accepts: the unpickler gets it in place of ``argparse.Namespace``, an empty
record is made, and its saved dict is kept -- checked to be names and plain values -- as ``record.values``.
Nothing of the file runs, no constructor is called with the file's arguments, no attribute is set from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pickle import UnpicklingError
from typing import Any

import torch

__all__ = ["ArgsRecord", "DATA_RECORDS", "RecordRefused", "record_globals"]

#: The values a record may hold: what a command line parses to (and containers of them).
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(value, _PLAIN) or isinstance(value, (torch.Tensor, torch.dtype, torch.device)) or isinstance(value, ArgsRecord):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


class RecordRefused(UnpicklingError):
    """A record the file tries to make of something other than names and plain values (never trusted away)."""


class ArgsRecord:
    """``argparse.Namespace`` as data: ``values`` holds the saved attributes (names -> plain values)."""

    __slots__ = ("values",)

    def __new__(cls, *args: Any, **kwargs: Any) -> ArgsRecord:
        if args or kwargs:
            raise RecordRefused("the file builds an argparse.Namespace with arguments of its own (only saved attributes are read)")
        record = super().__new__(cls)
        record.values = {}
        return record

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in state):
            raise RecordRefused(f"the file gives an argparse.Namespace a {type(state).__name__} state, not a dict of names")
        bad = [k for k, v in state.items() if not _plain(v)]
        if bad:
            raise RecordRefused(f"the file's argparse.Namespace holds objects that are not plain values (in {', '.join(bad[:3])})")
        self.values = dict(state)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"


#: Globals read as data, by the name a pickle gives them.
DATA_RECORDS: dict[str, type] = {"argparse.Namespace": ArgsRecord}


def record_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """``torch.serialization.safe_globals`` entries: each record class under the global name it stands for."""
    return [(cls, name) for name, cls in DATA_RECORDS.items()]

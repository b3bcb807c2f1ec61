"""Hostile pickles for the tests: each only creates a marker file, and each is proven live by a control.

A payload is an expression tree (:class:`G` a global, :class:`Call` a REDUCE, :class:`Attr` a
``getattr``, :class:`StackGlobal`, :class:`Build`, :class:`NewObj`, :class:`Persistent`) written as raw
pickle opcodes *inside* a real ``torch.save`` file: :func:`save` runs ``torch.save`` with a pickler that
emits the opcodes wherever an expression sits in the saved object, so payloads can hide in a real
state_dict, in the zip or the legacy format, at protocol 2 (torch's default) or 4.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import types
from pathlib import Path
from typing import Any

import torch


class Touch:
    """The classic payload: pickled by reference to ``os.system`` (``posix.system``), it runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Expr:
    """A node of a payload expression."""


class G(Expr):
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call(Expr):
    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args


def Attr(obj: Any, name: str) -> Call:  # noqa: N802  (reads like the getattr it is)
    return Call(G("builtins", "getattr"), obj, name)


class StackGlobal(Expr):
    """Protocol 4's STACK_GLOBAL: module and name come from the stack (so they can be computed)."""

    def __init__(self, module: Any, name: Any) -> None:
        self.module, self.name = module, name


class Build(Expr):
    def __init__(self, obj: Any, state: Any) -> None:
        self.obj, self.state = obj, state


class NewObj(Expr):
    def __init__(self, cls: Any, args: tuple = ()) -> None:
        self.cls, self.args = cls, args


class Persistent(Expr):
    def __init__(self, pid: Any) -> None:
        self.pid = pid


def emit(value: Any) -> bytes:
    """Opcodes that push ``value`` (an expression or plain data) on the unpickler's stack."""
    if isinstance(value, G):
        return b"c" + value.module.encode() + b"\n" + value.name.encode() + b"\n"
    if isinstance(value, Call):
        return emit(value.fn) + emit(tuple(value.args)) + b"R"
    if isinstance(value, StackGlobal):
        return emit(value.module) + emit(value.name) + b"\x93"
    if isinstance(value, Build):
        return emit(value.obj) + emit(value.state) + b"b"
    if isinstance(value, NewObj):
        return emit(value.cls) + emit(tuple(value.args)) + b"\x81"
    if isinstance(value, Persistent):
        return emit(value.pid) + b"Q"
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, bytes):
        return b"B" + struct.pack("<I", len(value)) + value
    if isinstance(value, tuple):
        return b"(" + b"".join(emit(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(emit(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(emit(k) + emit(v) for k, v in value.items()) + b"u"
    raise TypeError(f"cannot emit {type(value).__name__}")


def plain_pickle(value: Any, protocol: int = 2) -> bytes:
    """A stand-alone pickle of an expression (for ``pickle.loads`` payloads)."""
    return b"\x80" + bytes([protocol]) + emit(value) + b"."


class _RawPickler(pickle._Pickler):  # the pure-Python pickler: its ``save`` can be extended
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Expr):
            self.write(emit(obj))
            return
        super().save(obj, save_persistent_id)


#: ``torch.save(..., pickle_module=RAW)`` writes expressions as raw opcodes.
RAW = types.SimpleNamespace(Pickler=_RawPickler, dump=pickle._dump, dumps=pickle._dumps, __name__="pickle_payloads.RAW")


def save(obj: Any, path: Path, *, legacy: bool = False, protocol: int = 2) -> Path:
    """``torch.save`` ``obj`` (which may hold expressions) to ``path`` in the zip or the legacy format."""
    torch.save(obj, path, pickle_module=RAW, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return path


def to_bytes(obj: Any, *, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_module=RAW, pickle_protocol=protocol)
    return buffer.getvalue()

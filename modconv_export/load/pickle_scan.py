"""What a ``torch.save`` file declares, read without unpickling it: the Python globals it names, the tensor
storages it declares (what ``torch.load`` allocates before reading a byte of them) and how deeply its data nests.

The opcodes are walked by a stack machine that moves markers instead of objects (:class:`PickleFacts`),
so a file that declares petabytes or nests a million levels is measured in the time of a read, before
:mod:`modconv_export.load.files` compares it with the bytes the file holds.

The globals only *name* things, for the one-line refusal and so that a refused file is refused before any
object is built; what a file may load is enforced by torch's own ``weights_only`` unpickler (see
:mod:`modconv_export.load.allowlist`). For the zip format (torch.save's default) torch's
``get_unsafe_globals_in_checkpoint`` does the listing. torch offers nothing for the legacy format
(``_use_new_zipfile_serialization=False``: a stream of pickles) nor for pickle opcodes its parser does
not know (protocol 4's ``STACK_GLOBAL``, which the safe unpickler cannot read anyway); for those the
opcodes are walked with :mod:`pickletools`, which never executes anything.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import zipfile
from dataclasses import dataclass, field
from typing import IO

__all__ = [
    "COMPUTED",
    "MAX_DEPTH",
    "PickleFacts",
    "TooDeep",
    "is_legacy_torch_file",
    "pickle_globals",
    "record_folder",
    "scan_legacy",
    "scan_pickle",
    "scan_zip",
    "unsafe_globals",
]

#: Name given to a ``STACK_GLOBAL`` whose module or name is computed while unpickling.
COMPUTED = "<a global whose name is computed while unpickling>"
#: pickle of ``torch.save``'s legacy format starts with this magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: legacy format: magic number, protocol version, system info, the object, storage keys.
_LEGACY_PICKLES = 5
#: How deeply a file's data may nest: a model file needs a few dozen levels (module in module); Python's own
#: recursion (repr, ==, hash) fails on a few thousand, and hashing a tuple nested a million deep crashes.
MAX_DEPTH = 200
#: How many values one pickle frame (the stack above its last MARK) may hold when a container is pushed:
#: Python's pickler batches list and dict items by 1000, so only a deep nesting in the making (or a tuple
#: of that many containers) comes near it; it stops a million-level nesting after a few thousand opcodes.
MAX_FRAME = 100_000


def _torch_name(module: str, name: str) -> str:
    """Python 2 names mapped as torch's unpickler maps them (``__builtin__`` -> ``builtins``)."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _memo_key(arg: object) -> int:
    """A memo opcode's argument (``pickletools`` decodes it as a number; ``PUT``'s text form included)."""
    if isinstance(arg, int):
        return arg
    if isinstance(arg, str) and arg.isdigit():
        return int(arg)
    raise ValueError(f"memo key {arg!r} is not a number")


class TooDeep(ValueError):
    """The pickle nests its data deeper than any model file does (found before anything is built)."""


@dataclass
class PickleFacts:
    """What one pickle declares, read from its opcodes: the globals it names, the tensor storages it
    declares (key -> bytes: what ``torch.load`` allocates before it reads any data), how deep its data
    nests, and the first value it pushes (the legacy format's magic number)."""

    globals: list[str] = field(default_factory=list)
    storages: dict[str, int] = field(default_factory=dict)
    depth: int = 0
    first: object = None


class _Node:
    """A value the unpickler would build, as far as the scan needs it: how deeply it nests, and (for a
    short tuple) its items, which is where a persistent id names a storage."""

    __slots__ = ("depth", "items")

    def __init__(self, depth: int, items: tuple | None = None) -> None:
        self.depth, self.items = depth, items


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_OTHER = object()  # a value the scan does not need (long strings, bytes, buffers)
_SCALARS = frozenset(
    "INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING UNICODE "
    "SHORT_BINUNICODE BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8".split()
)
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_FROM_MARK = frozenset(("TUPLE", "LIST", "DICT", "FROZENSET"))
_GROW_FROM_MARK = frozenset(("APPENDS", "SETITEMS", "ADDITEMS"))
_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))
_GETS = frozenset(("GET", "BINGET", "LONG_BINGET"))


def _depth(value: object) -> int:
    return value.depth if type(value) is _Node else 0


@functools.lru_cache(maxsize=1)
def _element_sizes() -> dict[str, int]:
    """Bytes per element of each storage class a pickle may name (``torch.FloatStorage`` -> 4), as torch maps them."""
    import torch

    sizes = {f"torch.{name}": dtype.itemsize for dtype, name in torch.storage._dtype_to_storage_type_map().items()}
    return {**sizes, "torch.UntypedStorage": 1}


class _Machine:
    """The pickle stack machine without the objects: each opcode moves markers that know their depth."""

    def __init__(self, facts: PickleFacts, max_depth: int) -> None:
        self.facts, self.max_depth = facts, max_depth
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}

    def above(self, items) -> int:
        """The depth of a value holding ``items``."""
        depth = 1 + max(map(_depth, items), default=0)
        if depth > self.max_depth:
            raise TooDeep(f"its data nests more than {self.max_depth} levels deep")
        self.facts.depth = max(self.facts.depth, depth)
        return depth

    def node(self, items, keep: bool = False) -> _Node:
        return self.push(_Node(self.above(items), tuple(items) if keep and len(items) <= 8 else None))

    def push(self, node: _Node) -> _Node:
        """Where a container joins the stack: a frame this full only ever comes from a nesting in the making."""
        if len(self.stack) >= MAX_FRAME:
            raise TooDeep(f"its pickle holds more than {MAX_FRAME} unfinished values at once (data nested deeper than any model file)")
        return node

    def grow(self, items) -> None:
        """``stack[-1]`` takes ``items`` in (APPEND, SETITEM, BUILD): it is now at least one level above them."""
        target = self.stack[-1]
        if type(target) is _Node:
            target.depth = max(target.depth, self.above(items))

    def pop_mark(self) -> list:
        items, self.stack = self.stack, self.marks.pop()
        return items

    def pop(self, n: int) -> list:
        if len(self.stack) < n:
            raise ValueError("pickle stack underflow")
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def name(self, module: object, attr: object) -> _Global:
        name = _torch_name(module, attr) if isinstance(module, str) and isinstance(attr, str) else COMPUTED
        self.facts.globals.append(name)
        return _Global(name)

    def persistent(self, pid: object) -> _Node:
        """A persistent id ``("storage", storage class, key, location, numel[, view])`` declares a storage.

        Only a storage class torch knows gets its size allocated; anything else in that place (a payload's
        call) fails in torch before any allocation and is named by the globals.
        """
        items = pid.items if type(pid) is _Node else None
        if items and len(items) >= 5 and items[0] == "storage" and type(items[1]) is _Global:
            size, key, numel = _element_sizes().get(items[1].name), items[2], items[4]
            if size is not None and isinstance(key, (str, int)) and type(numel) is int and numel >= 0:
                self.facts.storages[str(key)] = max(numel * size, self.facts.storages.get(str(key), 0))
        return _Node(1)

    def step(self, name: str, arg: object) -> None:  # noqa: C901  (one branch per opcode family, as pickle's own)
        stack = self.stack
        if name in _SCALARS:
            stack.append(arg if isinstance(arg, (int, float)) or (isinstance(arg, str) and len(arg) <= 256) else _OTHER)
        elif name in _PUTS:
            self.memo[_memo_key(arg)] = stack[-1]
        elif name in _GETS:
            if _memo_key(arg) not in self.memo:
                raise ValueError(f"memo key {arg} is read before it is written")
            stack.append(self.memo[_memo_key(arg)])
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = stack[-1]
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            stack.append(self.push(_Node(1, () if name == "EMPTY_TUPLE" else None)))
        elif name == "MARK":
            if len(self.marks) >= self.max_depth:
                raise TooDeep(f"its data nests more than {self.max_depth} levels deep")
            self.marks.append(stack)
            self.stack = []
        elif name in ("APPEND", "BUILD"):
            self.grow(self.pop(1))
        elif name == "SETITEM":
            self.grow(self.pop(2))
        elif name in _GROW_FROM_MARK:
            self.grow(self.pop_mark())
        elif name in _FROM_MARK:
            items = self.pop_mark()
            self.stack.append(self.node(items, keep=name == "TUPLE"))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(self.node(self.pop(int(name[-1])), keep=True))
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in ("REDUCE", "NEWOBJ"):
            stack.append(self.node(self.pop(2)[1:]))
        elif name == "NEWOBJ_EX":
            stack.append(self.node(self.pop(3)[1:]))
        elif name in ("OBJ", "INST"):
            items = self.pop_mark()
            if name == "INST":
                module, _, attr = str(arg).partition(" ")
                self.name(module, attr)
            self.stack.append(self.node(items[1:] if name == "OBJ" else items))
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(self.name(module, attr))
        elif name == "STACK_GLOBAL":
            module, attr = self.pop(2)
            stack.append(self.name(module, attr))
        elif name == "BINPERSID":
            stack.append(self.persistent(self.pop(1)[0]))
        elif name == "POP" and stack:
            self.pop(1)
        elif name == "POP":
            self.pop_mark()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER"):
            stack.append(_OTHER)
        # PROTO, FRAME, STOP, READONLY_BUFFER: nothing to track


def scan_pickle(stream: IO[bytes], max_depth: int = MAX_DEPTH) -> PickleFacts:
    """Walk one pickle in ``stream`` opcode by opcode (:mod:`pickletools`, which never executes anything).

    Raises :class:`TooDeep` as soon as its data nests deeper than ``max_depth``, ``ValueError`` for opcodes
    that do not form a pickle.
    """
    facts = PickleFacts()
    machine = _Machine(facts, max_depth)
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if facts.first is None and arg is not None and name not in ("PROTO", "FRAME"):
                facts.first = arg
            machine.step(name, arg)
    except IndexError:  # an empty stack or no mark to pop: the opcodes do not form a pickle
        raise ValueError("pickle opcodes out of order (stack underflow)") from None
    return facts


def _default_safe() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` allows with no allowlist of ours."""
    from torch import _weights_only_unpickler

    return set(_weights_only_unpickler._get_allowed_globals())


def record_folder(zf: zipfile.ZipFile) -> str:
    """The folder torch reads a zip checkpoint's records from: the first record's."""
    return zf.namelist()[0].split("/")[0]


def scan_zip(zf: zipfile.ZipFile) -> PickleFacts:
    """The facts of a zip checkpoint's object pickle, ``<record folder>/data.pkl``."""
    return scan_pickle(io.BytesIO(zf.read(f"{record_folder(zf)}/data.pkl")))


def scan_legacy(f: IO[bytes]) -> tuple[PickleFacts, int]:
    """The facts of a legacy-format file's pickles, merged, and the offset where its tensor data starts.

    The legacy format is five pickles (magic number, protocol, system info, the object, the storage keys)
    followed by each storage as an 8-byte element count and its bytes. ``f`` is left after the pickles.
    """
    merged = PickleFacts()
    for i in range(_LEGACY_PICKLES):
        facts = scan_pickle(f)
        merged.first = facts.first if i == 0 else merged.first
        merged.globals += facts.globals
        merged.depth = max(merged.depth, facts.depth)
        for key, size in facts.storages.items():
            merged.storages[key] = max(size, merged.storages.get(key, 0))
        if merged.first != _LEGACY_MAGIC:  # a single plain pickle
            break
    return merged, f.tell()


def unsafe_globals(f: IO[bytes], fmt: str) -> list[str]:
    """Globals in the file at ``f`` (``fmt``: ``"zip"`` or ``"pickle"``) that torch's safe loader does not allow by itself.

    ``f`` is rewound afterwards. Raises ``ValueError`` for pickle data that cannot be parsed.
    """
    start = f.tell()
    try:
        if fmt == "zip":
            import torch

            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
            except pickle.UnpicklingError:  # an opcode torch's parser (and its unpickler) does not read
                f.seek(start)
                with zipfile.ZipFile(f) as zf:
                    found = scan_zip(zf).globals
        else:
            found = scan_legacy(f)[0].globals
        safe = _default_safe()
        return sorted({g for g in found if g not in safe})
    except (ValueError, EOFError, StopIteration, zipfile.BadZipFile, OSError, IndexError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    finally:
        f.seek(start)


class _SizeChecked:
    """A file as :mod:`pickletools` reads it, refusing a read longer than what is left (a declared length of
    2**40 bytes is refused, not allocated)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._f.tell()
        if n > left:
            raise ValueError(f"an opcode declares {n:,} bytes, but the file has {max(left, 0):,} left")
        return self._f.read(n)

    def readline(self) -> bytes:
        return self._f.readline()

    def tell(self) -> int:
        return self._f.tell()


def pickle_globals(f: IO[bytes], size: int) -> list[str]:
    """Every global one plain pickle at ``f`` names (as torch names them), every declared length checked against
    the file's ``size`` bytes; ``f`` is rewound. ``ValueError`` for data that cannot be parsed."""
    start = f.tell()
    try:
        return sorted(set(scan_pickle(_SizeChecked(f, size)).globals))  # type: ignore[arg-type]
    except TooDeep:
        raise
    except (ValueError, EOFError, OSError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    finally:
        f.seek(start)


def is_legacy_torch_file(f: IO[bytes]) -> bool:
    """Whether a pickle stream starts with ``torch.save``'s legacy magic number (else it is a plain pickle)."""
    start = f.tell()
    try:
        return scan_pickle(f).first == _LEGACY_MAGIC
    except (ValueError, EOFError, OSError, IndexError, KeyError):
        return False
    finally:
        f.seek(start)

"""NVlabs' ``torch_utils.persistence`` protocol, read as data: a persistence object is a record, never code.

StyleGAN2-ADA and StyleGAN3 pickle each network as ``_reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version, module_src, class_name, state}``: the *source code* of the module that
defined the class, the class's name in it and the object's ``__dict__``. NVlabs' loader ``exec``-s that
source. Here the unpickler gets :func:`record_from_meta` for that global instead: it checks the record's
shape and returns a :class:`PersistentRecord`, so unpickling builds nothing but data; the user's checkout
supplies the classes afterwards (:mod:`.checkout`). ``dnnlib.EasyDict`` (the kwargs NVlabs keeps) is read as
a plain ``dict``.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Iterator
from dataclasses import dataclass
from pickle import UnpicklingError
from typing import IO, Any

__all__ = [
    "PERSISTENT_OBJ",
    "PERSISTENCE_GLOBALS",
    "PersistentRecord",
    "is_nvlabs_pickle",
    "iter_records",
    "record_from_meta",
]

#: The global every persistence object is pickled with.
PERSISTENT_OBJ = "torch_utils.persistence._reconstruct_persistent_obj"
#: The one ``meta["type"]`` and the protocol versions NVlabs' code has written (``_version`` 6 since 2021).
_TYPE, _VERSIONS = "class", range(1, 7)
#: The longest embedded module source read (NVlabs' largest, networks_stylegan3.py, is about 25 kB).
_MAX_SOURCE = 4 << 20
#: How far into a file its first globals are looked for (a network's global comes before its 30 kB source).
_HEAD = 64 << 10


@dataclass(eq=False)
class PersistentRecord:
    """One persistence object as the file states it: nothing of it has been built or run."""

    class_name: str
    module_src: str
    state: dict
    version: int

    def __repr__(self) -> str:
        return f"<NVlabs persistence record {self.class_name}>"


def record_from_meta(meta: Any) -> PersistentRecord:
    """What the unpickler calls for :data:`PERSISTENT_OBJ`: ``meta`` checked, stored, never executed."""
    if not isinstance(meta, dict) or set(meta) != {"type", "version", "module_src", "class_name", "state"}:
        keys = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise UnpicklingError(f"a persistence object with unexpected metadata ({keys})")
    kind, version, source, name, state = (meta[k] for k in ("type", "version", "module_src", "class_name", "state"))
    if kind != _TYPE or type(version) is not int or version not in _VERSIONS:
        raise UnpicklingError(f"a persistence object of type {kind!r}, version {version!r} (NVlabs writes type 'class', versions 1-6)")
    if not isinstance(name, str) or not name.isidentifier():
        raise UnpicklingError(f"a persistence object whose class_name {name!r} is not a Python name")
    if not isinstance(source, str) or len(source) > _MAX_SOURCE:
        raise UnpicklingError(f"a persistence object ({name}) whose module_src is not a string of at most {_MAX_SOURCE} characters")
    state = {} if state is None else state
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UnpicklingError(f"a persistence object ({name}) whose state is not a dict of attribute names")
    return PersistentRecord(name, source, state, version)


class _EasyDict(dict):
    """``dnnlib.EasyDict`` as the unpickler restores it: creating one yields a plain ``dict`` (the kwargs are data).

    A plain dict, so that torch's ``weights_only`` unpickler (which fills only exact dicts) and Python's
    (``NEWOBJ`` wants a type) both accept it."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:  # type: ignore[misc]
        return {}


#: What a persistence pickle's own globals are read as, by either unpickler.
PERSISTENCE_GLOBALS: dict[str, Any] = {
    PERSISTENT_OBJ: record_from_meta,
    "dnnlib.util.EasyDict": _EasyDict,
    "dnnlib.EasyDict": _EasyDict,
}


def iter_records(obj: Any, limit: int = 100) -> Iterator[PersistentRecord]:
    """The records reachable from ``obj`` through dicts, lists and tuples (not inside records), depth-limited."""
    todo = [(obj, 0)]
    seen: set[int] = set()
    while todo:
        value, depth = todo.pop()
        if id(value) in seen or depth > limit:
            continue
        seen.add(id(value))
        if isinstance(value, PersistentRecord):
            yield value
        elif isinstance(value, dict):
            todo += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            todo += [(v, depth + 1) for v in value]


def is_nvlabs_pickle(f: IO[bytes]) -> bool:
    """Whether a plain pickle names :data:`PERSISTENT_OBJ` among its first globals (read from its first 64 kB
    with :mod:`pickletools`, which executes nothing). ``f`` is rewound."""
    start = f.tell()
    try:
        head = io.BytesIO(f.read(_HEAD))
    finally:
        f.seek(start)
    strings: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(head):
            if op.name in ("GLOBAL", "INST") and str(arg).replace(" ", ".") == PERSISTENT_OBJ:
                return True
            if op.name == "STACK_GLOBAL" and ".".join(map(str, strings[-2:])) == PERSISTENT_OBJ:
                return True
            if "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(arg))
            elif op.name not in ("FRAME", "PROTO"):
                strings.append(None)
    except (ValueError, EOFError, IndexError, KeyError, UnicodeDecodeError):  # the head ends mid-opcode, or garbage
        pass
    return False

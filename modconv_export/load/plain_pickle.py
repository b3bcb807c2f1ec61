"""Plain pickles (``pickle.dump``) read as data: Python's unpickler, with every global answered from a table.

torch's ``weights_only`` unpickler reads torch.save's own pickles only (protocol 2, no ``STACK_GLOBAL``, no
bytes opcodes, items set on exact dicts), so it cannot read what ``pickle.dump`` writes at protocols 3-5 --
NVlabs' network pickles among them. This is the restricted unpickler of Python's documentation ("Restricting
Globals"): ``find_class`` returns only what its table holds (decided by :mod:`.allowlist`, listed before any
object is built), anything else is refused, and persistent ids are refused. The table's entries build data
only; tensors come as torch pickles them without torch.save:

* a storage is ``torch.storage._load_from_bytes(blob)``, whose blob is a whole legacy-format ``torch.save`` file
  that torch itself would load with its unrestricted unpickler. :func:`storage_from_blob` reads it with this same
  unpickler, allowing nothing but one storage id, and checks the declared element count against the bytes
  present before it allocates anything;
* :func:`rebuild_tensor` and :func:`rebuild_parameter` check that a tensor lies inside its storage, never
  repeats it (a stride-0 view of 2**40 elements) and carries no hooks, then call torch's own rebuild.

Every tensor is rebuilt with ``requires_grad=False``: the toolkit only runs models.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pickle import UnpicklingError
from typing import IO, Any

import torch

__all__ = ["DATA_GLOBALS", "RestrictedUnpickler", "rebuild_parameter", "rebuild_tensor", "storage_from_blob"]

#: ``torch.save``'s legacy format: magic number and protocol version, then system info, object, storage keys.
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_MAX_DIMS = 64
#: The dtypes a storage blob may hold (quantized storages are refused).
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
           torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128)  # fmt: skip


class RestrictedUnpickler(pickle.Unpickler):
    """Python's unpickler whose globals are ``allowed[name]`` only; ``storage_id`` answers persistent ids."""

    def __init__(self, file: IO[bytes], allowed: Mapping[str, Any], storage_id: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._storage_id = storage_id

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as protocol 2 writes them
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full not in self._allowed:
            raise UnpicklingError(f"it needs the Python global {full}, which is not allowed here")
        return self._allowed[full]

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_id is None:
            raise UnpicklingError("it holds a persistent id, which pickle.dump never writes")
        return self._storage_id(pid)


class _StorageType:
    """What a blob's ``torch.FloatStorage`` (and friends) stands for: its dtype, nothing to call."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_TYPES = {
    f"torch.{name}": _StorageType(dtype) for dtype, name in torch.storage._dtype_to_storage_type_map().items() if dtype in _DTYPES
}


def _blob_error(what: str) -> UnpicklingError:
    return UnpicklingError(f"a tensor's storage blob (torch.storage._load_from_bytes) {what}")


def storage_from_blob(blob: Any) -> torch.storage.TypedStorage:
    """The storage a ``torch.storage._load_from_bytes`` blob holds, read as data with its size checked first."""
    if not isinstance(blob, (bytes, bytearray)):
        raise _blob_error(f"is a {type(blob).__name__}, not bytes")
    stream = io.BytesIO(blob)
    ids: list[tuple[str, torch.dtype, int]] = []

    def storage_id(pid: Any) -> str:
        ok = type(pid) is tuple and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
        ok = ok and isinstance(pid[2], str) and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None
        if not ok or ids:
            raise _blob_error("holds something other than one storage")
        ids.append((pid[2], pid[1].dtype, pid[4]))
        return pid[2]

    try:
        magic, protocol, info = (RestrictedUnpickler(stream, {}).load() for _ in range(3))
        if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(info, dict) or info.get("little_endian") is not True:
            raise _blob_error("is not a little-endian torch.save file of torch's legacy format")
        key = RestrictedUnpickler(stream, _STORAGE_TYPES, storage_id).load()
        keys = RestrictedUnpickler(stream, {}).load()
    except UnpicklingError as exc:
        raise _blob_error(f"is refused: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        raise _blob_error(f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if not ids or keys != [key]:
        raise _blob_error("holds something other than one storage")
    _, dtype, numel = ids[0]
    declared = int.from_bytes(stream.read(8), "little", signed=True)
    nbytes = numel * torch._utils._element_size(dtype)
    left = len(blob) - stream.tell()
    if declared != numel or left != nbytes:
        raise _blob_error(f"declares {numel:,} {str(dtype).replace('torch.', '')} elements ({nbytes:,} bytes) but holds {left:,} bytes")
    data = bytearray(memoryview(blob)[stream.tell() :])  # the one copy, of bytes that are there
    tensor = torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return torch.storage.TypedStorage(wrap_storage=tensor.untyped_storage(), dtype=dtype, _internal=True)


def _no_hooks(hooks: Any, what: str) -> None:
    if hooks:
        raise UnpicklingError(f"a {what} carries hooks or Python state of its own ({type(hooks).__name__})")


def rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False, hooks: Any = None, metadata: Any = None
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` (and v1), after checking that the view lies inside its storage."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnpicklingError(f"a tensor is rebuilt from a {type(storage).__name__}, not from a storage")
    dims = [size, stride]
    ok = all(isinstance(d, (tuple, list)) and all(type(n) is int and n >= 0 for n in d) for d in dims)
    if not ok or len(size) != len(stride) or len(size) > _MAX_DIMS or type(offset) is not int or offset < 0:
        raise UnpicklingError(f"a tensor with size {size!r}, stride {stride!r}, offset {offset!r}")
    _no_hooks(hooks, "tensor")
    _no_hooks(metadata, "tensor")
    numel, held = math.prod(size), storage._size()
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else 0
    if numel > held or end > held:
        raise UnpicklingError(
            f"a tensor of shape {list(size)} (stride {list(stride)}, offset {offset}) needs more than its storage's {held:,} elements"
        )
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter`` (and ``_with_state``): a parameter around a rebuilt tensor, no hooks."""
    if type(data) is not torch.Tensor:
        raise UnpicklingError(f"a parameter is rebuilt from a {type(data).__name__}, not from a tensor")
    _no_hooks(hooks, "parameter")
    _no_hooks(state, "parameter")
    return torch.nn.Parameter(data, requires_grad=False)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 writes ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnpicklingError(f"_codecs.encode of {type(text).__name__} as {encoding!r} (only latin-1 text is bytes)")
    return text.encode("latin-1")


#: The plain pickle's data globals: how ``pickle.dump`` writes tensors, bytes, sets and ordered dicts.
DATA_GLOBALS: dict[str, Any] = {
    "torch.storage._load_from_bytes": storage_from_blob,
    "torch._utils._rebuild_tensor_v2": rebuild_tensor,
    "torch._utils._rebuild_tensor": rebuild_tensor,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "_codecs.encode": _latin1,
}

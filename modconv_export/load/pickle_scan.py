"""The Python globals a ``torch.save`` file names, read without unpickling it.

This only *names* things, for the one-line refusal and so that a refused file is refused before any
object is built; what a file may load is enforced by torch's own ``weights_only`` unpickler (see
:mod:`modconv_export.load.allowlist`). For the zip format (torch.save's default) torch's
``get_unsafe_globals_in_checkpoint`` does the listing. torch offers nothing for the legacy format
(``_use_new_zipfile_serialization=False``: a stream of pickles) nor for pickle opcodes its parser does
not know (protocol 4's ``STACK_GLOBAL``, which the safe unpickler cannot read anyway); for those the
opcodes are walked with :mod:`pickletools`, which never executes anything.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from typing import IO

import torch

__all__ = ["COMPUTED", "is_legacy_torch_file", "pickle_globals", "unsafe_globals"]

#: Name given to a ``STACK_GLOBAL`` whose module or name is computed while unpickling.
COMPUTED = "<a global whose name is computed while unpickling>"
#: pickle of ``torch.save``'s legacy format starts with this magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: legacy format: magic number, protocol version, system info, the object, storage keys.
_LEGACY_PICKLES = 5


def _torch_name(module: str, name: str) -> str:
    """Python 2 names mapped as torch's unpickler maps them (``__builtin__`` -> ``builtins``)."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _scan(stream: IO[bytes]) -> tuple[list[str], object]:
    """Globals named by one pickle in ``stream`` and the first value it pushes (the legacy magic)."""
    found: list[str] = []
    pushed: list[object] = []  # recent constants, enough to name a STACK_GLOBAL's two operands
    memo: dict[int, object] = {}
    first: object = None
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if first is None and arg is not None and name not in ("PROTO", "FRAME"):
            first = arg
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append(_torch_name(module, attr))
        elif name == "STACK_GLOBAL":
            module, attr = pushed[-2:] if len(pushed) >= 2 else [None, None]
            found.append(_torch_name(module, attr) if isinstance(module, str) and isinstance(attr, str) else COMPUTED)
        if "UNICODE" in name or "STRING" in name:
            pushed.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
        elif name not in ("FRAME", "PROTO"):
            pushed.append(None)  # anything else: the next STACK_GLOBAL's operands are not plain strings
    return found, first


def _default_safe() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` allows with no allowlist of ours."""
    from torch import _weights_only_unpickler

    return set(_weights_only_unpickler._get_allowed_globals())


def _data_pkl(zf: zipfile.ZipFile) -> bytes:
    """The object pickle torch reads: ``<first record's folder>/data.pkl``."""
    names = zf.namelist()
    return zf.read(f"{names[0].split('/')[0]}/data.pkl")


def unsafe_globals(f: IO[bytes], fmt: str) -> list[str]:
    """Globals in the file at ``f`` (``fmt``: ``"zip"`` or ``"pickle"``) that torch's safe loader does not allow by itself.

    ``f`` is rewound afterwards. Raises ``ValueError`` for pickle data that cannot be parsed.
    """
    start = f.tell()
    try:
        if fmt == "zip":
            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
            except pickle.UnpicklingError:  # an opcode torch's parser (and its unpickler) does not read
                f.seek(start)
                with zipfile.ZipFile(f) as zf:
                    found = _scan(io.BytesIO(_data_pkl(zf)))[0]
        else:
            found, first = _scan(f)
            if first == _LEGACY_MAGIC:
                for _ in range(_LEGACY_PICKLES - 1):
                    found += _scan(f)[0]
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
        return sorted(set(_scan(_SizeChecked(f, size))[0]))  # type: ignore[arg-type]
    except (ValueError, EOFError, OSError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    finally:
        f.seek(start)


def is_legacy_torch_file(f: IO[bytes]) -> bool:
    """Whether a pickle stream starts with ``torch.save``'s legacy magic number (else it is a plain pickle)."""
    start = f.tell()
    try:
        return _scan(f)[1] == _LEGACY_MAGIC
    except (ValueError, EOFError, OSError, IndexError, KeyError):
        return False
    finally:
        f.seek(start)

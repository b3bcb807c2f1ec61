"""List the Python globals a pickle would import, without unpickling it (``pickletools`` only reads opcodes).

The loader uses this to name what a refused file needs, and as a tripwire before a *trusted* full
unpickle: a file whose pickle calls ``os.system``, ``subprocess`` or ``eval`` is never a model, so it
is refused even with ``--trust-pickle``. This is not a sandbox: a crafted pickle can reach code in
ways no list catches, which is why the full unpickler only runs on the user's explicit trust.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path
from typing import IO

__all__ = ["dangerous_globals", "is_legacy_torch_file", "pickle_globals"]

#: pickle of ``torch.save``'s legacy format starts with this magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "ctypes", "code", "codeop", "webbrowser", "multiprocessing", "signal", "pickle", "_pickle", "marshal",
}  # fmt: skip
_DANGEROUS_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "globals", "locals"}


def _scan(stream: IO[bytes]) -> tuple[list[str], object]:
    """Globals named by one pickle in ``stream`` and the value it pushes first (for the magic number)."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    top: object = None
    first: object = None
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if first is None and arg is not None and name != "PROTO":
            first = arg
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
            top = None
        elif name == "STACK_GLOBAL":
            found.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
            top = None
        elif "UNICODE" in name or "STRING" in name:
            top = arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else None
            if isinstance(top, str):
                strings.append(top)
        elif name == "MEMOIZE":
            memo[len(memo)] = top
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = top
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            top = memo.get(int(arg))
            if isinstance(top, str):
                strings.append(top)
        else:
            top = None
    return found, first


def pickle_globals(path: str | Path, fmt: str) -> list[str]:
    """Globals (``module.name``) that loading ``path`` would import; ``ValueError`` if the pickle is unreadable.

    ``fmt`` is ``"zip"`` (``torch.save``'s default: ``<archive>/data.pkl``) or ``"pickle"`` (the legacy
    format, a header of small pickles then the object, or a plain ``pickle.dump``).
    """
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as zf:
                member = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n))
                return _scan(io.BytesIO(zf.read(member)))[0]
        with open(path, "rb") as f:
            found, first = _scan(f)
            if first == _LEGACY_MAGIC:  # then: protocol version, sys info, the object, storage keys
                for _ in range(4):
                    found += _scan(f)[0]
            return found
    except (ValueError, EOFError, StopIteration, zipfile.BadZipFile, OSError, IndexError, KeyError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def is_legacy_torch_file(path: str | Path) -> bool:
    """Whether a pickle file starts with ``torch.save``'s legacy magic number (else it is a plain pickle)."""
    try:
        with open(path, "rb") as f:
            return _scan(f)[1] == _LEGACY_MAGIC
    except (ValueError, EOFError, OSError, IndexError, KeyError):
        return False


def dangerous_globals(names: list[str]) -> list[str]:
    """The globals in ``names`` that run commands, evaluate code or touch files: never part of a model."""
    bad = []
    for full in names:
        module, _, attr = full.rpartition(".")
        root = module.split(".")[0]
        if root in _DANGEROUS_MODULES or (module in ("builtins", "__builtin__") and attr in _DANGEROUS_BUILTINS):
            bad.append(full)
    return bad

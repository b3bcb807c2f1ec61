"""Atomic output files: written under a temporary name beside the target and renamed on success.

An interrupted or failed export therefore never leaves a partial file and never destroys an existing
good one (``os.replace`` is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ExportError

__all__ = ["atomic_output", "check_writable_target"]


def check_writable_target(path: str | os.PathLike) -> Path:
    """Resolve ``path`` and fail clearly if its directory is missing or not writable."""
    target = Path(path).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"output directory is not a directory: {parent}")
    if not parent.is_dir():
        raise ExportError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"output directory is not writable: {parent}")
    if target.is_dir():
        raise ExportError(f"output path is a directory: {target}")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; move it onto ``path`` if the block succeeds."""
    target = check_writable_target(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()

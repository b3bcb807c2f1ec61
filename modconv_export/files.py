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


def _temporary_file(target: Path, suffix: str) -> Path:
    """Create an empty file beside ``target``; an unwritable directory is an :class:`ExportError`.

    Creating a file is the only reliable test: ``os.access`` says yes to root, and read-only mounts or
    a full disk only show when something is written.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as exc:
        raise ExportError(f"output directory is not writable: {target.parent} ({exc.strerror})") from None
    os.close(fd)
    return Path(name)


def check_writable_target(path: str | os.PathLike) -> Path:
    """Resolve ``path`` and fail clearly if its directory is missing or not writable."""
    target = Path(path).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"output directory is not a directory: {parent}")
    if not parent.is_dir():
        raise ExportError(f"output directory does not exist: {parent}")
    if target.is_dir():
        raise ExportError(f"output path is a directory: {target}")
    _temporary_file(target, ".probe").unlink()
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; move it onto ``path`` if the block succeeds."""
    target = check_writable_target(path)
    tmp = _temporary_file(target, ".partial")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()

"""Output files as one transaction: written under temporary names beside their targets, renamed together.

:class:`Outputs` stages every file a run writes (ONNX, TorchScript, JSON, PNG) as a temporary in the
target's directory and renames them all into place in :meth:`Outputs.commit`, only after every step
succeeded. Until then an error, a full disk or a signal removes the temporaries and leaves existing
files as they were. During the renames the handled signals are held back, and a rename that fails
puts back what the earlier ones replaced, so the targets change all together or not at all.

Temporary names are short (``.<first 48 bytes of the name>.<random>.partial``), so a legal 255-byte
output name still leaves room for them. Writers hand bytes to :func:`write_bytes`, which writes from
Python (a full disk is an ``OSError``, never an abort in a C++ writer) and flushes to the disk before
the rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ExportError
from .interrupts import deferred

__all__ = ["Outputs", "atomic_output", "check_writable_target", "file_sha256", "write_bytes"]

_NAME_BYTES = 48


def _short(name: str) -> str:
    """The first bytes of a file name, cut on a byte boundary (undecodable bytes stay surrogate escapes)."""
    return os.fsdecode(os.fsencode(name)[:_NAME_BYTES])


def _temporary_file(target: Path, suffix: str) -> Path:
    """Create an empty file beside ``target``; an unwritable directory is an :class:`ExportError`.

    Creating a file is the only reliable test: ``os.access`` says yes to root, and read-only mounts or
    a full disk only show when something is written.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=f".{_short(target.name)}.", suffix=suffix, dir=target.parent)
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
    if len(os.fsencode(target.name)) > 255:
        raise ExportError(f"output file name is longer than 255 bytes: {target.name[:40]}...")
    _temporary_file(target, ".probe").unlink()
    return target


def write_bytes(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (a full disk shows here, as ``OSError``).

    ``data`` is bytes, or chunks of bytes written in order: a model file written one tensor at a time
    (:mod:`modconv_export.export.onnx_write`) is never held in memory whole.
    """
    with open(path, "wb") as f:
        for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file's bytes (hex), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Outputs:
    """The files of one run. ``stage(target)`` gives a temporary path; ``commit()`` renames them all.

    Use as a context manager: leaving the block without :meth:`commit` (an error, a signal) removes
    every temporary. ``committed`` says whether the targets were replaced.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}
        self._made: list[Path] = []  # folders made for outputs, removed again if the run fails
        self.committed = False

    def make_dirs(self, path: str | os.PathLike) -> Path:
        """Make the folder ``path`` and its missing parents; :meth:`discard` removes the ones made here."""
        path = Path(path).expanduser()
        for folder in reversed([p for p in [path, *path.parents] if not p.exists()]):  # the outermost first
            folder.mkdir(exist_ok=True)
            self._made.append(folder)  # each one as it is made: a failure further down still removes it
        return path

    def stage(self, path: str | os.PathLike) -> Path:
        """A new empty temporary beside ``path`` that :meth:`commit` will move onto it."""
        target = check_writable_target(path)
        if target in self._staged:
            return self._staged[target]
        tmp = _temporary_file(target, ".partial")
        self._staged[target] = tmp
        return tmp

    def temporary(self, path: str | os.PathLike) -> Path | None:
        """The temporary staged for ``path`` (``None`` if it was not staged)."""
        return self._staged.get(Path(path).expanduser())

    def staged(self, path: str | os.PathLike) -> Path:
        """:meth:`temporary` for a path this run staged (a bug in the caller otherwise)."""
        temporary = self.temporary(path)
        if temporary is None:
            raise RuntimeError(f"{path} was never staged")
        return temporary

    def commit(self) -> None:
        """Rename every temporary onto its target: all of them or, if a rename fails, none."""
        mode = 0o666 & ~_umask()  # mkstemp creates 0600; give the files the usual permissions
        done: list[tuple[Path, Path | None, int]] = []  # (target, a link to its old content or None, our inode)
        with deferred():
            try:
                for target, tmp in self._staged.items():
                    os.chmod(tmp, mode)
                    backup, inode = self._backup(target), os.stat(tmp).st_ino
                    os.replace(tmp, target)
                    done.append((target, backup, inode))
                self.committed = True
            except BaseException:
                self._roll_back(done)
                raise
            finally:
                for _, backup, _ in done:
                    if backup is not None:
                        with contextlib.suppress(OSError):
                            backup.unlink()
        self._staged.clear()

    @staticmethod
    def _backup(target: Path) -> Path | None:
        if not target.exists():
            return None
        backup = Path(tempfile.mktemp(prefix=f".{_short(target.name)}.", suffix=".old", dir=target.parent))
        try:
            os.link(target, backup)  # a second name for the old file: no copy, and cheap to put back
        except OSError:
            return None  # no hard links here (or the name was taken): a later failure cannot restore this one
        return backup

    @staticmethod
    def _roll_back(done: list[tuple[Path, Path | None, int]]) -> None:
        """Undo the renames already made, where the target still holds this run's file."""
        for target, backup, inode in reversed(done):
            with contextlib.suppress(OSError):
                if os.stat(target).st_ino != inode:
                    continue  # someone else replaced it meanwhile: theirs stays
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink()  # it did not exist before this run

    def discard(self) -> None:
        """Remove every temporary and, unless committed, the folders made for them (the targets are untouched)."""
        with deferred():  # a second signal must not leave a temporary behind
            self._discard()

    def _discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._staged.clear()
        if not self.committed:
            for folder in reversed(self._made):  # the deepest first; a folder something else filled stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
        self._made.clear()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; move it onto ``path`` if the block succeeds."""
    with Outputs() as outputs:
        tmp = outputs.stage(path)
        yield tmp
        outputs.commit()

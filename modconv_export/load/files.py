"""Reading a model file's bytes: only regular files are opened, and the format is named before torch reads it.

A FIFO, device or directory is refused before anything blocks on it; an empty file, text, a plain pickle,
a TorchScript archive or a damaged zip is named as what it is, in one line, before any unpickling.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import LoadError
from .persistence import is_nvlabs_pickle
from .pickle_scan import is_legacy_torch_file

__all__ = ["NVLABS", "ZIP_MAGIC", "check_zip", "open_regular", "sniff"]

ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
#: :func:`sniff`'s name for a plain pickle of NVlabs persistence objects (read by :mod:`.nvlabs`, not by torch).
NVLABS = "nvlabs"


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading; anything but a regular file (a FIFO, a device, a socket) is refused at once."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise LoadError(f"{path}: is a directory, not a model file")
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise LoadError(f"{path}: is {kind}, not a model file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        yield f


def sniff(f: IO[bytes], path: Path) -> str:
    """``"zip"``, ``"pickle"`` or :data:`NVLABS`; a clear error for everything else."""
    try:
        head = f.read(4096)
        f.seek(0)
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise LoadError(f"{path}: is empty (0 bytes)")
    if head.startswith(ZIP_MAGIC):
        check_zip(f, path)
        return "zip"
    if head[0] == _PICKLE_PROTO:
        if is_nvlabs_pickle(f):  # StyleGAN2-ADA / StyleGAN3 network pickles: pickle.dump, not torch.save
            return NVLABS
        if not is_legacy_torch_file(f):  # torch.load cannot read it, and a full unpickle would run it first
            raise LoadError(f"{path}: is a plain pickle (pickle.dump) or a damaged file, not a model saved with torch.save")
        return "pickle"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a multi-byte character cut at the end
                raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)") from None
        raise LoadError(f"{path}: is a text file, not a model saved with torch.save")
    raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)")


def check_zip(f: IO[bytes], path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            bad = zf.testzip()  # CRC of every member: catches corruption before any unpickling
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise LoadError(f"{path}: is truncated or corrupt (zip archive unreadable: {exc})") from exc
    finally:
        f.seek(0)
    if bad is not None:
        raise LoadError(f"{path}: is corrupt (checksum mismatch in {bad})")
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        raise LoadError(f"{path}: is a TorchScript archive (torch.jit.save); export from the model's checkpoint instead")
    if not any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names):
        raise LoadError(f"{path}: is a zip archive but not a torch.save file (no data.pkl)")

"""Reading a model file's bytes: only regular files are opened, and the format is named before torch reads it.

A FIFO, device or directory is refused before anything blocks on it; an empty file, text, an ONNX model, a
plain pickle, a TorchScript archive or a damaged zip is named as what it is, in one line, before any
unpickling (:func:`check_model_file` says as much without importing torch). Then the file is measured
against what it declares (:func:`check_zip_entries`, :func:`check_declared_storages`, :func:`check_legacy`):
a compressed tensor record, storages beyond the bytes present, data nested beyond reason -- a resource bomb
is a malformed file, refused before torch allocates anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .._util.memory import format_bytes
from ..errors import LoadError
from .persistence import is_nvlabs_pickle
from .pickle_scan import PickleFacts, TooDeep, is_legacy_torch_file, record_folder, scan_legacy, scan_zip

__all__ = [
    "NVLABS",
    "ZIP_MAGIC",
    "check_declared_storages",
    "check_legacy",
    "check_model_file",
    "check_zip",
    "check_zip_entries",
    "open_regular",
    "sniff",
]

ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
#: What the compressed entries of a zip checkpoint may inflate to beyond the archive's own size (torch.save
#: compresses nothing; a re-packed archive may deflate its small records).
_INFLATE_SLACK = 64 * 2**20
#: Each storage of the legacy format is preceded by its element count (8 bytes).
_LEGACY_HEADER = 8
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
        check_legacy(f, path)
        return "pickle"
    if _is_onnx(head):
        raise LoadError(f"{path}: is an ONNX model, not a PyTorch file: give the checkpoint it was exported from")
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a multi-byte character cut at the end
                raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)") from None
        raise LoadError(f"{path}: is a text file, not a model saved with torch.save")
    raise LoadError(f"{path}: is not a PyTorch file (unknown binary format)")


#: ONNX's ModelProto: field 1 (ir_version, a varint) first, then one of its other fields (producer_name,
#: producer_version, domain, model_version, doc_string, graph, opset_import, ...), as every writer orders them.
_ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}


def _is_onnx(head: bytes) -> bool:
    """Whether ``head`` starts like a serialized ONNX model (``ir_version`` 3..15, then a ModelProto field)."""
    return len(head) > 3 and head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] in _ONNX_FIELDS


def check_model_file(path: str | os.PathLike) -> None:
    """What can be said of ``path`` without torch: a readable regular file in a format torch.save writes
    (zip or legacy pickle; their contents are checked when the file is loaded). One :class:`LoadError` line else."""
    path = Path(path).expanduser()
    with open_regular(path) as f:
        try:
            head = f.read(4096)
        except OSError as exc:
            raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        if not (head.startswith(ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTO])):
            f.seek(0)
            sniff(f, path)  # names what it is instead


def _file_size(f: IO[bytes]) -> int:
    return os.fstat(f.fileno()).st_size


def check_zip(f: IO[bytes], path: Path) -> None:
    """A zip checkpoint: its directory, every record's checksum, what it is, and the storages its pickle declares."""
    import zipfile

    size = _file_size(f)
    try:
        with zipfile.ZipFile(f) as zf:
            check_zip_entries(zf.infolist(), size, path)  # before anything is inflated
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
    facts, records = _zip_storages(f, path)
    check_declared_storages(facts, size, size, "archive", path, records=records)


def _zip_storages(f: IO[bytes], path: Path) -> tuple[PickleFacts, dict[str, int]]:
    """What the archive's pickle declares, and the size of each tensor record (storage key -> bytes)."""
    import zipfile

    try:
        with zipfile.ZipFile(f) as zf:
            facts = _scanned(lambda: scan_zip(zf), path)
            data = f"{record_folder(zf)}/data/"
            return facts, {i.filename[len(data) :]: i.file_size for i in zf.infolist() if i.filename.startswith(data)}
    finally:
        f.seek(0)


def check_zip_entries(entries: list, size: int, path: Path) -> None:
    """The zip directory against the archive: torch.save stores every record uncompressed and side by side.

    A compressed tensor record, records that together claim more bytes than the archive has (overlapping
    or cut off), or compressed records inflating far beyond the archive are a malformed file -- refused from
    the directory alone, before a byte is inflated.
    """
    import zipfile

    stored = sum(e.compress_size for e in entries)
    if stored > size:
        raise LoadError(
            f"{path}: is malformed: its records claim {format_bytes(stored)} in a {format_bytes(size)} archive (overlapping or cut off)"
        )
    for e in entries:
        if e.compress_type != zipfile.ZIP_STORED and "/data/" in e.filename:
            raise LoadError(
                f"{path}: is malformed: compressed tensor entry {e.filename} ({format_bytes(e.compress_size)} inflating to "
                f"{format_bytes(e.file_size)}; torch.save stores tensor data uncompressed)"
            )
        if e.compress_type == zipfile.ZIP_STORED and e.file_size != e.compress_size:
            raise LoadError(f"{path}: is truncated or corrupt (record {e.filename}: its stored and full sizes differ)")
    inflated = sum(e.file_size for e in entries if e.compress_type != zipfile.ZIP_STORED)
    if inflated > size + _INFLATE_SLACK:
        raise LoadError(
            f"{path}: is malformed: its compressed records inflate to {format_bytes(inflated)} from a {format_bytes(size)} archive "
            "(torch.save compresses nothing)"
        )


def check_legacy(f: IO[bytes], path: Path) -> None:
    """A legacy-format file (``_use_new_zipfile_serialization=False``): the storages its pickles declare
    against the bytes that follow them, before torch allocates any."""
    start = f.tell()
    try:
        facts, data_start = _scanned(lambda: scan_legacy(f), path)
    finally:
        f.seek(start)
    size = _file_size(f)
    held = max(0, size - data_start - _LEGACY_HEADER * len(facts.storages))
    check_declared_storages(facts, held, size, "file", path)


def check_declared_storages(
    facts: PickleFacts, held: int, size: int, container: str, path: Path, records: dict[str, int] | None = None
) -> None:
    """Every storage the pickle declares must have its bytes in the file (of ``size`` bytes, a ``container``):
    ``held`` bytes of tensor data at most in total and, for a zip checkpoint, each storage in its own record
    (``records``: storage key -> record size)."""
    declared = sum(facts.storages.values())
    if declared > held:
        raise LoadError(
            f"{path}: is truncated or corrupt: it declares {format_bytes(declared)} of tensor data in a {format_bytes(size)} {container}"
        )
    if records is not None:
        for key, need in facts.storages.items():
            if need > records.get(key, -1):
                found = f"its record holds {format_bytes(records[key])}" if key in records else "the archive has no record of it"
                raise LoadError(f"{path}: is malformed: tensor storage {key[:40]!r} declares {format_bytes(need)} but {found}")


def _scanned(scan, path: Path):
    """``scan()``; a pickle nested beyond reason or not a pickle at all is a one-line :class:`LoadError`."""
    try:
        return scan()
    except TooDeep as exc:
        raise LoadError(f"{path}: is malformed: {exc} (refused before unpickling)") from None
    except (ValueError, EOFError, KeyError, OSError) as exc:
        raise LoadError(f"{path}: is truncated or corrupt (pickle data unreadable: {exc})") from None

"""What the command line prints: results on stdout, progress on stderr only where someone watches.

Also the helpers around it: file names that are not UTF-8 shown escaped instead of failing, and the
exporters' own C++ logs (which bypass Python) kept off the terminal unless ``--debug``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .._util.interrupts import deferred
from .._util.memory import format_bytes

__all__ = ["PROG", "Console", "captured_fds", "error", "file_size", "plural", "printable"]

PROG = "modconv-export"


def printable(text: str) -> str:
    """File names may hold bytes that are not UTF-8 (kept as surrogate escapes): show them as ``\\xff``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Console:
    """Results to stdout; live progress to stderr only where someone watches (a terminal, or ``-v``)."""

    def __init__(self, verbose: bool, quiet: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.live = not quiet and (verbose or sys.stderr.isatty())

    def say(self, line: str = "") -> None:
        if not self.quiet:
            print(printable(line), flush=True)

    def progress(self, line: str) -> None:
        if self.live:
            print(printable(f"{PROG}: {line}"), file=sys.stderr, flush=True)

    def detail(self, line: str) -> None:
        if self.verbose:
            print(printable(line), flush=True)


@contextlib.contextmanager
def captured_fds(keep: bool) -> Iterator[list[str]]:
    """Send fds 1 and 2 to a temp file (the exporters' C++ logs bypass Python); yields the text holder."""
    holder: list[str] = []
    if keep:
        yield holder
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield holder
        finally:
            with deferred():  # the terminal must get fds 1 and 2 back, whatever signal arrives
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            sink.seek(0)
            holder.append(sink.read().decode("utf-8", "replace"))


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def file_size(path: str | os.PathLike) -> str:
    """The file's size in binary units (``919.7 KiB``), as :func:`~modconv_export._util.memory.format_bytes` writes sizes."""
    return format_bytes(Path(path).stat().st_size)


#: An error line is cut here: whatever a file or a library puts in a message, the line stays readable.
ERROR_LIMIT = 1000


def error(message: str, prefix: str = "error: ") -> None:
    """One line on stderr: ``modconv-export: error: <message>`` (whitespace folded, at most ``ERROR_LIMIT`` characters)."""
    line = " ".join(message.split())
    line = line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 4] + " ..."
    print(printable(f"{PROG}: {prefix}{line}"), file=sys.stderr, flush=True)

"""What the command line prints: results on stdout, progress on stderr only where someone watches.

Progress is step lines with the time since the command started (``modconv-export: [ 42.1 s] rewrite:
proving batch-grouped convolutions 7/20``), from the stages' :mod:`~modconv_export._util.progress` steps.
On a terminal a counted step redraws one line as it advances; elsewhere (``-v`` into a log) it is a line
when it starts, when it ends, and every few seconds between. ``-q``, or no terminal and no ``-v``: nothing.
The lines go to a copy of the terminal's stderr taken at the start, so they still reach it while the
exporters' own output is held back (:func:`captured_fds`).

Also the helpers around it: file names that are not UTF-8 shown escaped instead of failing, and the
exporters' own C++ logs (which bypass Python) kept off the terminal unless ``--debug``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .._util.interrupts import deferred
from .._util.memory import format_bytes
from .._util.progress import Step

__all__ = ["PROG", "Console", "captured_fds", "error", "file_size", "plural", "printable"]

PROG = "modconv-export"


def printable(text: str) -> str:
    """File names may hold bytes that are not UTF-8 (kept as surrogate escapes): show them as ``\\xff``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: Seconds between two lines of one counted step where lines cannot be redrawn (a log, not a terminal).
_LOG_EVERY_S = 5.0
_BAR = 20


class Console:
    """Results to stdout; live progress to stderr only where someone watches (a terminal, or ``-v``)."""

    def __init__(self, verbose: bool, quiet: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.live = not quiet and (verbose or self.tty)
        self.start = time.perf_counter()
        self._stream: TextIO | None = None
        self._open_line = False  # a redrawn counted line the next output must end first
        self._last: tuple[str, float] = ("", 0.0)

    def say(self, line: str = "") -> None:
        if not self.quiet:
            self._end_line()
            print(printable(line), flush=True)

    def progress(self, line: str) -> None:
        if self.live:
            self._write(f"{PROG}: [{self._elapsed()}] {line}\n")

    def step(self, step: Step) -> None:
        """A stage's :class:`~modconv_export._util.progress.Step`, shown as the module docstring says."""
        if not self.live:
            return
        if step.total is None:
            self.progress(step.text)
            return
        finished = step.done is not None and step.done >= step.total
        text = f"{PROG}: [{self._elapsed()}] {step.text} {step.done}/{step.total}"
        if self.tty:
            filled = _BAR * (step.done or 0) // max(step.total, 1)
            self._write(f"\r\033[K{text} [{'#' * filled}{'.' * (_BAR - filled)}]" + ("\n" if finished else ""), redrawn=not finished)
            return
        now = time.perf_counter()
        name, at = self._last
        if finished or name != step.text or now - at >= _LOG_EVERY_S:
            self._last = (step.text, now)
            self._write(text + "\n")

    def detail(self, line: str) -> None:
        if self.verbose:
            self._end_line()
            print(printable(line), flush=True)

    def close(self) -> None:
        """Release the copy of stderr (end a redrawn line first)."""
        self._end_line()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _elapsed(self) -> str:
        return f"{time.perf_counter() - self.start:6.1f} s"

    def _write(self, text: str, redrawn: bool = False) -> None:
        if self._stream is None:
            sys.stderr.flush()
            self._stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", encoding="utf-8", errors="backslashreplace")
        if not redrawn:
            self._end_line(keep=text.startswith("\r"))
        self._stream.write(printable(text))
        self._stream.flush()
        self._open_line = redrawn

    def _end_line(self, keep: bool = False) -> None:
        if self._open_line and self._stream is not None and not keep:
            self._stream.write("\n")
            self._stream.flush()
        self._open_line = False


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

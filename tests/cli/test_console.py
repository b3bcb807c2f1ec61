"""Progress on stderr: step lines with the time since the start; a counted step redrawn on one line on a
terminal, a few lines in a log; nothing with ``-q`` or without a terminal and ``-v``."""

from __future__ import annotations

import re
import sys

import pytest

from modconv_export._util.progress import Step, counted, reporting
from modconv_export.cli.console import Console


class _Terminal:
    """A stderr that says it is a terminal and writes to a file (what the console duplicates)."""

    def __init__(self, handle, tty: bool) -> None:
        self.handle, self.tty = handle, tty

    def isatty(self) -> bool:
        return self.tty

    def fileno(self) -> int:
        return self.handle.fileno()

    def flush(self) -> None:
        self.handle.flush()

    def write(self, text: str) -> int:
        return self.handle.write(text)


def _run(monkeypatch, tmp_path, tty: bool, verbose: bool, quiet: bool = False) -> str:
    path = tmp_path / "stderr.txt"
    with open(path, "w") as handle:
        monkeypatch.setattr(sys, "stderr", _Terminal(handle, tty))
        console = Console(verbose, quiet)
        with reporting(console.step):
            console.step(Step("rewrite: capturing the graph"))
            for _ in counted(range(3), "rewrite: proving convolutions"):
                pass
            console.step(Step("export: writing the file"))
        console.close()
    return path.read_bytes().decode()  # not read_text: universal newlines would turn each \r into a line


def _plain(text: str) -> list[str]:
    return [re.sub(r"^modconv-export: \[\s*\d+\.\d s\] ", "", line) for line in text.split("\n") if line]


def test_terminal_redraws_a_counted_step_on_one_line(monkeypatch, tmp_path):
    text = _run(monkeypatch, tmp_path, tty=True, verbose=False)
    lines = text.split("\n")
    assert _plain(lines[0]) == ["rewrite: capturing the graph"]
    # one line for the whole counted step: redrawn with \r, ended once when it is done
    assert lines[1].count("\r\033[K") == 4 and lines[1].endswith("proving convolutions 3/3 [####################]")
    assert "1/3 [######..............]" in lines[1]
    assert _plain(lines[2]) == ["export: writing the file"] and lines[3] == ""


def test_log_gets_a_counted_step_when_it_starts_and_ends(monkeypatch, tmp_path):
    text = _run(monkeypatch, tmp_path, tty=False, verbose=True)
    assert "\r" not in text
    assert _plain(text) == [
        "rewrite: capturing the graph",
        "rewrite: proving convolutions 0/3",
        "rewrite: proving convolutions 3/3",
        "export: writing the file",
    ]


@pytest.mark.parametrize("tty, verbose, quiet", [(False, False, False), (True, False, True)], ids=["not-a-terminal", "quiet"])
def test_nothing_without_a_terminal_or_with_quiet(monkeypatch, tmp_path, tty, verbose, quiet):
    assert _run(monkeypatch, tmp_path, tty, verbose, quiet) == ""

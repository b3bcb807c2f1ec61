"""``modconv-export MODEL OUT.onnx``: the pipeline from the shell.

:mod:`.arguments` (parser and option checks) -> :mod:`.inputs` (example inputs) -> :mod:`.steps` (rewrite,
export, verify, hand-off, report) run by :mod:`.main`, which owns the exit status, the output transaction
and the signal handling; :mod:`.console` is what the run prints.
"""

from ..errors import UsageError
from .arguments import build_parser, parse_input
from .main import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARITY, EXIT_USAGE, main

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARITY", "EXIT_USAGE", "UsageError", "build_parser", "main", "parse_input"]

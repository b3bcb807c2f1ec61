"""``python -m modconv_export`` and the ``modconv-export`` console script.

Signal handlers come first: importing torch and the exporters takes seconds, and a Ctrl-C or SIGTERM
in that time must end as one line with the documented status, like one during the run. An
interrupted process leaves at once (``os._exit``, after flushing its output): an import cut short
leaves half-initialised modules (numpy, say) whose clean-up at interpreter exit would print
tracebacks of its own, and there is nothing left to clean up -- temporary outputs are already removed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

from ._util.interrupts import HANDLED, Interrupted, exit_on_signal


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _ignore_signals() -> None:
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Install the signal handlers, import the command line and run it."""
    with exit_on_signal("modconv-export: error: interrupted by {signal} (nothing written)"):
        from .cli import main as cli_main  # seconds of imports

        try:
            code = cli_main(argv)  # installs its own handlers for the run
        except Interrupted as exc:  # a second signal while the run was reporting the first
            code = exc.exit_code
        _ignore_signals()  # the run is over: its status stands
    _ignore_signals()  # leaving the block restored the default handlers: a late signal must not kill the exit
    if code >= 128:  # interrupted: see the module docstring
        _leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

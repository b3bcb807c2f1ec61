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
from collections.abc import Sequence

from ._util.interrupts import HANDLED, Interrupted, exit_on_signal


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Install the signal handlers, import the command line and run it."""
    # after the block, signals are ignored: the run is over, its status stands
    with exit_on_signal("modconv-export: error: interrupted by {signal} (nothing written)", after=signal.SIG_IGN):
        from .cli import main as cli_main  # seconds of imports

        try:
            code = cli_main(argv)  # installs its own handlers for the run
        except Interrupted as exc:  # a second signal while the run was reporting the first
            code = exc.exit_code
        for s in HANDLED:  # back from the run, whose handlers gave way to this block's "nothing written" exit
            signal.signal(s, signal.SIG_IGN)
    if code >= 128:  # interrupted: see the module docstring
        _leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

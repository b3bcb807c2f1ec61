"""``python -m modconv_export`` and the ``modconv-export`` console script.

Signal handlers come first: importing torch and the exporters takes seconds, and a Ctrl-C or SIGTERM
in that time must end as one line with the documented status, like one during the run.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .interrupts import Interrupted, signals_raise


def main(argv: Sequence[str] | None = None) -> int:
    """Install the signal handlers, import the command line and run it."""
    with signals_raise():
        try:
            from .cli import main as cli_main
        except Interrupted as exc:
            print(f"modconv-export: error: interrupted by {exc.signal_name} while starting (nothing written)", file=sys.stderr, flush=True)
            return exc.exit_code
        return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())

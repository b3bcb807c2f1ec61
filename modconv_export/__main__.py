"""``python -m modconv_export MODEL OUT.onnx``: the same as the ``modconv-export`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

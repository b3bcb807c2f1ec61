"""Load: a model file -> an eval-mode module with its original layers (:mod:`.loader`).

Toolkit checkpoints (:mod:`.checkpoint`), bare state_dicts of a registered family, -- only on trust --
pickled modules under the allowlist of :mod:`.allowlist`, whose globals :mod:`.pickle_scan` lists first, and
NVlabs network pickles (:mod:`.nvlabs`), read as data and restored with the classes of the user's checkout.
"""

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that the command line
#: checks the model file with :mod:`.files` before torch is imported
_EXPORTS = {
    "GeneratorOptions": "options",
    "LoadedModel": "loader",
    "load_checkpoint": "checkpoint",
    "load_model": "loader",
    "save_checkpoint": "checkpoint",
}

__all__ = ["GeneratorOptions", "LoadedModel", "load_checkpoint", "load_model", "save_checkpoint"]

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .loader import LoadedModel, load_model
    from .options import GeneratorOptions


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value

"""Load: a model file -> an eval-mode module with its original layers (:mod:`.loader`).

Toolkit checkpoints (:mod:`.checkpoint`), bare state_dicts of a registered family, -- only on trust --
pickled modules under the allowlist of :mod:`.allowlist`, whose globals :mod:`.pickle_scan` lists first, and
NVlabs network pickles (:mod:`.nvlabs`), read as data and restored with the classes of the user's checkout.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .loader import LoadedModel, load_model
from .options import GeneratorOptions

__all__ = ["GeneratorOptions", "LoadedModel", "load_checkpoint", "load_model", "save_checkpoint"]

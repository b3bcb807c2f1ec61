"""Model families (one file each) and their registry; importing this package registers them."""

from . import decoder, lats  # noqa: F401  (each module registers its family)
from .registry import (
    FAMILIES,
    AmbiguousFamilyError,
    Family,
    FamilyRegistry,
    InputSpec,
    TensorInfo,
    UnknownFamilyError,
    get_family,
    prefixes_of,
    recognize,
    register_family,
    registered_families,
)

__all__ = [
    "FAMILIES",
    "AmbiguousFamilyError",
    "Family",
    "FamilyRegistry",
    "InputSpec",
    "TensorInfo",
    "UnknownFamilyError",
    "get_family",
    "prefixes_of",
    "recognize",
    "register_family",
    "registered_families",
]
from . import gfpgan, rosinality  # noqa: F401,E402  (GFPGAN v1.x clean, rosinality StyleGAN2; each registers itself)

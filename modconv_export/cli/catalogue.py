"""The model families ``--help`` lists, as plain data: the help must not import torch to name them.

The registry (:func:`modconv_export.families.registered_families`) stays the one source of truth; a test
checks this list against it, so a family registered without an entry here fails CI, not a user's ``--help``.
"""

from __future__ import annotations

__all__ = ["FAMILIES"]

#: (name, description) of every registered family, in registration order.
FAMILIES = (
    ("decoder", "StyleGAN2-style decoder (the toolkit's sample): latent -> image from a learned constant"),
    ("lats", "LATS generator (Lifespan Age Transformation Synthesis): image + target age code -> image at that age"),
    ("gfpgan", "GFPGAN v1.2-v1.4 clean face restoration (U-Net + SFT StyleGAN2 decoder); noise: the checkpoint's fixed buffers"),
    ("rosinality", "rosinality/stylegan2-pytorch Generator (train.py, convert_weight.py, pSp/e4e decoder): z or W+ -> image"),
)

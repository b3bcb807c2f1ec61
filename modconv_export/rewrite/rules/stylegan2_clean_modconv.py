"""GFPGAN's ``stylegan2_clean_arch.ModulatedConv2d`` -> :class:`~modconv_export.layers.stylegan2_forms.StyleGAN2ModulatedConvForm`.

Structure: a ``[1, Cout, Cin, k, k]`` weight that is already scaled (no run-time ``scale``), an
``nn.Linear``-like ``modulation`` (style -> ``Cin``), ``demodulate``, ``eps`` (1e-8 upstream) and
``sample_mode`` in ``{None, "upsample", "downsample"}`` -- a bilinear ``F.interpolate`` by 2 or 0.5
before a stride-1 grouped conv with ``padding``. The export form scales the input instead of the
weight (exact, the resampling is linear per channel); the probe compares both.
"""

from __future__ import annotations

import torch.nn as nn

from ...layers.stylegan2_forms import StyleGAN2ModulatedConvForm
from ..registry import register_rule
from ._stylegan2 import check_modconv, looks_like_modconv, modconv_probe, modconv_weight, number

_MODES = {None: "same", "upsample": "up_bilinear", "downsample": "down_bilinear"}


def _looks_like(module: nn.Module) -> bool:
    # basicsr's variant keeps a run-time ``scale``; that one is stylegan2_modulated_conv.
    return looks_like_modconv(module) and not number(getattr(module, "scale", None))


def _check(module: nn.Module) -> str | None:
    return check_modconv(module, tuple(_MODES), {"modulation"})


@register_rule("stylegan2_clean_modulated_conv", looks_like=_looks_like, check=_check, probe_inputs=modconv_probe)
def replace_clean_modulated_conv(module: nn.Module) -> nn.Module:
    """GFPGAN clean ``ModulatedConv2d`` -> input-modulated conv (bilinear resampling kept) with a constant weight."""
    return StyleGAN2ModulatedConvForm(
        modconv_weight(module)[0],
        module.modulation,
        demodulate=module.demodulate,
        eps=module.eps,
        padding=module.padding,
        mode=_MODES[module.sample_mode],
    )

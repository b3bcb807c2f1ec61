"""basicsr's ``stylegan2_arch.ModulatedConv2d`` -> :class:`~modconv_export.layers.stylegan2_forms.StyleGAN2ModulatedConvForm`.

Structure: a ``[1, Cout, Cin, k, k]`` weight multiplied at run time by a float ``scale``, an
``EqualLinear`` ``modulation`` (already folded by the ``scaled_equal_linear`` rule), ``demodulate``,
``eps``, ``padding`` and ``sample_mode``: ``"upsample"`` is ``conv_transpose2d(stride=2, groups=b)``
followed by the upfirdn blur ``smooth``; ``"downsample"`` is ``smooth`` then a stride-2 grouped conv.
Transposed convolution is linear per input channel, so ``smooth(conv_transpose(x * s, W^T) * d)`` is
exact; the blur is specialised to the known channel count (a depthwise conv). The probe compares both.
"""

from __future__ import annotations

import torch.nn as nn

from ...layers.stylegan2_forms import StyleGAN2ModulatedConvForm, UpFirDn2d
from ..registry import register_rule
from ._stylegan2 import check_modconv, looks_like_modconv, modconv_probe, modconv_weight, number

_MODES = {None: "same", "upsample": "up_transposed", "downsample": "down_strided"}


def _looks_like(module: nn.Module) -> bool:
    return looks_like_modconv(module) and number(getattr(module, "scale", None))


def _check(module: nn.Module) -> str | None:
    reason = check_modconv(module, tuple(_MODES), {"modulation", "smooth"})
    if reason is None and module.sample_mode is not None and not isinstance(getattr(module, "smooth", None), nn.Module):
        reason = f"it has no 'smooth' module although sample_mode={module.sample_mode!r} needs one"
    return reason


@register_rule("stylegan2_modulated_conv", looks_like=_looks_like, check=_check, probe_inputs=modconv_probe)
def replace_modulated_conv(module: nn.Module) -> nn.Module:
    """basicsr ``ModulatedConv2d`` -> input-modulated (transposed) conv with a constant weight."""
    _, c_out, c_in, _, _ = modconv_weight(module).shape
    smooth = module.smooth if module.sample_mode is not None else None
    if isinstance(smooth, UpFirDn2d) and smooth.channels is None:
        smooth = smooth.for_channels(c_out if module.sample_mode == "upsample" else c_in)
    return StyleGAN2ModulatedConvForm(
        modconv_weight(module)[0] * float(module.scale),
        module.modulation,
        demodulate=module.demodulate,
        eps=module.eps,
        padding=module.padding,
        mode=_MODES[module.sample_mode],
        smooth=smooth,
    )

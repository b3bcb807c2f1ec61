"""Replace a seed-style ``ModulatedConv2d`` by :class:`~modconv_export.layers.seed_forms.SeedModulatedConvForm`.

Structure (LATS / the seed): a 4-D ``weight`` parameter ``[Cout, Cin, k, k]`` scaled at run time by
``sqrt(2 / fan_in)``, a ``bias`` of ``Cout`` values, a style MLP ``mlp_class_std`` (latent -> Cin),
boolean ``upsample`` / ``downsample`` / ``demudulate`` flags, a ``padding`` module and, as the flags
require, ``upsampler``, ``downsampler`` and ``blur`` modules. The replacement keeps those modules,
folds the weight scale into a constant and moves the modulation onto the input (exact; see
:mod:`modconv_export.layers.seed_forms`). The probe compares both on a random input.
"""

from __future__ import annotations

from math import sqrt

import torch.nn as nn

from ...layers.seed_forms import SeedModulatedConvForm
from ..registry import conv_shape_mismatch, probe_tensor, register_rule

# Per-channel scaling commutes with these paddings (a non-zero constant pad would not).
_SCALE_COMMUTING_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d)
_DEMOD_FLAGS = ("demudulate", "demodulate")  # the seed spells it "demudulate"


def _weight(module: nn.Module):
    weight = module._parameters.get("weight")
    return weight if weight is not None and weight.dim() == 4 else None


def _looks_like(module: nn.Module) -> bool:
    return _weight(module) is not None and isinstance(getattr(module, "mlp_class_std", None), nn.Module)


def _latent_dim(style: nn.Module) -> int | None:
    """Input width of the style MLP: the first 2-D weight found inside it."""
    for tensor in style.parameters():
        if tensor.dim() == 2:
            return int(tensor.shape[1])
    return None


def _demod_flag(module: nn.Module):
    for flag in _DEMOD_FLAGS:
        if isinstance(getattr(module, flag, None), bool):
            return getattr(module, flag)
    return None


def _check(module: nn.Module) -> str | None:
    weight = _weight(module)
    c_out = weight.shape[0]
    mismatch = conv_shape_mismatch(module, tuple(weight.shape))
    if mismatch:
        return mismatch
    bias = module._parameters.get("bias")
    if bias is None or bias.numel() != c_out:
        return f"it has no bias of {c_out} values"
    if _demod_flag(module) is None:
        return "it has no boolean demodulation flag (demudulate/demodulate)"
    for flag in ("upsample", "downsample"):
        if not isinstance(getattr(module, flag, None), bool):
            return f"it has no boolean {flag!r} flag"
    padding = getattr(module, "padding", None)
    if not isinstance(padding, _SCALE_COMMUTING_PADS):
        kind = type(padding).__name__ if padding is not None else "none"
        return f"its padding ({kind}) is not reflect/replicate/zero padding"
    needed = (["upsampler", "blur"] if module.upsample else []) + (["downsampler", "blur"] if module.downsample else [])
    for name in needed:
        if not isinstance(getattr(module, name, None), nn.Module):
            return f"it has no {name!r} module although its flags need one"
    if _latent_dim(module.mlp_class_std) is None:
        return "its style MLP has no linear layer"
    return None


def _probe(module: nn.Module):
    c_in = _weight(module).shape[1]
    return (probe_tensor(module, 2, c_in, 5, 5, seed=1), probe_tensor(module, 2, _latent_dim(module.mlp_class_std), seed=2))


@register_rule("modulated_conv", looks_like=_looks_like, check=_check, probe_inputs=_probe, probe_tolerance=1e-4)
def replace_modulated_conv(module: nn.Module) -> nn.Module:
    """Seed ``ModulatedConv2d`` -> input-modulated conv with a constant weight."""
    weight = _weight(module).detach()
    fan_in = weight.shape[1] * weight[0][0].numel()
    return SeedModulatedConvForm(
        weight * sqrt(2 / fan_in),
        module.bias.detach(),
        module.mlp_class_std,
        module.padding,
        demodulate=_demod_flag(module),
        upsampler=module.upsampler if module.upsample else None,
        downsampler=module.downsampler if module.downsample else None,
        blur=module.blur if (module.upsample or module.downsample) else None,
    )

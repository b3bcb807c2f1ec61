"""StyleGAN2's ``StyleConv`` (GFPGAN clean and basicsr) -> :class:`~modconv_export.layers.stylegan2_forms.NoisyStyleConv`.

Structure: a ``modulated_conv`` child (already in export form), a one-value ``weight`` parameter (the
noise strength), an ``activate`` child and a ``forward(x, style, noise=None)`` that draws
``new_empty(...).normal_()`` when no noise is passed. GFPGAN's clean variant multiplies the conv by
sqrt(2) and adds its own ``[1, Cout, 1, 1]`` ``bias`` before a leaky ReLU; basicsr's adds the bias
inside ``FusedLeakyReLU``. Given noise is kept exactly (compared with explicit noise, also where the
model's call passes none); missing
noise becomes zero noise, never a random op in the graph, and the rewrite report says so (unless the
original's ``noise`` argument has no default, so that it never draws noise).
"""

from __future__ import annotations

import inspect
from math import sqrt

import torch
import torch.nn as nn

from ...layers.stylegan2_forms import ZERO_NOISE_NOTE, NoisyStyleConv, StyleGAN2ModulatedConvForm
from ..registry import Replacement, probe_tensor, register_rule
from ._stylegan2 import style_width


def _takes_noise(module: nn.Module) -> bool:
    try:
        return "noise" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _noise_is_optional(module: nn.Module) -> bool:
    """Only a ``noise`` argument with a default can be left out -- and then upstream draws noise."""
    try:
        return inspect.signature(module.forward).parameters["noise"].default is not inspect.Parameter.empty
    except (TypeError, ValueError, KeyError):
        return True


def _looks_like(module: nn.Module) -> bool:
    if isinstance(module, NoisyStyleConv) or not isinstance(getattr(module, "modulated_conv", None), nn.Module):
        return False
    weight = module._parameters.get("weight")
    return weight is not None and weight.numel() == 1 and isinstance(getattr(module, "activate", None), nn.Module) and _takes_noise(module)


def _check(module: nn.Module) -> str | None:
    conv = module.modulated_conv
    if not isinstance(conv, StyleGAN2ModulatedConvForm):
        return f"its modulated_conv ({type(conv).__name__}) was not rewritten to an export form"
    if set(module._modules) != {"modulated_conv", "activate"}:
        return f"it has modules besides modulated_conv and activate ({', '.join(sorted(set(module._modules) - {'modulated_conv', 'activate'}))})"
    extra = set(module._parameters) - {"weight", "bias"}
    if extra:
        return f"it has parameters besides weight and bias ({', '.join(sorted(extra))})"
    bias = module._parameters.get("bias")
    if bias is not None and tuple(bias.shape) != (1, conv.out_channels, 1, 1):
        return f"its bias has shape {tuple(bias.shape)}, expected (1, {conv.out_channels}, 1, 1)"
    return None


def _probe(module: nn.Module):
    conv = module.modulated_conv
    x = probe_tensor(module, 2, conv.in_channels, 8, 8, seed=6)
    style = probe_tensor(module, 2, style_width(conv.modulation, conv.in_channels), seed=7)
    with torch.no_grad():
        out = conv(x, style)
    return x, style, probe_tensor(module, 2, 1, *out.shape[2:], seed=8)


def _with_noise(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A recorded call with explicit noise where the model passed none (the original would draw it)."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    if bound.arguments.get("noise") is None:
        feature, style = list(bound.arguments.values())[:2]  # forward(x, style, noise=None), whatever the names
        with torch.no_grad():
            out = module.modulated_conv(feature, style)
        bound.arguments["noise"] = probe_tensor(module, out.shape[0], 1, *out.shape[2:], seed=8)
    return bound.args, bound.kwargs


@register_rule("style_conv_noise", looks_like=_looks_like, check=_check, probe_inputs=_probe, adapt_call=_with_noise)
def replace_style_conv(module: nn.Module) -> Replacement:
    """``StyleConv`` -> modulated conv + given noise (zero when none) + bias + activation, no random op."""
    bias = module._parameters.get("bias")
    # GFPGAN's clean StyleConv (own bias) scales the conv by sqrt(2) "for conversion"; basicsr's does not.
    gain = sqrt(2) if bias is not None else 1.0
    replacement = NoisyStyleConv(module.modulated_conv, module.weight, module.activate, gain=gain, bias=bias)
    # Only where the original draws noise itself is there something random to report.
    return Replacement(replacement, ZERO_NOISE_NOTE if _noise_is_optional(module) else None)

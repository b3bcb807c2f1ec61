"""Checks shared by the StyleGAN2 rules (GFPGAN ``stylegan2_clean_arch``, basicsr ``stylegan2_arch``).

Both upstream ``ModulatedConv2d`` classes hold a ``[1, Cout, Cin, k, k]`` weight, a ``modulation``
layer (style -> ``Cin``), ``demodulate``/``eps``/``sample_mode``/``padding`` attributes; they differ
in their resampling and in basicsr's run-time weight ``scale``. The helpers read those attributes and
say why a module does not fit.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import conv_shape_mismatch, probe_tensor

__all__ = ["modconv_weight", "looks_like_modconv", "check_modconv", "style_width", "number", "modconv_probe"]


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def modconv_weight(module: nn.Module) -> torch.Tensor | None:
    weight = module._parameters.get("weight")
    return weight if weight is not None and weight.dim() == 5 and weight.shape[0] == 1 else None


def looks_like_modconv(module: nn.Module) -> bool:
    return (
        modconv_weight(module) is not None and isinstance(getattr(module, "modulation", None), nn.Module) and hasattr(module, "sample_mode")
    )


def style_width(modulation: nn.Module, out_features: int) -> int | None:
    """Input width of a style layer: its first 2-D parameter with ``out_features`` rows."""
    for tensor in modulation.parameters():
        if tensor.dim() == 2 and tensor.shape[0] == out_features:
            return int(tensor.shape[1])
    return None


def modconv_probe(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe inputs for either upstream ``ModulatedConv2d``: a feature map and a style vector."""
    _, _, c_in, _, _ = modconv_weight(module).shape
    width = style_width(module.modulation, c_in)
    return (probe_tensor(module, 2, c_in, 8, 8, seed=1), probe_tensor(module, 2, width, seed=2))


def check_modconv(module: nn.Module, modes: tuple, children: set[str]) -> str | None:
    """``None`` when ``module`` has the shared StyleGAN2 modulated-conv structure, else the reason."""
    c_in = modconv_weight(module).shape[2]
    mismatch = conv_shape_mismatch(module, tuple(modconv_weight(module).shape))
    if mismatch:
        return mismatch
    if not isinstance(getattr(module, "demodulate", None), bool):
        return "it has no boolean 'demodulate' flag"
    if not number(getattr(module, "eps", None)) or module.eps < 0:
        return "it has no non-negative 'eps'"
    if module.sample_mode not in modes:
        return f"its sample_mode {module.sample_mode!r} is not one of {modes}"
    if not isinstance(getattr(module, "padding", None), int):
        return "its 'padding' is not an int"
    extra_params = set(module._parameters) - {"weight"}
    if extra_params:
        return f"it has parameters besides the weight ({', '.join(sorted(extra_params))})"
    extra_children = set(module._modules) - children
    if extra_children:
        return f"it has modules besides {', '.join(sorted(children))} ({', '.join(sorted(extra_children))})"
    if style_width(module.modulation, c_in) is None:
        return f"its modulation has no linear layer with {c_in} outputs"
    return None

"""basicsr's ``EqualLinear`` (run-time weight ``scale``, bias ``lr_mul``, optional ``fused_lrelu``) ->
:class:`~modconv_export.layers.stylegan2_forms.ScaledLinear` with both scales folded into constants.

Structure: a leaf with a 2-D ``weight`` parameter, a 1-D ``bias`` parameter or none, float ``scale``
and ``lr_mul``, and ``activation`` in ``{None, "fused_lrelu"}``. ``fused_lrelu`` calls basicsr's
CUDA-only ``fused_leaky_relu(out, bias)`` with its defaults (slope 0.2, gain sqrt(2)); the export form
computes it in plain torch. The engine compares both where the original can run; where it cannot
(``fused_lrelu`` on CPU), the rewrite report says so.
"""

from __future__ import annotations

from math import sqrt

import torch.nn as nn

from ...layers.stylegan2_forms import BiasLeakyReLU, ScaledLinear
from ..registry import probe_tensor, register_rule
from ._stylegan2 import number

_ACTIVATIONS = (None, "fused_lrelu")


def _looks_like(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    if module._modules or weight is None or weight.dim() != 2:
        return False
    return number(getattr(module, "scale", None)) and number(getattr(module, "lr_mul", None)) and hasattr(module, "activation")


def _check(module: nn.Module) -> str | None:
    if module.activation not in _ACTIVATIONS:
        return f"its activation {module.activation!r} is not one of {_ACTIVATIONS}"
    extra = set(module._parameters) - {"weight", "bias"}
    if extra or module._buffers:
        return f"it holds tensors besides weight and bias ({', '.join(sorted(extra | set(module._buffers)))})"
    bias = module._parameters.get("bias")
    if bias is not None and tuple(bias.shape) != (module.weight.shape[0],):
        return f"its bias has shape {tuple(bias.shape)}, expected ({module.weight.shape[0]},)"
    return None


def _probe(module: nn.Module):
    return (probe_tensor(module, 2, module.weight.shape[1], seed=5),)


@register_rule("scaled_equal_linear", looks_like=_looks_like, check=_check, probe_inputs=_probe, replaces_unrunnable=True)
def replace_scaled_equal_linear(module: nn.Module) -> nn.Module:
    """basicsr ``EqualLinear`` -> linear layer with folded scales (and plain-torch fused leaky ReLU)."""
    bias = module._parameters.get("bias")
    bias = None if bias is None else bias.detach() * float(module.lr_mul)
    activation = BiasLeakyReLU(bias, 0.2, sqrt(2)) if module.activation == "fused_lrelu" else None
    return ScaledLinear(module.weight.detach() * float(module.scale), bias, activation)

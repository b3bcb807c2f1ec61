"""basicsr's ``FusedLeakyReLU`` (a CUDA-only autograd Function) -> :class:`~modconv_export.layers.stylegan2_forms.BiasLeakyReLU`.

Structure: a leaf whose only tensor is a 1-D ``bias`` parameter, with float ``negative_slope`` and
``scale``. basicsr's ``fused_bias_act`` kernel (``act=3``) computes ``leaky_relu(x + bias, slope) *
scale`` with the bias along axis 1; the export form is that arithmetic in plain torch, so it runs on
CPU and exports to standard ops. Where the original runs (a CUDA build, or a pure-torch copy) the
probe compares both; where it cannot run at all (basicsr 1.4.2 on CPU), the rewrite report says the
replacement was not checked numerically.
"""

from __future__ import annotations

import torch.nn as nn

from ...layers.stylegan2_forms import BiasLeakyReLU
from ..registry import Replacement, probe_tensor, register_rule
from ._stylegan2 import number, original_failure


def _looks_like(module: nn.Module) -> bool:
    if isinstance(module, BiasLeakyReLU) or module._modules or module._buffers or set(module._parameters) != {"bias"}:
        return False
    bias = module._parameters["bias"]
    return (
        bias is not None and bias.dim() == 1 and number(getattr(module, "negative_slope", None)) and number(getattr(module, "scale", None))
    )


def _check(module: nn.Module) -> str | None:
    if module.negative_slope < 0:
        return f"its negative_slope {module.negative_slope} is negative"
    return None


def _inputs(module: nn.Module) -> tuple:
    return (probe_tensor(module, 2, module.bias.shape[0], 5, 4, seed=4),)


def _probe(module: nn.Module):
    inputs = _inputs(module)
    return None if original_failure(module, inputs) else inputs


@register_rule("fused_leaky_relu", looks_like=_looks_like, check=_check, probe_inputs=_probe)
def replace_fused_leaky_relu(module: nn.Module) -> nn.Module:
    """basicsr ``FusedLeakyReLU`` -> ``leaky_relu(x + bias) * scale`` in plain torch."""
    replacement = BiasLeakyReLU(module.bias, module.negative_slope, module.scale)
    failure = original_failure(module, _inputs(module))
    return Replacement(replacement, f"not compared numerically: the original cannot run here ({failure})" if failure else None)

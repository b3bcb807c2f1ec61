"""basicsr's ``FusedLeakyReLU`` (a CUDA-only autograd Function) -> :class:`~modconv_export.layers.stylegan2_forms.BiasLeakyReLU`.

Structure: a leaf whose only tensor is a 1-D ``bias`` parameter, with float ``negative_slope`` and
``scale``. basicsr's ``fused_bias_act`` kernel (``act=3``) computes ``leaky_relu(x + bias, slope) *
scale`` with the bias along axis 1; the export form is that arithmetic in plain torch, so it runs on
CPU and exports to standard ops. The rule is for that kernel: a copy that is plain torch where the model
runs it (rosinality's CPU branch, a slimmable copy adding ``bias[:x.shape[1]]``) is left to the graph
stage. Where the original runs through an autograd Function (a CUDA build) the engine compares both on the
inputs the model gives it; where it cannot run at all (basicsr 1.4.2 on CPU), the rewrite report says
the replacement was not checked numerically.
"""

from __future__ import annotations

import torch.nn as nn

from ...layers.stylegan2_forms import BiasLeakyReLU
from ..registry import probe_tensor, register_rule
from ._stylegan2 import number


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


def _probe(module: nn.Module):
    return (probe_tensor(module, 2, module.bias.shape[0], 5, 4, seed=4),)


@register_rule(
    "fused_leaky_relu", looks_like=_looks_like, check=_check, probe_inputs=_probe, skip_plain_torch=True, replaces_unrunnable=True
)
def replace_fused_leaky_relu(module: nn.Module) -> nn.Module:
    """basicsr ``FusedLeakyReLU`` -> ``leaky_relu(x + bias) * scale`` in plain torch."""
    return BiasLeakyReLU(module.bias, module.negative_slope, module.scale)

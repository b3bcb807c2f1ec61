"""Fold an equalized-learning-rate forward pre-hook (``weight_orig`` -> ``weight``) into a plain weight.

Matches any module carrying a forward pre-hook object with a ``name`` attribute whose
``<name>_orig`` parameter the module owns (LATS/StyleGAN ``EqualLR``; also ``SpectralNorm`` in eval
mode). The hook itself computes the weight, so the fold is exact for whatever scale the user's copy
applies; the exported graph then carries the scaled weight as a constant instead of a Mul per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..registry import register_rule


def _orig_hooks(module: nn.Module) -> list[tuple[int, Callable[..., Any], str]]:
    found = []
    for hook_id, hook in module._forward_pre_hooks.items():
        name = getattr(hook, "name", None)
        if isinstance(name, str) and isinstance(module._parameters.get(name + "_orig"), torch.Tensor):
            found.append((hook_id, hook, name))
    return found


def _looks_like(module: nn.Module) -> bool:
    return bool(_orig_hooks(module))


def _check(module: nn.Module) -> str | None:
    for _, hook, name in _orig_hooks(module):
        if not callable(hook):
            return f"its {name!r} pre-hook is not callable"
    return None


@register_rule("equal_lr", looks_like=_looks_like, check=_check, stage="fold")
def fold_equal_lr(module: nn.Module) -> nn.Module:
    """Fold the ``<name>_orig`` pre-hook into a constant ``<name>`` parameter."""
    was_training = module.training
    module.eval()
    for hook_id, hook, name in _orig_hooks(module):
        with torch.no_grad():
            hook(module, ())
            weight = getattr(module, name).detach().clone()
        del module._forward_pre_hooks[hook_id]
        orig = module._parameters.pop(name + "_orig")
        module.__dict__.pop(name, None)
        module.register_parameter(name, nn.Parameter(weight, requires_grad=orig.requires_grad))
    module.train(was_training)
    return module

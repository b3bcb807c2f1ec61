"""The torch and Python code a trusted pickle may use without the user naming it: every ``torch.nn`` module
class (and a few torch helper classes), and an explicit list of pure functions (:data:`PURE_FUNCTIONS`).

:mod:`.allowlist` decides each global of a file against these; this module only says what they are.
"""

from __future__ import annotations

import functools
import importlib
import math
import operator
import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PURE_FUNCTIONS", "TORCH_FUNCTIONS_CLASS", "name_of", "pure_functions", "torch_classes"]

#: Functions a model may hold as attributes (``self.conv = F.conv2d``, ``self.act = torch.tanh``), by module:
#: tensor math and plain arithmetic. All are pure: they compute a value from their arguments and touch
#: nothing else. Deliberately absent: whatever reaches attributes or calls what it is given (``getattr``,
#: ``operator.attrgetter``/``methodcaller``/``itemgetter``, ``functools.partial``), mutators
#: (``operator.setitem``, in-place ops), functions whose cost an argument controls without bound
#: (``math.factorial``/``comb``/``perm``, ``operator.pow`` on ints), random sampling, and every torch
#: function that does I/O (``torch.load``, ``torch.from_file``, ``torch.hub``).
_CONV = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_ACTIVATIONS = (
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "sigmoid",
    "tanh",
    "softsign",
    "softplus",
    "softshrink",
    "tanhshrink",
    "logsigmoid",
    "log_sigmoid",
    "softmax",
    "log_softmax",
    "glu",
    "prelu",
)
PURE_FUNCTIONS: dict[Any, tuple[str, ...]] = {
    F: (*_CONV, *_ACTIVATIONS, "linear", "pad", "interpolate", "normalize", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool2d", "instance_norm", "layer_norm", "group_norm",
        "batch_norm", "pixel_shuffle", "pixel_unshuffle"),
    torch._C._nn: (*_ACTIVATIONS, "linear", "pad", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool2d"),
    torch._C._VariableFunctions: (*_CONV, *_ACTIVATIONS, "sin", "cos", "exp", "abs", "sqrt", "rsqrt", "erf", "neg", "sign",
                                  "clamp", "log", "log1p", "expm1", "sinh", "cosh", "atan", "square", "add", "sub", "mul",
                                  "div", "matmul", "mm", "bmm", "cat", "stack", "avg_pool1d", "max_pool2d", "pixel_shuffle"),
    math: ("sqrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "tanh", "erf", "erfc", "fabs", "floor", "ceil",
           "isfinite", "hypot", "atan2"),
    operator: ("add", "sub", "mul", "truediv", "neg", "pos", "abs"),
}  # fmt: skip

#: torch classes beyond nn.Module subclasses that pickled models hold (weight/spectral norm hooks, wrapped hooks).
_TORCH_HELPER_CLASSES = (
    "torch.nn.utils.weight_norm.WeightNorm",
    "torch.nn.utils.spectral_norm.SpectralNorm",
    "torch.nn.utils.spectral_norm.SpectralNormStateDictHook",
    "torch.nn.utils.spectral_norm.SpectralNormLoadStateDictPreHook",
    "torch.nn.modules.module._WrappedHook",
    "torch.nn.parallel.data_parallel.DataParallel",
)
#: How a pickle names the class that holds ``torch.tanh`` and the other functions of ``torch._C._VariableFunctions``.
TORCH_FUNCTIONS_CLASS = "torch._C._VariableFunctionsClass"


def name_of(obj: Any) -> str:
    """``module.qualname``: the name a pickle gives a class or function."""
    return f"{obj.__module__}.{obj.__qualname__}"


@functools.lru_cache(maxsize=1)
def pure_functions() -> dict[str, Any]:
    """Pure functions by the name a pickle gives them (``torch.tanh`` -> ``torch._C._VariableFunctionsClass.tanh``)."""
    found = {}
    for module, names in PURE_FUNCTIONS.items():
        for name in names:
            fn = getattr(module, name, None)
            if callable(fn):
                key = f"{TORCH_FUNCTIONS_CLASS}.{name}" if module is torch._C._VariableFunctions else name_of(fn)
                found[key] = fn
    return found


@functools.lru_cache(maxsize=1)
def torch_classes() -> dict[str, type]:
    """Every ``nn.Module`` subclass defined in ``torch.nn.modules``, and the helper classes above, by name."""
    found: dict[str, type] = {}
    for modname, module in list(sys.modules.items()):
        if not (modname == "torch.nn.modules" or modname.startswith("torch.nn.modules.")) or module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == modname:
                found[name_of(value)] = value
    for full in _TORCH_HELPER_CLASSES:
        modname, _, qualname = full.rpartition(".")
        cls = getattr(importlib.import_module(modname), qualname, None)
        if isinstance(cls, type):
            found[full] = cls
    return found

"""ONNX lowerings for ``torch.autograd.Function`` classes, used by both exporters.

Register one for your own Function with :func:`register_function_lowering`; the exporters in
:mod:`modconv_export.export` install it (and the built-in blur lowering) for the duration of an export.
"""

from .builders import LegacyOpBuilder, TracedOpBuilder
from .builtin import lower_depthwise_conv
from .discover import functions_called, lowerings_for
from .install import lowerings_installed
from .registry import FunctionLowering, lowering_for, register_function_lowering, registered_lowerings, unregister_function_lowering

__all__ = [
    "FunctionLowering",
    "LegacyOpBuilder",
    "TracedOpBuilder",
    "functions_called",
    "lower_depthwise_conv",
    "lowering_for",
    "lowerings_for",
    "lowerings_installed",
    "register_function_lowering",
    "registered_lowerings",
    "unregister_function_lowering",
]

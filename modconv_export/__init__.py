"""modconv-export: export StyleGAN2-style modulated-convolution generators to ONNX and TorchScript.

Pipeline: load -> rewrite (:func:`make_exportable`) -> export (:func:`export_onnx`,
:func:`export_torchscript`) -> verify. Seed-style ``ModulatedConv2d``/``Blur`` layers are rewritten
into exactly equal forms with constant weights, so the exported graph keeps a dynamic batch.
"""

from .errors import ExportError, LoweringError, ModconvExportError, RewriteError
from .export import DEFAULT_OPSET, export_onnx, export_torchscript, max_supported_opset
from .rewrite import RewriteReport, make_exportable, register_rule, rewrite_model, rewrite_report
from .symbolic import register_function_lowering, unregister_function_lowering

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "LoweringError",
    "ModconvExportError",
    "RewriteError",
    "RewriteReport",
    "__version__",
    "export_onnx",
    "export_torchscript",
    "make_exportable",
    "max_supported_opset",
    "register_function_lowering",
    "register_rule",
    "rewrite_model",
    "rewrite_report",
    "unregister_function_lowering",
]

"""modconv-export: export StyleGAN2-style modulated-convolution generators to ONNX and TorchScript.

Pipeline: load -> rewrite (:func:`make_exportable`) -> export (:func:`export_onnx`,
:func:`export_torchscript`) -> verify. Seed-style ``ModulatedConv2d``/``Blur`` layers are rewritten
into exactly equal forms with constant weights, so the exported graph keeps a dynamic batch.
"""

__version__ = "0.1.0"  # first: the modules below record it in what they write

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import ExportError, LoadError, LoweringError, ModconvExportError, RewriteError
from .export import DEFAULT_OPSET, export_onnx, export_torchscript, max_supported_opset
from .load import LoadedModel, load_model
from .rewrite import RewriteReport, make_exportable, register_rule, rewrite_model, rewrite_report
from .symbolic import register_function_lowering, unregister_function_lowering

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "LoadError",
    "LoadedModel",
    "LoweringError",
    "ModconvExportError",
    "RewriteError",
    "RewriteReport",
    "__version__",
    "export_onnx",
    "export_torchscript",
    "load_checkpoint",
    "load_model",
    "make_exportable",
    "max_supported_opset",
    "register_function_lowering",
    "register_rule",
    "rewrite_model",
    "rewrite_report",
    "save_checkpoint",
    "unregister_function_lowering",
]


def __getattr__(name: str):
    """``check_parity`` on first use: the verify stage pulls in ONNX Runtime, which a plain
    ``import modconv_export`` (the rewrite and export API) does not need."""
    if name == "check_parity":
        from .verify import check_parity

        return check_parity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

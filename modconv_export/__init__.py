"""modconv-export: export StyleGAN2-style modulated-convolution generators to ONNX and TorchScript.

Pipeline: load -> rewrite (:func:`make_exportable`, :func:`prepare_export`) -> export (:func:`export_onnx`,
:func:`export_torchscript`) -> verify. Every convolution grouped by the batch -- found in the traced graph,
whatever code the model comes from -- is rewritten into an exactly equal form with a constant weight, so
the exported graph keeps a dynamic batch.

The public names below are imported on first use (PEP 562), so ``import modconv_export`` does not
import torch: the command line installs its signal handlers before any heavy import starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is set (pyproject.toml reads it); the modules record it in what they write

#: public name -> the submodule that defines it
_EXPORTS = {
    "load_checkpoint": "load",
    "save_checkpoint": "load",
    "ExportError": "errors",
    "LoadError": "errors",
    "LoweringError": "errors",
    "ModconvExportError": "errors",
    "RewriteError": "errors",
    "DEFAULT_OPSET": "export",
    "export_onnx": "export",
    "export_torchscript": "export",
    "max_supported_opset": "export",
    "prepare_export": "export",
    "trace_torchscript": "export",
    "LoadedModel": "load",
    "load_model": "load",
    "RewriteReport": "rewrite",
    "make_exportable": "rewrite",
    "register_rule": "rewrite",
    "rewrite_model": "rewrite",
    "rewrite_report": "rewrite",
    "register_function_lowering": "symbolic",
    "unregister_function_lowering": "symbolic",
    "check_parity": "verify",  # pulls in ONNX Runtime
}

__all__ = sorted([*(n for n in _EXPORTS if n != "check_parity"), "__version__"])

if TYPE_CHECKING:
    from .errors import ExportError, LoadError, LoweringError, ModconvExportError, RewriteError
    from .export import DEFAULT_OPSET, export_onnx, export_torchscript, max_supported_opset, prepare_export, trace_torchscript
    from .load import LoadedModel, load_checkpoint, load_model, save_checkpoint
    from .rewrite import RewriteReport, make_exportable, register_rule, rewrite_model, rewrite_report
    from .symbolic import register_function_lowering, unregister_function_lowering


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

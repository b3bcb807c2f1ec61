"""Export: the rewritten model -> an ONNX file (dynamo or legacy exporter) or a TorchScript file.

:mod:`.prepare` runs the rewrite stage for one export, :mod:`.onnx_file` and :mod:`.torchscript_file`
write the files (checked, atomically), :mod:`.checks` holds the properties every ONNX file must have and
:mod:`.metadata` what it carries.
"""

from .onnx_file import DEFAULT_OPSET, EXPORTERS, export_onnx, max_supported_opset, opset_of, resolve_opset
from .prepare import PRECISIONS, Prepared, prepare_export
from .torchscript_file import export_torchscript, trace_torchscript

__all__ = [
    "DEFAULT_OPSET", "EXPORTERS", "PRECISIONS", "Prepared", "export_onnx", "export_torchscript", "max_supported_opset", "opset_of",
    "prepare_export", "resolve_opset", "trace_torchscript",
]  # fmt: skip

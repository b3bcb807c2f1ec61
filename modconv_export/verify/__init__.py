"""Verify: prove an exported file equal to the original model (see :func:`check_parity`).

Polygraphy-style parts: :mod:`.options` (``ParityOptions``: what to check), :mod:`.plan` (which backends run),
:mod:`.runners` (one prepare/infer/release interface per backend) and :mod:`.run` (outputs and times),
:mod:`.metrics` (measure) and :mod:`.judge` with the policy of :mod:`.tolerances` (judge), :mod:`.report`
(rows, table, JSON), :mod:`.record` (the verdict in the file), :mod:`.harness` (``check_parity``: those steps in
order) and :mod:`.picture` (the PNG, Pillow optional).
"""

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that the command line
#: reads :mod:`.providers` and :mod:`modconv_export.runtimes` (``--providers``, ``--version``) without importing torch
_EXPORTS = {
    "check_parity": "harness",
    "random_inputs": "harness",
    "Metrics": "metrics",
    "ParityOptions": "options",
    "compare": "metrics",
    "OpenVINORunner": "openvino_runner",
    "MissingExtraError": "picture",
    "write_report_image": "picture",
    "ImageSample": "report",
    "ParityData": "report",
    "ParityReport": "report",
    "ParityRow": "report",
    "parity_properties": "record",
    "record_parity": "record",
    "EagerRunner": "runners",
    "OnnxRuntimeRunner": "runners",
    "Runner": "runners",
    "RunnerUnavailable": "runners",
    "TorchScriptRunner": "runners",
    "DEFAULT_REL_L2": "tolerances",
    "Tolerance": "tolerances",
    "resolve_tolerance": "tolerances",
}

if TYPE_CHECKING:
    from .harness import check_parity, random_inputs
    from .metrics import Metrics, compare
    from .openvino_runner import OpenVINORunner
    from .options import ParityOptions
    from .picture import MissingExtraError, write_report_image
    from .record import parity_properties, record_parity
    from .report import ImageSample, ParityData, ParityReport, ParityRow
    from .runners import EagerRunner, OnnxRuntimeRunner, Runner, RunnerUnavailable, TorchScriptRunner
    from .tolerances import DEFAULT_REL_L2, Tolerance, resolve_tolerance


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_REL_L2",
    "EagerRunner",
    "ImageSample",
    "Metrics",
    "MissingExtraError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "ParityData",
    "ParityOptions",
    "ParityReport",
    "ParityRow",
    "Runner",
    "RunnerUnavailable",
    "Tolerance",
    "TorchScriptRunner",
    "check_parity",
    "compare",
    "parity_properties",
    "random_inputs",
    "record_parity",
    "resolve_tolerance",
    "write_report_image",
]

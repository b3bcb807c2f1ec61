"""Verify: prove an exported file equal to the original model (see :func:`check_parity`).

Polygraphy-style parts: :mod:`.runners` (one prepare/infer/release interface per backend),
:mod:`.metrics` (measure), :mod:`.tolerances` (judge), :mod:`.report` (rows, table, JSON),
:mod:`.harness` (``check_parity``) and :mod:`.picture` (the PNG, Pillow optional).
"""

from .harness import check_parity, random_inputs
from .metrics import Metrics, compare
from .openvino_runner import OpenVINORunner
from .picture import MissingExtraError, write_report_image
from .report import ImageSample, ParityData, ParityReport, ParityRow
from .runners import EagerRunner, OnnxRuntimeRunner, Runner, RunnerUnavailable, TorchScriptRunner
from .tolerances import DEFAULT_REL_L2, Tolerance, resolve_tolerance

__all__ = [
    "DEFAULT_REL_L2",
    "EagerRunner",
    "ImageSample",
    "Metrics",
    "MissingExtraError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "ParityData",
    "ParityReport",
    "ParityRow",
    "Runner",
    "RunnerUnavailable",
    "Tolerance",
    "TorchScriptRunner",
    "check_parity",
    "compare",
    "random_inputs",
    "resolve_tolerance",
    "write_report_image",
]

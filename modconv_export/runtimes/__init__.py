"""Runtimes: how the exported files are deployed -- ONNX Runtime sessions, OpenVINO compilation and the
OpenVINO graph passes -- in one place that verification, the benchmarks and the hand-off share, so what
is measured is what is recommended.

* :mod:`.cpu`: the cores this process may use and the CPU's ISA flags.
* :mod:`.ort`: ONNX Runtime session options, CUDA provider options, :func:`create_session`.
* :mod:`.openvino_config`: OpenVINO's CPU compile properties and where OpenVINO (bf16) can run.
* :mod:`.openvino_upsampling` and :mod:`.openvino_style_path`: the graph passes :class:`OpenVINOModel` applies.
* :mod:`.openvino_model`: :class:`OpenVINOModel`, an ONNX file compiled for the CPU plugin (the bf16 policy).
* :mod:`.ort_openvino`: ONNX Runtime's OpenVINO execution provider (measured, not recommended).

Importing this package imports neither ONNX Runtime nor OpenVINO (the command line reads
``describe_ort_build`` for ``--version``); each function imports what it needs.
"""

from .cpu import cpu_info, cpu_threads
from .openvino_config import (
    OV_PRECISIONS,
    bf16_unavailable_reason,
    compile_config,
    openvino_core,
    openvino_unavailable_reason,
    optimization_capabilities,
)
from .openvino_model import OpenVINOModel
from .openvino_style_path import split_style_path
from .openvino_upsampling import fold_nearest_upsampling
from .ort import ORT_PROVIDERS, create_session, cuda_provider_options, describe_ort_build, model_source, ort_distributions, session_options
from .ort_openvino import ort_openvino_device, ort_openvino_session

__all__ = [
    "ORT_PROVIDERS",
    "OV_PRECISIONS",
    "OpenVINOModel",
    "bf16_unavailable_reason",
    "compile_config",
    "cpu_info",
    "cpu_threads",
    "create_session",
    "cuda_provider_options",
    "describe_ort_build",
    "fold_nearest_upsampling",
    "model_source",
    "openvino_core",
    "openvino_unavailable_reason",
    "optimization_capabilities",
    "ort_distributions",
    "ort_openvino_device",
    "ort_openvino_session",
    "session_options",
    "split_style_path",
]

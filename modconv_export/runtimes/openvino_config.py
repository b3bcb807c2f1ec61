"""OpenVINO's CPU compile properties, and whether OpenVINO (and its bf16) can run here.

The OpenVINO runners of :mod:`modconv_export.verify` and ``benchmarks/bench.py`` compile with
:func:`compile_config`, so what is measured is what is recommended (as :mod:`.ort` does for ONNX Runtime):

* ``INFERENCE_PRECISION_HINT``: ``f32`` or ``bf16``, always set explicitly. OpenVINO's CPU default is
  bf16 wherever the CPU has AMX or AVX512-BF16, so a run without the hint is a bf16 run there and an
  f32 run elsewhere -- the same line of code would give different numbers on different machines.
* ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_NUM_THREADS`` = the cores this process may use (as for
  ONNX Runtime): one request at a time, every core on it -- what a generator serving single requests needs.
* bf16 runs only where OpenVINO itself reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AMX-BF16 or
  AVX512-BF16; elsewhere bf16 would be emulated or silently fall back); :func:`bf16_unavailable_reason`
  says why not, with the CPU's flags.
"""

from __future__ import annotations

import functools
from typing import Any

from .cpu import BF16_FLAGS, cpu_info, cpu_threads

__all__ = [
    "OV_PRECISIONS",
    "bf16_unavailable_reason",
    "compile_config",
    "openvino_core",
    "openvino_unavailable_reason",
    "optimization_capabilities",
]

#: Toolkit precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT`` values.
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install 'modconv-export[openvino]'"


def openvino_unavailable_reason() -> str:
    """``""`` if the ``openvino`` package imports, else the reason (with the install command)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"OpenVINO not installed ({INSTALL_HINT})"
    return ""


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core`` (it caches compiled kernels and device properties)."""
    import openvino as ov

    return ov.Core()


def optimization_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device (``BF16``, ``FP32``, ``INT8``, ...)."""
    return [str(c) for c in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def bf16_unavailable_reason(capabilities: list[str] | None = None) -> str:
    """``""`` if OpenVINO runs bf16 natively on this CPU, else why not (OpenVINO's view plus the CPU flags).

    ``capabilities``: an ``OPTIMIZATION_CAPABILITIES`` list from elsewhere (the execution provider's own
    OpenVINO); by default the ``openvino`` package's.
    """
    if capabilities is None:
        reason = openvino_unavailable_reason()
        if reason:
            return reason
        capabilities = optimization_capabilities()
    if "BF16" in capabilities:
        return ""
    flags = [f for f in cpu_info()["isa"] if f in BF16_FLAGS]
    return (
        f"this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES: {' '.join(capabilities) or 'none'}; "
        f"needs AMX-BF16 or AVX512-BF16, /proc/cpuinfo has {', '.join(flags) or 'neither'})"
    )


def compile_config(precision: str = "fp32", *, threads: int | None = None, hint: str = "LATENCY", **extra: Any) -> dict[str, Any]:
    """The CPU properties the toolkit compiles with (see the module docstring); ``extra`` adds or overrides."""
    if precision not in OV_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(OV_PRECISIONS)}, got {precision!r}")
    return {
        "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
        "PERFORMANCE_HINT": hint,
        "INFERENCE_NUM_THREADS": threads or cpu_threads(),
        **extra,
    }

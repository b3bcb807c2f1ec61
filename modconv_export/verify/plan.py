"""The verification's run plan: which backends run, in what order, against which reference.

:func:`plans` lists every backend of a check in table order -- a runner factory, or the reason it does not
run here; :mod:`.run` runs them and :mod:`.judge` measures and judges what they produced. ONNX Runtime runs
without its CPU arena (see :mod:`modconv_export.runtimes.ort`), so no batch keeps what an earlier one needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..runtimes.ort import session_options
from .openvino_runner import OpenVINORunner
from .runners import EagerRunner, OnnxRuntimeRunner, Runner, TorchScriptRunner

__all__ = ["CPU_REFERENCE", "CUDA_REFERENCE", "Plan", "plans"]

CPU_REFERENCE = "eager-original-cpu"
CUDA_REFERENCE = "eager-original-cuda"


class Plan:
    """One backend to run: a runner factory, or the reason it does not run; its reference and the
    precision it computes in (which picks its tolerance)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], Runner] | None = None,
        reason: str = "",
        reference: str = CPU_REFERENCE,
        precision: str | None = None,
    ) -> None:
        self.name, self.make, self.reason, self.reference, self.precision = name, make, reason, reference, precision


def _onnx_reason(onnx_path: Path | None, onnx_half: bool, half: bool) -> str:
    """Why ONNX Runtime cannot check this file at this precision ("" if it can)."""
    if onnx_path is None:
        return "no ONNX file given"
    if half and not onnx_half:
        return "no fp16 ONNX file given (this file computes in float32; export with precision='fp16')"
    if not half and onnx_half:
        return "the ONNX file computes in float16: check it with precision='fp16'"
    return ""


def plans(model, rewritten, onnx_path, onnx_half, ts_source, devices, openvino, precision) -> list[Plan]:
    """Every backend in table order; those that cannot run carry their reason instead of a factory."""
    half = precision == "fp16"
    dtype = torch.float16 if half else torch.float32
    ort_reason = _onnx_reason(onnx_path, onnx_half, half)
    plans: list[Plan] = []
    for device in devices:
        cuda = device == "cuda"
        ref = CUDA_REFERENCE if cuda and not half else CPU_REFERENCE
        if cuda and not half:
            plans.append(Plan(CUDA_REFERENCE, lambda: EagerRunner(model, "cuda", tf32=False, name=CUDA_REFERENCE)))
        torch_reason = "fp16 torch backends run on CUDA only (CPU half precision is no deployment target)" if half and not cuda else ""
        ts_reason = "no TorchScript file given" if ts_source is None else torch_reason

        def eager(d: str = device) -> Runner:
            return EagerRunner(rewritten(), d, dtype=dtype, name=f"eager-{d}")

        def script(d: str = device) -> Runner:
            return TorchScriptRunner(ts_source() if callable(ts_source) else ts_source, d, dtype=dtype)

        def onnxrt(d: str = device) -> Runner:
            # batch after batch in one session: without the CPU arena, no batch keeps what the last one needed
            return OnnxRuntimeRunner(onnx_path, d, session_options=session_options(arena=False) if d == "cpu" else None)

        for name, make, reason in (("eager", eager, torch_reason), ("torchscript", script, ts_reason), ("ort", onnxrt, ort_reason)):
            plans.append(Plan(f"{name}-{device}", None if reason else make, reason, ref))
    for ov_precision, runtime in openvino:
        reason = _onnx_reason(onnx_path, onnx_half, False) if not half else "OpenVINO rows check float32 files (precision='fp32')"
        make_openvino = None if reason else (lambda p=ov_precision, r=runtime: OpenVINORunner(onnx_path, p, runtime=r))
        plans.append(Plan(OpenVINORunner.default_name(ov_precision, runtime), make_openvino, reason, CPU_REFERENCE, ov_precision))
    return plans

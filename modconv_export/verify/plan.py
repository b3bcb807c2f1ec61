"""The verification's run plan: which backends run, in what order, and what each run costs.

:func:`plans` lists every backend of a check in table order -- a runner factory, or the reason it does not
run here -- and :func:`run_plan` runs one of them on every batch size and measures each output against its
reference. A backend is run once per batch size, and again for a median time only while its runs take
less than :data:`REPEAT_BUDGET_S` together: a 1024 px generator's verification costs one run per backend
and batch, not three. ONNX Runtime runs without its CPU arena (see :mod:`modconv_export.runtimes.ort`), so no batch keeps
what an earlier one needed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .._util import exception_line
from .._util.progress import step
from ..runtimes.ort import session_options
from .metrics import compare
from .openvino_runner import OpenVINORunner
from .report import FAIL, NOT_RUN, PASS, ParityRow
from .runners import EagerRunner, OnnxRuntimeRunner, Runner, RunnerUnavailable, TorchScriptRunner

__all__ = ["CPU_REFERENCE", "CUDA_REFERENCE", "REPEAT_BUDGET_S", "Plan", "plans", "run_plan", "timed"]

CPU_REFERENCE = "eager-original-cpu"
CUDA_REFERENCE = "eager-original-cuda"


#: Seconds of runs after which a backend's batch is not run again just for its time: a 1024 px generator
#: at batch 3 runs for many seconds, and the check needs its outputs once, not a median of three.
REPEAT_BUDGET_S = 1.0


def timed(runner: Runner, inputs: tuple, repeats: int) -> tuple[list[np.ndarray], float]:
    """Outputs of the first run and the median wall time of up to ``repeats`` runs, in milliseconds:
    further runs only while the runs so far took less than :data:`REPEAT_BUDGET_S` together."""
    times, outputs = [], None
    while not times or (len(times) < repeats and sum(times) < REPEAT_BUDGET_S * 1e3):
        start = time.perf_counter()
        result = runner.infer(inputs)
        times.append((time.perf_counter() - start) * 1e3)
        if outputs is None:
            outputs = result
        del result
    return outputs, statistics.median(times)


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
        make = None if reason else (lambda p=ov_precision, r=runtime: OpenVINORunner(onnx_path, p, runtime=r))
        plans.append(Plan(OpenVINORunner.default_name(ov_precision, runtime), make, reason, CPU_REFERENCE, ov_precision))
    return plans


def run_plan(plan, inputs, refs, names, precision, tolerance, repeats) -> tuple[list[ParityRow], list[str], dict[int, list[np.ndarray]]]:
    """Rows of one backend, the providers it actually used, and its outputs per batch size."""
    common = dict(
        precision=plan.precision or precision,
        reference=plan.reference,
        rel_l2_limit=tolerance.rel_l2,
        rtol_limit=tolerance.rtol,
        atol_limit=tolerance.atol,
        psnr_limit=tolerance.min_psnr,
    )
    band = dict(zip(("rtol", "atol"), tolerance.band())) if tolerance.elementwise else {}
    if plan.make is None:
        return [ParityRow(plan.name, NOT_RUN, reason=plan.reason, **common)], [], {}
    runner = None
    try:
        step(f"verify: preparing {plan.name}")
        runner = plan.make()
        runner.prepare()
    except RunnerUnavailable as exc:
        return [ParityRow(plan.name, NOT_RUN, reason=str(exc), **common)], [], {}
    except Exception as exc:
        return [ParityRow(plan.name, FAIL, reason=f"could not load: {exception_line(exc)}", **common)], [], {}
    rows: list[ParityRow] = []
    kept: dict[int, list[np.ndarray]] = {}
    try:
        for batch, batch_inputs in inputs.items():
            expected = refs[plan.reference][batch]
            step(f"verify: {plan.name} at batch {batch}")
            try:
                outputs, ms = timed(runner, batch_inputs, repeats)
            except Exception as exc:
                rows.append(ParityRow(plan.name, FAIL, batch, reason=f"inference failed: {exception_line(exc)}", **common))
                continue
            if len(outputs) != len(expected):
                rows.append(
                    ParityRow(
                        plan.name, FAIL, batch, reason=f"{len(outputs)} outputs, the reference has {len(expected)}", time_ms=ms, **common
                    )
                )
                continue
            kept[batch] = outputs
            for name, actual, ref in zip(names, outputs, expected):
                try:
                    m = compare(actual, ref, **band)
                except ValueError as exc:
                    rows.append(ParityRow(plan.name, FAIL, batch, name, reason=str(exc), time_ms=ms, **common))
                    continue
                ok, verdict = tolerance.judge(m)
                rows.append(
                    ParityRow(
                        plan.name,
                        PASS if ok else FAIL,
                        batch,
                        name,
                        verdict,
                        max_abs=m.max_abs,
                        max_rel=m.max_rel,
                        rel_l2=m.rel_l2,
                        cosine=m.cosine,
                        psnr=m.psnr,
                        nan_count=m.nan_count,
                        inf_count=m.inf_count,
                        time_ms=ms,
                        outside_band=m.outside_band,
                        **common,
                    )
                )
        return rows, runner.providers, kept
    finally:
        runner.release()

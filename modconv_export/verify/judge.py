"""Measuring a backend's outputs against the reference, then judging the numbers by the tolerance policy.

:func:`measure_run` compares each output of a :class:`~.run.BackendRun` with the reference's
(:func:`.metrics.compare`: numbers only); :func:`judge_run` turns those measurements into the report's
:class:`~.report.ParityRow` lines under a :class:`~.tolerances.Tolerance` (the policy, apart from the metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import Metrics, compare
from .report import FAIL, PASS, ParityRow
from .run import BackendRun
from .tolerances import Tolerance

__all__ = ["Measurement", "comparable_outputs", "judge_run", "measure_run"]

Outputs = dict[int, list[np.ndarray]]


@dataclass
class Measurement:
    """One backend at one batch size on one output (``output=None``: the whole batch): its metrics, or why
    it could not be measured (inference failed, a different number of outputs, shapes that differ)."""

    batch: int
    output: str | None
    metrics: Metrics | None = None
    time_ms: float | None = None
    error: str = ""


def comparable_outputs(run: BackendRun, expected: Outputs) -> Outputs:
    """The outputs per batch size that can be compared: as many as the reference has."""
    return {
        batch: result.outputs
        for batch, result in run.batches.items()
        if result.outputs is not None and len(result.outputs) == len(expected[batch])
    }


def measure_run(run: BackendRun, expected: Outputs, names: Sequence[str], tolerance: Tolerance) -> list[Measurement]:
    """Every output of every batch of ``run`` measured against ``expected`` (the reference's outputs);
    ``tolerance`` says only which element-wise band to count elements outside of."""
    band = dict(zip(("rtol", "atol"), tolerance.band())) if tolerance.elementwise else {}
    measured = []
    for batch, result in run.batches.items():
        if result.outputs is None:
            measured.append(Measurement(batch, None, error=result.error))
            continue
        reference = expected[batch]
        if len(result.outputs) != len(reference):
            error = f"{len(result.outputs)} outputs, the reference has {len(reference)}"
            measured.append(Measurement(batch, None, time_ms=result.time_ms, error=error))
            continue
        for name, actual, ref in zip(names, result.outputs, reference):
            try:
                measured.append(Measurement(batch, name, compare(actual, ref, **band), result.time_ms))
            except ValueError as exc:
                measured.append(Measurement(batch, name, time_ms=result.time_ms, error=str(exc)))
    return measured


def judge_run(run: BackendRun, measured: Sequence[Measurement], tolerance: Tolerance, precision: str, reference: str) -> list[ParityRow]:
    """The report's rows of one backend: one "not run"/failed row if it never ran, else one per measurement."""
    common: dict[str, Any] = dict(
        precision=precision,
        reference=reference,
        rel_l2_limit=tolerance.rel_l2,
        rtol_limit=tolerance.rtol,
        atol_limit=tolerance.atol,
        psnr_limit=tolerance.min_psnr,
    )
    if run.status:
        return [ParityRow(run.name, run.status, reason=run.reason, **common)]
    rows = []
    for m in measured:
        where: dict[str, Any] = {"output": m.output} if m.output is not None else {}
        if m.metrics is None:
            rows.append(ParityRow(run.name, FAIL, m.batch, reason=m.error, time_ms=m.time_ms, **where, **common))
            continue
        ok, verdict = tolerance.judge(m.metrics)
        rows.append(
            ParityRow(
                run.name,
                PASS if ok else FAIL,
                m.batch,
                m.output or "*",
                verdict,
                max_abs=m.metrics.max_abs,
                max_rel=m.metrics.max_rel,
                rel_l2=m.metrics.rel_l2,
                cosine=m.metrics.cosine,
                psnr=m.metrics.psnr,
                nan_count=m.metrics.nan_count,
                inf_count=m.metrics.inf_count,
                time_ms=m.time_ms,
                outside_band=m.metrics.outside_band,
                **common,
            )
        )
    return rows

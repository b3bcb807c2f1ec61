"""Measure, never judge: the differences between one backend's output and the reference's.

:func:`compare` turns two arrays into a :class:`Metrics` record. Whether those numbers are good
enough is the tolerance policy's business (:mod:`.tolerances`), so the same record can be judged
against fp32, TF32 or fp16 limits, or printed as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Metrics", "compare", "is_image_like"]

#: Channel counts that make a 4-D NCHW output an image (grey, RGB, RGBA).
IMAGE_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class Metrics:
    """Differences of ``actual`` from ``expected``; every float is computed in float64.

    ``max_rel`` ignores reference elements smaller than 1e-3 of the largest reference magnitude,
    where a relative error says nothing. ``psnr`` is ``None`` for outputs that are not images; its peak
    is the reference's value range. ``nan_count``/``inf_count`` count non-finite values in ``actual``
    (``ref_nonfinite`` those in ``expected``); the float metrics then come out as NaN. ``outside_band``
    counts the elements with ``|actual - expected| > atol + rtol * |expected|`` when :func:`compare`
    was given a band (``None`` otherwise).
    """

    max_abs: float
    max_rel: float
    rel_l2: float
    cosine: float
    psnr: float | None
    nan_count: int
    inf_count: int
    ref_nonfinite: int
    numel: int
    outside_band: int | None = None

    @property
    def nonfinite(self) -> int:
        return self.nan_count + self.inf_count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_image_like(shape: tuple[int, ...]) -> bool:
    """An ``[N, C, H, W]`` output with 1, 3 or 4 channels and at least 2x2 pixels."""
    return len(shape) == 4 and shape[1] in IMAGE_CHANNELS and shape[2] >= 2 and shape[3] >= 2


def _as_float64(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().float().numpy()
    return np.asarray(array).astype(np.float64)


def compare(actual: Any, expected: Any, *, rtol: float | None = None, atol: float | None = None) -> Metrics:
    """Metrics of ``actual`` against ``expected`` (numpy arrays or tensors of one shape, any float dtype).

    With ``rtol`` and/or ``atol`` (a missing one is 0) it also counts the elements outside the
    ``numpy.allclose`` band. Raises ``ValueError`` if the shapes differ: that is not a numerical
    difference to measure.
    """
    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise ValueError(f"shape {tuple(a.shape)} differs from the reference's {tuple(e.shape)}")
    nan_count = int(np.isnan(a).sum())
    inf_count = int(np.isinf(a).sum())
    ref_nonfinite = int((~np.isfinite(e)).sum())
    banded = rtol is not None or atol is not None
    if a.size == 0:
        return Metrics(0.0, 0.0, 0.0, 1.0, None, nan_count, inf_count, ref_nonfinite, 0, 0 if banded else None)
    if nan_count or inf_count or ref_nonfinite:
        nan = float("nan")
        outside = int((~np.isclose(a, e, rtol=rtol or 0.0, atol=atol or 0.0, equal_nan=False)).sum()) if banded else None
        return Metrics(
            nan, nan, nan, nan, nan if is_image_like(e.shape) else None, nan_count, inf_count, ref_nonfinite, int(a.size), outside
        )

    diff = np.abs(a - e)
    outside = int((diff > (atol or 0.0) + (rtol or 0.0) * np.abs(e)).sum()) if banded else None
    mag = np.abs(e)
    significant = mag > 1e-3 * mag.max() if mag.max() > 0 else np.zeros_like(mag, dtype=bool)
    max_rel = float((diff[significant] / mag[significant]).max()) if significant.any() else (math.inf if diff.max() > 0 else 0.0)
    ref_norm = float(np.linalg.norm(e))
    diff_norm = float(np.linalg.norm(a - e))
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
    a_norm = float(np.linalg.norm(a))
    if a_norm == 0 and ref_norm == 0:
        cosine = 1.0
    elif a_norm == 0 or ref_norm == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(a.ravel(), e.ravel()) / (a_norm * ref_norm))
    psnr = None
    if is_image_like(e.shape):
        mse = float(np.mean((a - e) ** 2))
        peak = float(e.max() - e.min())
        psnr = math.inf if mse == 0 else (10 * math.log10(peak**2 / mse) if peak > 0 else -math.inf)
    return Metrics(float(diff.max()), max_rel, rel_l2, cosine, psnr, 0, 0, 0, int(a.size), outside)

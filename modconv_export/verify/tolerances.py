"""The pass/fail policy: which relative-L2 error each backend and precision may show, and why.

The criterion is the relative L2 error ``||actual - reference|| / ||reference||`` over a whole output:
unlike an elementwise ``allclose`` it does not trip over the few near-zero pixels where any rounding is
a large *relative* error, yet a real defect (a wrong weight, a frozen batch, a swapped input) moves it by
orders of magnitude. Every row must also be free of NaN and Inf, whatever the precision.

Defaults, with the reasoning:

* **fp32 on CPU: 1e-4.** Eager, TorchScript and ONNX Runtime differ only in summation order (oneDNN vs.
  MLAS kernels) and in the rewrite's algebra (the input is modulated instead of the weight, the
  demodulation is one MatMul). Each costs a few fp32 ulps (~1e-7 relative) per layer; measured on
  small generators it is ~1e-7..1e-6 in total. 1e-4 leaves a hundredfold margin, while nudging a
  single weight by 1 % already moves the output by more than that.
* **fp32 on CUDA: 5e-3.** cuDNN and ONNX Runtime's CUDA provider run convolutions in TF32 by default on
  Ampere and later (a 10-bit mantissa, ~5e-4 per product), which gives ~1e-3 relative L2 over a
  generator; the limit leaves a factor of five. (The CUDA reference itself runs with TF32 off.)
* **fp16: 1e-2.** Half precision has a 10-bit mantissa too and rounds *every* intermediate, not only
  convolution products, so a few layers accumulate ~1e-3..5e-3. Overflow past 65504 is the typical fp16
  failure, and shows up as Inf/NaN -- which must be zero.
* **bf16 (OpenVINO on AMX/AVX512-BF16 CPUs): 1e-1, and PSNR >= 30 dB on image outputs.** bfloat16 keeps
  float32's exponent (no overflow) but only an 8-bit mantissa (~4e-3 per rounding), and OpenVINO rounds
  every feature map, convolution input and weight. Measured with the style-path policy of
  :mod:`modconv_export.runtimes.openvino_model` on the families' own inputs (3 input seeds, batch 1 and 3,
  random weights): LATS 256 px 1.2e-2..2.5e-2 (42.6..47.1 dB), LATS 128 px 1.3e-2..2.5e-2, StyleGAN2
  decoder 7.3e-3..1.6e-2 (>= 45.5 dB), GFPGAN 512 px ~7e-3 (55 dB); the small presets (8..64
  channels) are worse, worst the small LATS at initialisation: 3.0e-2..5.4e-2 (>= 36.0 dB). The limits
  leave about twice the worst relative L2 and 6 dB, and still fail any structural defect (another
  model's weights or a swapped input: ~1, far below 20 dB). A 1 % weight error is below bf16's
  resolution: the fp32 rows (ONNX Runtime, OpenVINO f32) catch it, which is why a check keeps them.

``max_rel_l2`` replaces the relative-L2 limit (and drops bf16's PSNR floor). ``rtol``/``atol`` add an
element-wise check with the semantics of ``numpy.allclose`` and ``torch.testing.assert_close``: every
element must satisfy ``|actual - reference| <= atol + rtol * |reference|`` (a missing one of the two
counts as 0, so ``atol`` alone bounds the largest absolute difference). Polygraphy's default check
differs slightly: an element fails there only if *both* its absolute and its relative difference exceed
their limits. Each may be one number for every backend or a mapping keyed by backend name
(``"ort-cuda"``), device (``"cuda"``) or ``"*"``, most specific first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..export.prepare import PRECISIONS as EXPORT_PRECISIONS
from .metrics import Metrics

__all__ = [
    "BF16_MIN_PSNR",
    "BF16_REL_L2",
    "DEFAULT_MIN_PSNR",
    "DEFAULT_REL_L2",
    "PRECISIONS",
    "Tolerance",
    "ToleranceOverride",
    "backend_device",
    "resolve_tolerance",
]

PRECISIONS = (*EXPORT_PRECISIONS, "bf16")  # the files' precisions, and bf16 as a runtime runs them
#: bf16 limits (see the module docstring for the measurements behind them).
BF16_REL_L2 = 1e-1
BF16_MIN_PSNR = 30.0

#: (device, precision) -> relative-L2 limit; see the module docstring for the reasoning.
DEFAULT_REL_L2: dict[tuple[str, str], float] = {
    ("cpu", "fp32"): 1e-4,
    ("cuda", "fp32"): 5e-3,
    ("cpu", "fp16"): 1e-2,
    ("cuda", "fp16"): 1e-2,
    ("cpu", "bf16"): BF16_REL_L2,
}

#: (device, precision) -> lowest PSNR (dB) an image output may show; precisions without one: none.
DEFAULT_MIN_PSNR: dict[tuple[str, str], float] = {("cpu", "bf16"): BF16_MIN_PSNR}

_WHY = {
    ("cpu", "fp32"): "fp32 summation order and the rewrite's algebra give ~1e-6; 100x margin",
    ("cuda", "fp32"): "TF32 convolutions (cuDNN, ORT CUDA) give ~1e-3",
    ("cpu", "fp16"): "half precision rounds every intermediate (~1e-3..5e-3); no NaN/Inf allowed",
    ("cuda", "fp16"): "half precision rounds every intermediate (~1e-3..5e-3); no NaN/Inf allowed",
    ("cpu", "bf16"): "bfloat16 feature maps and weights (8-bit mantissa): 2.8e-3..5.4e-2 measured; PSNR floor on images",
}

ToleranceOverride = float | Mapping[str, float] | None


def backend_device(backend: str) -> str:
    """``"ort-cuda"`` -> ``"cuda"``: backend names end in their device."""
    return "cuda" if backend.endswith("cuda") else "cpu"


@dataclass(frozen=True)
class Tolerance:
    """Limits for one backend: relative L2, an optional element-wise ``rtol``/``atol`` band, an optional
    PSNR floor for image outputs (``Metrics.psnr`` is ``None`` for others), no NaN/Inf."""

    rel_l2: float
    rtol: float | None = None
    atol: float | None = None
    max_nonfinite: int = 0
    why: str = ""
    min_psnr: float | None = None

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def band(self) -> tuple[float, float]:
        """``(rtol, atol)`` of the element-wise check, a missing one as 0."""
        return (self.rtol or 0.0, self.atol or 0.0)

    def judge(self, metrics: Metrics) -> tuple[bool, str]:
        """``(passed, verdict)``; the verdict names the deciding numbers, e.g. ``rel-L2 3.0e-06 ≤ 1e-04``.

        ``metrics`` must have been measured with this tolerance's :meth:`band` when it is element-wise.
        """
        if metrics.ref_nonfinite:
            return False, f"reference has {metrics.ref_nonfinite} NaN/Inf values"
        if metrics.nonfinite > self.max_nonfinite:
            return False, f"{metrics.nan_count} NaN + {metrics.inf_count} Inf values"
        ok = metrics.rel_l2 <= self.rel_l2
        verdict = f"rel-L2 {metrics.rel_l2:.1e} {'≤' if ok else '>'} {_limit(self.rel_l2)}"
        if self.elementwise:
            rtol, atol = self.band()
            outside = metrics.outside_band
            if outside is None:
                raise ValueError("element-wise tolerance: measure with compare(..., rtol=, atol=)")
            verdict += f", {outside}/{metrics.numel} elements outside atol {atol:.0e} + rtol {rtol:.0e}·|ref|"
            ok = ok and outside == 0
        if self.min_psnr is not None and metrics.psnr is not None:
            psnr_ok = metrics.psnr >= self.min_psnr
            verdict += f", PSNR {metrics.psnr:.1f} {'≥' if psnr_ok else '<'} {self.min_psnr:.0f} dB"
            ok = ok and psnr_ok
        return ok, verdict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit(value: float) -> str:
    """``1e-04``, ``1.5e-01``: one digit unless the limit has two."""
    short = f"{value:.0e}"
    return short if float(short) == value else f"{value:.1e}"


def _pick(override: ToleranceOverride, backend: str) -> float | None:
    if override is None:
        return None
    if isinstance(override, Mapping):
        for key in (backend, backend_device(backend), "*"):
            if key in override:
                return float(override[key])
        return None
    return float(override)


def resolve_tolerance(
    backend: str, precision: str, rtol: ToleranceOverride = None, atol: ToleranceOverride = None, max_rel_l2: ToleranceOverride = None
) -> Tolerance:
    """The limits for ``backend`` (``"ort-cpu"``, ``"torchscript-cuda"`` ...) at ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    key = (backend_device(backend), precision)
    if key not in DEFAULT_REL_L2:
        raise ValueError(f"no {precision} tolerance for {key[0]} backends ({backend})")
    rel = _pick(max_rel_l2, backend)
    why = _WHY[key] if rel is None else "overridden by the caller"
    min_psnr = DEFAULT_MIN_PSNR.get(key) if rel is None else None
    return Tolerance(
        rel_l2=DEFAULT_REL_L2[key] if rel is None else rel, rtol=_pick(rtol, backend), atol=_pick(atol, backend), why=why, min_psnr=min_psnr
    )

"""What a parity check is asked to do, as one value: :class:`ParityOptions`.

The command line builds one from its arguments; :func:`~modconv_export.verify.check_parity` accepts one, or
builds it from its keyword arguments (``check_parity(model, args, onnx_path=..., batch_sizes=(1, 3))``), so
both callers go through the same checks (:meth:`ParityOptions.checked`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModconvExportError
from ..export.prepare import PRECISIONS as CHECK_PRECISIONS  # the precisions a file is exported in
from .providers import DEFAULT_PROVIDERS, parse_providers
from .tolerances import Tolerance, ToleranceOverride, resolve_tolerance

__all__ = ["MakeInputs", "ParityOptions"]

#: ``make_inputs(batch, seed)``: realistic inputs of one batch size (a tensor or a tuple, ``forward`` order).
MakeInputs = Callable[[int, int], Any]


@dataclass(frozen=True)
class ParityOptions:
    """The files to check, the backends and batch sizes to run them on, and the tolerance overrides.

    ``onnx_path``/``torchscript_path``: the files (``None``: those rows are "not run");
    ``trace_torchscript=True`` checks an in-memory trace instead of a TorchScript file. ``providers``: the
    devices and OpenVINO rows (see :mod:`.providers`). ``batch_sizes``: each gets fresh inputs, drawn with
    ``seed`` (or made by ``make_inputs(batch, seed)``). ``precision``: ``"fp32"`` or ``"fp16"``.
    ``rtol``/``atol``/``max_rel_l2`` override the policy of :mod:`.tolerances`. ``repeats``: runs per batch
    for a median time (within :data:`.run.REPEAT_BUDGET_S`). ``image_samples``: images kept for the picture.
    """

    onnx_path: str | os.PathLike | None = None
    torchscript_path: str | os.PathLike | None = None
    trace_torchscript: bool = False
    providers: Sequence[str] = DEFAULT_PROVIDERS
    batch_sizes: Sequence[int] = (1, 3)
    precision: str = "fp32"
    rtol: ToleranceOverride = None
    atol: ToleranceOverride = None
    max_rel_l2: ToleranceOverride = None
    seed: int = 0
    make_inputs: MakeInputs | None = None
    repeats: int = 3
    image_samples: int = 4

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any], caller: str = "check_parity") -> ParityOptions:
        """Options from ``check_parity``'s keyword arguments; an unknown one is a ``TypeError`` naming ``caller``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**keywords)

    def checked(self) -> ParityOptions:
        """These options normalised (providers parsed, batch sizes distinct, paths as :class:`Path`), or
        :class:`~modconv_export.errors.ModconvExportError` for a usage error (bad name, missing file)."""
        if self.precision not in CHECK_PRECISIONS:
            raise ModconvExportError(f"unknown precision {self.precision!r}; choose one of {', '.join(CHECK_PRECISIONS)}")
        providers = parse_providers(self.providers)
        if self.torchscript_path is not None and self.trace_torchscript:
            raise ModconvExportError("give torchscript_path or trace_torchscript=True, not both")
        batches = tuple(dict.fromkeys(int(b) for b in self.batch_sizes))
        if not batches or min(batches) < 1:
            raise ModconvExportError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        paths = {}
        for key, path in (("onnx", self.onnx_path), ("torchscript", self.torchscript_path)):
            if path is not None and not Path(path).is_file():
                raise ModconvExportError(f"{key} file not found: {path}")
            paths[key] = Path(path) if path is not None else None
        return dataclasses.replace(
            self, onnx_path=paths["onnx"], torchscript_path=paths["torchscript"], providers=providers, batch_sizes=batches
        )

    def tolerance(self, backend: str, precision: str | None = None) -> Tolerance:
        """The limits one backend is judged by: the policy of :mod:`.tolerances` with these overrides."""
        return resolve_tolerance(backend, precision or self.precision, self.rtol, self.atol, self.max_rel_l2)

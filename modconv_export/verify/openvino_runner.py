"""The OpenVINO runner: an ONNX file on OpenVINO's CPU plugin (its own runtime, or ONNX Runtime's OpenVINO
execution provider), f32 or bf16; the deployment settings are :mod:`modconv_export.runtimes`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunnerUnavailable
from .runners import Runner

__all__ = ["OpenVINORunner"]


class OpenVINORunner(Runner):
    """An ONNX file on OpenVINO's CPU plugin at ``precision`` ("fp32" or "bf16").

    ``runtime="openvino"`` compiles with the ``openvino`` package through
    :class:`~modconv_export.runtimes.OpenVINOModel` (bf16 with the style path in f32 unless
    ``f32_islands=False``); ``runtime="onnxruntime"`` runs the file in ONNX Runtime on the OpenVINO
    execution provider (the ``onnxruntime-ep-openvino`` plugin; no island policy). Both are told the
    precision explicitly -- OpenVINO's own CPU default is bf16 on AMX machines. ``prepare`` raises
    :class:`RunnerUnavailable` where the package is missing or, for bf16, where OpenVINO reports no
    native bf16 (no AMX-BF16/AVX512-BF16). ``static_shapes=True`` compiles one model per input shape (a
    deployment that serves one size) instead of one with a dynamic batch.
    """

    RUNTIMES = ("openvino", "onnxruntime")

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "fp32",
        *,
        runtime: str = "openvino",
        f32_islands: bool = True,
        static_shapes: bool = False,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        from ..runtimes.openvino_config import OV_PRECISIONS

        if precision not in OV_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(OV_PRECISIONS)}")
        if runtime not in self.RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(self.RUNTIMES)}")
        super().__init__(name or self.default_name(precision, runtime))
        self.path = Path(path)
        self.precision = precision
        self.runtime = runtime
        self.f32_islands = f32_islands and precision == "bf16" and runtime == "openvino"
        self.static_shapes = static_shapes and runtime == "openvino"
        self.config = dict(config or {})
        self.session: Any = None
        self._models: dict[tuple, Any] = {}
        self._version = ""

    @staticmethod
    def default_name(precision: str = "fp32", runtime: str = "openvino") -> str:
        """``openvino-cpu``, ``openvino-cpu-bf16``, ``ort-openvino-cpu``, ``ort-openvino-cpu-bf16``."""
        return f"{'openvino' if runtime == 'openvino' else 'ort-openvino'}-cpu{'' if precision == 'fp32' else '-' + precision}"

    def prepare(self) -> None:
        from .. import runtimes

        if self.runtime == "onnxruntime":
            self._prepare_ort(runtimes)
        else:
            reason = runtimes.openvino_unavailable_reason() or (runtimes.bf16_unavailable_reason() if self.precision == "bf16" else "")
            if reason:
                raise RunnerUnavailable(reason)
            import openvino

            self._version = openvino.__version__
            if not self.static_shapes:
                self._models[()] = self._compile(None)
        self.prepared = True

    def _prepare_ort(self, runtimes: Any) -> None:
        try:
            device = runtimes.ort_openvino_device()
        except ImportError:
            raise RunnerUnavailable("OpenVINO execution provider not installed (pip install onnxruntime-ep-openvino)") from None
        except RuntimeError as exc:
            raise RunnerUnavailable(str(exc)) from None
        if self.precision == "bf16":
            reason = runtimes.bf16_unavailable_reason(str(device.ep_metadata.get("OPTIMIZATION_CAPABILITIES", "")).split())
            if reason:
                raise RunnerUnavailable(reason)
        session = runtimes.ort_openvino_session(self.path, self.precision, load_config=self.config)
        actual = list(session.get_providers())
        if not actual or actual[0] != "OpenVINOExecutionProvider":
            raise RunnerUnavailable(
                f"OpenVINO execution provider unavailable: the session runs on {actual[0] if actual else 'no provider'}"
            )
        self._version = str(device.ep_metadata.get("version", ""))
        self.session = session

    def _compile(self, shapes: dict[str, list[int]] | None) -> Any:
        from ..runtimes.openvino_model import OpenVINOModel

        return OpenVINOModel(self.path, self.precision, f32_islands=self.f32_islands, shapes=shapes, config=self.config)

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if not self.prepared:
            raise RuntimeError(f"{self.name}: prepare() was not called")
        arrays = [x.detach().cpu().numpy() for x in inputs if isinstance(x, torch.Tensor)]
        if self.session is not None:
            names = [i.name for i in self.session.get_inputs()]
            if len(names) != len(arrays):
                raise ValueError(f"the ONNX graph takes {len(names)} inputs, the model {len(arrays)} tensors")
            return [np.asarray(o) for o in self.session.run(None, dict(zip(names, arrays)))]
        key = tuple(a.shape for a in arrays) if self.static_shapes else ()
        if key not in self._models:
            names = self._any_model().input_names if self._models else self._file_inputs()
            if len(names) != len(arrays):
                raise ValueError(f"the ONNX graph takes {len(names)} inputs, the model {len(arrays)} tensors")
            self._models[key] = self._compile({n: list(a.shape) for n, a in zip(names, arrays)})
        return self._models[key](arrays)

    def _any_model(self) -> Any:
        return next(iter(self._models.values()))

    def _file_inputs(self) -> list[str]:
        from ..runtimes.openvino_config import openvino_core

        return [p.get_any_name() for p in openvino_core().read_model(str(self.path)).inputs]

    def release(self) -> None:
        self._models.clear()
        self.session = None
        super().release()

    @property
    def providers(self) -> list[str]:
        if not self.prepared:
            return []
        if self.session is not None:
            return [f"{p} (onnxruntime-ep-openvino {self._version}, {self.precision})" for p in self.session.get_providers()]
        models = list(self._models.values())
        detail = self.precision + (", style path f32" if any(m.f32_islands for m in models) else "")
        detail += (", upsampling folded" if any(m.folded for m in models) else "") + (", static shapes" if self.static_shapes else "")
        return [f"openvino {self._version}:CPU ({detail})"]

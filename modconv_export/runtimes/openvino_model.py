"""An ONNX (or IR) file compiled for OpenVINO's CPU plugin with the toolkit's settings and graph passes.

The settings are :func:`~.openvino_config.compile_config`'s; nearest-upsampling convolutions are folded
(:func:`~.openvino_upsampling.fold_nearest_upsampling`); and under bf16:

* The **bf16 precision policy** (:class:`OpenVINOModel`, ``f32_islands=True``): the *style path* --
  every op computing per-sample vectors from vector inputs (the age code / latent): mapping and style
  MLPs with their pixel norms, the per-sample scale ``s`` and the demodulation ``rsqrt(s²·ΣW² + 1e-5)``
  -- is cut out of the graph into a model of its own that runs in f32; its outputs feed the rest (the
  feature maps: convolutions, resampling, padding, activations, normalisation), which runs in bf16.
  Measured against fp32 eager (random weights, the families' own inputs, batch 1, 3 input seeds):
  LATS 256 px: plain bf16 3.3e-2..6.2e-2 relative L2 (33..38 dB PSNR), with the policy 1.3e-2..2.4e-2
  (43..46 dB); small LATS with random biases 6.8e-3..1.4e-2 -> 3.3e-3..3.8e-3. GFPGAN's styles come from
  its encoder's features, not from an input, so it has no such path (7e-3, 55 dB either way). Keeping
  the feature-map normalisation statistics in f32 as well gained nothing measurable (bf16 has float32's
  exponent range, so the fp16 policy's overflow reason does not apply) and cost time (it stops OpenVINO
  fusing them). OpenVINO's per-node ``DisablePrecisionConversion`` attribute was tried first and is not
  used: the CPU plugin's fusions (a MatMul with its bias into a FullyConnected, pixel norm into RMS)
  build new nodes without it, so with real (non-zero) biases most of the MLP silently ran in bf16.
"""

from __future__ import annotations

import os
from typing import Any

from .openvino_config import compile_config, openvino_core
from .openvino_style_path import split_style_path
from .openvino_upsampling import fold_nearest_upsampling

__all__ = ["OpenVINOModel"]


class OpenVINOModel:
    """An ONNX (or IR) file compiled for OpenVINO's CPU plugin at ``precision``, called with arrays.

    For bf16 with ``f32_islands`` (the default) and a style path (:func:`split_style_path`) it is two
    compiled models: the style path in f32, whose outputs feed the feature maps in bf16 -- the policy
    of the module docstring. ``fold_upsampling`` applies :func:`fold_nearest_upsampling` (``folded``
    counts the convolutions it rewrote). ``shapes`` reshapes the inputs to static shapes first;
    ``config`` adds or overrides :func:`compile_config` properties. ``model(arrays)`` takes the inputs
    in the file's order and returns its outputs in order; ``compiled`` lists the compiled models.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        precision: str = "fp32",
        *,
        f32_islands: bool = True,
        fold_upsampling: bool = True,
        shapes: dict[str, list[int]] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        model = openvino_core().read_model(str(path))
        if shapes:
            model.reshape(shapes)
        self.folded = fold_nearest_upsampling(model) if fold_upsampling else 0
        self.input_names = [p.get_any_name() for p in model.inputs]
        self.precision = precision
        parts = split_style_path(model) if precision == "bf16" and f32_islands else None

        def settings(p: str) -> dict[str, Any]:
            return {**compile_config(p), **(config or {})}

        self.f32_islands = parts is not None
        if parts is None:
            self.compiled = [openvino_core().compile_model(model, "CPU", settings(precision))]
            self._requests = [self.compiled[0].create_infer_request()]
            return
        style, features = parts
        self.compiled = [
            openvino_core().compile_model(style, "CPU", settings("fp32")),
            openvino_core().compile_model(features, "CPU", settings(precision)),
        ]
        self._requests = [c.create_infer_request() for c in self.compiled]
        self._style_inputs = [self.input_names.index(p.get_any_name()) for p in style.inputs]
        self._feature_inputs = [
            self.input_names.index(p.get_any_name()) for p in features.inputs if not p.get_any_name().startswith("style:")
        ]

    def __call__(self, arrays: list[Any]) -> list[Any]:
        import numpy as np

        if len(arrays) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(arrays)}")
        arrays = [np.ascontiguousarray(a) for a in arrays]
        if not self.f32_islands:
            result = self._requests[0].infer(arrays, share_inputs=True)
            return [np.array(result[o]) for o in self.compiled[0].outputs]
        style_request, feature_request = self._requests
        style_request.infer([arrays[i] for i in self._style_inputs], share_inputs=True)
        first = len(self._feature_inputs)
        for k in range(len(self.compiled[0].outputs)):  # the style tensors are handed over, not copied
            feature_request.set_input_tensor(first + k, style_request.get_output_tensor(k))
        result = feature_request.infer({i: arrays[j] for i, j in enumerate(self._feature_inputs)}, share_inputs=True)
        return [np.array(result[o]) for o in self.compiled[1].outputs]

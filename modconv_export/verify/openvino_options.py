"""OpenVINO settings for deploying exported generators on the CPU, as one documented place.

The OpenVINO runners of :mod:`modconv_export.verify` and ``benchmarks/bench.py`` compile here, so what
is measured is what is recommended (as :mod:`.ort_options` does for ONNX Runtime):

* ``INFERENCE_PRECISION_HINT``: ``f32`` or ``bf16``, always set explicitly. OpenVINO's CPU default is
  bf16 wherever the CPU has AMX or AVX512-BF16, so a run without the hint is a bf16 run there and an
  f32 run elsewhere -- the same line of code would give different numbers on different machines.
* ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_NUM_THREADS`` = the cores this process may use (as for
  ONNX Runtime): one request at a time, every core on it -- what a generator serving single requests needs.
* Nearest x2 upsampling + reflect pad + 3x3 convolution (the upsampling layers of LATS and the StyleGAN2
  decoders) is folded into one 2x2 convolution at the low resolution with a depth-to-space
  (:func:`fold_nearest_upsampling`): 2.25x fewer multiply-adds in those layers, exact in f32; measured
  8..12 % off the whole LATS generator at 256 px, f32 and bf16 alike.
* bf16 runs only where OpenVINO itself reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AMX-BF16 or
  AVX512-BF16; elsewhere bf16 would be emulated or silently fall back); :func:`bf16_unavailable_reason`
  says why not, with the CPU's flags.
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

ONNX Runtime with the OpenVINO execution provider (the ``onnxruntime-ep-openvino`` plugin,
:func:`ort_openvino_session`) runs the same OpenVINO CPU plugin, so it is no faster; it cannot take the
f32-island policy (it reads the ONNX file), and its documented ``precision`` option is ignored by the
plugin (asking for ``FP32`` still runs bf16 on AMX): precision goes through ``load_config``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path
from typing import Any

from .ort_options import cpu_threads, session_options

__all__ = [
    "OV_PRECISIONS",
    "OpenVINOModel",
    "bf16_unavailable_reason",
    "compile_config",
    "cpu_info",
    "fold_nearest_upsampling",
    "openvino_unavailable_reason",
    "optimization_capabilities",
    "ort_openvino_device",
    "ort_openvino_session",
    "split_style_path",
]

#: Toolkit precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT`` values.
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: /proc/cpuinfo flags that matter for CPU inference speed (reported with every benchmark).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INSTALL_HINT = "pip install 'modconv-export[openvino]'"


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the ISA flags of :data:`ISA_FLAGS` it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores_available": cpu_threads()}


def openvino_unavailable_reason() -> str:
    """``""`` if the ``openvino`` package imports, else the reason (with the install command)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"OpenVINO not installed ({INSTALL_HINT})"
    return ""


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def optimization_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device (``BF16``, ``FP32``, ``INT8``, ...)."""
    return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


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


def _is_vector_shape(shape: Any) -> bool:
    """``[B, C]``, or ``[B, C, 1, 1]``-like: per-sample vectors, whatever their rank (batch may be dynamic)."""
    if shape.rank.is_dynamic:
        return False
    dims = list(shape)
    return len(dims) <= 2 or all(d.is_static and d.get_length() == 1 for d in dims[2:])


def _is_vector_op(op: Any) -> bool:
    return op.get_output_size() > 0 and all(_is_vector_shape(op.get_output_partial_shape(i)) for i in range(op.get_output_size()))


def split_style_path(model: Any) -> tuple[Any, Any] | None:
    """``(style, features)``: ``model`` cut in two at its style path, or ``None`` if it has none.

    The style path is every vector-shaped op (:func:`_is_vector_shape`) fed by vector inputs, constants
    and other style-path ops only. ``style`` takes those inputs and returns every style-path tensor the
    rest uses; ``features`` takes the other inputs followed by those tensors (inputs named ``style:<k>``)
    and returns ``model``'s outputs. ``model`` is consumed (its nodes are rewired into ``features``).
    """
    import openvino as ov

    const: set[Any] = set()
    style: set[Any] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if kind == "Constant" or (kind != "Parameter" and sources and all(s in const for s in sources)):
            const.add(op)
        elif kind == "Parameter":
            if _is_vector_shape(op.get_output_partial_shape(0)):
                style.add(op)
        elif kind != "Result" and _is_vector_op(op) and any(s in style for s in sources) and all(s in style or s in const for s in sources):
            style.add(op)
    cuts = []
    for op in model.get_ordered_ops():
        if op in style:
            for output in op.outputs():
                users = [t for t in output.get_target_inputs() if t.get_node() not in style]
                if users:
                    cuts.append((output, users))
    style_inputs = [p for p in model.get_parameters() if p in style]
    if not style_inputs or all(output.get_node().get_type_name() == "Parameter" for output, _ in cuts):
        return None
    style_model = ov.Model([ov.opset13.result(output) for output, _ in cuts], style_inputs, "style")
    cut_inputs = []
    for k, (output, users) in enumerate(cuts):
        parameter = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type(), name=f"style:{k}")
        parameter.output(0).set_names({f"style:{k}"})
        for user in users:
            user.replace_source_output(parameter.output(0))
        cut_inputs.append(parameter)
    features = ov.Model(model.get_results(), [p for p in model.get_parameters() if p not in style] + cut_inputs, "features")
    return style_model, features


def _constant(output: Any) -> Any:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _nearest_x2_input(up: Any) -> Any:
    """The input of a nearest-neighbour x2 upsampling of H and W (an ``Interpolate``), else ``None``."""
    if up.get_type_name() != "Interpolate":
        return None
    attrs = up.get_attributes()
    if (
        attrs.get("mode") != "nearest"
        or attrs.get("coordinate_transformation_mode") != "asymmetric"
        or attrs.get("shape_calculation_mode") != "scales"
    ):
        return None
    if (
        attrs.get("nearest_mode") not in ("floor", "round_prefer_floor", "simple")
        or any(attrs.get("pads_begin", []))
        or any(attrs.get("pads_end", []))
    ):
        return None
    opset11 = up.get_type_info().version_id == "opset11"  # (data, scales[, axes]); opset4: (data, sizes, scales[, axes])
    scales_at, axes_at = (1, 2) if opset11 else (2, 3)
    scales = _constant(up.input_value(scales_at)) if up.get_input_size() > scales_at else None
    axes = _constant(up.input_value(axes_at)) if up.get_input_size() > axes_at else None
    if scales is None or (axes is None and up.get_input_size() > axes_at):
        return None
    rank = up.get_input_partial_shape(0).rank
    axes = list(range(rank.get_length())) if axes is None and rank.is_static else axes
    wanted = {a: s for a, s in zip([int(a) for a in axes], [float(s) for s in scales])} if axes is not None else {}
    if rank.is_dynamic or rank.get_length() != 4 or {a: s for a, s in wanted.items() if s != 1.0} != {2: 2.0, 3: 2.0}:
        return None
    return up.input_value(0)


def _i64(*values: int) -> Any:
    """An int64 constant for the OpenVINO opset builders."""
    import numpy as np

    return np.array(values, dtype=np.int64)


def fold_nearest_upsampling(model: Any) -> int:
    """Rewrite ``conv3x3(reflect_pad(upsample_nearest_x2(x)))`` as one 2x2 convolution at ``x``'s resolution
    with 4x the output channels (one per output phase) and a depth-to-space; returns how many it folded.

    Each output pixel of the original sees only 2 distinct input rows and columns, so the 3x3 kernel
    folds into four 2x2 phase kernels: 2.25x fewer multiply-adds, no upsampled copy. Reflect padding of
    the upsampled map is edge padding of ``x``. Exact up to the float rounding of the folded weights
    (~1e-7 relative); measured 8..12 % faster on the whole LATS generator at 256 px (f32 and bf16).
    """
    import numpy as np
    import openvino.opset13 as ops
    from openvino.passes import ConstantFolding, Manager

    passes = Manager()
    passes.register_pass(ConstantFolding())  # pads and scales computed by constant subgraphs become constants
    passes.run_passes(model)
    taps = {0: [[0], [1, 2]], 1: [[0, 1], [2]]}  # phase -> the 3x3 taps that land on its 2 input rows
    folded = 0
    for conv in list(model.get_ordered_ops()):
        if conv.get_type_name() != "Convolution":
            continue
        attrs, pad, weights = conv.get_attributes(), conv.input_value(0).get_node(), _constant(conv.input_value(1))
        geometry = [list(attrs[k]) for k in ("strides", "dilations", "pads_begin", "pads_end")]
        if weights is None or weights.shape[2:] != (3, 3) or geometry != [[1, 1], [1, 1], [0, 0], [0, 0]]:
            continue
        if pad.get_type_name() != "Pad" or pad.get_attributes().get("pad_mode") != "reflect" or len(pad.output(0).get_target_inputs()) != 1:
            continue
        begin, end = _constant(pad.input_value(1)), _constant(pad.input_value(2))
        if begin is None or end is None or list(begin) != [0, 0, 1, 1] or list(end) != [0, 0, 1, 1]:
            continue
        up = pad.input_value(0).get_node()
        x = _nearest_x2_input(up)
        if x is None or len(up.output(0).get_target_inputs()) != 1:
            continue
        dims = list(x.get_partial_shape())
        if not all(d.is_static for d in dims[1:]):
            continue
        cin, h, w = (d.get_length() for d in dims[1:])
        cout = weights.shape[0]
        kernel = np.zeros((4, cout, cin, 2, 2), dtype=np.float64)
        for a in (0, 1):
            for b in (0, 1):
                for r in (0, 1):
                    for c in (0, 1):
                        kernel[2 * a + b, :, :, r, c] = weights[:, :, taps[a][r]][:, :, :, taps[b][c]].sum(axis=(2, 3))

        padded = ops.pad(x, _i64(0, 0, 1, 1), _i64(0, 0, 1, 1), "edge")
        phases = ops.convolution(
            padded, ops.constant(kernel.reshape(4 * cout, cin, 2, 2).astype(weights.dtype)), [1, 1], [0, 0], [0, 0], [1, 1]
        )
        crops = [
            ops.slice(phases, _i64(k * cout, k // 2, k % 2), _i64((k + 1) * cout, k // 2 + h, k % 2 + w), _i64(1, 1, 1), _i64(1, 2, 3))
            for k in range(4)
        ]
        conv.output(0).replace(ops.depth_to_space(ops.concat(crops, 1), "blocks_first", 2).output(0))
        folded += 1
    return folded


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
        model = _core().read_model(str(path))
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
            self.compiled = [_core().compile_model(model, "CPU", settings(precision))]
            self._requests = [self.compiled[0].create_infer_request()]
            return
        style, features = parts
        self.compiled = [_core().compile_model(style, "CPU", settings("fp32")), _core().compile_model(features, "CPU", settings(precision))]
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


def _register_ort_plugin() -> str:
    """Register the plugin library with ONNX Runtime once per process; the EP's name."""
    import onnxruntime as ort
    import onnxruntime_ep_openvino as plugin

    name = plugin.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(name, plugin.get_library_path())
    return name


def ort_openvino_device() -> Any:
    """The OpenVINO execution provider's CPU device (an ``OrtEpDevice``), registering the plugin once.

    Raises ``ImportError`` without the ``onnxruntime-ep-openvino`` plugin (which bundles its own OpenVINO)
    and ``RuntimeError`` if it offers no CPU device. ``ep_metadata["OPTIMIZATION_CAPABILITIES"]`` is that
    OpenVINO's view of the CPU.
    """
    import onnxruntime as ort

    ep_name = _register_ort_plugin()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == ep_name and d.ep_metadata.get("ov_device") == "CPU"]
    if not devices:
        raise RuntimeError(f"the OpenVINO execution provider offers no CPU device (onnxruntime {ort.__version__})")
    return devices[0]


def ort_openvino_session(path: str | os.PathLike, precision: str = "fp32", *, load_config: dict[str, Any] | None = None) -> Any:
    """An ONNX Runtime session on the OpenVINO execution provider's CPU device, with :func:`compile_config`'s
    properties passed through ``load_config`` (the provider's ``precision`` option is not honoured)."""
    import onnxruntime as ort

    from .ort_options import model_source

    device = ort_openvino_device()
    cpu = {k: str(v) for k, v in compile_config(precision).items()}
    options = session_options()
    options.add_provider_for_devices([device], {"load_config": json.dumps({"CPU": {**cpu, **(load_config or {})}})})
    return ort.InferenceSession(model_source(path), sess_options=options)

"""``check_parity``: the same seeded random inputs through every backend, measured against the original model.

Reference: the *original* (unrewritten) model, eager fp32 on CPU; where CUDA is requested and present,
also eager fp32 on CUDA with TF32 off, which is what the CUDA fp32 rows are compared against (so a row
measures the conversion, not CPU-vs-GPU arithmetic). Backends: the eager rewrite
(:func:`~modconv_export.make_exportable`), a TorchScript file and an ONNX file under ONNX Runtime, each on
CPU and CUDA; and, when asked for (providers ``openvino``/``openvino-bf16``), the ONNX file on OpenVINO's
CPU plugin in f32 and bf16 (judged at the bf16 tolerance). Each batch size gets fresh inputs; the sizes other than the export's example batch prove
the dynamic batch axis.

Polygraphy's shape, one step each: the options (:class:`.options.ParityOptions`) -> the plan (:mod:`.plan`:
which backends run, against which reference) -> the runs (:mod:`.run`: outputs and times per backend, one
run per backend and batch for a large model) -> the comparison and the judgement (:mod:`.judge`: metrics
from :mod:`.metrics`, limits from the policy of :mod:`.tolerances`) -> the :class:`~.report.ParityReport`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._util import as_tuple, exception_line
from .._util.progress import step
from ..errors import ModconvExportError
from .environment import versions
from .judge import comparable_outputs, judge_run, measure_run
from .metrics import is_image_like
from .options import MakeInputs, ParityOptions
from .plan import CPU_REFERENCE, CUDA_REFERENCE, plans
from .providers import PROVIDERS, parse_providers
from .report import PASS, ImageSample, ParityData, ParityReport, ParityRow
from .run import run_backend, timed
from .runners import EagerRunner, RunnerUnavailable

__all__ = ["PROVIDERS", "MakeInputs", "ParityOptions", "batch_seed", "check_parity", "parse_providers", "random_inputs"]

_DEVICES = ("cpu", "cuda")
#: OpenVINO rows (the ONNX file on OpenVINO's CPU plugin, through its own runtime or ONNX Runtime's
#: execution provider) and the precision they compute in.
_OPENVINO = {"openvino": ("fp32", "openvino"), "openvino-bf16": ("bf16", "openvino"), "ort-openvino": ("fp32", "onnxruntime")}
#: Precisions of a whole check (of the ONNX file); bf16 exists only as OpenVINO rows of an fp32 check.
#: Outputs the picture prefers to show: ONNX Runtime first (the file people deploy).
_PICTURE_ORDER = (
    "ort-cpu",
    "ort-cuda",
    "openvino-cpu",
    "openvino-cpu-bf16",
    "torchscript-cpu",
    "torchscript-cuda",
    "eager-cpu",
    "eager-cuda",
)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of one batch size's inputs: distinct per batch size, reproducible from ``seed``."""
    return int(seed) * 7919 + int(batch)


def random_inputs(args: Sequence[Any], batch: int, seed: int) -> tuple:
    """Fresh inputs shaped like ``args`` with axis 0 set to ``batch``, on CPU.

    Floating tensors: standard normal in float32 (the reference runs in fp32). Integer tensors: uniform
    over the example's own value range. 0-d tensors and non-tensors are passed through unchanged.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for a in args:
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            out.append(a)
            continue
        shape = (batch, *a.shape[1:])
        if a.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32))
        elif a.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            low, high = int(a.min()), int(a.max())
            out.append(torch.randint(low, high + 1, shape, generator=gen, dtype=a.dtype))
    return tuple(out)


def _onnx_io(path: Path) -> tuple[bool, list[str]]:
    """Whether the file computes in float16 (float16 inputs, or float16 convolution weights behind
    float32 I/O as ``export_onnx(precision="fp16")`` writes), and the graph's output names."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    inputs = [i.type.tensor_type.elem_type for i in proto.graph.input if i.name not in weights]
    float_inputs = [t for t in inputs if t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    conv_weights = [weights.get(n.input[1]) for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1]
    half_inputs = bool(float_inputs) and all(t == onnx.TensorProto.FLOAT16 for t in float_inputs)
    half_convs = bool(conv_weights) and all(t == onnx.TensorProto.FLOAT16 for t in conv_weights)
    return half_inputs or half_convs, [o.name for o in proto.graph.output]


def _pick_images(
    rows: list[ParityRow], kept: dict[str, dict[int, list[np.ndarray]]], refs, names, batch: int, samples: int
) -> list[ImageSample]:
    """For each image output: the reference and one backend -- a failing exported one if any, else ORT."""
    images = []
    for index, name in enumerate(names):
        candidates = [
            r for r in rows if r.batch == batch and r.output == name and batch in kept.get(r.backend, {}) and r.rel_l2 is not None
        ]
        if not candidates:
            continue
        order = {b: i for i, b in enumerate(_PICTURE_ORDER)}
        row = min(candidates, key=lambda r: (r.status == PASS or r.is_eager, order.get(r.backend, len(order))))
        expected = refs[row.reference][batch][index]
        if not is_image_like(expected.shape):
            continue
        actual = kept[row.backend][batch][index]
        images.append(
            ImageSample(name, row.backend, row.reference, batch, expected[:samples].copy(), np.asarray(actual[:samples]).copy(), row)
        )
    return images


class _Sources:
    """The eager rewrite and the in-memory TorchScript trace a check may need, each made once and only
    when a backend asks for it (``exportable``: the fp32 export form the files were made from)."""

    def __init__(self, model: nn.Module, args: tuple, exportable: nn.Module | None) -> None:
        self.model, self.args = model, args
        self._made: dict[str, Any] = {} if exportable is None else {"model": exportable}

    def rewritten(self) -> nn.Module:
        if "model" not in self._made:
            from ..rewrite import make_exportable

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # near misses are the rewrite report's business; numbers tell here
                self._made["model"] = make_exportable(self.model, self.args)
        return self._made["model"]

    def trace(self) -> torch.jit.ScriptModule:
        if "trace" not in self._made:
            from ..export import trace_torchscript as trace

            try:
                self._made["trace"] = trace(self.rewritten(), self.args, rewrite=False, check=False)
            except ModconvExportError as exc:
                self._made["trace"] = RunnerUnavailable(f"in-memory TorchScript trace failed: {exc}")
        if isinstance(self._made["trace"], Exception):
            raise self._made["trace"]
        return self._made["trace"]


def _draw_inputs(args: tuple, options: ParityOptions) -> dict[int, tuple]:
    """Each batch size's inputs: ``make_inputs(batch, seed)`` or fresh random ones shaped like ``args``."""
    seeds = {b: batch_seed(options.seed, b) for b in options.batch_sizes}
    if options.make_inputs is not None:
        return {b: as_tuple(options.make_inputs(b, s)) for b, s in seeds.items()}
    return {b: random_inputs(args, b, s) for b, s in seeds.items()}


def _run_reference(model: nn.Module, inputs: dict[int, tuple]) -> tuple[dict[int, list[np.ndarray]], dict[int, float]]:
    """The original model's outputs and times per batch size (eager fp32 on CPU): what every row is measured against."""
    outputs, times = {}, {}
    try:
        with EagerRunner(model, "cpu", name=CPU_REFERENCE) as reference:
            for b, x in inputs.items():
                step(f"verify: {CPU_REFERENCE} at batch {b}")
                outputs[b], times[b] = timed(reference, x, 1)
    except Exception as exc:
        raise ModconvExportError(f"the original model fails on the parity inputs: {exception_line(exc)}") from exc
    return outputs, times


def _output_names(onnx_names: list[str], count: int) -> list[str]:
    """The ONNX file's output names when it has one per output, else ``output`` / ``output_<i>``."""
    if len(onnx_names) == count:
        return onnx_names
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def check_parity(
    model: nn.Module, args: Any, options: ParityOptions | None = None, *, exportable: nn.Module | None = None, **keywords: Any
) -> ParityReport:
    """Compare every backend with the original ``model`` on fresh random inputs; return the report.

    ``model`` is the ORIGINAL model (reference layers); the eager backend is ``exportable`` when given (the
    fp32 export form the files were made from), else ``make_exportable(model, args)``.
    ``args`` are example inputs in ``forward`` order (a tensor or a tuple); for each batch size the
    harness draws new standard-normal inputs of the same non-batch shape, or calls
    ``make_inputs(batch, seed)`` (seed derived from ``seed`` and the batch size) for realistic ones.
    What to check is ``options`` (a :class:`~.options.ParityOptions`), or the same fields as keywords
    (``onnx_path=``, ``torchscript_path=``, ``trace_torchscript=``, ``providers=``, ``batch_sizes=``,
    ``precision=``, ``rtol=``, ``atol=``, ``max_rel_l2=``, ``seed=``, ``make_inputs=``, ``repeats=``,
    ``image_samples=``). ``providers`` picks the devices ("cpu", "cuda") and OpenVINO rows ("openvino",
    "openvino-bf16", and "OpenVINOExecutionProvider" for ONNX Runtime's OpenVINO execution provider; see
    :mod:`.providers`). ``precision="fp16"`` runs the torch backends in half on CUDA and ONNX Runtime on an
    ONNX file that computes in float16 (float16 inputs, or float16 convolution weights behind float32 I/O
    as ``export_onnx(precision="fp16")`` writes); the reference stays fp32 on CPU.
    ``trace_torchscript=True`` checks TorchScript without a file: a trace of the rewritten model on
    ``args``, kept in memory (a model that does not trace gives "not run" rows with the reason).
    ``max_rel_l2`` overrides the relative-L2 limits of :mod:`.tolerances`; ``rtol``/``atol`` add an
    element-wise ``allclose`` check (see there). The report's ``data`` keeps the inputs and reference
    outputs. Up to ``repeats`` runs per batch give the median time; a backend whose runs of a batch take a
    second or more is run once (the check needs its outputs, not its time: see :data:`.run.REPEAT_BUDGET_S`).
    Raises :class:`~modconv_export.errors.ModconvExportError` on usage errors (missing file, bad arguments,
    an original model that rejects the inputs); backend failures are rows.
    """
    if options is not None and keywords:
        raise TypeError("check_parity() takes a ParityOptions or keyword options, not both")
    if not isinstance(model, nn.Module):
        raise ModconvExportError(f"check_parity needs a torch.nn.Module, got {type(model).__name__}")
    options = (options if options is not None else ParityOptions.from_keywords(keywords)).checked()
    args = as_tuple(args)
    inputs = _draw_inputs(args, options)
    refs: dict[str, dict[int, list[np.ndarray]]] = {}
    refs[CPU_REFERENCE], ref_ms = _run_reference(model, inputs)
    onnx_path = options.onnx_path
    onnx_half, onnx_names = _onnx_io(Path(onnx_path)) if onnx_path else (False, [])
    names = _output_names(onnx_names, len(refs[CPU_REFERENCE][options.batch_sizes[0]]))
    sources = _Sources(model, args, exportable)
    ts_source = sources.trace if options.trace_torchscript else options.torchscript_path
    devices = [p for p in options.providers if p in _DEVICES]
    openvino = [_OPENVINO[p] for p in options.providers if p in _OPENVINO]

    references = {CPU_REFERENCE: "original model, eager fp32 on CPU"}
    rows: list[ParityRow] = []
    used: dict[str, list[str]] = {CPU_REFERENCE: ["torch:cpu"]}
    tolerances: dict[str, dict[str, Any]] = {}
    kept: dict[str, dict[int, list[np.ndarray]]] = {}
    for plan in plans(model, sources.rewritten, onnx_path, onnx_half, ts_source, devices, openvino, options.precision):
        if plan.reference not in refs:  # the CUDA reference did not run: fall back to the CPU one
            plan.reference = CPU_REFERENCE
        tolerance = options.tolerance(plan.name, plan.precision)
        tolerances[plan.name] = tolerance.to_dict()
        run = run_backend(plan, inputs, options.repeats)
        expected = refs[plan.reference]
        plan_rows = judge_run(
            run, measure_run(run, expected, names, tolerance), tolerance, plan.precision or options.precision, plan.reference
        )
        rows += plan_rows
        if run.providers:
            used[plan.name] = run.providers
        kept[plan.name] = comparable_outputs(run, expected)
        if plan.name == CUDA_REFERENCE:
            if set(kept[plan.name]) == set(options.batch_sizes):
                refs[CUDA_REFERENCE] = kept[plan.name]
                references[CUDA_REFERENCE] = "original model, eager fp32 on CUDA, TF32 off (for the CUDA fp32 rows)"
            else:
                references[CUDA_REFERENCE] = f"not used ({plan_rows[0].reason}); CUDA rows compare with {CPU_REFERENCE}"
    return ParityReport(
        rows=rows,
        precision=options.precision,
        batch_sizes=tuple(options.batch_sizes),
        seed=options.seed,
        tolerances=tolerances,
        providers=used,
        versions=versions(),
        files={
            "onnx": str(onnx_path) if onnx_path is not None else None,
            "torchscript": "(in-memory trace)"
            if options.trace_torchscript
            else (str(options.torchscript_path) if options.torchscript_path is not None else None),
        },
        references=references,
        images=_pick_images(rows, kept, refs, names, max(options.batch_sizes), options.image_samples),
        data=ParityData(
            inputs={b: tuple(t.detach().cpu().numpy() for t in x if isinstance(t, torch.Tensor)) for b, x in inputs.items()},
            expected=refs[CPU_REFERENCE],
            output_names=list(names),
            reference=CPU_REFERENCE,
            times_ms=ref_ms,
        ),
    )

"""``check_parity``: the same seeded random inputs through every backend, measured against the original model.

Reference: the *original* (unrewritten) model, eager fp32 on CPU; where CUDA is requested and present,
also eager fp32 on CUDA with TF32 off, which is what the CUDA fp32 rows are compared against (so a row
measures the conversion, not CPU-vs-GPU arithmetic). Backends: the eager rewrite
(:func:`~modconv_export.make_exportable`), a TorchScript file and an ONNX file under ONNX Runtime, each on
CPU and CUDA; and, when asked for (providers ``openvino``/``openvino-bf16``), the ONNX file on OpenVINO's
CPU plugin in f32 and bf16 (judged at the bf16 tolerance). Each batch size gets fresh inputs; the sizes other than the export's example batch prove
the dynamic batch axis. Measuring is :func:`.metrics.compare`, judging is :mod:`.tolerances`; which
backends run and what each run costs (one per backend and batch for a large model) is :mod:`.plan`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._util import as_tuple, exception_line
from .._util.progress import step
from ..errors import ModconvExportError
from ..export.prepare import PRECISIONS as CHECK_PRECISIONS  # the precisions a file is exported in
from .environment import versions
from .metrics import is_image_like
from .plan import CPU_REFERENCE, CUDA_REFERENCE, plans, run_plan, timed
from .providers import PROVIDERS, parse_providers
from .report import PASS, ImageSample, ParityData, ParityReport, ParityRow
from .runners import EagerRunner, RunnerUnavailable
from .tolerances import ToleranceOverride, resolve_tolerance

__all__ = ["PROVIDERS", "batch_seed", "check_parity", "parse_providers", "random_inputs"]

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

MakeInputs = Callable[[int, int], Any]


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


def check_parity(
    model: nn.Module,
    args: Any,
    *,
    onnx_path: str | os.PathLike | None = None,
    torchscript_path: str | os.PathLike | None = None,
    trace_torchscript: bool = False,
    providers: Sequence[str] = ("cpu", "cuda"),
    batch_sizes: Sequence[int] = (1, 3),
    precision: str = "fp32",
    rtol: ToleranceOverride = None,
    atol: ToleranceOverride = None,
    max_rel_l2: ToleranceOverride = None,
    seed: int = 0,
    make_inputs: MakeInputs | None = None,
    repeats: int = 3,
    image_samples: int = 4,
    exportable: nn.Module | None = None,
) -> ParityReport:
    """Compare every backend with the original ``model`` on fresh random inputs; return the report.

    ``model`` is the ORIGINAL model (reference layers); the eager backend is ``exportable`` when given (the
    fp32 export form the files were made from), else ``make_exportable(model, args)``.
    ``args`` are example inputs in ``forward`` order (a tensor or a tuple); for each batch size the
    harness draws new standard-normal inputs of the same non-batch shape, or calls
    ``make_inputs(batch, seed)`` (seed derived from ``seed`` and the batch size) for realistic ones.
    ``providers`` picks the devices ("cpu", "cuda") and OpenVINO rows ("openvino", "openvino-bf16", and
    "OpenVINOExecutionProvider" for ONNX Runtime's OpenVINO execution provider; see :mod:`.providers`). ``precision="fp16"`` runs the torch backends in
    half on CUDA and ONNX Runtime on an ONNX file that computes in float16 (float16 inputs, or float16
    convolution weights behind float32 I/O as ``export_onnx(precision="fp16")`` writes); the reference stays fp32 on CPU.
    ``trace_torchscript=True`` checks TorchScript without a file: a trace of the rewritten model on
    ``args``, kept in memory (a model that does not trace gives "not run" rows with the reason).
    ``max_rel_l2`` overrides the relative-L2
    limits of :mod:`.tolerances`; ``rtol``/``atol`` add an element-wise ``allclose`` check (see there).
    The report's ``data`` keeps the inputs and reference outputs. Up to ``repeats`` runs per batch give the
    median time; a backend whose runs of a batch take a second or more is run once (the check needs its
    outputs, not its time: see :data:`.plan.REPEAT_BUDGET_S`). Raises :class:`~modconv_export.errors.ModconvExportError` on usage errors (missing
    file, bad arguments, an original model that rejects the inputs); backend failures are rows.
    """
    if not isinstance(model, nn.Module):
        raise ModconvExportError(f"check_parity needs a torch.nn.Module, got {type(model).__name__}")
    if precision not in CHECK_PRECISIONS:
        raise ModconvExportError(f"unknown precision {precision!r}; choose one of {', '.join(CHECK_PRECISIONS)}")
    providers = parse_providers(providers)
    if torchscript_path is not None and trace_torchscript:
        raise ModconvExportError("give torchscript_path or trace_torchscript=True, not both")
    devices = [p for p in providers if p in _DEVICES]
    openvino = [_OPENVINO[p] for p in providers if p in _OPENVINO]
    batches = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batches or min(batches) < 1:
        raise ModconvExportError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    paths = {}
    for key, path in (("onnx", onnx_path), ("torchscript", torchscript_path)):
        if path is not None and not Path(path).is_file():
            raise ModconvExportError(f"{key} file not found: {path}")
        paths[key] = Path(path) if path is not None else None

    args = as_tuple(args)
    inputs = {
        b: as_tuple(make_inputs(b, batch_seed(seed, b))) if make_inputs else random_inputs(args, b, batch_seed(seed, b)) for b in batches
    }

    refs: dict[str, dict[int, list[np.ndarray]]] = {CPU_REFERENCE: {}}
    ref_ms: dict[int, float] = {}
    try:
        with EagerRunner(model, "cpu", name=CPU_REFERENCE) as reference:
            for b, x in inputs.items():
                step(f"verify: {CPU_REFERENCE} at batch {b}")
                refs[CPU_REFERENCE][b], ref_ms[b] = timed(reference, x, 1)
    except Exception as exc:
        raise ModconvExportError(f"the original model fails on the parity inputs: {exception_line(exc)}") from exc

    onnx_half, names = _onnx_io(paths["onnx"]) if paths["onnx"] else (False, [])
    count = len(refs[CPU_REFERENCE][batches[0]])
    if len(names) != count:
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]

    cache: dict[str, Any] = {} if exportable is None else {"model": exportable}

    def rewritten() -> nn.Module:
        if "model" not in cache:
            from ..rewrite import make_exportable

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # near misses are the rewrite report's business; numbers tell here
                cache["model"] = make_exportable(model, args)
        return cache["model"]

    references = {CPU_REFERENCE: "original model, eager fp32 on CPU"}
    rows: list[ParityRow] = []
    used: dict[str, list[str]] = {CPU_REFERENCE: ["torch:cpu"]}
    tolerances: dict[str, dict[str, Any]] = {}
    kept: dict[str, dict[int, list[np.ndarray]]] = {}
    ts_source: Any = paths["torchscript"]
    if trace_torchscript:

        def ts_source() -> torch.jit.ScriptModule:
            if "trace" not in cache:
                from ..export import trace_torchscript as trace

                try:
                    cache["trace"] = trace(rewritten(), args, rewrite=False, check=False)
                except ModconvExportError as exc:
                    cache["trace"] = RunnerUnavailable(f"in-memory TorchScript trace failed: {exc}")
            if isinstance(cache["trace"], Exception):
                raise cache["trace"]
            return cache["trace"]

    for plan in plans(model, rewritten, paths["onnx"], onnx_half, ts_source, devices, openvino, precision):
        if plan.reference not in refs:  # the CUDA reference did not run: fall back to the CPU one
            plan.reference = CPU_REFERENCE
        tolerance = resolve_tolerance(plan.name, plan.precision or precision, rtol, atol, max_rel_l2)
        tolerances[plan.name] = tolerance.to_dict()
        plan_rows, plan_providers, outputs = run_plan(plan, inputs, refs, names, precision, tolerance, repeats)
        rows += plan_rows
        if plan_providers:
            used[plan.name] = plan_providers
        kept[plan.name] = outputs
        if plan.name == CUDA_REFERENCE:
            if set(outputs) == set(batches):
                refs[CUDA_REFERENCE] = outputs
                references[CUDA_REFERENCE] = "original model, eager fp32 on CUDA, TF32 off (for the CUDA fp32 rows)"
            else:
                references[CUDA_REFERENCE] = f"not used ({plan_rows[0].reason}); CUDA rows compare with {CPU_REFERENCE}"
    return ParityReport(
        rows=rows,
        precision=precision,
        batch_sizes=tuple(batches),
        seed=seed,
        tolerances=tolerances,
        providers=used,
        versions=versions(),
        files={
            **{k: str(v) if v is not None else None for k, v in paths.items()},
            **({"torchscript": "(in-memory trace)"} if trace_torchscript else {}),
        },
        references=references,
        images=_pick_images(rows, kept, refs, names, max(batches), image_samples),
        data=ParityData(
            inputs={b: tuple(t.detach().cpu().numpy() for t in x if isinstance(t, torch.Tensor)) for b, x in inputs.items()},
            expected=refs[CPU_REFERENCE],
            output_names=list(names),
            reference=CPU_REFERENCE,
            times_ms=ref_ms,
        ),
    )

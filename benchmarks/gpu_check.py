"""The CUDA rows in one run: parity and speed of the exported files on a GPU, written to one JSON file.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json [--models lats,gfpgan] [--budget-s 480]

GPU time is short and lent rarely, so one call runs the whole matrix and never stops at the first
failure: every row is "ok", "fail" (a parity verdict) or "not run: <why>", and the JSON is rewritten
after each phase, so a run cut off by its time limit still leaves what it measured.

* **Parity** (batches 1, 3, 8). Reference: the original model, eager float32 on CUDA with TF32 off.
  Rows: the rewritten model eager on CUDA, the TorchScript file on CUDA, ONNX Runtime CUDA on the float32
  file and on the ``--precision fp16`` file. Each row carries the metrics of
  :func:`modconv_export.verify.metrics.compare` and the verdict of the project's tolerance policy
  (:func:`modconv_export.verify.tolerances.resolve_tolerance`), NaN/Inf counts included.
* **Speed** (batches 8, 32; median of ``--runs`` after ``--warmup``, synchronised): eager seed fp32,
  eager rewritten fp32 (both TF32 off, cuDNN autotuning on), ``torch.compile`` of the rewritten model in
  fp16, ONNX Runtime CUDA fp32 and fp16 with I/O binding (inputs and outputs stay on the GPU), fp16 with
  NHWC kernels, and fp16 replayed as a CUDA graph at a fixed batch.
* **Profile**: ONNX Runtime's own profile of the fp16 file at the largest speed batch, summed per
  operator type and per execution provider: where the time goes.

Without a usable CUDA device (or without onnxruntime-gpu's CUDA provider) every CUDA row says "not run"
and why; ``--small`` runs the same code on the small presets as a CPU smoke test.

This file holds the matrix (which rows, on which files and batches) and the run; beside it,
``_gpu_runtime.py`` runs and times them (device, budget, ONNX Runtime with I/O binding) and
``_gpu_report.py`` sums the profiles and reads the targets.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _gpu_runtime as runtime
import torch
import torch.nn as nn
from _gpu_report import kernel_profile, ort_placement, targets
from _gpu_runtime import Budget, environment, on_device, ort_bound_runner, ort_cuda_reason, ort_session, timed

from modconv_export import export_onnx, export_torchscript, make_exportable
from modconv_export._util import exception_line
from modconv_export.families.registry import get_family
from modconv_export.verify.metrics import compare
from modconv_export.verify.tolerances import resolve_tolerance

#: model name -> (family, preset): LATS at 256 px, GFPGAN v1 clean at 512 px; ``--small`` uses "small".
MODELS = {"lats": ("lats", "full"), "gfpgan": ("gfpgan", "full")}


def make_inputs(family: Any, config: dict, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(spec.example((batch, *spec.shape[1:]), seed=seed + i) for i, spec in enumerate(family.inputs(config)))


class Artifacts:
    """The files of one model, exported once on the CPU (as users do), and how long each export took."""

    def __init__(self, model: nn.Module, example: tuple, workdir: Path, name: str) -> None:
        self.paths: dict[str, Path | str] = {}
        self.seconds: dict[str, float] = {}
        jobs = {
            "onnx-fp32": lambda p: export_onnx(model, example, p),
            "onnx-fp16": lambda p: export_onnx(model, example, p, precision="fp16"),
            "torchscript": lambda p: export_torchscript(model, example, p),
        }
        for kind, job in jobs.items():
            path = workdir / f"{name}-{kind}.{'pt' if kind == 'torchscript' else 'onnx'}"
            started = time.perf_counter()
            try:
                self.paths[kind] = job(path)
                self.seconds[kind] = round(time.perf_counter() - started, 2)
                print(f"[{name}] {kind} exported in {self.seconds[kind]:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
            except Exception as exc:  # a failed export is a row, not the end of the run
                self.paths[kind] = f"not run: export failed: {exception_line(exc)}"

    def get(self, kind: str) -> Path | str:
        return self.paths[kind]


def parity_rows(
    name: str, model: nn.Module, rewritten: nn.Module, family: Any, config: dict, art: Artifacts, batches: list[int], ort_reason: str | None
) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    reference_model = copy.deepcopy(model).to(runtime.DEVICE)
    candidates: dict[str, tuple[str, str, Callable[[tuple], Any] | str]] = {}
    rewritten_cuda = copy.deepcopy(rewritten).to(runtime.DEVICE)
    candidates["eager-rewritten-cuda"] = ("eager-cuda", "fp32", lambda a: rewritten_cuda(*on_device(a)))
    ts = art.get("torchscript")
    if isinstance(ts, Path):
        scripted = torch.jit.load(str(ts), map_location=runtime.DEVICE)
        candidates["torchscript-cuda"] = ("torchscript-cuda", "fp32", lambda a: scripted(*on_device(a)))
    else:
        candidates["torchscript-cuda"] = ("torchscript-cuda", "fp32", ts)
    for precision in ("fp32", "fp16"):
        path = art.get(f"onnx-{precision}")
        if ort_reason or not isinstance(path, Path):
            candidates[f"ort-cuda-{precision}"] = ("ort-cuda", precision, f"not run: {ort_reason}" if ort_reason else path)
            continue
        try:
            session = ort_session(path)
        except Exception as exc:
            candidates[f"ort-cuda-{precision}"] = ("ort-cuda", precision, f"not run: {exception_line(exc)}")
            continue
        names = [i.name for i in session.get_inputs()]
        candidates[f"ort-cuda-{precision}"] = (
            "ort-cuda",
            precision,
            lambda a, s=session, n=names: s.run(None, {k: t.numpy() for k, t in zip(n, a)})[0],
        )

    rows = []
    for batch in batches:
        inputs = make_inputs(family, config, batch, seed=1000 + batch)
        with torch.no_grad():
            reference = reference_model(*on_device(inputs)).double().cpu().numpy()
        for row_name, (policy_backend, precision, run) in candidates.items():
            row: dict[str, Any] = {"model": name, "row": row_name, "batch": batch, "precision": precision}
            if isinstance(run, str):
                rows.append({**row, "status": run})
                continue
            try:
                with torch.no_grad():
                    actual = run(inputs)
            except Exception as exc:
                rows.append({**row, "status": f"fail: raised {exception_line(exc)}"})
                continue
            tolerance = resolve_tolerance(policy_backend, precision)
            metrics = compare(actual, reference)
            passed, verdict = tolerance.judge(metrics)
            rows.append(
                {**row, "status": "ok" if passed else "fail", "verdict": verdict, "tolerance_rel_l2": tolerance.rel_l2, **metrics.to_dict()}
            )
            print(f"[{name}] parity b={batch} {row_name}: {verdict}", file=sys.stderr)
    return rows


def speed_rows(
    name: str,
    model: nn.Module,
    rewritten: nn.Module,
    family: Any,
    config: dict,
    art: Artifacts,
    batches: list[int],
    args: argparse.Namespace,
    budget: Budget,
    ort_reason: str | None,
    keep: dict[str, Callable[[], Any]],
) -> list[dict]:
    """The timed rows; the runners of the largest batch are left in ``keep`` for the profiles."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # what a user timing eager PyTorch would switch on
    seed_cuda = copy.deepcopy(model).to(runtime.DEVICE)
    rewritten_cuda = copy.deepcopy(rewritten).to(runtime.DEVICE)
    compiled = torch.compile(copy.deepcopy(rewritten).half().to(runtime.DEVICE), dynamic=False)

    def torch_factory(module: nn.Module, dtype: torch.dtype) -> Callable[[tuple], Callable[[], Any]]:
        def factory(inputs: tuple) -> Callable[[], Any]:
            placed = on_device(inputs, dtype)
            return lambda: module(*placed)

        return factory

    backends: dict[str, Any] = {
        "eager-seed-cuda-fp32": torch_factory(seed_cuda, torch.float32),
        "eager-rewritten-cuda-fp32": torch_factory(rewritten_cuda, torch.float32),
        "compile-rewritten-cuda-fp16": torch_factory(compiled, torch.float16),
    }
    ort_variants = {
        "ort-cuda-fp32-iobinding": ("onnx-fp32", {}, False),
        "ort-cuda-fp16-iobinding": ("onnx-fp16", {}, False),
        "ort-cuda-fp16-nhwc-iobinding": ("onnx-fp16", {"prefer_nhwc": True}, False),
        "ort-cuda-fp16-cudagraph": ("onnx-fp16", {"cuda_graph": True}, True),
    }
    for row_name, (kind, options, fixed) in ort_variants.items():
        path = art.get(kind)
        if ort_reason or not isinstance(path, Path):
            backends[row_name] = f"not run: {ort_reason}" if ort_reason else path
            continue

        def factory(inputs: tuple, path: Path = path, options: dict = options, fixed: bool = fixed) -> Callable[[], Any]:
            # one session per batch: a CUDA graph is captured for one shape, and cuDNN's algorithm search
            # then tunes for that shape only
            shape = None
            if fixed:
                with torch.no_grad():
                    shape = tuple(rewritten_cuda(*on_device(inputs)).shape)
            return ort_bound_runner(ort_session(path, **options), inputs, output_shape=shape)

        backends[row_name] = factory

    rows = []
    for batch in batches:
        inputs = make_inputs(family, config, batch, seed=2000 + batch)
        baseline = None
        for row_name, factory in backends.items():
            row: dict[str, Any] = {"model": name, "row": row_name, "batch": batch}
            if isinstance(factory, str):
                rows.append({**row, "status": factory})
                continue
            if budget.left() < args.reserve_s:
                rows.append({**row, "status": "not run: time budget of this run spent"})
                continue
            try:
                if runtime.DEVICE == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    started = time.perf_counter()
                    runner = factory(inputs)
                    runner()  # first call: compilation, session warm-up, CUDA graph capture
                    first_s = time.perf_counter() - started
                    timing = timed(runner, args.runs, args.warmup)
            except Exception as exc:
                rows.append({**row, "status": f"not run: {exception_line(exc)}"})
                print(f"[{name}] speed b={batch} {row_name}: {exception_line(exc)}", file=sys.stderr)
                continue
            if row_name == "eager-seed-cuda-fp32":
                baseline = timing["median_ms"]
            speedup = baseline / timing["median_ms"] if baseline else None
            rows.append({**row, "status": "ok", **timing, "first_call_s": round(first_s, 2), "speedup_vs_eager_seed": speedup})
            if runtime.DEVICE == "cuda" and not row_name.startswith("ort"):
                rows[-1]["torch_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            if batch == max(batches):
                keep[row_name] = runner
            print(f"[{name}] speed b={batch} {row_name}: {timing['median_ms']:.2f} ms", file=sys.stderr)
            if runtime.DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="lats,gfpgan")
    parser.add_argument("--parity-batches", default="1,3,8")
    parser.add_argument("--speed-batches", default="8,32")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting new rows after this many seconds")
    parser.add_argument("--reserve-s", type=float, default=20, help="seconds kept back for writing the results")
    parser.add_argument("--small", action="store_true", help="the small presets at their own size: a smoke test of this script")
    parser.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="every row on the CPU (ORT's CPU provider): tries this script's code paths before GPU time is spent",
    )
    args = parser.parse_args(argv)
    runtime.set_device("cpu" if args.dry_run_cpu else "cuda")
    if args.runs < 20 and not args.dry_run_cpu:
        parser.error("--runs must be at least 20")
    budget = Budget(args.budget_s)
    result: dict[str, Any] = {
        "environment": environment(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "exports": {},
        "parity": [],
        "speed": [],
        "profile": {},
    }
    ort_reason = ort_cuda_reason()
    result["environment"]["ort_cuda"] = ort_reason or "ok"

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result["targets"] = targets(result["speed"])
        result["elapsed_s"] = round(args.budget_s - budget.left(), 1)
        args.out.write_text(json.dumps(result, indent=2, default=str))

    if runtime.DEVICE == "cuda" and not torch.cuda.is_available():
        result["status"] = "not run: no CUDA device on this machine"
        save()
        print(result["status"], file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            family_name, preset = MODELS[name]
            if budget.left() < 60:
                result["exports"][name] = "not run: time budget of this run spent"
                continue
            family = get_family(family_name)
            config = family.preset("small" if args.small else preset)
            torch.manual_seed(0)
            model = family.build(config).eval()
            example = make_inputs(family, config, 2, seed=0)
            art = Artifacts(model, example, Path(tmp), name)
            rewritten = make_exportable(model)
            result["exports"][name] = {
                "config": config,
                "seconds": art.seconds,
                "files": {k: (v.stat().st_size if isinstance(v, Path) else v) for k, v in art.paths.items()},
            }
            save()
            parity_batches = [int(b) for b in args.parity_batches.split(",")]
            result["parity"] += parity_rows(name, model, rewritten, family, config, art, parity_batches, ort_reason)
            save()
            keep: dict[str, Callable[[], Any]] = {}
            result["speed"] += speed_rows(
                name, model, rewritten, family, config, art, [int(b) for b in args.speed_batches.split(",")], args, budget, ort_reason, keep
            )
            save()
            profile = result["profile"][name] = {}
            for row_name in (
                "ort-cuda-fp16-iobinding",
                "ort-cuda-fp16-nhwc-iobinding",
                "compile-rewritten-cuda-fp16",
                "eager-seed-cuda-fp32",
            ):
                if row_name in keep and budget.left() > args.reserve_s + 10:
                    try:
                        profile[row_name] = kernel_profile(keep[row_name], args.profile_runs)
                    except Exception as exc:
                        profile[row_name] = {"status": f"not run: {exception_line(exc)}"}
            if ort_reason is None:
                for kind in ("onnx-fp32", "onnx-fp16"):
                    try:
                        profile[f"ort-placement-{kind}"] = ort_placement(art.get(kind))
                    except Exception as exc:
                        profile[f"ort-placement-{kind}"] = {"status": f"not run: {exception_line(exc)}"}
            keep.clear()
            save()
    result["status"] = "done"
    save()
    print(json.dumps(result["targets"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

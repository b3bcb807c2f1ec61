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
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from modconv_export import export_onnx, export_torchscript, make_exportable
from modconv_export._util import exception_line
from modconv_export.families.registry import get_family
from modconv_export.runtimes.ort import create_session
from modconv_export.verify.environment import versions
from modconv_export.verify.metrics import compare
from modconv_export.verify.tolerances import resolve_tolerance

#: model name -> (family, preset): LATS at 256 px, GFPGAN v1 clean at 512 px; ``--small`` uses "small".
MODELS = {"lats": ("lats", "full"), "gfpgan": ("gfpgan", "full")}

#: Where the rows run: "cuda", or "cpu" for ``--dry-run-cpu`` (every code path but the numbers).
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def on_device(inputs: tuple, dtype: torch.dtype = torch.float32) -> tuple:
    return tuple(t.to(DEVICE, dtype) for t in inputs)


class Budget:
    """Seconds left for the whole run; phases ask before they start."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def environment() -> dict[str, Any]:
    """:func:`versions`, ONNX Runtime's build and the GPU: card, memory, CUDA/cuDNN, driver."""
    info: dict[str, Any] = versions()
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA/cuDNN libraries from the nvidia-* wheels torch uses
        info["ort_build"] = ort.get_build_info()
    except Exception as exc:  # reported, never fatal: the torch rows still run
        info["ort_build"] = f"not loaded: {exception_line(exc)}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"not run: {exception_line(exc)}"
    return info


def ort_cuda_reason() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here, or ``None`` if it can."""
    if DEVICE == "cpu":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime not importable: {exc}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no CUDA provider"
    return None


def make_inputs(family: Any, config: dict, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(spec.example((batch, *spec.shape[1:]), seed=seed + i) for i, spec in enumerate(family.inputs(config)))


def timed(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def ort_session(path: Path, **cuda: Any) -> Any:
    """A CUDA session (``create_session`` raises if it fell back to the CPU)."""
    return create_session(path, DEVICE, **(cuda if DEVICE == "cuda" else {}))


def ort_bound_runner(session: Any, inputs: tuple[torch.Tensor, ...], output_shape: tuple[int, ...] | None = None) -> Callable[[], Any]:
    """``session`` run with its inputs bound to GPU memory; with ``output_shape`` the output is bound to
    one preallocated GPU buffer too (a CUDA graph replays fixed addresses), else ORT allocates it there."""
    import onnxruntime as ort

    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(a.numpy(), DEVICE, 0) for a in inputs]
    for meta, value in zip(session.get_inputs(), values):
        binding.bind_ortvalue_input(meta.name, value)
    out_name = session.get_outputs()[0].name
    if output_shape is not None:
        values.append(ort.OrtValue.ortvalue_from_shape_and_type(list(output_shape), np.float32, DEVICE, 0))
        binding.bind_ortvalue_output(out_name, values[-1])
    else:
        binding.bind_output(out_name, DEVICE)

    def run() -> Any:
        session.run_with_iobinding(binding)
        return binding

    run.values = values  # the bound buffers live as long as the runner
    return run


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
    reference_model = copy.deepcopy(model).to(DEVICE)
    candidates: dict[str, tuple[str, str, Callable[[tuple], Any] | str]] = {}
    rewritten_cuda = copy.deepcopy(rewritten).to(DEVICE)
    candidates["eager-rewritten-cuda"] = ("eager-cuda", "fp32", lambda a: rewritten_cuda(*on_device(a)))
    ts = art.get("torchscript")
    if isinstance(ts, Path):
        scripted = torch.jit.load(str(ts), map_location=DEVICE)
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
    seed_cuda = copy.deepcopy(model).to(DEVICE)
    rewritten_cuda = copy.deepcopy(rewritten).to(DEVICE)
    compiled = torch.compile(copy.deepcopy(rewritten).half().to(DEVICE), dynamic=False)

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
                if DEVICE == "cuda":
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
            if DEVICE == "cuda" and not row_name.startswith("ort"):
                rows[-1]["torch_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            if batch == max(batches):
                keep[row_name] = runner
            print(f"[{name}] speed b={batch} {row_name}: {timing['median_ms']:.2f} ms", file=sys.stderr)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


#: Kernel-name fragments -> what the kernel does, to sum a profile into a few lines that point at a change.
KERNEL_KINDS = (
    ("layout transpose", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit_gemm", "xmma", "cutlass", "sm90", "sm80", "winograd", "fft")),
    ("matmul", ("gemm", "gemv", "matmul")),
    ("reduction / norm", ("reduce", "norm", "mean", "sum")),
    ("memory copy", ("memcpy", "memset", "copy")),
)


def _kind(kernel: str) -> str:
    low = kernel.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in low for p in parts)), "elementwise / other")


def kernel_profile(run: Callable[[], Any], runs: int) -> dict[str, Any]:
    """GPU kernel time per run of ``run`` as CUPTI records it (through torch.profiler, which sees every
    kernel of the process, ONNX Runtime's included): the top kernels and the sum per kind."""
    from torch.profiler import ProfilerActivity, profile

    run()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if DEVICE == "cuda" else ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run()
        sync()
    kernels = []
    for event in prof.key_averages():
        us = (
            (getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0))
            if DEVICE == "cuda"
            else event.self_cpu_time_total
        )
        if us and (DEVICE == "cpu" or not event.key.startswith(("aten::", "ProfilerStep", "cuda"))):
            kernels.append((event.key, us / 1e3 / runs, event.count // runs))
    kernels.sort(key=lambda k: -k[1])
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms, _ in kernels:
        by_kind[_kind(name)] += ms
    return {
        "gpu_ms_per_run": round(sum(ms for _, ms, _ in kernels), 3),
        "by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"kernel": name[:160], "ms_per_run": round(ms, 3), "calls_per_run": n} for name, ms, n in kernels[:15]],
    }


def ort_placement(path: Path | str) -> dict[str, Any]:
    """Which provider ONNX Runtime gave each node of the optimised graph (ORT's own profile of one run):
    nodes left on the CPU and Memcpy nodes are where a CUDA run stalls."""
    if not isinstance(path, Path):
        return {"status": path}
    from modconv_export.runtimes.ort import session_options

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = create_session(path, DEVICE, options=options)
    feed = {}
    for meta in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in meta.shape]
        feed[meta.name] = np.zeros(shape, np.float32)
    session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            nodes[event["args"].get("provider", "?")][event["args"].get("op_name", "?")] += 1
    return {"status": "ok", "nodes_by_provider": {p: dict(ops) for p, ops in nodes.items()}}


def targets(rows: list[dict]) -> dict[str, Any]:
    """The issue's targets at the largest speed batch: ORT CUDA fp16 >= 3x eager seed fp32, and no slower
    than torch.compile fp16."""
    ok = [r for r in rows if r["status"] == "ok" and r["model"] == "lats"]
    if not ok:
        return {"status": "not run"}
    batch = max(r["batch"] for r in ok)
    ms = {r["row"]: r["median_ms"] for r in ok if r["batch"] == batch}
    best_ort = min((v for k, v in ms.items() if k.startswith("ort-cuda-fp16")), default=None)
    out: dict[str, Any] = {"batch": batch, "best_ort_fp16_ms": best_ort}
    if best_ort and "eager-seed-cuda-fp32" in ms:
        out["speedup_vs_eager_seed"] = ms["eager-seed-cuda-fp32"] / best_ort
        out["meets_3x"] = out["speedup_vs_eager_seed"] >= 3
    if best_ort and "compile-rewritten-cuda-fp16" in ms:
        out["ratio_vs_compile_fp16"] = best_ort / ms["compile-rewritten-cuda-fp16"]
        out["no_slower_than_compile"] = best_ort <= ms["compile-rewritten-cuda-fp16"]
    return out


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
    global DEVICE
    DEVICE = "cpu" if args.dry_run_cpu else "cuda"
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

    if DEVICE == "cuda" and not torch.cuda.is_available():
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

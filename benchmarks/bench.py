"""Speed of the exported generators against eager PyTorch, per backend and batch size.

    python benchmarks/bench.py [--quick] [--models decoder,lats] [--batches 1,4] [--runs 20] [--json PATH]

Backends: eager seed layers (the baseline), eager rewritten, TorchScript, ONNX Runtime CPU (and its
graph-optimisation levels), and where a GPU is usable: torch eager fp32 (TF32 off) / torch.compile
fp32 and fp16, ONNX Runtime CUDA fp32 and fp16 with I/O binding. A backend that cannot run here is a
row that says "not run" and why. Each row: warm-up, then the median of ``--runs`` timed runs
(synchronised clocks on CUDA), peak memory, relative L2 error against the eager seed model, and the
speed-up over the eager seed model at the same batch size.

Models (weights are seeded random; speed does not depend on them):
* ``decoder`` -- the LATS styled decoder: 256 channels at 64x64 up to 64 channels at 256x256 on a GPU;
  on the CPU the same channels at 8x8 features (a 32x32 input image), as the issue's CPU numbers;
* ``lats`` -- the whole LATS generator (identity encoder, age encoder, mapping, decoder), 256x256 on
  a GPU and 32x32 on the CPU;
* ``--quick`` -- the small LATS preset (ngf 8, 32x32), batches 1 and 4: a smoke test under a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from modconv_export import export_onnx, export_torchscript, make_exportable
from modconv_export.families import lats
from modconv_export.ort_options import create_session


@dataclass
class Row:
    model: str
    backend: str
    batch: int
    status: str  # "ok" or "not run: <reason>"
    median_ms: float | None = None
    peak_mb: float | None = None
    rel_l2: float | None = None
    speedup: float | None = None
    extra: dict = field(default_factory=dict)


class DecoderOnly(nn.Module):
    """The LATS decoder as a model of its own: identity features + age code -> image."""

    def __init__(self, generator: lats.LATSGenerator) -> None:
        super().__init__()
        self.decoder = generator.decoder

    def forward(self, features: torch.Tensor, target_age: torch.Tensor) -> torch.Tensor:
        return self.decoder(features, target_age)


def build(name: str, cuda: bool, quick: bool) -> tuple[nn.Module, Callable[[int, int], tuple]]:
    config = dict(lats.SMALL if quick else lats.FULL)
    size = 256 if cuda and not quick else 32
    torch.manual_seed(0)
    generator = lats.build(config).eval()
    cfg = lats.LATSConfig.from_mapping(config)

    if name == "decoder":
        model: nn.Module = DecoderOnly(generator).eval()
        feat = size // 2**cfg.n_downsampling

        def inputs(batch: int, seed: int) -> tuple:
            gen = torch.Generator().manual_seed(seed)
            return torch.randn(batch, cfg.bottleneck_channels, feat, feat, generator=gen), lats.age_code(seed % 6, batch=batch, num_classes=cfg.num_classes, seed=seed)
    else:
        model = generator

        def inputs(batch: int, seed: int) -> tuple:
            gen = torch.Generator().manual_seed(seed)
            return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1, lats.age_code(seed % 6, batch=batch, num_classes=cfg.num_classes, seed=seed)

    return model, inputs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_fn(fn: Callable[[], Any], runs: int, warmup: int, cuda: bool) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def rel_l2(actual: Any, expected: np.ndarray) -> float:
    actual = np.asarray(actual.detach().float().cpu() if isinstance(actual, torch.Tensor) else actual, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def torch_backends(model: nn.Module, exportable: nn.Module, ts_path: Path, cuda: bool) -> dict[str, Callable[[tuple], Callable[[], Any]] | str]:
    """name -> factory(inputs) returning a zero-argument callable, or a "not run" reason."""
    backends: dict[str, Any] = {}

    def eager(m: nn.Module, device: str, dtype: torch.dtype = torch.float32):
        m = m.to(device=device, dtype=dtype)

        def factory(args: tuple):
            placed = tuple(a.to(device=device, dtype=dtype) for a in args)
            return lambda: m(*placed)

        return factory

    backends["eager-seed-cpu"] = eager(model, "cpu")
    backends["eager-rewritten-cpu"] = eager(exportable, "cpu")
    backends["torchscript-cpu"] = eager(torch.jit.load(str(ts_path)), "cpu")
    if cuda:
        import copy

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        backends["eager-seed-cuda-fp32"] = eager(copy.deepcopy(model), "cuda")
        backends["eager-rewritten-cuda-fp32"] = eager(copy.deepcopy(exportable), "cuda")
        backends["torchscript-cuda-fp32"] = eager(torch.jit.load(str(ts_path)), "cuda")
        backends["compile-cuda-fp32"] = eager(torch.compile(copy.deepcopy(exportable)), "cuda")
        backends["compile-cuda-fp16"] = eager(torch.compile(copy.deepcopy(exportable)), "cuda", torch.float16)
    else:
        for name in ("eager-seed-cuda-fp32", "torchscript-cuda-fp32", "compile-cuda-fp32", "compile-cuda-fp16"):
            backends[name] = "not run: no CUDA device on this machine"
    return backends


def ort_backends(onnx_fp32: Path, onnx_fp16: Path | None, cuda: bool) -> dict[str, Any]:
    backends: dict[str, Any] = {}

    def ort_cpu(path: Path, optimization: str):
        session = create_session(path, "cpu", optimization=optimization)
        names = [i.name for i in session.get_inputs()]

        def factory(args: tuple):
            feed = {n: a.numpy() for n, a in zip(names, args)}
            return lambda: session.run(None, feed)[0]

        return factory

    for level in ("all", "basic", "disable"):
        backends[f"ort-cpu-opt-{level}"] = ort_cpu(onnx_fp32, level)
    if onnx_fp16 is not None:
        backends["ort-cpu-fp16"] = ort_cpu(onnx_fp16, "all")

    def ort_cuda(path: Path, **cuda_options: Any):
        import onnxruntime as ort

        try:
            session = create_session(path, "cuda", **cuda_options)
        except RuntimeError as exc:
            return f"not run: {exc}"
        names = [i.name for i in session.get_inputs()]
        out_name = session.get_outputs()[0].name

        def factory(args: tuple):
            binding = session.io_binding()
            for n, a in zip(names, args):
                binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(a.numpy(), "cuda", 0))
            binding.bind_output(out_name, "cuda")

            def run():
                session.run_with_iobinding(binding)
                return binding.get_outputs()[0].numpy()

            return run

        return factory

    if cuda:
        backends["ort-cuda-fp32"] = ort_cuda(onnx_fp32)
        backends["ort-cuda-fp32-heuristic"] = ort_cuda(onnx_fp32, conv_algo_search="HEURISTIC")
        if onnx_fp16 is not None:
            backends["ort-cuda-fp16"] = ort_cuda(onnx_fp16)
    else:
        for name in ("ort-cuda-fp32", "ort-cuda-fp16"):
            backends[name] = "not run: no CUDA device on this machine"
    return backends


def bench_model(name: str, args: argparse.Namespace, cuda: bool, workdir: Path) -> list[Row]:
    model, make_inputs = build(name, cuda, args.quick)
    example = make_inputs(2, 0)
    exportable = make_exportable(model)
    started = time.perf_counter()
    onnx_fp32 = export_onnx(model, example, workdir / f"{name}.onnx", exporter=args.exporter)
    export_s = time.perf_counter() - started
    onnx_fp16 = export_onnx(model, example, workdir / f"{name}_fp16.onnx", exporter=args.exporter, precision="fp16") if args.fp16 else None
    ts_path = export_torchscript(model, example, workdir / f"{name}.pt")
    print(f"[{name}] exported ({args.exporter}) in {export_s:.1f} s", file=sys.stderr)

    backends = {**torch_backends(model, exportable, ts_path, cuda), **ort_backends(onnx_fp32, onnx_fp16, cuda)}
    rows: list[Row] = []
    for batch in args.batches:
        inputs = make_inputs(batch, 100 + batch)
        with torch.no_grad():
            reference = model(*inputs).numpy().astype(np.float64)
        baseline_ms = None
        for backend, factory in backends.items():
            if isinstance(factory, str):
                rows.append(Row(name, backend, batch, factory))
                continue
            uses_cuda = "cuda" in backend
            if uses_cuda:
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                ms, out = time_fn(factory(inputs), args.runs, args.warmup, uses_cuda)
            peak = torch.cuda.max_memory_allocated() / 2**20 if uses_cuda and backend.startswith(("eager", "torchscript", "compile")) else _peak_rss_mb()
            if backend == "eager-seed-cpu":
                baseline_ms = ms
            row = Row(name, backend, batch, "ok", ms, peak, rel_l2(out, reference))
            row.speedup = baseline_ms / ms if baseline_ms else None
            rows.append(row)
            print(f"[{name}] b={batch} {backend}: {ms:.2f} ms", file=sys.stderr)
    rows.append(Row(name, f"export-{args.exporter}", 0, "ok", export_s * 1e3))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'model':8} {'backend':28} {'batch':>5} {'median ms':>10} {'speed-up':>8} {'rel L2':>9} {'peak MB':>8}"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.model:8} {r.backend:28} {r.batch:>5} {r.status}")
            continue
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        err = f"{r.rel_l2:.1e}" if r.rel_l2 is not None else "-"
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-"
        lines.append(f"{r.model:8} {r.backend:28} {r.batch:>5} {r.median_ms:>10.2f} {speed:>8} {err:>9} {peak:>8}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    info = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, batches 1 and 4: a smoke test under a minute")
    parser.add_argument("--models", default="decoder,lats")
    parser.add_argument("--batches", default=None, help="comma-separated; default 1,8,32 on GPU, 1,4 on CPU")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default=None, help="default: dynamo; torchscript with --quick")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false")
    parser.add_argument("--cpu", action="store_true", help="ignore a GPU even if one is present")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    args.exporter = args.exporter or ("torchscript" if args.quick else "dynamo")
    if args.runs < 20:
        parser.error("--runs must be at least 20 (a median of fewer runs is noise on a shared machine)")
    default_batches = "1,4" if (args.quick or not cuda) else "1,8,32"
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    models = ["lats"] if args.quick else args.models.split(",")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            rows.extend(bench_model(name, args, cuda, Path(tmp)))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

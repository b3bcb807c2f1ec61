"""Speed of the exported generators against eager PyTorch at the sizes users run, per backend and batch size.

    python benchmarks/bench.py --json bench.json --markdown   # the README table: lats:256:1,4 gfpgan:512:1
    python benchmarks/bench.py --models lats --size 256 --batches 1,4
    python benchmarks/bench.py --quick                         # CI smoke: small LATS at 32 px, seconds

Every backend is a runner of :mod:`modconv_export.verify.runners` -- the code that proves parity is the
code that is timed: eager seed layers (the baseline), eager rewritten, TorchScript, ``torch.compile``
(CPU), torch bf16 autocast (rewritten model), ONNX Runtime CPU fp32 (and the fp16 file), OpenVINO f32
and bf16 (with the toolkit's style-path policy, without it, and compiled for the one input shape),
ONNX Runtime on the OpenVINO execution provider (f32, bf16); on a GPU also eager / TorchScript /
``torch.compile`` fp32 (TF32 off) and fp16, ONNX Runtime CUDA fp32 and fp16. A backend that cannot run
here is a row that says "not run" and why.

Timing: all backends of a model are prepared first; per batch size each is warmed up, then they run
round-robin (interleaved, so a burst of load from elsewhere hits every backend alike) ``--runs``
times with a short idle gap before each run (ONNX Runtime's and OpenVINO's worker threads spin for a
while after a run and would steal cores from the next backend); each row is the median (and the
minimum, in the JSON). Speed-up is against the eager seed model of the same run and batch (on its
device); relative L2 and PSNR against the eager seed model in fp32 on the CPU. The JSON holds the CPU
model, its ISA flags (AMX, AVX-512), the load average before and after, and library versions, so
numbers from different machines are never mixed up.

Models (weights seeded random; speed does not depend on them), ``NAME[:SIZE[:BATCHES]]``:
* ``lats`` -- the whole LATS generator (identity encoder, mapping, styled decoder), SIZE x SIZE input;
* ``decoder`` -- the LATS styled decoder alone, on SIZE/4 identity features;
* ``gfpgan`` -- GFPGAN v1.4 clean (U-Net + SFT StyleGAN2 decoder), SIZE = its output size (512);
* ``--quick`` -- the small LATS preset (ngf 8) at 32x32, batches 1 and 4, without ``torch.compile``.

The models and their specs are ``_bench_models.py`` beside this file; here: the backends, the timing and the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _bench_models import DEFAULT_MODELS, Spec, build, parse_models
from torch import nn

from modconv_export import export_onnx, export_torchscript, make_exportable
from modconv_export.verify.environment import versions as environment
from modconv_export.verify.metrics import compare
from modconv_export.verify.openvino_runner import OpenVINORunner
from modconv_export.verify.runners import EagerRunner, OnnxRuntimeRunner, Runner, RunnerUnavailable, TorchScriptRunner


@dataclass
class Row:
    model: str
    size: int
    backend: str
    batch: int
    status: str  # "ok", "not run: <reason>" or "failed: <reason>"
    median_ms: float | None = None
    min_ms: float | None = None  # the least disturbed run: on a loaded machine closer to a quiet one's median
    speedup: float | None = None
    rel_l2: float | None = None
    psnr: float | None = None
    peak_mb: float | None = None  # CUDA torch rows only (a process-wide CPU figure says nothing per row)
    runs: int = 0
    extra: dict = field(default_factory=dict)


def backends(
    model: nn.Module, files: dict[str, Path | None], cuda: bool, args: argparse.Namespace
) -> list[tuple[str, Callable[[], Runner] | str]]:
    """``(name, runner factory or "not run: reason")`` in table order; every factory builds a verify runner."""
    exportable = make_exportable(model)
    onnx, onnx_fp16, script = files["onnx"], files["onnx_fp16"], files["torchscript"]
    compile_reason = "not run: skipped with --quick (compile time)" if args.quick else ""
    table: list[tuple[str, Callable[[], Runner] | str]] = [
        ("eager-seed-cpu", lambda: EagerRunner(model, name="eager-seed-cpu")),
        ("eager-rewritten-cpu", lambda: EagerRunner(exportable, name="eager-rewritten-cpu")),
        ("torchscript-cpu", lambda: TorchScriptRunner(script)),
        ("compile-cpu", compile_reason or (lambda: EagerRunner(torch.compile(exportable), name="compile-cpu"))),
        ("autocast-bf16-cpu", lambda: EagerRunner(exportable, autocast=torch.bfloat16, name="autocast-bf16-cpu")),
        ("ort-cpu", lambda: OnnxRuntimeRunner(onnx, "cpu")),
        (
            "ort-cpu-fp16-file",
            (lambda: OnnxRuntimeRunner(onnx_fp16, "cpu", name="ort-cpu-fp16-file")) if onnx_fp16 else "not run: --no-fp16",
        ),
        ("openvino-cpu", lambda: OpenVINORunner(onnx, "fp32")),
        ("openvino-cpu-bf16", lambda: OpenVINORunner(onnx, "bf16")),
        ("openvino-cpu-bf16-plain", lambda: OpenVINORunner(onnx, "bf16", f32_islands=False, name="openvino-cpu-bf16-plain")),
        ("openvino-cpu-bf16-static", lambda: OpenVINORunner(onnx, "bf16", static_shapes=True, name="openvino-cpu-bf16-static")),
        ("ort-openvino-cpu", lambda: OpenVINORunner(onnx, "fp32", runtime="onnxruntime")),
        ("ort-openvino-cpu-bf16", lambda: OpenVINORunner(onnx, "bf16", runtime="onnxruntime")),
    ]
    if not cuda:
        reason = "not run: no CUDA device on this machine" if not torch.cuda.is_available() else "not run: --cpu"
        names = (
            "eager-seed-cuda-fp32",
            "eager-rewritten-cuda-fp32",
            "torchscript-cuda-fp32",
            "compile-cuda-fp32",
            "compile-cuda-fp16",
            "ort-cuda-fp32",
            "ort-cuda-fp16",
        )
        return table + [(n, reason) for n in names]
    half = torch.float16
    table += [
        ("eager-seed-cuda-fp32", lambda: EagerRunner(model, "cuda", tf32=False, name="eager-seed-cuda-fp32")),
        ("eager-rewritten-cuda-fp32", lambda: EagerRunner(exportable, "cuda", tf32=False, name="eager-rewritten-cuda-fp32")),
        ("torchscript-cuda-fp32", lambda: TorchScriptRunner(script, "cuda", tf32=False, name="torchscript-cuda-fp32")),
        ("compile-cuda-fp32", lambda: EagerRunner(torch.compile(_copy(exportable).cuda()), "cuda", tf32=False, name="compile-cuda-fp32")),
        (
            "compile-cuda-fp16",
            lambda: EagerRunner(torch.compile(_copy(exportable).cuda().half()), "cuda", dtype=half, name="compile-cuda-fp16"),
        ),
        ("ort-cuda-fp32", lambda: OnnxRuntimeRunner(onnx, "cuda", name="ort-cuda-fp32")),
        ("ort-cuda-fp16", (lambda: OnnxRuntimeRunner(onnx_fp16, "cuda", name="ort-cuda-fp16")) if onnx_fp16 else "not run: --no-fp16"),
    ]
    return table


def _copy(module: nn.Module) -> nn.Module:
    from modconv_export.rewrite import copy_module

    return copy_module(module)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _time_once(runner: Runner, inputs: tuple, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    runner.infer(inputs)  # returns host arrays: the clock includes the copy back, on CUDA too
    return (time.perf_counter() - start) * 1e3


def bench_model(spec: Spec, args: argparse.Namespace, cuda: bool, workdir: Path) -> list[Row]:
    model, make_inputs = build(spec, args.quick)
    example = make_inputs(2, 0)
    tag = f"{spec.name}{spec.size}"
    started = time.perf_counter()
    files: dict[str, Path | None] = {"onnx": export_onnx(model, example, workdir / f"{tag}.onnx", exporter=args.exporter)}
    export_s = time.perf_counter() - started
    files["onnx_fp16"] = (
        export_onnx(model, example, workdir / f"{tag}_fp16.onnx", exporter=args.exporter, precision="fp16") if args.fp16 else None
    )
    files["torchscript"] = export_torchscript(model, example, workdir / f"{tag}.pt")
    print(f"[{tag}] exported ({args.exporter}) in {export_s:.1f} s", file=sys.stderr)

    rows: list[Row] = []
    runners: dict[str, Runner] = {}
    failed: dict[str, str] = {}
    wanted = [(n, f) for n, f in backends(model, files, cuda, args) if not args.backends or n in args.backends]
    for name, factory in wanted:
        if isinstance(factory, str):
            failed[name] = factory
            continue
        try:
            runner = factory()
            runner.prepare()
            runners[name] = runner
        except RunnerUnavailable as exc:
            failed[name] = f"not run: {exc}"
        except Exception as exc:  # noqa: BLE001  (any backend's error is that backend's row, not the end of the run)
            failed[name] = f"failed: could not load: {_reason(exc)}"
    try:
        for batch in spec.batches:
            rows += bench_batch(spec, model, batch, make_inputs(batch, 100 + batch), runners, failed, [n for n, _ in wanted], args)
    finally:
        for runner in runners.values():
            runner.release()
    rows.append(Row(spec.name, spec.size, f"export-{args.exporter}", 0, "ok", export_s * 1e3))
    return rows


def bench_batch(
    spec: Spec,
    model: nn.Module,
    batch: int,
    inputs: tuple,
    runners: dict[str, Runner],
    failed: dict[str, str],
    order: list[str],
    args: argparse.Namespace,
) -> list[Row]:
    """Warm every runner up, then time them round-robin; one row per backend in ``order``."""
    with EagerRunner(model, name="reference") as reference:
        expected = reference.infer(inputs)[0]
    live, outputs, peaks, errors = dict(runners), {}, {}, {}
    for name, runner in list(live.items()):
        cuda_torch = name.endswith(("cuda-fp32", "cuda-fp16")) and not name.startswith("ort")
        try:
            if cuda_torch:
                torch.cuda.reset_peak_memory_stats()
            outputs[name] = runner.infer(inputs)[0]
            for _ in range(args.warmup - 1):
                runner.infer(inputs)
            if cuda_torch:
                peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        except Exception as exc:  # noqa: BLE001  (a row, as above)
            errors[name] = f"failed: inference: {_reason(exc)}"
            del live[name]
    times: dict[str, list[float]] = {name: [] for name in live}
    for _ in range(args.runs):
        for name, runner in list(live.items()):
            time.sleep(args.gap_ms / 1e3)  # the previous backend's spinning worker threads go to sleep first
            try:
                times[name].append(_time_once(runner, inputs, "cuda" in name))
            except Exception as exc:  # noqa: BLE001  (a row, as above)
                errors[name] = f"failed: inference: {_reason(exc)}"
                del live[name]
    medians = {name: statistics.median(t) for name, t in times.items() if name in live and t}
    rows = []
    for name in order:
        status = failed.get(name) or errors.get(name)
        if status:
            rows.append(Row(spec.name, spec.size, name, batch, status))
            continue
        ms = medians[name]
        baseline = medians.get("eager-seed-cuda-fp32" if "cuda" in name else "eager-seed-cpu")
        m = compare(outputs[name], expected)
        rows.append(
            Row(
                spec.name,
                spec.size,
                name,
                batch,
                "ok",
                ms,
                min(times[name]),
                baseline / ms if baseline else None,
                m.rel_l2,
                m.psnr,
                peaks.get(name),
                len(times[name]),
            )
        )
        print(f"[{spec.name}{spec.size}] b={batch} {name}: {ms:.1f} ms", file=sys.stderr)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'model':8} {'size':>4} {'backend':26} {'batch':>5} {'median ms':>10} {'speed-up':>8} {'rel L2':>8} {'PSNR':>7}"]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.model:8} {r.size:>4} {r.backend:26} {r.batch:>5} {r.status}")
            continue
        speed = f"{r.speedup:.2f}x" if r.speedup else "-"
        err = f"{r.rel_l2:.1e}" if r.rel_l2 is not None else "-"
        psnr = "-" if r.psnr is None else ("inf" if r.psnr == float("inf") else f"{r.psnr:.1f}")
        lines.append(f"{r.model:8} {r.size:>4} {r.backend:26} {r.batch:>5} {r.median_ms:>10.1f} {speed:>8} {err:>8} {psnr:>7}")
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    """The README's table: one line per model/batch/backend that ran, speed-up in bold for the fastest."""
    lines = ["| model | batch | backend | ms | × eager seed | rel L2 vs fp32 eager | PSNR |", "|---|---|---|---|---|---|---|"]
    ran = [r for r in rows if r.status == "ok" and r.batch > 0]
    for r in ran:
        group = [o for o in ran if (o.model, o.size, o.batch) == (r.model, r.size, r.batch) and o.speedup]
        best = max((o.speedup for o in group), default=None)
        speed = f"{r.speedup:.2f}" if r.speedup else "–"
        speed = f"**{speed}**" if r.speedup and r.speedup == best else speed
        err = "–" if r.backend == "eager-seed-cpu" else f"{r.rel_l2:.1e}"
        psnr = "–" if r.psnr is None or r.psnr == float("inf") else f"{r.psnr:.1f} dB"
        lines.append(f"| {r.model} {r.size} px | {r.batch} | {r.backend} | {r.median_ms:.1f} | {speed} | {err} | {psnr} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small LATS at 32 px, batches 1 and 4, no torch.compile: a smoke test")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME[:SIZE[:BATCHES]]", help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument(
        "--size", type=int, default=None, help="input size for models given without one (default: lats/decoder 256, gfpgan 512)"
    )
    parser.add_argument("--batches", default=None, help="comma-separated, for models given without; default 1,8,32 on GPU, 1,4 on CPU")
    parser.add_argument("--backends", default=None, help="comma-separated subset of backend names (default: all)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=20.0,
        help="idle time before each timed run, so one backend's spinning threads do not slow the next (default: 20)",
    )
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default=None, help="default: dynamo; torchscript with --quick")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the fp16 ONNX file")
    parser.add_argument("--cpu", action="store_true", help="ignore a GPU even if one is present")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true", help="also print the README's markdown table")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    args.exporter = args.exporter or ("torchscript" if args.quick else "dynamo")
    if args.runs < 20:
        parser.error("--runs must be at least 20 (a median of fewer runs is noise on a shared machine)")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first run also gives the output that is measured)")
    batches = [int(b) for b in (args.batches or ("1,4" if (args.quick or not cuda) else "1,8,32")).split(",")]
    args.backends = set(args.backends.split(",")) if args.backends else None
    try:
        specs = [Spec("lats", 32, batches)] if args.quick else parse_models(args.models or DEFAULT_MODELS, args.size, batches)
    except ValueError as exc:
        parser.error(str(exc))
    env = environment()
    env["load_average_before"] = list(os.getloadavg())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs:
            rows.extend(bench_model(spec, args, cuda, Path(tmp)))
    env["load_average_after"] = list(os.getloadavg())
    print(format_table(rows))
    print(
        f"cpu: {env['cpu']['model']} ({', '.join(env['cpu']['isa'])}), {env['cpu']['cores_available']} cores; load average before {env['load_average_before'][0]:.2f}, after {env['load_average_after'][0]:.2f}"
    )
    if args.markdown:
        print(format_markdown(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "command": sys.argv, "rows": [asdict(r) for r in rows]}, indent=2, allow_nan=True)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""gpu_check's report side: GPU kernel profiles summed by kind, ONNX Runtime's node placement, and the
speed targets read from the rows."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _gpu_runtime as runtime
import numpy as np

from modconv_export.runtimes.ort import create_session

#: Kernel-name fragments -> what the kernel does, to sum a profile into a few lines that point at a change.
KERNEL_KINDS = (
    ("layout transpose", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit_gemm", "xmma", "cutlass", "sm90", "sm80", "winograd", "fft")),
    ("matmul", ("gemm", "gemv", "matmul")),
    ("reduction / norm", ("reduce", "norm", "mean", "sum")),
    ("memory copy", ("memcpy", "memset", "copy")),
)


def kernel_kind(kernel: str) -> str:
    low = kernel.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in low for p in parts)), "elementwise / other")


def kernel_profile(run: Callable[[], Any], runs: int) -> dict[str, Any]:
    """GPU kernel time per run of ``run`` as CUPTI records it (through torch.profiler, which sees every
    kernel of the process, ONNX Runtime's included): the top kernels and the sum per kind."""
    from torch.profiler import ProfilerActivity, profile

    run()
    runtime.sync()
    with profile(activities=[ProfilerActivity.CUDA if runtime.DEVICE == "cuda" else ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run()
        runtime.sync()
    kernels = []
    for event in prof.key_averages():
        us = (
            (getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0))
            if runtime.DEVICE == "cuda"
            else event.self_cpu_time_total
        )
        if us and (runtime.DEVICE == "cpu" or not event.key.startswith(("aten::", "ProfilerStep", "cuda"))):
            kernels.append((event.key, us / 1e3 / runs, event.count // runs))
    kernels.sort(key=lambda k: -k[1])
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms, _ in kernels:
        by_kind[kernel_kind(name)] += ms
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
    session = create_session(path, runtime.DEVICE, options=options)
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

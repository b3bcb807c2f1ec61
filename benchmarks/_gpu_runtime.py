"""gpu_check's runner side: where the rows run (CUDA, or the CPU for ``--dry-run-cpu``), the time budget,
the machine's description, timing with synchronisation, and ONNX Runtime sessions with I/O binding.

Sessions come from :func:`modconv_export.runtimes.ort.create_session`, the toolkit's deployment settings.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modconv_export._util import exception_line
from modconv_export.runtimes.ort import create_session
from modconv_export.verify.environment import versions

#: Where the rows run: "cuda", or "cpu" for ``--dry-run-cpu`` (every code path but the numbers).
DEVICE = "cuda"


def set_device(device: str) -> None:
    """Run every row on ``device`` ("cuda", or "cpu" for a dry run)."""
    global DEVICE
    DEVICE = device


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

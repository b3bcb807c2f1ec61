"""ONNX Runtime settings for deploying exported generators, as one documented place.

The runners of :mod:`modconv_export.verify`, ``benchmarks/bench.py`` and ``benchmarks/gpu_check.py`` build
their sessions here, so what is measured is what is recommended:

* ``graph_optimization_level``: ``ORT_ENABLE_ALL`` (constant folding, Conv+Add/Mul fusions, layout
  transforms). The style/demodulation arithmetic of the export form is tiny vector work; the fusions
  that matter are Conv+bias and the elementwise chains around each conv.
* CPU: ``intra_op_num_threads`` = the cores available to this process (ORT's default counts every
  core of the machine, which oversubscribes a container limited to fewer). ``arena=False`` turns the
  CPU memory arena off: with a dynamic batch its power-of-two chunks keep what every earlier shape
  needed (a 1024 px generator at batch 1 then 3: 14.1 GB with the arena, 7.6 GB and a third faster
  without); the parity check runs that way, a server with one batch size may keep it.
* CUDA: ``cudnn_conv_algo_search="EXHAUSTIVE"`` (benchmarks every cuDNN algorithm once per input
  shape: slow first call, fastest steady state), ``do_copy_in_default_stream=True``; I/O binding keeps
  inputs and outputs on the GPU; ``enable_cuda_graph`` replays one captured graph and needs fixed
  shapes and I/O binding, so it suits a server with one batch size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import RunnerUnavailable
from .cpu import cpu_threads

__all__ = [
    "ORT_PROVIDERS",
    "create_session",
    "cuda_provider_options",
    "describe_ort_build",
    "model_source",
    "ort_distributions",
    "session_options",
]

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def session_options(*, optimization: str = "all", threads: int | None = None, quiet: bool = True, arena: bool = True) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads or cpu_threads()
    options.enable_cpu_mem_arena = arena
    if quiet:
        options.log_severity_level = 3
    return options


def cuda_provider_options(
    *, conv_algo_search: str = "EXHAUSTIVE", cuda_graph: bool = False, prefer_nhwc: bool = False, device_id: int = 0
) -> dict[str, Any]:
    """The CUDA provider's options; flags as ``"1"``/``"0"``, the spelling every ORT version parses.

    ``prefer_nhwc`` runs convolutions in the channels-last layout (Tensor Core kernels need no transposes
    around each Conv); ``cuda_graph`` replays the whole run as one CUDA graph (fixed shapes and I/O addresses).
    """
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": conv_algo_search,
        "do_copy_in_default_stream": "1",
        "enable_cuda_graph": "1" if cuda_graph else "0",
        "prefer_nhwc": "1" if prefer_nhwc else "0",
    }


def model_source(path: str | os.PathLike | bytes) -> str | bytes:
    """What ONNX Runtime can open: the path, or the file's bytes when the name is not valid UTF-8 (bytes
    given are a serialized model already)."""
    if isinstance(path, bytes):
        return path
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return Path(path).read_bytes()


#: The providers the runners and the CLI name, by device.
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def create_session(
    path: str | os.PathLike,
    device: str = "cpu",
    *,
    options: Any = None,
    provider_options: dict[str, Any] | None = None,
    optimization: str = "all",
    threads: int | None = None,
    **cuda: Any,
) -> Any:
    """An ``InferenceSession`` of the file at ``path`` on ``device`` ("cpu" or "cuda"), with this module's
    settings unless ``options``/``provider_options`` are given (``**cuda`` goes to :func:`cuda_provider_options`).

    The one place sessions are made: it raises :class:`~modconv_export.errors.RunnerUnavailable` (a
    ``RuntimeError``) when the provider is missing or the session silently fell back to the CPU, as
    onnxruntime-gpu does without CUDA/cuDNN or a GPU.
    """
    import onnxruntime as ort

    if device not in ORT_PROVIDERS:
        raise ValueError(f"device must be one of {', '.join(ORT_PROVIDERS)}, got {device!r}")
    wanted = ORT_PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise RunnerUnavailable(
            f"{device.upper()} provider unavailable: onnxruntime {ort.__version__} has no {wanted} (install onnxruntime-gpu)"
        )
    options = options if options is not None else session_options(optimization=optimization, threads=threads)
    if provider_options is None:
        provider_options = cuda_provider_options(**cuda) if device == "cuda" else {}
    providers: list[Any] = [(wanted, provider_options)] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
    session = ort.InferenceSession(model_source(path), sess_options=options, providers=providers)
    actual = list(session.get_providers())
    if not actual or actual[0] != wanted:
        del session
        raise RunnerUnavailable(
            f"{device.upper()} provider unavailable: the session fell back to {actual[0] if actual else 'no provider'}"
            " (CUDA/cuDNN libraries or a GPU missing; onnxruntime logs the cause)"
        )
    return session


def ort_distributions() -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` import (``onnxruntime``,
    ``onnxruntime-gpu``, ...). More than one means they overwrite each other's files."""
    from importlib.metadata import packages_distributions

    return sorted(set(packages_distributions().get("onnxruntime", [])))


def describe_ort_build() -> str:
    """One line: which ONNX Runtime distribution and version is installed and the providers it lists.

    A listed provider may still fail to load (onnxruntime-gpu lists CUDA without a GPU); the parity
    table shows which provider a session really used.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime: not importable ({exc})"
    dists = ort_distributions()
    line = f"onnxruntime: {' + '.join(dists) or 'unknown distribution'} {ort.__version__}, providers: {', '.join(ort.get_available_providers())}"
    if len(dists) > 1:
        line += f" (warning: {' and '.join(dists)} are both installed and share the import name: uninstall all, then install one)"
    return line

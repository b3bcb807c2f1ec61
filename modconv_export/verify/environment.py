"""What a measurement ran on: package versions, providers, CPU and GPU, in one place for the parity
report, the benchmark and the GPU check (numbers from different machines must not be mixed)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

__all__ = ["package_version", "versions"]

#: Distributions whose versions every record carries (``onnxruntime`` is the import's version, below).
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime-gpu", "openvino", "onnxruntime-ep-openvino", "numpy")


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, Any]:
    """The toolkit's version, Python, the :data:`PACKAGES`, ONNX Runtime's providers, the CPU (model and
    ISA flags) and the CUDA device, if any."""
    import torch

    from .. import __version__
    from ..runtimes.cpu import cpu_info

    info: dict[str, Any] = {"modconv_export": __version__, "python": platform.python_version(), "machine": platform.machine()}
    info.update({name: package_version(name) for name in PACKAGES})
    info["torch"] = torch.__version__  # the build tag (+cpu, +cu130) is not in the distribution's metadata
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__  # the import's, whichever distribution (onnxruntime-gpu, ...) provides it
        info["onnxruntime_available_providers"] = ", ".join(ort.get_available_providers())
    except ImportError as exc:
        info["onnxruntime"] = info["onnxruntime_available_providers"] = f"onnxruntime not importable: {exc}"
    info["cpu"] = cpu_info()
    info["torch_threads"] = torch.get_num_threads()
    info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info

"""ONNX Runtime on its OpenVINO execution provider (the ``onnxruntime-ep-openvino`` plugin).

:func:`ort_openvino_session` runs the same OpenVINO CPU plugin, so it is no faster; it cannot take the
f32-island policy (it reads the ONNX file), and its documented ``precision`` option is ignored by the
plugin (asking for ``FP32`` still runs bf16 on AMX): precision goes through ``load_config``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .openvino_config import compile_config
from .ort import model_source, session_options

__all__ = ["ort_openvino_device", "ort_openvino_session"]


def _register_ort_plugin() -> str:
    """Register the plugin library with ONNX Runtime once per process; the EP's name."""
    import onnxruntime as ort
    import onnxruntime_ep_openvino as plugin

    name = plugin.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(name, plugin.get_library_path())
    return name


def ort_openvino_device() -> Any:
    """The OpenVINO execution provider's CPU device (an ``OrtEpDevice``), registering the plugin once.

    Raises ``ImportError`` without the ``onnxruntime-ep-openvino`` plugin (which bundles its own OpenVINO)
    and ``RuntimeError`` if it offers no CPU device. ``ep_metadata["OPTIMIZATION_CAPABILITIES"]`` is that
    OpenVINO's view of the CPU.
    """
    import onnxruntime as ort

    ep_name = _register_ort_plugin()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == ep_name and d.ep_metadata.get("ov_device") == "CPU"]
    if not devices:
        raise RuntimeError(f"the OpenVINO execution provider offers no CPU device (onnxruntime {ort.__version__})")
    return devices[0]


def ort_openvino_session(path: str | os.PathLike, precision: str = "fp32", *, load_config: dict[str, Any] | None = None) -> Any:
    """An ONNX Runtime session on the OpenVINO execution provider's CPU device, with :func:`compile_config`'s
    properties passed through ``load_config`` (the provider's ``precision`` option is not honoured)."""
    import onnxruntime as ort

    device = ort_openvino_device()
    cpu = {k: str(v) for k, v in compile_config(precision).items()}
    options = session_options()
    options.add_provider_for_devices([device], {"load_config": json.dumps({"CPU": {**cpu, **(load_config or {})}})})
    return ort.InferenceSession(model_source(path), sess_options=options)

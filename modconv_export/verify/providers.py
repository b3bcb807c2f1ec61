"""The backends a parity check is asked for by name, and whether each can run here.

One vocabulary for :func:`~modconv_export.verify.check_parity` and the command line's ``--providers``:
the devices ``cpu`` and ``cuda`` (their ONNX Runtime names ``CPUExecutionProvider`` and
``CUDAExecutionProvider`` mean the same), OpenVINO's own runtime (``openvino``, ``openvino-bf16``) and
ONNX Runtime's OpenVINO execution provider (``OpenVINOExecutionProvider``: the ``ort-openvino-cpu`` rows).

:func:`unavailable` says what a selection lacks on this machine and what to install, so that a backend the
user named is refused before the slow steps, and a default one is skipped with one line. Importing this
module imports neither torch nor ONNX Runtime (the command line parses ``--providers`` before them).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ModconvExportError

__all__ = ["DEFAULT_PROVIDERS", "PROVIDERS", "parse_providers", "provider_name", "unavailable"]

#: Names (matched case-insensitively) -> the selection they make.
_NAMES = {
    "cpu": "cpu",
    "cpuexecutionprovider": "cpu",
    "cuda": "cuda",
    "cudaexecutionprovider": "cuda",
    "openvino": "openvino",
    "openvino-bf16": "openvino-bf16",
    "openvinoexecutionprovider": "ort-openvino",
    "ort-openvino": "ort-openvino",
}
#: Every name ``providers`` (and ``--providers``) accepts, as documented.
PROVIDERS = ("cpu", "cuda", "CPUExecutionProvider", "CUDAExecutionProvider", "openvino", "openvino-bf16", "OpenVINOExecutionProvider")
#: What is checked when nobody names a backend: where this machine has no CUDA, it is skipped.
DEFAULT_PROVIDERS = ("cpu", "cuda")
_SHOWN = {"ort-openvino": "OpenVINOExecutionProvider"}


def provider_name(selection: str) -> str:
    """The name a selection is written with (``"ort-openvino"`` -> ``"OpenVINOExecutionProvider"``)."""
    return _SHOWN.get(selection, selection)


def parse_providers(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"cpu,CUDAExecutionProvider,openvino-bf16"`` (or a sequence of such texts, e.g. a repeated option)
    -> ``("cpu", "cuda", "openvino-bf16")``: the selections in order, duplicates dropped.
    :class:`~modconv_export.errors.ModconvExportError` for an unknown name or none at all."""
    texts = [text] if isinstance(text, str) else list(text)
    names = [p.strip() for t in texts for p in str(t).split(",") if p.strip()]
    unknown = [p for p in names if p.lower() not in _NAMES]
    if unknown or not names:
        accepted = ", ".join(PROVIDERS[:-1]) + f" or {PROVIDERS[-1]}"
        raise ModconvExportError(f"providers take {accepted}; got {', '.join(unknown) or 'none'}")
    return tuple(dict.fromkeys(_NAMES[p.lower()] for p in names))


def unavailable(selection: str) -> str:
    """``""`` if ``selection`` can run on this machine, else what is missing and how to get it."""
    if selection == "cpu":
        return ""
    if selection == "cuda":
        return _cuda_missing()
    from .. import runtimes

    if selection == "openvino":
        return runtimes.openvino_unavailable_reason()
    if selection == "openvino-bf16":
        return runtimes.bf16_unavailable_reason()
    if selection == "ort-openvino":
        try:
            runtimes.ort_openvino_device()
        except ImportError:
            return "ONNX Runtime's OpenVINO execution provider is not installed (pip install 'modconv-export[openvino-ep]')"
        except RuntimeError as exc:
            return str(exc)
        return ""
    raise ValueError(f"unknown provider selection {selection!r}")


def _cuda_missing() -> str:
    """Both CUDA backends must start: torch on a CUDA device, and ONNX Runtime's CUDA provider (which
    onnxruntime-gpu lists even where it cannot load, so a session is opened on a one-node model)."""
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (a GPU and torch's CUDA build are needed: see docs/install.md)"
    import onnx

    from ..errors import RunnerUnavailable
    from ..runtimes.ort import create_session

    tensor = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", tensor[:1], tensor[1:])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    try:
        create_session(probe.SerializeToString(), "cuda")
    except RunnerUnavailable as exc:
        return f"{exc} (pip install onnxruntime-gpu, with the CUDA and cuDNN libraries it needs)"
    return ""

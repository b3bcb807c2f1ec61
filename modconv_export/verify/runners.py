"""One small runner interface for every backend, Polygraphy-style: ``prepare`` / ``infer`` / ``release``.

The device (or ONNX Runtime provider) is a constructor argument, not a subclass, so "TorchScript on
CUDA" and "TorchScript on CPU" are the same class. Every runner takes the same inputs -- CPU tensors in
``forward`` order -- and returns its outputs as numpy arrays in output order, so the harness can hand
any two of them to :func:`~modconv_export.verify.metrics.compare`.

A runner that cannot run *here* (no GPU, a provider that silently fell back to CPU) raises
:class:`RunnerUnavailable` from ``prepare``; the harness turns that into a "not run" row with the
reason, never into a pass. Any other exception is a real failure of the backend.
"""

from __future__ import annotations

import contextlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import RunnerUnavailable
from ..runtimes.ort import ORT_PROVIDERS, create_session

__all__ = ["EagerRunner", "OnnxRuntimeRunner", "Runner", "RunnerUnavailable", "TorchScriptRunner", "flatten_outputs"]


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """A model's return value as a flat list of tensors (a tensor, or a tuple/list of them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return list(outputs)
    raise TypeError(f"model outputs must be a tensor or a tuple/list of tensors, got {type(outputs).__name__}")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().to("cpu")
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16


class Runner(ABC):
    """Base of all runners. Use as a context manager, or call ``prepare``/``release`` yourself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prepared = False

    @abstractmethod
    def prepare(self) -> None:
        """Load and place the backend; raise :class:`RunnerUnavailable` if it cannot run here."""

    @abstractmethod
    def infer(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Run one batch; ``inputs`` are CPU tensors in ``forward`` order."""

    def release(self) -> None:
        """Drop what ``prepare`` loaded (sessions, device copies)."""
        self.prepared = False

    @property
    def providers(self) -> list[str]:
        """What actually executes the model (a torch device, or ORT's providers as the session reports)."""
        return []

    def __enter__(self) -> Runner:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_torch_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunnerUnavailable(f"CUDA unavailable: torch {torch.__version__} sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise RunnerUnavailable(f"device {device} is not supported by the parity harness")


@contextlib.contextmanager
def _tf32(enabled: bool | None) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and convolutions for one block (``None``: leave torch's settings)."""
    if enabled is None:
        yield
        return
    value = "tf32" if enabled else "ieee"
    conv, matmul = getattr(torch.backends.cudnn, "conv"), torch.backends.cuda.matmul  # noqa: B009  (torch >= 2.9; no stub)
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9: the new API; never mix it with the legacy flags
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision, matmul.fp32_precision = value, value
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:  # older torch: the legacy flags
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class _TorchRunner(Runner):
    """Shared by the eager and TorchScript runners: input placement, dtype, TF32, autocast and no_grad."""

    def __init__(
        self, name: str, device: str | torch.device, dtype: torch.dtype, tf32: bool | None, autocast: torch.dtype | None = None
    ) -> None:
        super().__init__(name)
        self.device = torch.device(device)
        self.dtype = dtype
        self.tf32 = tf32
        self.autocast = autocast
        self.module: Any = None

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if not self.prepared:
            raise RuntimeError(f"{self.name}: prepare() was not called")
        placed = [self._place(x) if isinstance(x, torch.Tensor) else x for x in inputs]
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), _tf32(self.tf32 if self.device.type == "cuda" else None), autocast:
            outputs = flatten_outputs(self.module(*placed))
        return [_to_numpy(o) for o in outputs]

    def release(self) -> None:
        self.module = None
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        super().release()

    @property
    def providers(self) -> list[str]:
        if self.device.type == "cuda" and torch.cuda.is_available():
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return [f"torch:cuda:{index} ({torch.cuda.get_device_name(index)})"]
        return [f"torch:{self.device.type}"]


class EagerRunner(_TorchRunner):
    """An ``nn.Module`` run eagerly on ``device`` in ``dtype``, in eval mode and without grad.

    The caller's module is never changed: it is deep-copied only when it must move or change dtype,
    and its train/eval mode is restored after every batch. ``tf32=False`` turns TF32 off on CUDA (the
    reference); ``None`` keeps torch's settings (what a deployment gets). ``autocast=torch.bfloat16``
    runs under ``torch.autocast`` (mixed precision; weights and inputs stay ``dtype``).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        tf32: bool | None = None,
        autocast: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"eager-{torch.device(device).type}", device, dtype, tf32, autocast)
        if not isinstance(model, nn.Module):
            raise TypeError(f"EagerRunner needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def prepare(self) -> None:
        _check_torch_device(self.device)
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        placed = all(t.device == self.device or (self.device.index is None and t.device.type == self.device.type) for t in tensors)
        placed = placed and all(t.dtype == self.dtype for t in tensors if t.is_floating_point())
        if placed:
            self.module = self.model
        else:
            from ..rewrite import copy_module  # copes with EqualLR's hook-computed tensors

            self.module = copy_module(self.model).to(device=self.device, dtype=self.dtype)
        self.prepared = True

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        was_training = self.module.training if self.module is not None else False
        if self.module is not None:
            self.module.eval()
        try:
            return super().infer(inputs)
        finally:
            if self.module is not None:
                self.module.train(was_training)


class TorchScriptRunner(_TorchRunner):
    """A TorchScript file -- or a ScriptModule in memory -- loaded with ``torch.jit.load`` onto ``device``
    (and cast to ``dtype``).

    An in-memory module goes through ``torch.jit.save`` into a buffer and back, so it is checked in the
    form a file would have, and the caller's module is never moved or cast.
    """

    def __init__(
        self,
        path: str | os.PathLike | torch.jit.ScriptModule,
        device: str | torch.device = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
        tf32: bool | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"torchscript-{torch.device(device).type}", device, dtype, tf32)
        self.source = path if isinstance(path, torch.jit.ScriptModule) else None
        self.path = None if self.source is not None else Path(path)

    def prepare(self) -> None:
        _check_torch_device(self.device)
        if self.source is not None:
            buffer = io.BytesIO()
            torch.jit.save(self.source, buffer)
            buffer.seek(0)
            module = torch.jit.load(buffer, map_location=self.device)
        else:
            assert self.path is not None  # a runner has a source module or a path
            with open(self.path, "rb") as f:  # a file object: any file name (native code wants UTF-8 names)
                module = torch.jit.load(f, map_location=self.device)
        self.module = module.to(self.dtype).eval() if self.dtype != torch.float32 else module.eval()
        self.prepared = True


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ONNX Runtime session on ``provider`` ("cpu" or "cuda").

    onnxruntime-gpu silently falls back to CPU when CUDA or cuDNN cannot be loaded, so a "cuda" runner
    counts as prepared only if ``session.get_providers()[0]`` is ``CUDAExecutionProvider``; otherwise
    ``prepare`` raises :class:`RunnerUnavailable` ("CUDA provider unavailable ..."). Inputs are fed by
    the graph's input names in order and cast to the graph's input dtypes (fp16 files get fp16).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        provider: str = "cpu",
        *,
        session_options: Any = None,
        provider_options: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if provider not in ORT_PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(ORT_PROVIDERS)}")
        super().__init__(name or f"ort-{provider}")
        self.path = Path(path)
        self.provider = provider
        self.session_options = session_options
        self.provider_options = dict(provider_options or {})
        self.session: Any = None

    def prepare(self) -> None:
        # The deployment settings of modconv_export.runtimes.ort unless the caller passes its own.
        self.session = create_session(
            self.path, self.provider, options=self.session_options, provider_options=self.provider_options or None
        )
        self.prepared = True

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if self.session is None:
            raise RuntimeError(f"{self.name}: prepare() was not called")
        graph_inputs = self.session.get_inputs()
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        if len(tensors) != len(graph_inputs):
            raise ValueError(f"the ONNX graph takes {len(graph_inputs)} inputs, the model {len(tensors)} tensors")
        feed = {}
        for spec, tensor in zip(graph_inputs, tensors):
            array = tensor.detach().cpu().numpy()
            feed[spec.name] = array.astype(_ORT_DTYPES.get(spec.type, array.dtype), copy=False)
        return [np.asarray(o) for o in self.session.run(None, feed)]

    def release(self) -> None:
        self.session = None
        super().release()

"""Files for the tools people verify and serve with: Polygraphy's JSON data and a Triton model repository.

**Polygraphy** (``polygraphy run --load-inputs/--load-outputs``) reads JSON written by its
``polygraphy.json.save_json``: inputs are a list of feed dicts (one per iteration, name -> array),
outputs a ``RunResults`` (runner name -> list of ``IterationResult``). Its encoding of a numpy array
(``polygraphy/json/serde.py``) is ``{"array": base64(np.save(array, allow_pickle=False)),
"polygraphy_class": "ndarray"}``; an ``IterationResult`` holds each output as a ``LazyArray``
(``{"values": <array>, "polygraphy_class": "LazyArray"}``). The writers below produce exactly that
layout with the standard library and numpy, so the toolkit does not depend on Polygraphy; the tests
load the files with Polygraphy's own ``load_json`` and run ``polygraphy run`` on them.

**Triton Inference Server**: ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/model.onnx`` for the
``onnxruntime_onnx`` platform. The config is protobuf text format for Triton's ``ModelConfig``; writing
it through ``google.protobuf.text_format`` would need the message classes from ``tritonclient``, so it
is emitted as text here (names quoted and escaped) and the tests parse it with ``tritonclient``'s
``model_config_pb2``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .._util.files import Outputs, atomic_output, write_bytes
from ..errors import ExportError

__all__ = [
    "TRITON_KINDS",
    "GraphTensor",
    "graph_io",
    "polygraphy_array",
    "save_polygraphy_inputs",
    "save_polygraphy_outputs",
    "triton_config",
    "write_triton_repository",
]

_TYPE = "polygraphy_class"
_INDENT = 4  # polygraphy.constants.TAB: Polygraphy writes its JSON with four-space indents

#: ONNX element type -> Triton ``DataType`` name.
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


# -- Polygraphy ----------------------------------------------------------------------------------


def polygraphy_array(array: np.ndarray) -> dict:
    """One numpy array as Polygraphy's JSON encoder writes it."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), _TYPE: "ndarray"}


def _write_json(path: str | os.PathLike, data: object) -> Path:
    text = json.dumps(data, indent=_INDENT)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_polygraphy_inputs(path: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Write ``feeds`` (one ``{input name: array}`` per iteration) for ``polygraphy run --load-inputs``."""
    return _write_json(path, [{name: polygraphy_array(a) for name, a in feed.items()} for feed in feeds])


def save_polygraphy_outputs(
    path: str | os.PathLike, runner: str, iterations: Sequence[Mapping[str, np.ndarray]], runtimes: Sequence[float] | None = None
) -> Path:
    """Write one runner's outputs (one ``{output name: array}`` per iteration, ``runtimes`` in seconds)
    as a ``RunResults`` for ``polygraphy run --load-outputs``."""
    runtimes = list(runtimes) if runtimes is not None else [0.0] * len(iterations)
    results = [
        {
            "outputs": {name: {"values": polygraphy_array(a), _TYPE: "LazyArray"} for name, a in outputs.items()},
            "runtime": float(runtime),
            "runner_name": runner,
            _TYPE: "IterationResult",
        }  # fmt: skip
        for outputs, runtime in zip(iterations, runtimes)
    ]
    return _write_json(path, {"lst": [[runner, results]], _TYPE: "RunResults"})


# -- the graph's inputs and outputs --------------------------------------------------------------


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output: name, ONNX element type and shape (``None`` for a symbolic axis)."""

    name: str
    elem_type: int
    shape: tuple[int | None, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)


def graph_io(path: str | os.PathLike) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The ONNX file's inputs (initializers excluded) and outputs, without loading the weights."""
    proto = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in proto.graph.initializer}

    def tensor(value: onnx.ValueInfoProto) -> GraphTensor:
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return GraphTensor(value.name, t.elem_type, dims)

    return [tensor(v) for v in proto.graph.input if v.name not in weights], [tensor(v) for v in proto.graph.output]


# -- Triton ----------------------------------------------------------------------------------------

_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def _quoted(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _tensor_block(tensors: Sequence[GraphTensor]) -> list[str]:
    lines = []
    for i, t in enumerate(tensors):
        if t.elem_type not in TRITON_TYPES:
            raise ExportError(f"Triton has no data type for {t.name!r} ({onnx.TensorProto.DataType.Name(t.elem_type)})")
        if not t.shape or t.shape[0] is not None:
            raise ExportError(f"Triton batching needs a dynamic axis 0 on {t.name!r}; export with a dynamic batch")
        dims = ", ".join(str(d if d is not None else -1) for d in t.shape[1:])
        end = "," if i < len(tensors) - 1 else ""
        lines += [
            "  {",
            f"    name: {_quoted(t.name)}",
            f"    data_type: {TRITON_TYPES[t.elem_type]}",
            f"    dims: [ {dims} ]",
            f"  }}{end}",
        ]
    return lines


#: Triton's instance kinds a config may ask for; without one, Triton places the instances itself (on the GPUs
#: of the machine that serves, else on its CPU), so a repository exported on a CPU machine serves on a GPU one.
TRITON_KINDS = ("KIND_CPU", "KIND_GPU")


def triton_config(
    name: str, inputs: Sequence[GraphTensor], outputs: Sequence[GraphTensor], *, max_batch_size: int, kind: str | None = None
) -> str:
    """``config.pbtxt`` for an ONNX model with a dynamic batch: the batch axis is left to Triton
    (``max_batch_size`` > 0, ``dims`` without it), dynamic batching on, and the instances left to Triton
    unless ``kind`` (one of :data:`TRITON_KINDS`) asks for one instance of that kind."""
    if not _MODEL_NAME.fullmatch(name):
        raise ExportError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-'")
    if max_batch_size < 1:
        raise ExportError(f"Triton max_batch_size must be at least 1, got {max_batch_size}")
    if kind is not None and kind not in TRITON_KINDS:
        raise ExportError(f"Triton instance kind {kind!r}: use {' or '.join(TRITON_KINDS)}, or none (Triton's choice)")
    lines = [f"name: {_quoted(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {int(max_batch_size)}", "input ["]
    lines += _tensor_block(inputs) + ["]", "output ["] + _tensor_block(outputs) + ["]", "dynamic_batching { }"]
    if kind is not None:
        lines += ["instance_group [", "  {", "    count: 1", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    repo: str | os.PathLike,
    name: str,
    onnx_path: str | os.PathLike,
    *,
    max_batch_size: int,
    kind: str | None = None,
    outputs: Outputs | None = None,
) -> Path:
    """Write ``repo/name/config.pbtxt`` (:func:`triton_config`) and ``repo/name/1/model.onnx`` (a copy of ``onnx_path``).

    ``repo`` and its missing parents are created. Returns the model directory. With ``outputs`` the two
    files join that transaction (renamed into place by its commit, and the folders made here removed again
    if it is discarded) instead of being written at once.
    """
    inputs, graph_outputs = graph_io(onnx_path)
    config = triton_config(name, inputs, graph_outputs, max_batch_size=max_batch_size, kind=kind)
    repo = Path(repo).expanduser()
    version = repo / name / "1"
    own = outputs is None
    files: Outputs
    with Outputs() if outputs is None else contextlib.nullcontext(outputs) as files:
        files.make_dirs(version)
        write_bytes(files.stage(version / "model.onnx"), Path(onnx_path).read_bytes())
        write_bytes(files.stage(repo / name / "config.pbtxt"), config.encode("utf-8"))
        if own:
            files.commit()
    return repo / name


# -- from a parity report ---------------------------------------------------------------------------


def save_parity_data(
    report, onnx_path: str | os.PathLike, inputs_path: str | os.PathLike | None, outputs_path: str | os.PathLike | None
) -> None:
    """Write the inputs a :class:`~modconv_export.verify.ParityReport` fed every backend (one iteration
    per batch size, named and typed like the ONNX file's inputs) and its reference outputs."""
    data = report.data
    if data is None:
        raise ExportError("this parity report kept no inputs and outputs")
    graph_inputs, graph_outputs = graph_io(onnx_path)
    batches = list(data.inputs)
    if inputs_path is not None:
        feeds = []
        for batch in batches:
            arrays = data.inputs[batch]
            if len(arrays) != len(graph_inputs):
                raise ExportError(f"the ONNX file takes {len(graph_inputs)} inputs, the model {len(arrays)} tensors")
            feeds.append({t.name: np.asarray(a).astype(t.numpy_dtype, copy=False) for t, a in zip(graph_inputs, arrays)})
        save_polygraphy_inputs(inputs_path, feeds)
    if outputs_path is not None:
        names = [t.name for t in graph_outputs]
        iterations = [dict(zip(names, data.expected[batch])) for batch in batches]
        runtimes = [data.times_ms.get(batch, 0.0) / 1e3 for batch in batches]
        save_polygraphy_outputs(outputs_path, data.reference, iterations, runtimes)

"""One ``.onnx`` file from an ``onnx_ir`` model, written a tensor at a time.

``ModelProto.SerializeToString`` of a 1024 px generator (136 MB of weights) peaks at 4.6 times the
file's size, on top of the proto's own copy of every weight: more than the whole stock export needs. A
protobuf message parses as the merge of concatenated serialisations of its parts -- repeated fields
(``graph.initializer``) concatenated, embedded messages (``graph``) merged -- as the protobuf encoding
specifies for every conforming parser. So the file is written as the model without its large
initializers, followed by one ``ModelProto`` per initializer holding just that tensor: each part
serialised by protobuf itself, none larger than one weight. Every reader (onnx, ONNX Runtime,
OpenVINO, Netron) parses it into the same model.

:func:`weights_apart` is the same separation for the checks (:func:`.checks.check_graph`), which read
a large initializer's type and shape but never its values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import onnx
import onnx_ir as ir

from .._util.files import write_bytes
from ..errors import ExportError

__all__ = ["PROTOBUF_LIMIT", "onnx_chunks", "weights_apart", "write_onnx"]

#: Initializers larger than this are kept apart (shape inference reads the *values* of small ones only:
#: shapes, axes, pads).
LARGE_BYTES = 4096
#: What one protobuf message can hold: a larger single-file model cannot be read back by any parser.
PROTOBUF_LIMIT = 2**31 - 1


def _tensor(value: ir.Value) -> ir.TensorProtocol:
    """A large initializer's tensor (:func:`weights_apart` keeps only those that have one)."""
    assert value.const_value is not None
    return value.const_value


@contextlib.contextmanager
def weights_apart(model: ir.Model, *, as_inputs: bool = False) -> Iterator[list[ir.Value]]:
    """Within the block, ``model``'s large initializers are out of its graph (``as_inputs``: typed graph
    inputs instead); yields them. The graph is as it was afterwards, initializer order included."""
    graph = model.graph
    order = list(graph.initializers.values())
    large = [v for v in order if v.const_value is not None and v.const_value.nbytes > LARGE_BYTES]
    for value in large:
        graph.initializers.pop(str(value.name))  # an initializer is registered by its name
        if as_inputs:
            graph.inputs.append(value)
    try:
        yield large
    finally:
        if as_inputs:
            for value in large:
                graph.inputs.remove(value)
        graph.initializers.clear()
        for value in order:
            graph.initializers.add(value)


def onnx_chunks(model: ir.Model, value_info: Iterable[onnx.ValueInfoProto] | None = None) -> Iterator[bytes]:
    """``model`` serialised as one ``.onnx`` file (``value_info``, if given, replaces the graph's), in parts
    no larger than one weight; a model past protobuf's 2 GB is an :class:`ExportError`, before any part."""
    with weights_apart(model) as large:
        skeleton = ir.serde.serialize_model(model)
    if value_info is not None:
        del skeleton.graph.value_info[:]
        skeleton.graph.value_info.extend(value_info)
    total = skeleton.ByteSize() + sum(_tensor(v).nbytes for v in large)
    if total > PROTOBUF_LIMIT:
        raise ExportError(f"the model needs {total / 2**30:.1f} GB, more than an ONNX file without external data can hold (2 GB)")
    return _parts(skeleton, large)


def _parts(skeleton: onnx.ModelProto, large: list[ir.Value]) -> Iterator[bytes]:
    yield skeleton.SerializeToString()
    del skeleton
    for value in large:
        part = onnx.ModelProto()
        tensor = _tensor(value)
        tensor.name = value.name
        ir.serde.serialize_tensor_into(part.graph.initializer.add(), from_=tensor)
        yield part.SerializeToString()


def write_onnx(model: ir.Model, path: str | os.PathLike, value_info: Iterable[onnx.ValueInfoProto] | None = None) -> None:
    """Write ``model`` to ``path`` as one ``.onnx`` file, a tensor at a time (see the module docstring),
    through :func:`~modconv_export._util.files.write_bytes`: flushed to the disk, a full disk an ``OSError``."""
    write_bytes(path, onnx_chunks(model, value_info))

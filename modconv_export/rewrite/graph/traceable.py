"""A rewritten graph as ``torch.jit.trace`` needs it: sizes read with ``Tensor.size``, ops by their Python names.

``torch.jit.trace`` follows sizes only through Python-level calls: ``x.size(0) * 4`` passed to
``x.reshape`` stays symbolic, but the same size passed to ``torch.ops.aten.reshape.default`` is frozen
into the trace. The captured graph calls ATen overloads directly, so before tracing (for a TorchScript
file, or for the legacy TorchScript-based ONNX exporter) every ``sym_size`` becomes a ``size`` call and
every op that receives a size becomes its Python binding (``torch.reshape``, ``Tensor.view``, ...).
The toolkit's own blur op is traced as the
plain convolution it is, so a saved file needs nothing from this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ...errors import RewriteError
from ...layers.graph_form import GraphExportForm
from .facts import SIZE_ARITHMETIC
from .generalize import mul_add

aten = torch.ops.aten

__all__ = ["traceable"]

_NAMESPACES = (torch, torch.Tensor, *(getattr(torch._C, name) for name in ("_nn", "_special", "_linalg", "_fft")))


def _depthwise(input: torch.Tensor, kernel: torch.Tensor, padding: int) -> torch.Tensor:
    return F.conv2d(input, kernel, padding=padding, groups=kernel.shape[0])


def _caller(function: type[torch.autograd.Function]) -> Callable:
    """``function.apply`` as an FX call target: FX names a target by its module and name, which a
    Function's bound ``apply`` does not have, so the generated code gets this closure as a global."""

    def apply(*args: Any) -> Any:
        return function.apply(*args)

    apply.__name__ = f"apply_{function.__name__}"
    return apply


def _cast(input: torch.Tensor, *, dtype: torch.dtype | None = None, **_: Any) -> torch.Tensor:
    """``aten._to_copy`` as the public ``Tensor.to``, which the legacy ONNX exporter converts."""
    return input.to(dtype) if dtype is not None else input.clone()


def _copy(input: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """``aten.copy`` (what functionalisation leaves of an in-place ``copy_``): ``src`` in ``input``'s shape
    and dtype, as ops the legacy ONNX exporter converts."""
    return src.to(input.dtype).expand_as(input).clone()


def _slice_scatter(input: torch.Tensor, src: torch.Tensor, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> torch.Tensor:
    """``aten.slice_scatter`` (functionalisation's form of ``x[..., a:b] = y``) written back as that assignment."""
    out = input.clone()
    out[(slice(None),) * (dim % input.dim()) + (slice(start, end, step),)] = src
    return out


def _select_scatter(input: torch.Tensor, src: torch.Tensor, dim: int, index: int) -> torch.Tensor:
    """``aten.select_scatter`` (functionalisation's form of ``x[..., i] = y``) written back as that assignment."""
    out = input.clone()
    out[(slice(None),) * (dim % input.dim()) + (index,)] = src
    return out


#: ATen ops the legacy exporter cannot convert, as the Python it can.
_AS_PYTHON = {
    aten._to_copy.default: _cast,
    aten.copy.default: _copy,
    aten.slice_scatter.default: _slice_scatter,
    aten.select_scatter.default: _select_scatter,
}


def _python_binding(target: Any) -> Callable | None:
    """The Python function for an ATen overload (``aten.view.default`` -> ``torch.Tensor.view``)."""
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None)
    if name is None or getattr(target, "namespace", None) != "aten":
        return None
    for namespace in _NAMESPACES:
        function = getattr(namespace, name, None)
        if callable(function):
            return function
    return None


def _is_size(node: fx.Node) -> bool:
    """A node computing an int (a size or arithmetic on sizes) rather than a tensor."""
    if node.op == "call_method":
        return node.target == "size"
    if node.target in SIZE_ARITHMETIC or node.target in (aten.sym_size.int, mul_add):
        return True
    return isinstance(node.meta.get("val"), (torch.SymInt, int))


def _reads_sizes(node: fx.Node) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return any(_is_size(n) for n in found)


def traceable(form: GraphExportForm, *, keep_lowerings: bool = False) -> GraphExportForm:
    """A copy of ``form`` whose graph traces with a symbolic batch under ``torch.jit.trace``.

    A Function captured as its lowering's custom op becomes a call of the Function again when
    ``keep_lowerings`` (the legacy ONNX exporter then uses its ``symbolic``); otherwise it is an error,
    since a TorchScript file cannot hold it.
    """
    import copy

    from ...symbolic.install import function_of_op

    gm = copy.deepcopy(form.graph_module)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", node.args)
            size.meta.update(node.meta)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
        elif node.target in _AS_PYTHON:
            node.target = _AS_PYTHON[node.target]
        elif getattr(node.target, "overloadpacket", None) is torch.ops.modconv_export.depthwise_conv2d:
            node.target = _depthwise
        elif getattr(node.target, "namespace", None) == "modconv_export":
            function = function_of_op(node.target)
            if function is None or not keep_lowerings:
                name = function.__qualname__ if function else str(node.target)
                raise RewriteError(f"the graph calls {name} through its ONNX lowering, which a TorchScript file cannot hold")
            node.target = _caller(function)
    for node in list(graph.nodes):
        if node.op == "call_function" and getattr(node.target, "namespace", None) == "aten" and _reads_sizes(node):
            binding = _python_binding(node.target)
            if binding is not None:
                node.target = binding
    gm.recompile()
    return GraphExportForm(gm, form.out_spec, form.lowerings)

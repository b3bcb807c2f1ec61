"""The batch-grouped convolution -> ``conv(x * s, W) * d``, found in the graph, proven on numbers.

Every StyleGAN2-family modulated convolution, whatever its code calls things, reaches the graph as a
convolution (1-, 2- or 3-D, plain or transposed) whose ``groups`` is the batch size, whose input is the
batch folded into channels (``[1, B*Cin, H, W]``) and whose weight is ``layout(K * s * d)``: a kernel ``K`` from parameters
only, times per-sample factors along the input channels (the style ``s``) and the output channels (the
demodulation ``d``). ONNX ``Conv.group`` is static and runtimes want constant weights, so that conv is
replaced by the exact equivalent with one constant weight for every sample::

    conv(x * s, K) * d + b    (transposed: conv_transpose(x * s, K^T) * d + b)

(``b`` only where the grouped conv had a bias: its ``B*Cout`` values become one row per sample) keeping
the model's own nodes computing ``s`` and ``d``. Finding a candidate needs only the pattern (groups =
batch, a weight that is a product, see :mod:`.products`); accepting it needs numbers, on its weight chain
alone (:mod:`.conv_proof`: ``K``, the same for every sample; each factor's role from a random point; the
weight at the probe's real factors equal to ``K`` scaled by them, every element -- convolution being
linear, that *is* the equality of the two convolutions for every input, no feature map needed); and the
replacement, run on ``meta`` tensors of the probe's shapes, must give the conv's output shape and dtype.
A candidate failing any step stays as it is and is reported with its module path and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from ..._util import exception_line
from .batch import batch_affine
from .conv_proof import prove
from .evaluate import evaluate
from .facts import GraphFacts, module_path
from .products import Factor, product_factors

aten = torch.ops.aten

__all__ = ["CONV_OPS", "ConvCall", "GroupedConv", "conv_call", "find_grouped_convs", "rewrite_grouped_conv"]

#: Every ATen convolution a captured graph can hold, by spatial rank: ``(plain, plain with string padding,
#: transposed)``. A StyleGAN2 generator uses 2-D; 1-D modulated convs exist in audio and sequence models.
_CONV_BY_RANK = {
    1: (aten.conv1d.default, aten.conv1d.padding, aten.conv_transpose1d.default),
    2: (aten.conv2d.default, aten.conv2d.padding, aten.conv_transpose2d.input),
    3: (aten.conv3d.default, aten.conv3d.padding, aten.conv_transpose3d.input),
}
CONV_OPS = frozenset({aten.convolution.default, *(op for ops in _CONV_BY_RANK.values() for op in ops)})
_TRANSPOSED = frozenset(ops[2] for ops in _CONV_BY_RANK.values())


@dataclass(frozen=True)
class ConvCall:
    """A convolution node (any spatial rank) with its arguments by name."""

    node: fx.Node
    transposed: bool
    input: Any
    weight: Any
    bias: Any
    stride: Any
    padding: Any
    dilation: Any
    output_padding: Any
    groups: Any


def conv_call(node: fx.Node) -> ConvCall | None:
    if node.op != "call_function" or node.target not in CONV_OPS:
        return None
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normalized is None:
        return None
    kw = normalized.kwargs
    transposed = node.target in _TRANSPOSED or bool(kw.get("transposed", False))
    return ConvCall(
        node=node,
        transposed=transposed,
        input=kw["input"],
        weight=kw["weight"],
        bias=kw.get("bias"),
        stride=kw.get("stride", 1),
        padding=kw.get("padding", 0),
        dilation=kw.get("dilation", 1),
        output_padding=kw.get("output_padding", 0),
        groups=kw.get("groups", 1),
    )


@dataclass(frozen=True)
class GroupedConv:
    """A candidate: a conv with ``groups = per_sample * batch`` whose weight is a product with these factors."""

    call: ConvCall
    path: str
    factors: tuple[Factor, ...]
    per_sample: int  # groups of each sample's own convolution (1 for a modulated conv)

    def needed(self) -> set[fx.Node]:
        """Nodes whose probe values the proof reads: the per-sample factors and a bias (no feature map)."""
        nodes = {f.node for f in self.factors}
        if isinstance(self.call.bias, fx.Node):
            nodes.add(self.call.bias)
        return nodes

    def shaped(self) -> set[fx.Node]:
        """Nodes whose probe *shapes* the proof reads: the conv's input and output."""
        return {self.call.input, self.call.node}


def find_grouped_convs(graph: fx.Graph, facts: GraphFacts, symbol: Any) -> tuple[list[GroupedConv], list[tuple[str, str, bool]]]:
    """Candidates, and ``(module path, reason, blocking)`` for every conv that looks per-sample but cannot
    be rewritten; ``blocking`` when its groups depend on the batch (no export can keep that conv).

    A candidate's groups are a multiple of the batch: one convolution per sample (``groups = batch``, a
    modulated conv) or one grouped/depthwise convolution per sample on the batch folded into channels
    (``groups = C * batch``, e.g. a blur applied after the fold).
    """
    found: list[GroupedConv] = []
    misses: list[tuple[str, str, bool]] = []
    for node in graph.nodes:
        call = conv_call(node)
        if call is None:
            continue
        path = module_path(node)
        affine = batch_affine(call.groups, symbol)
        if affine is None:
            if facts.is_value_dependent(call.weight):
                misses.append((path, "its weight depends on the inputs but its groups are not the batch size", False))
            continue
        a, c = affine
        if a < 1 or c != 0:
            misses.append((path, f"its groups are {a}*batch{c:+d}: not a whole number of groups per sample", True))
            continue
        factors = product_factors(call.weight, facts)
        if isinstance(factors, str):
            misses.append((path, f"its weight is not a constant kernel times per-sample factors ({factors})", True))
            continue
        found.append(GroupedConv(call, path, tuple(factors), a))
    return found, misses


class _Builder:
    """Adds nodes before ``anchor``, copying its module metadata (for reports and ONNX names)."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node) -> None:
        self.graph, self.anchor, self.added = graph, anchor, []

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args, kwargs)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
            if key in self.anchor.meta:
                node.meta[key] = self.anchor.meta[key]
        self.added.append(node)
        return node

    def get_attr(self, name: str) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.get_attr(name)
        self.added.append(node)
        return node

    def undo(self) -> None:
        for node in reversed(self.added):
            self.graph.erase_node(node)
        self.added = []


def _scale(build: _Builder, factors: list[tuple[Factor, torch.Tensor, int]], dtype: torch.dtype) -> fx.Node | None:
    """The product of ``factors`` (each reshaped to ``[B, width]``) as a node in ``dtype``, or ``None``."""
    result = None
    for factor, _, width in factors:
        node = build(aten.reshape.default, factor.node, [-1, width])
        if factor.sign != 1:
            node = build(aten.pow.Tensor_Scalar, node, factor.sign)
        result = node if result is None else build(aten.mul.Tensor, result, node)
    if result is not None and any(value.dtype != dtype for _, value, _ in factors):
        result = build(aten._to_copy.default, result, dtype=dtype)
    return result


def _shape_of(node: Any, values: dict[fx.Node, Any], shapes: dict[fx.Node, tuple]) -> tuple | None:
    if shapes.get(node) is not None:
        return tuple(shapes[node])
    value = values.get(node)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _dtype(node: Any, default: torch.dtype) -> torch.dtype:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else default


def _meta_run(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Any]) -> torch.Tensor:
    """``node`` evaluated on ``meta`` copies of ``known``'s tensors: its shape and dtype, no arithmetic."""
    meta = {n: v.to("meta") if isinstance(v, torch.Tensor) else v for n, v in known.items()}
    return evaluate(gm, node, meta)


def _buffer_name(gm: fx.GraphModule, path: str) -> str:
    stem = re.sub(r"\W", "_", path) or "root"
    name, i = f"_modconv_kernel_{stem}", 1
    while hasattr(gm, name):
        name, i = f"_modconv_kernel_{stem}_{i}", i + 1
    return name


def rewrite_grouped_conv(
    gm: fx.GraphModule, site: GroupedConv, values: dict[fx.Node, Any], batch: int, shapes: dict[fx.Node, tuple] | None = None
) -> str | None:
    """Replace ``site`` in ``gm`` by its constant-weight form; the reason when it cannot be proven exact.

    ``values`` are the probe's values (at batch size ``batch``) of at least ``site.needed()`` and of every
    size node; ``shapes`` the probe's shapes of ``site.shaped()`` (``values`` is read for them where not
    given). No feature map is computed: see the module docstring. On failure the graph is left as it was.
    """
    shapes = tuple(_shape_of(n, values, shapes or {}) for n in (site.call.input, site.call.node))
    if None in shapes:
        return "its input or output shape at the probe's batch size is not known"
    proven = prove(gm, site, values, batch, shapes)
    if isinstance(proven, str):
        return proven
    call, kernel, roles, c_in, c_out = site.call, proven.kernel, proven.roles, proven.c_in, proven.c_out
    x_meta = torch.empty(proven.x_shape, dtype=_dtype(call.input, kernel.dtype), device="meta")
    out_dtype = _dtype(call.node, kernel.dtype)
    known = {n: v for n, v in values.items() if not isinstance(v, torch.Tensor)}
    factors = {f.node: values[f.node] for f in site.factors}
    bias = {call.bias: values[call.bias]} if isinstance(call.bias, fx.Node) else {}
    graph = gm.graph
    build = _Builder(graph, call.node)
    name = _buffer_name(gm, site.path)
    gm.register_buffer(name, kernel)
    spatial = [1] * (kernel.dim() - 2)
    plain, plain_padding, transposed = _CONV_BY_RANK[kernel.dim() - 2]
    groups = site.per_sample
    try:
        folded = build(aten.reshape.default, call.input, [-1, c_in, *proven.x_shape[2:]])
        style = _scale(build, roles["in"], x_meta.dtype)
        if style is not None:
            folded = build(aten.mul.Tensor, folded, build(aten.reshape.default, style, [-1, c_in, *spatial]))
        const = build.get_attr(name)
        if call.transposed:
            conv = build(transposed, folded, const, None, call.stride, call.padding, call.output_padding, groups, call.dilation)
        else:
            op = plain_padding if isinstance(call.padding, str) else plain
            conv = build(op, folded, const, None, call.stride, call.padding, call.dilation, groups)
        demod = _scale(build, roles["out"] + roles["scalar"], out_dtype)
        if demod is not None:
            width = c_out if roles["out"] else 1
            conv = build(aten.mul.Tensor, conv, build(aten.reshape.default, demod, [-1, width, *spatial]))
        if call.bias is not None:  # B*Cout values, sample-major like the output channels: one row per sample
            conv = build(aten.add.Tensor, conv, build(aten.reshape.default, call.bias, [-1, c_out, *spatial]))
        result = build(aten.reshape.default, conv, [1, -1, *proven.out_shape[2:]])
        form = _meta_run(gm, result, {**known, call.input: x_meta, const: kernel, **factors, **bias})
    except Exception as exc:  # a shape or dtype the construction did not foresee: not this pattern
        form, reason = None, f"its constant-weight form fails on the probe's shapes ({exception_line(exc, 160)})"
    if form is not None and (tuple(form.shape) != tuple(proven.out_shape) or form.dtype != out_dtype):
        form, reason = None, f"its constant-weight form gives {tuple(form.shape)} {form.dtype}, not {tuple(proven.out_shape)} {out_dtype}"
    if form is None:
        build.undo()
        delattr(gm, name)
        return reason
    call.node.replace_all_uses_with(result)
    graph.erase_node(call.node)
    return None

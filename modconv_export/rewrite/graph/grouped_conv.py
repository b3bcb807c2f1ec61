"""The batch-grouped convolution -> ``conv(x * s, W) * d``, found in the graph, proven on numbers.

Every StyleGAN2-family modulated convolution, whatever its code calls things, reaches the graph as a
convolution (1-, 2- or 3-D, plain or transposed) whose ``groups`` is the batch size, whose input is the
batch folded into channels (``[1, B*Cin, H, W]``) and whose weight is ``layout(K * s * d)``: a kernel ``K`` from parameters
only, times per-sample factors along the input channels (the style ``s``) and the output channels (the
demodulation ``d``). ONNX ``Conv.group`` is static and runtimes want constant weights, so that conv is
replaced by the exact equivalent with one constant weight for every sample::

    conv(x * s, K) * d + b    (transposed: conv_transpose(x * s, K^T) * d + b)

(``b`` only where the grouped conv had a bias: its ``B*Cout`` values become one row per sample) keeping the model's own nodes computing ``s`` and ``d``. Finding a candidate needs only the pattern
(groups = batch, a weight that is a product, see :mod:`.products`); accepting it needs numbers:

1. the weight evaluated with every per-sample factor set to one gives ``K`` in the conv's own layout
   (reshapes, transposes and flips of whatever codebase included) -- and the same ``K`` for every group;
2. each factor set to random values must scale ``K`` exactly along its input or output channels (or as a
   per-sample scalar), which says whether it is a style or a demodulation factor;
3. the replacement, evaluated on the probe run's real values, must reproduce the conv's output.
A candidate failing any step stays as it is and is reported with its module path and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from ..._util import exception_line, relative_l2
from .batch import batch_affine
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
        """Nodes whose probe values the proof reads."""
        nodes = {self.call.node, self.call.weight, self.call.input}
        if isinstance(self.call.bias, fx.Node):
            nodes.add(self.call.bias)
        return nodes | {f.node for f in self.factors}


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


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


def _channel_index(kernel: torch.Tensor, groups: int, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each ``[row, col]`` of a per-sample conv weight with ``groups`` groups: its input and output channel."""
    rows, cols = kernel.shape[:2]
    r = torch.arange(rows).unsqueeze(1).expand(rows, cols)
    c = torch.arange(cols).unsqueeze(0).expand(rows, cols)
    if transposed:  # weight [C_in, C_out / groups, *k]
        return r, (r // (rows // groups)) * cols + c
    return (r // (rows // groups)) * cols + c, r  # weight [C_out, C_in / groups, *k]


def _role(
    weights: torch.Tensor, kernel: torch.Tensor, factor: torch.Tensor, index: dict[str, torch.Tensor], widths: dict[str, int]
) -> str | None:
    """Whether ``weights`` (``[B, *kernel.shape]``) equal ``kernel`` scaled by ``factor`` per input channel,
    per output channel or as a whole; ``None`` when none of these holds.

    ``factor`` holds one row per sample (``[B, n]``) or one row for the whole batch (``[1, n]``: StyleGAN3
    normalises its styles over the batch, a scalar every sample shares).
    """
    rows, per_row = factor.shape
    tol = _tolerance(kernel.dtype)
    spatial = [1] * (kernel.dim() - 2)
    for role in ("in", "out", "scalar"):
        if per_row != widths[role]:
            continue
        if role == "scalar":
            scale = factor.reshape(rows, 1, 1, *spatial)
        else:
            scale = factor[:, index[role]].reshape(rows, *kernel.shape[:2], *spatial)
        if relative_l2(weights, (kernel.unsqueeze(0) * scale).expand_as(weights)) <= tol:
            return role
    return None


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


def _buffer_name(gm: fx.GraphModule, path: str) -> str:
    stem = re.sub(r"\W", "_", path) or "root"
    name, i = f"_modconv_kernel_{stem}", 1
    while hasattr(gm, name):
        name, i = f"_modconv_kernel_{stem}_{i}", i + 1
    return name


def rewrite_grouped_conv(gm: fx.GraphModule, site: GroupedConv, values: dict[fx.Node, Any], batch: int) -> str | None:
    """Replace ``site`` in ``gm`` by its constant-weight form; the reason when it cannot be proven exact.

    ``values`` are the probe run's values (at batch size ``batch``) of at least ``site.needed()`` and of
    every size node; on failure the graph is left as it was.
    """
    call = site.call
    x, weight, out = values[call.input], values[call.weight], values[call.node]
    rank = weight.dim() - 2  # spatial dimensions
    if rank not in _CONV_BY_RANK or x.dim() != rank + 2 or x.shape[0] != 1 or weight.shape[0] % batch:
        return f"its input {tuple(x.shape)} is not the batch folded into channels"
    rows = weight.shape[0] // batch  # each sample's own weight
    groups = site.per_sample
    c_in = rows if call.transposed else weight.shape[1] * groups
    c_out = weight.shape[1] * groups if call.transposed else rows
    if x.shape[1] != batch * c_in or rows % groups:
        return f"its input has {x.shape[1]} channels, not batch x {c_in}"

    # Sizes, the input and the factors only: the weight chain itself must be computed, not looked up.
    known = {n: v for n, v in values.items() if not isinstance(v, torch.Tensor)}
    known[call.input] = x
    ones = {f.node: torch.ones_like(values[f.node]) for f in site.factors}
    unit = evaluate(gm, call.weight, {**known, **ones})
    kernel = unit[:rows].clone()
    if relative_l2(unit.reshape(batch, *kernel.shape), kernel.expand(batch, *kernel.shape)) > _tolerance(kernel.dtype):
        return "its kernel differs between samples even with the per-sample factors set to one"

    index = dict(zip(("in", "out"), _channel_index(kernel, groups, call.transposed)))
    widths = {"in": c_in, "out": c_out, "scalar": 1}
    roles: dict[str, list[tuple[Factor, torch.Tensor, int]]] = {"in": [], "out": [], "scalar": []}
    generator = torch.Generator().manual_seed(0)
    for factor in site.factors:
        value = values[factor.node]
        trial = (torch.rand(value.shape, generator=generator, dtype=torch.float64) + 0.5).to(value.dtype)
        scaled = evaluate(gm, call.weight, {**known, **ones, factor.node: trial}).reshape(batch, *kernel.shape)
        role = None
        for rows in (batch, 1):  # one row of values per sample, or one for the whole batch
            if role is None and trial.numel() % rows == 0 and trial.numel() // rows in widths.values():
                role = _role(scaled, kernel, (trial**factor.sign).reshape(rows, -1), index, widths)
        if role is None:
            return f"its factor {factor.node.name} {tuple(value.shape)} does not scale input or output channels"
        roles[role].append((factor, value, widths[role]))

    graph = gm.graph
    build = _Builder(graph, call.node)
    name = _buffer_name(gm, site.path)
    gm.register_buffer(name, kernel)
    spatial = [1] * rank
    plain, plain_padding, transposed = _CONV_BY_RANK[rank]
    try:
        folded = build(aten.reshape.default, call.input, [-1, c_in, *x.shape[2:]])
        style = _scale(build, roles["in"], x.dtype)
        if style is not None:
            folded = build(aten.mul.Tensor, folded, build(aten.reshape.default, style, [-1, c_in, *spatial]))
        const = build.get_attr(name)
        if call.transposed:
            conv = build(transposed, folded, const, None, call.stride, call.padding, call.output_padding, groups, call.dilation)
        else:
            conv = build(
                plain_padding if isinstance(call.padding, str) else plain,
                folded,
                const,
                None,
                call.stride,
                call.padding,
                call.dilation,
                groups,
            )
        demod = _scale(build, roles["out"] + roles["scalar"], out.dtype)
        if demod is not None:
            width = c_out if roles["out"] else 1
            conv = build(aten.mul.Tensor, conv, build(aten.reshape.default, demod, [-1, width, *spatial]))
        if call.bias is not None:  # B*Cout values, sample-major like the output channels: one row per sample
            conv = build(aten.add.Tensor, conv, build(aten.reshape.default, call.bias, [-1, c_out, *spatial]))
        result = build(aten.reshape.default, conv, [1, -1, *out.shape[2:]])
        bias = {call.bias: values[call.bias]} if call.bias is not None else {}
        error = relative_l2(evaluate(gm, result, {**known, **bias, **{f.node: values[f.node] for f in site.factors}}), out)
    except Exception as exc:  # a shape or dtype the construction did not foresee: not this pattern
        build.undo()
        delattr(gm, name)
        return f"its constant-weight form fails on the probe ({exception_line(exc, 160)})"
    if not error <= _tolerance(out.dtype):
        build.undo()
        delattr(gm, name)
        return f"its constant-weight form differs on the probe (relative L2 {error:.2e})"
    call.node.replace_all_uses_with(result)
    graph.erase_node(call.node)
    return None

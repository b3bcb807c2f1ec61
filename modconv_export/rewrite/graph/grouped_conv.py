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

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from ..._util import exception_line
from .batch import batch_affine
from .contract import GraphContext, GraphRule, NoMatch, Probe
from .conv_proof import Proven, prove
from .edit import GraphEdit
from .evaluate import evaluate
from .facts import GraphFacts, module_path
from .products import Factor, product_factors

aten = torch.ops.aten

__all__ = [
    "CONV_OPS",
    "GROUPED_CONV_RULE",
    "ConvCall",
    "GroupedConv",
    "conv_call",
    "find_grouped_convs",
    "prove_grouped_conv",
    "replace_grouped_conv",
]

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


def find_grouped_convs(graph: fx.Graph, facts: GraphFacts, symbol: Any) -> tuple[list[GroupedConv], list[NoMatch]]:
    """Candidates, and a :class:`NoMatch` for every conv that looks per-sample but cannot be rewritten --
    ``blocking`` when its groups depend on the batch (no export can keep that conv).

    A candidate's groups are a multiple of the batch: one convolution per sample (``groups = batch``, a
    modulated conv) or one grouped/depthwise convolution per sample on the batch folded into channels
    (``groups = C * batch``, e.g. a blur applied after the fold).
    """
    found: list[GroupedConv] = []
    misses: list[NoMatch] = []
    for node in graph.nodes:
        call = conv_call(node)
        if call is None:
            continue
        path = module_path(node)
        affine = batch_affine(call.groups, symbol)
        if affine is None:
            if facts.is_value_dependent(call.weight):
                misses.append(NoMatch(path, "its weight depends on the inputs but its groups are not the batch size"))
            continue
        a, c = affine
        if a < 1 or c != 0:
            misses.append(NoMatch(path, f"its groups are {a}*batch{c:+d}: not a whole number of groups per sample", blocking=True))
            continue
        factors = product_factors(call.weight, facts)
        if isinstance(factors, NoMatch):
            reason = f"its weight is not a constant kernel times per-sample factors ({factors.reason})"
            misses.append(NoMatch(path, reason, blocking=True))
            continue
        found.append(GroupedConv(call, path, tuple(factors), a))
    return found, misses


def _scale(build: GraphEdit, factors: list[tuple[Factor, torch.Tensor, int]], dtype: torch.dtype) -> fx.Node | None:
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


@dataclass(frozen=True)
class _ConvProof:
    """What :func:`prove_grouped_conv` hands :func:`replace_grouped_conv`: the proof and the probe values
    the construction check runs on (sizes, factors, a bias)."""

    proven: Proven
    known: dict[fx.Node, Any]


def prove_grouped_conv(context: GraphContext, site: GroupedConv, probe: Probe) -> _ConvProof | NoMatch:
    """The weight-chain proof of ``site`` (:mod:`.conv_proof`) at the probe; no feature map is computed.

    ``probe`` holds the values of at least ``site.needed()`` and of every size node, and the shapes of
    ``site.shaped()`` (read from the values where not given).
    """
    values = probe.values
    shapes = tuple(_shape_of(n, values, probe.shapes) for n in (site.call.input, site.call.node))
    if None in shapes:
        return NoMatch(site.path, "its input or output shape at the probe's batch size is not known", blocking=True)
    proven = prove(context.gm, site, values, probe.batch, shapes)
    if isinstance(proven, NoMatch):
        return proven
    call = site.call
    known = {n: v for n, v in values.items() if not isinstance(v, torch.Tensor)}
    known.update({f.node: values[f.node] for f in site.factors})
    if isinstance(call.bias, fx.Node):
        known[call.bias] = values[call.bias]
    return _ConvProof(proven, known)


def _constant_weight_form(
    build: GraphEdit, site: GroupedConv, proven: Proven, x_dtype: torch.dtype, out_dtype: torch.dtype
) -> tuple[fx.Node, fx.Node]:
    """``conv(x * s, K) * d + b`` folded back to the grouped conv's layout, built before the conv: its
    result node and the node reading ``K``."""
    call, kernel, roles, c_in, c_out = site.call, proven.kernel, proven.roles, proven.c_in, proven.c_out
    spatial = [1] * (kernel.dim() - 2)
    plain, plain_padding, transposed = _CONV_BY_RANK[kernel.dim() - 2]
    groups = site.per_sample
    folded = build(aten.reshape.default, call.input, [-1, c_in, *proven.x_shape[2:]])
    style = _scale(build, roles["in"], x_dtype)
    if style is not None:
        folded = build(aten.mul.Tensor, folded, build(aten.reshape.default, style, [-1, c_in, *spatial]))
    const = build.constant("kernel", site.path, kernel)
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
    return build(aten.reshape.default, conv, [1, -1, *proven.out_shape[2:]]), const


def replace_grouped_conv(context: GraphContext, site: GroupedConv, proof: _ConvProof) -> NoMatch | None:
    """Replace ``site`` by its constant-weight form, which, run on ``meta`` tensors of the probe's shapes,
    must give the conv's output shape and dtype; on failure the graph is left as it was."""
    gm, call, proven = context.gm, site.call, proof.proven
    kernel = proven.kernel
    x_meta = torch.empty(proven.x_shape, dtype=_dtype(call.input, kernel.dtype), device="meta")
    out_dtype = _dtype(call.node, kernel.dtype)
    build = GraphEdit(gm, call.node)
    try:
        result, const = _constant_weight_form(build, site, proven, x_meta.dtype, out_dtype)
        form = _meta_run(gm, result, {**proof.known, call.input: x_meta, const: kernel})
    except Exception as exc:  # a shape or dtype the construction did not foresee: not this pattern
        build.undo()
        return NoMatch(site.path, f"its constant-weight form fails on the probe's shapes ({exception_line(exc, 160)})", blocking=True)
    if tuple(form.shape) != tuple(proven.out_shape) or form.dtype != out_dtype:
        build.undo()
        reason = f"its constant-weight form gives {tuple(form.shape)} {form.dtype}, not {tuple(proven.out_shape)} {out_dtype}"
        return NoMatch(site.path, reason, blocking=True)
    build.replace(result)
    return None


#: The graph rule: batch-grouped convolutions to constant-weight ones.
GROUPED_CONV_RULE = GraphRule(
    name="graph:batch_grouped_conv",
    find=lambda context: find_grouped_convs(context.gm.graph, context.facts, context.symbol),
    prove=prove_grouped_conv,
    replace=replace_grouped_conv,
    progress="rewrite: proving batch-grouped convolutions",
    refusal="a convolution grouped by the batch cannot be made batch-independent",
)

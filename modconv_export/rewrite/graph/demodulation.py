"""Demodulation without the per-sample weight: ``sum((K * s)^2)`` -> ``s^2 @ sum(K^2)``.

StyleGAN2 code computes the demodulation from the modulated weight, ``rsqrt(sum((K * s)^2) + eps)``,
which puts a ``[B, Cout, Cin, k, k]`` tensor in the graph for every layer -- and keeps it even after the
convolution itself has constant weights (non-fused paths compute it too). Since ``s`` is constant over
the summed kernel window, ``sum_{i,k}(K[o,i,k] s[i])^2 = sum_i s[i]^2 * Q[i, o]`` with the constant
``Q = sum_k K^2``: one ``[B, Cin] x [Cin, Cout]`` matmul. Exact up to float reassociation.

Found by pattern (a sum over a square of a product with one per-sample factor), accepted by numbers:
the factor must scale the product along exactly one summed axis, and the matmul form must reproduce the
sum on the probe run. Anything else is left alone (it is correct, only slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from ..._util import relative_l2
from .contract import GraphContext, GraphRule, NoMatch, Probe
from .conv_proof import SAMPLED
from .edit import GraphEdit
from .evaluate import evaluate
from .facts import GraphFacts, module_path
from .products import product_factors

aten = torch.ops.aten

__all__ = ["DEMODULATION_RULE", "SumOfSquares", "find_sums_of_squares", "prove_sum_of_squares", "replace_sum_of_squares"]


@dataclass(frozen=True)
class SumOfSquares:
    """``total = sum(square(product), axes)`` where ``product`` has the single per-sample factor ``factor``."""

    total: fx.Node
    product: fx.Node
    factor: fx.Node
    axes: tuple[int, ...]  # summed axes of ``product``
    path: str

    def needed(self) -> set[fx.Node]:
        """The probe values the proof reads: the sum (checked against) and the factor (no feature map)."""
        return {self.total, self.factor}

    def shaped(self) -> set[fx.Node]:
        return set()


def _squared(node: fx.Node) -> fx.Node | None:
    """``p`` when ``node`` is ``p ** 2``, ``square(p)`` or ``p * p``."""
    if node.op != "call_function":
        return None
    base = node.args[0] if node.args else None
    squared = (
        node.target is aten.square.default
        or (node.target is aten.pow.Tensor_Scalar and node.args[1] == 2)
        or (node.target is aten.mul.Tensor and base is node.args[1])
    )
    return base if squared and isinstance(base, fx.Node) else None


def _rank(node: fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.dim() if isinstance(value, torch.Tensor) else None


def _summed_axes(square: fx.Node, rank: int) -> tuple[fx.Node, tuple[int, ...]] | None:
    """Follow single-user ``sum`` nodes after ``square``; the last one and the product axes it sums."""
    axes_left = list(range(rank))
    summed: list[int] = []
    current = square
    while len(current.users) == 1:
        user = next(iter(current.users))
        if user.target is not aten.sum.dim_IntList or user.kwargs.get("dtype") is not None or user.args[0] is not current:
            break
        dims = user.args[1] if len(user.args) > 1 else None
        keepdim = bool(user.args[2]) if len(user.args) > 2 else bool(user.kwargs.get("keepdim", False))
        if not dims:
            break
        dims = [d % len(axes_left) for d in dims]
        summed += [axes_left[d] for d in dims]
        if not keepdim:
            axes_left = [a for i, a in enumerate(axes_left) if i not in dims]
        current = user
    return (current, tuple(sorted(summed))) if summed else None


def find_sums_of_squares(graph: fx.Graph, facts: GraphFacts) -> list[SumOfSquares]:
    """Every sum over a square of a product with one per-sample factor (the pattern; no numbers)."""
    found = []
    for node in graph.nodes:
        product = _squared(node)
        if not isinstance(product, fx.Node) or not facts.is_value_dependent(product):
            continue
        rank = _rank(product)
        summed = _summed_axes(node, rank) if rank else None
        if summed is None:
            continue
        factors = product_factors(product, facts)
        if isinstance(factors, NoMatch) or len(factors) != 1 or factors[0].sign != 1:
            continue
        found.append(SumOfSquares(summed[0], product, factors[0].node, summed[1], module_path(summed[0])))
    return found


@dataclass(frozen=True)
class _SumProof:
    """What the probe established: ``Q`` (``[width, everything kept]``, in the ``compute`` dtype), and the
    probe values the matmul form is checked on (sizes, the factor) and against (the sum)."""

    weight_sq: torch.Tensor
    width: int
    compute: torch.dtype
    known: dict[fx.Node, Any]
    factor: torch.Tensor
    total: torch.Tensor


def _scaled_axis(context: GraphContext, site: SumOfSquares, probe: Probe, unit: torch.Tensor, sample: tuple, known: dict) -> int | None:
    """The axis of the product the factor scales, told on ``sample``: ``(positions, the unit product's values
    there, the generator that drew them)``."""
    batch, factor = probe.batch, probe.values[site.factor]
    positions, sampled, generator = sample  # the generator goes on from drawing the positions
    width = factor.reshape(batch, -1).shape[1]
    trial = (torch.rand(factor.shape, generator=generator, dtype=torch.float64) + 0.5).to(factor.dtype)
    scaled = evaluate(context.gm, site.product, {**known, site.factor: trial}).reshape(batch, -1)[:, positions]
    coordinates = torch.unravel_index(positions, unit.shape[1:])
    for candidate in range(1, unit.dim()):
        if unit.shape[candidate] != width:
            continue
        if relative_l2(scaled, sampled * trial.reshape(batch, -1)[:, coordinates[candidate - 1]]) <= 1e-5:
            return candidate
    return None


def prove_sum_of_squares(context: GraphContext, site: SumOfSquares, probe: Probe) -> _SumProof | NoMatch:
    """``Q = sum K^2`` over the summed axes the factor does not scale, once the probe shows that the product's
    constant part is the same for every sample and the factor scales exactly one summed axis (told on a
    sample of the product's elements -- a per-sample product is weight-sized at batch 3; the matmul form
    is then checked against the sum itself)."""
    known = {n: v for n, v in probe.values.items() if not isinstance(v, torch.Tensor)}  # sizes
    factor, total, batch = probe.values[site.factor], probe.values[site.total], probe.batch
    unit = evaluate(context.gm, site.product, {**known, site.factor: torch.ones_like(factor)})
    if unit.dim() == 0 or unit.shape[0] != batch or total.dim() == 0 or total.shape[0] != batch:
        return NoMatch(site.path, "its product has no leading batch axis")
    generator = torch.Generator().manual_seed(1)
    count = unit[0].numel()
    positions = torch.randint(count, (SAMPLED,), generator=generator) if count > SAMPLED else torch.arange(count)
    sampled = unit.reshape(batch, -1)[:, positions]
    if relative_l2(sampled, sampled[:1]) > 1e-6:
        return NoMatch(site.path, "its constant part differs between samples")
    axis = _scaled_axis(context, site, probe, unit, (positions, sampled, generator), known)
    if axis is None or axis not in site.axes:
        return NoMatch(site.path, "its per-sample factor does not scale one summed axis")
    width = factor.reshape(batch, -1).shape[1]
    kernel = unit[0].double() ** 2  # axes of the product without the batch
    others = tuple(a - 1 for a in site.axes if a != axis)
    weight_sq = kernel.sum(dim=others, keepdim=True) if others else kernel
    weight_sq = weight_sq.movedim(axis - 1, 0).reshape(width, -1)  # [width, everything kept]
    compute = torch.float32 if factor.dtype in (torch.float16, torch.bfloat16) else factor.dtype
    return _SumProof(weight_sq.to(compute).contiguous(), width, compute, known, factor, total)


def replace_sum_of_squares(context: GraphContext, site: SumOfSquares, proof: _SumProof) -> NoMatch | None:
    """Let readers of ``site.total`` read ``(s^2 @ Q)`` reshaped, once it reproduces the sum on the probe."""
    factor, total = proof.factor, proof.total
    edit = GraphEdit(context.gm, site.total)
    s = edit(aten.reshape.default, site.factor, [-1, proof.width])
    if factor.dtype != proof.compute:
        s = edit(aten._to_copy.default, s, dtype=proof.compute)
    result = edit(aten.mm.default, edit(aten.mul.Tensor, s, s), edit.constant("sumsq", site.path, proof.weight_sq))
    if total.dtype != proof.compute:
        result = edit(aten._to_copy.default, result, dtype=total.dtype)
    result = edit(aten.reshape.default, result, [-1, *total.shape[1:]])
    error = relative_l2(evaluate(context.gm, result, {**proof.known, site.factor: factor}), total)
    if not error <= (1e-5 if total.dtype in (torch.float32, torch.float64) else 1e-2):
        edit.undo()
        return NoMatch(site.path, f"its matmul form differs on the probe (relative L2 {error:.2e})")
    edit.replace(result, erase=False)
    return None


#: The graph rule: demodulations from the style instead of the per-sample weight. A sum left as it is is
#: correct, only slower: its candidates are not reported.
DEMODULATION_RULE = GraphRule(
    name="graph:demodulation",
    find=lambda context: (find_sums_of_squares(context.gm.graph, context.facts), []),
    prove=prove_sum_of_squares,
    replace=replace_sum_of_squares,
    progress="rewrite: proving demodulations",
    reports=False,
)

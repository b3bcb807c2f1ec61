"""The numbers behind :mod:`.grouped_conv`: a batch-grouped conv's weight is a constant kernel times
per-sample channel scales -- read from its weight chain alone.

The weight of a candidate is ``layout(K * prod(factors))`` by its pattern (:mod:`.products`); what the
numbers decide is ``K`` and where each factor lies (input channels, output channels, the whole kernel;
one row per sample or one for the batch). Convolution is linear, so ``conv(x, W)`` grouped by the batch
equals ``conv(x * s, K) * d`` for every ``x`` exactly when ``W = K * s[in] * d[out]``: the proof reads
parameters and per-sample vectors, never a feature map, and costs a few evaluations of the weight chain
whatever the image size. Steps:

1. every factor at one gives ``K``, the same for every sample;
2. every factor at random values at once: the roles are the one assignment under which ``K`` scaled by
   the factors reproduces that weight (on a sample of its elements -- a random point tells roles apart);
3. the probe's real factors: ``K`` scaled by them in those roles must equal the weight, every element.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from ..._util import relative_l2
from .contract import NoMatch
from .evaluate import evaluate
from .products import Factor

if TYPE_CHECKING:
    from .grouped_conv import GroupedConv

__all__ = ["Proven", "prove"]

#: Weight elements compared when telling roles apart (all of them for a smaller kernel).
SAMPLED = 4096
#: Role assignments tried at most (factors x roles x row layouts; a modulated conv has 2 x 2).
MAX_ASSIGNMENTS = 64
_ROLES = ("in", "out", "scalar")


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


@dataclass
class Proven:
    """What the proof established about a candidate: its kernel and channel counts, each factor's role."""

    kernel: torch.Tensor
    c_in: int
    c_out: int
    x_shape: tuple
    out_shape: tuple
    #: role -> ``(factor, its probe value, its width)`` for every factor in that role
    roles: dict[str, list[tuple[Factor, torch.Tensor, int]]]


def channel_index(kernel: torch.Tensor, groups: int, transposed: bool) -> dict[str, torch.Tensor]:
    """For each ``[row, col]`` of a per-sample conv weight with ``groups`` groups: its input and output channel."""
    rows, cols = kernel.shape[:2]
    r = torch.arange(rows).unsqueeze(1).expand(rows, cols)
    c = torch.arange(cols).unsqueeze(0).expand(rows, cols)
    if transposed:  # weight [C_in, C_out / groups, *k]
        return {"in": r, "out": (r // (rows // groups)) * cols + c}
    return {"in": (r // (rows // groups)) * cols + c, "out": r}  # weight [C_out, C_in / groups, *k]


class _Sampled:
    """A fixed sample of the per-sample weight's elements (all of them for a small kernel), with the
    input and output channel each one scales by."""

    def __init__(self, kernel: torch.Tensor, groups: int, transposed: bool, widths: dict[str, int], batch: int, generator) -> None:
        count, per_channel = kernel.numel(), kernel[0, 0].numel()
        self.positions = torch.randint(count, (SAMPLED,), generator=generator) if count > SAMPLED else torch.arange(count)
        rows, cols = kernel.shape[:2]
        row, col = (self.positions // per_channel).div(cols, rounding_mode="floor"), (self.positions // per_channel) % cols
        grouped = (row // (rows // groups)) * cols + col  # the channel a grouped weight's column stands for
        self.index = {"in": row, "out": grouped} if transposed else {"in": grouped, "out": row}
        self.kernel = kernel.reshape(-1)[self.positions]
        self.widths, self.batch = widths, batch

    def pick(self, weights: torch.Tensor) -> torch.Tensor:
        """The batch's per-sample weights (``[B * rows, ...]`` as the conv reads them) -> ``[B, sampled]``."""
        return weights.reshape(self.batch, -1)[:, self.positions]

    def predict(self, assignment: list[tuple[torch.Tensor, str]]) -> torch.Tensor:
        """The kernel at the sampled elements scaled by each ``(factor [rows, n], role)``."""
        out = self.kernel.unsqueeze(0)
        for factor, role in assignment:
            out = out * (factor[:, :1] if role == "scalar" else factor[:, self.index[role]])
        return out


def _predict(kernel: torch.Tensor, assignment: list[tuple[torch.Tensor, str]], groups: int, transposed: bool) -> torch.Tensor:
    """The kernel scaled by each ``(factor [rows, n], role)``, every element: ``[rows, *kernel.shape]``
    (broadcast views for an ungrouped conv, a gather of the channel index otherwise)."""
    rows, cols = kernel.shape[:2]
    index = channel_index(kernel, groups, transposed) if groups != 1 else {}
    spatial = [1] * (kernel.dim() - 2)
    out = kernel.unsqueeze(0)
    for factor, role in assignment:
        n = factor.shape[0]
        if role == "scalar":
            scale = factor.reshape(n, 1, 1, *spatial)
        elif groups == 1:  # the row axis is the output (plain) or input (transposed) channel, the column the other
            along_rows = (role == "out") != transposed
            scale = factor.reshape(n, rows, 1, *spatial) if along_rows else factor.reshape(n, 1, cols, *spatial)
        else:
            scale = factor[:, index[role].reshape(-1)].reshape(n, rows, cols, *spatial)
        out = out * scale
    return out


class _WeightChain:
    """The candidate's weight evaluated at chosen factor values: sizes known, every factor one unless given."""

    def __init__(self, gm: fx.GraphModule, site: GroupedConv, values: dict[fx.Node, Any], batch: int) -> None:
        self.gm, self.weight, self.batch = gm, site.call.weight, batch
        self.known = {n: v for n, v in values.items() if not isinstance(v, torch.Tensor)}  # sizes
        self.ones = {f.node: torch.ones_like(values[f.node]) for f in site.factors}

    def __call__(self, given: dict[fx.Node, torch.Tensor]) -> torch.Tensor:
        return evaluate(self.gm, self.weight, {**self.known, **self.ones, **given})


def _candidates(value: torch.Tensor, batch: int, widths: dict[str, int]) -> list[tuple[str, int]]:
    """``(role, rows)`` a factor's shape allows: one row per sample or one for the whole batch (StyleGAN3
    normalises its styles over the batch), of an input, output or scalar width."""
    found = []
    for rows in (batch, 1):
        if value.numel() % rows == 0:
            found += [(role, rows) for role in _ROLES if value.numel() // rows == widths[role]]
    return found


def _assign(layout: _Sampled, weights: torch.Tensor, trials: list[torch.Tensor], options: list[list[tuple[str, int]]], tol: float):
    """The first assignment of ``options`` (one ``(role, rows)`` per factor) under which the kernel scaled by
    ``trials`` reproduces ``weights`` at ``layout``'s elements, or ``None``."""
    picked = layout.pick(weights)
    for choice in itertools.islice(itertools.product(*options), MAX_ASSIGNMENTS):
        assignment = [(trial.reshape(rows, -1), role) for trial, (role, rows) in zip(trials, choice)]
        if relative_l2(picked, layout.predict(assignment)) <= tol:
            return list(choice)
    return None


def _unplaced(chain, site, values, layout, tol) -> str:
    """Which factor has no role on its own (each at random values, the others at one): the reason."""
    generator = torch.Generator().manual_seed(1)
    for factor in site.factors:
        value = values[factor.node]
        trial = (torch.rand(value.shape, generator=generator, dtype=torch.float64) + 0.5).to(value.dtype)
        options = [_candidates(trial, chain.batch, layout.widths)]
        if _assign(layout, chain({factor.node: trial}), [trial**factor.sign], options, tol) is None:
            return f"its factor {factor.node.name} {tuple(value.shape)} does not scale input or output channels"
    return "its factors do not scale input or output channels together"


def prove(gm: fx.GraphModule, site: GroupedConv, values: dict[fx.Node, Any], batch: int, shapes: tuple) -> Proven | NoMatch:
    """The module docstring's steps for ``site`` at the probe (``values`` of its factors and of every size
    node, at batch size ``batch``; ``shapes`` of its input and output); where a step fails, why (a
    blocking :class:`~.contract.NoMatch`: the conv cannot stay as it is)."""
    call = site.call
    x_shape, out_shape = shapes
    chain = _WeightChain(gm, site, values, batch)
    unit = chain({})
    if unit.dim() - 2 not in (1, 2, 3) or len(x_shape) != unit.dim() or x_shape[0] != 1 or unit.shape[0] % batch:
        return NoMatch(site.path, f"its input {x_shape} is not the batch folded into channels", blocking=True)
    rows, groups = unit.shape[0] // batch, site.per_sample  # rows: each sample's own weight
    c_in = rows if call.transposed else unit.shape[1] * groups
    c_out = unit.shape[1] * groups if call.transposed else rows
    if x_shape[1] != batch * c_in or rows % groups:
        return NoMatch(site.path, f"its input has {x_shape[1]} channels, not batch x {c_in}", blocking=True)
    kernel, tol = unit[:rows].clone(), tolerance(unit.dtype)
    generator = torch.Generator().manual_seed(0)
    layout = _Sampled(kernel, groups, call.transposed, {"in": c_in, "out": c_out, "scalar": 1}, batch, generator)
    if relative_l2(layout.pick(unit), layout.kernel.unsqueeze(0)) > tol:
        return NoMatch(site.path, "its kernel differs between samples even with the per-sample factors set to one", blocking=True)
    del unit
    factors = list(site.factors)
    trials = [(torch.rand(values[f.node].shape, generator=generator, dtype=torch.float64) + 0.5).to(values[f.node].dtype) for f in factors]
    options = [_candidates(t, batch, layout.widths) for t in trials]
    weights = chain({f.node: t for f, t in zip(factors, trials)})
    choice = _assign(layout, weights, [t**f.sign for f, t in zip(factors, trials)], options, tol)
    del weights
    if choice is None:
        return NoMatch(site.path, _unplaced(chain, site, values, layout, tol), blocking=True)
    real = [((values[f.node] ** f.sign).reshape(r, -1), role) for f, (role, r) in zip(factors, choice)]
    expected = _predict(kernel, real, groups, call.transposed)
    error = relative_l2(chain({f.node: values[f.node] for f in factors}).reshape(batch, *kernel.shape), expected)
    if not error <= tol:
        return NoMatch(
            site.path, f"its weight is not the kernel times its factors at the probe's values (relative L2 {error:.2e})", blocking=True
        )
    roles: dict[str, list[tuple[Factor, torch.Tensor, int]]] = {role: [] for role in _ROLES}
    for factor, (role, _) in zip(factors, choice):
        roles[role].append((factor, values[factor.node], layout.widths[role]))
    return Proven(kernel, c_in, c_out, x_shape, out_shape, roles)

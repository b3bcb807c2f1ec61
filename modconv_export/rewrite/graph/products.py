"""Read a tensor expression as a product: constant parts times per-sample factors, under layout ops.

A modulated weight is, in every StyleGAN2 codebase, ``layout(K * s * d)``: a kernel ``K`` computed from
parameters, per-sample factors ``s`` (style) and ``d`` (demodulation) broadcast along channel axes, and
reshapes, transposes and flips that fold it into a grouped-conv weight. :func:`product_factors` walks back
from a value through multiplications, divisions and layout ops and returns the *per-sample factors* it
meets: the value-dependent nodes that are not themselves products. Everything else on the way (constant
kernels, scales, shape arithmetic) is left to :func:`~.evaluate.evaluate`, so the walk needs no knowledge
of how a codebase spells its reshapes: the numbers decide what each factor multiplies.

A *selection* (:data:`SELECTIONS`: ``s[:, :, :in]``, ``narrow``, ``select``, ``index_select``) is where the
walk stops: the selected value is the factor (a sliced style has the conv's own width; the value it was
cut from does not), unless it keeps every element (``x[:, :]``, :func:`is_whole_slice`). A selection of a
product is pushed into its operands first (:mod:`.selections`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.operator_schemas import normalize_function

from .contract import NoMatch
from .facts import GraphFacts, module_path

aten = torch.ops.aten

__all__ = ["LAYOUT_OPS", "SELECTIONS", "Factor", "is_whole_slice", "product_factors", "recorded_shape", "selection_arguments"]

#: Ops that rearrange, select or copy elements of their first argument without mixing them: a product
#: stays a product through them, with the factors rearranged the same way.
LAYOUT_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.transpose.int,
    aten.permute.default,
    aten.flip.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.expand.default,
    aten.t.default,
    aten.alias.default,
    aten.detach.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.lift_fresh_copy.default,
    aten.mul.Scalar,
    aten.div.Scalar,
    aten.neg.default,
}

#: Ops that keep some elements of their first argument along one axis (``dim``, their second argument).
SELECTIONS = frozenset({aten.slice.Tensor, aten.narrow.default, aten.select.int, aten.index_select.default})
#: The ``end`` torch writes for an open slice (``x[2:]``): ``sys.maxsize``.
_OPEN_END = 2**63 - 1


def selection_arguments(node: fx.Node) -> list:
    """A selection's arguments in schema order with defaults filled in (``slice(x)``: ``[x, 0, None, None, 1]``)."""
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    return list(normalized.kwargs.values()) if normalized is not None else list(node.args)


def recorded_shape(node: object) -> tuple | None:
    """The shape recorded for ``node`` at capture (sizes may be symbolic), or ``None``."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def is_whole_slice(node: fx.Node) -> bool:
    """``x[:, :]``: a slice that keeps every element (export writes one for each ``:`` before an index)."""
    if node.op != "call_function" or node.target is not aten.slice.Tensor:
        return False
    _, dim, start, end, step = selection_arguments(node)
    shape = recorded_shape(node.args[0])
    size = shape[dim % len(shape)] if shape and isinstance(dim, int) else None
    open_end = end is None or (isinstance(end, int) and (end >= _OPEN_END or (isinstance(size, int) and end >= size)))
    return start in (None, 0) and step == 1 and open_end


@dataclass(frozen=True)
class Factor:
    """A per-sample factor of a product: ``node`` enters it to the integer power ``sign`` (``s * s``: 2,
    a divisor: -1)."""

    node: fx.Node
    sign: int


def _integer_power(node: fx.Node) -> int | None:
    """``n`` when ``node`` raises its first argument to the whole power ``n`` (``s ** 2``, ``1 / s``)."""
    target = node.target if node.op == "call_function" else None
    if target is aten.square.default:
        return 2
    if target is aten.reciprocal.default:
        return -1
    if target is aten.pow.Tensor_Scalar and isinstance(node.args[1], (int, float)) and float(node.args[1]).is_integer():
        return int(node.args[1]) or None
    return None


def _is_outer_product(equation: object) -> bool:
    """Whether an einsum multiplies its operands element-wise under broadcasting, summing nothing:
    every index of every operand appears in the output (``"oikl,bi->boikl"`` is a modulation written
    as an einsum; ``"bi,oi->bo"`` sums over ``i`` and is not a product)."""
    if not isinstance(equation, str) or "->" not in equation or "." in equation:
        return False
    inputs, output = equation.replace(" ", "").split("->")
    return all(len(set(term)) == len(term) and set(term) <= set(output) for term in inputs.split(","))  # "ii->i" is a diagonal


#: A product tree with more steps than this is not a modulated weight (and would be slow to walk).
_MAX_STEPS = 10_000


def product_factors(root: fx.Node, facts: GraphFacts) -> list[Factor] | NoMatch:
    """The value-dependent factors of ``root`` read as a product, or why it is not one (a
    :class:`~.contract.NoMatch` at ``root``'s module).

    Constant and shape-only subexpressions are not factors (they are evaluated with the rest). A node
    reached along several paths enters with the summed power (``s * s`` is ``s`` squared); factors whose
    powers cancel (``s / s``) are dropped.
    """
    powers: dict[fx.Node, int] = {}
    stack: list[tuple[fx.Node, int]] = [(root, 1)]
    steps = 0
    while stack:
        steps += 1
        if steps > _MAX_STEPS:
            return NoMatch(module_path(root), "its product has too many terms")
        node, sign = stack.pop()
        if not facts.is_value_dependent(node):
            continue
        target = node.target if node.op == "call_function" else None
        if target in (aten.mul.Tensor,):
            stack.extend((a, sign) for a in node.args[:2] if isinstance(a, fx.Node))
        elif target in (aten.div.Tensor,):
            numerator, denominator = node.args[:2]
            if isinstance(numerator, fx.Node):
                stack.append((numerator, sign))
            if isinstance(denominator, fx.Node):
                stack.append((denominator, -sign))
        elif target in LAYOUT_OPS or is_whole_slice(node):
            if isinstance(node.args[0], fx.Node):
                stack.append((node.args[0], sign))
        elif (power := _integer_power(node)) is not None:
            stack.append((node.args[0], sign * power))
        elif target is aten.einsum.default and _is_outer_product(node.args[0]):
            stack.extend((a, sign) for a in node.args[1] if isinstance(a, fx.Node))
        else:
            powers[node] = powers.get(node, 0) + sign
    return [Factor(node, power) for node, power in powers.items() if power != 0]

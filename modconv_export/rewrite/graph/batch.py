"""Which sizes in a captured graph are the batch: the symbol torch.export gave axis 0, or a node we made.

A dynamic capture carries the batch as a symbol (``s0``) in every size computed from it; a static capture
that was generalised (:mod:`.generalize`) carries it as an explicit ``sym_size`` node, with sizes computed
from it marked ``a * batch + c`` in ``node.meta``. :func:`batch_affine` reads either.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.fx as fx

__all__ = ["AFFINE_META", "batch_affine", "batch_symbol"]

#: ``node.meta`` key holding ``(a, c)`` for a size node computed as ``a * batch + c`` by generalisation.
AFFINE_META = "modconv_batch_affine"


def batch_symbol(graph: fx.Graph) -> Any:
    """The sympy symbol of axis 0 of the first batched input of a dynamic capture, else ``None``."""
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.dim() > 0 and isinstance(value.shape[0], torch.SymInt):
            expr = value.shape[0].node.expr
            if isinstance(expr, sympy.Symbol):
                return expr
    return None


def batch_affine(arg: Any, symbol: Any) -> tuple[int, int] | None:
    """``(a, c)`` when ``arg`` (a node of the graph) equals ``a * batch + c`` with ``a != 0``, else ``None``."""
    if not isinstance(arg, fx.Node):
        return None
    marked = arg.meta.get(AFFINE_META)
    if marked is not None:
        return tuple(marked)
    value = arg.meta.get("val")
    if symbol is None or not isinstance(value, torch.SymInt):
        return None
    expr = sympy.expand(value.node.expr)
    if expr.free_symbols != {symbol}:
        return None
    poly = sympy.Poly(expr, symbol)
    if poly.degree() != 1:
        return None
    a, c = (poly.coeff_monomial(symbol), poly.coeff_monomial(1))
    if not (a.is_integer and c.is_integer):
        return None
    return int(a), int(c)

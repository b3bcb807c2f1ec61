"""Random draws in a captured graph become zeros: an export never hides randomness.

StyleGAN2 layers add Gaussian noise drawn at every call when no noise is passed (``new_empty().normal_()``,
``randn_like``). A file that draws its own noise gives different images on every run and cannot be checked
against eager PyTorch, so -- as the module-level rules do -- a Gaussian draw becomes zero noise and the
report says where; noise the caller passes (buffers, inputs) is kept exactly. Any other random op
(uniform, Bernoulli, ...) has no neutral value and is an error naming the module.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ...errors import RewriteError
from .contract import GraphContext, GraphPass, PassResult
from .edit import inherit_meta
from .facts import module_path, target_name

aten = torch.ops.aten

__all__ = ["NOISE_PASS", "zero_gaussian_draws"]

_LIKE = {aten.normal_.default, aten.randn_like.default, aten.normal_functional.default}
_SIZED = {aten.randn.default}


def zero_gaussian_draws(graph: fx.Graph) -> list[tuple[str, str]]:
    """Replace every Gaussian draw by zeros of its shape; ``(module path, op)`` for each one replaced."""
    replaced = []
    for node in list(graph.nodes):
        if node.op != "call_function" or torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
            continue
        with graph.inserting_before(node):
            if node.target in _LIKE:
                zeros = graph.call_function(aten.zeros_like.default, (node.args[0],))
            elif node.target in _SIZED:
                kwargs = {k: v for k, v in node.kwargs.items() if k in ("dtype", "layout", "device", "pin_memory")}
                zeros = graph.call_function(aten.zeros.default, (node.args[0],), kwargs)
            else:
                raise RewriteError(
                    f"{module_path(node) or 'the model'} draws random numbers ({target_name(node)}) that an export cannot reproduce"
                )
        inherit_meta(zeros, node, value=True)
        node.replace_all_uses_with(zeros)
        graph.erase_node(node)
        replaced.append((module_path(zeros), target_name(node)))
    return replaced


#: What the report tells the user about each draw replaced.
NOISE_NOTE = "draws Gaussian noise ({op}); the export adds zero noise there (pass noise explicitly to keep other values)"


def _zero_noise(context: GraphContext) -> PassResult:
    draws = zero_gaussian_draws(context.gm.graph)
    return PassResult(bool(draws), tuple((path, NOISE_NOTE.format(op=op)) for path, op in draws))


#: The pass: a graph that drew noise computes something else now, so the capture is not exported as is.
NOISE_PASS = GraphPass("graph:noise", _zero_noise)

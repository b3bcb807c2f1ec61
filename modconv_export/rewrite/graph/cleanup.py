"""Tidy a rewritten graph: fold parameter-only values into constants, merge reshapes, drop what is unused.

* **Fold.** A value computed from parameters and buffers alone (``weight * scale``, a flipped blur
  kernel, a transposed conv weight) is evaluated once and stored as a buffer, so the exported graph reads
  a constant -- runtimes that insist on constant conv weights accept it, and no run pays for it. Only
  values no larger than what they are computed from are folded (a broadcast bias stays a broadcast),
  except convolution weights, which are always folded (a kernel expanded over channels included).
* **Reshapes.** ``reshape(reshape(x, a), b)`` is ``reshape(x, b)``: the rewrites fold and unfold the
  batch around each convolution, and the model's own views then meet the rewrite's -- after which the
  fold and the unfold of a rewritten conv are reshapes of a value to the shape it has, and go
  (:func:`drop_identity_reshapes`, on the capture's symbolic shapes: every later trace of the graph
  pays for each reshape of a symbolic batch in sympy).
* **Unused.** Dead nodes, and parameters no node reads any more (a rewritten conv's per-sample weight
  chain, its original parameter), are removed so the files do not carry them.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .contract import GraphContext, GraphPass, PassResult
from .edit import inherit_meta, register_constant
from .evaluate import attribute, evaluate
from .facts import GraphFacts, analyze

aten = torch.ops.aten

__all__ = ["CLEANUP_PASSES", "drop_identity_reshapes", "fold_constants", "merge_reshapes", "remove_unused"]

_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _attribute_inputs(node: fx.Node) -> list[fx.Node]:
    seen, stack, found = set(), [node], []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "get_attr":
            found.append(current)
        fx.node.map_arg((current.args, current.kwargs), lambda n: stack.append(n))
    return found


_IDENTITY_OPS = {aten.to.dtype, aten._to_copy.default, aten.alias.default, aten.detach.default, aten.clone.default, aten.contiguous.default}


def _is_identity(node: fx.Node) -> bool:
    """A cast or copy of a parameter to what it already is (``w.to(x.dtype)`` in float32): nothing to fold."""
    if node.target not in _IDENTITY_OPS or not isinstance(node.args[0], fx.Node) or node.args[0].op != "get_attr":
        return False
    before, after = node.args[0].meta.get("val"), node.meta.get("val")
    return (
        isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.dtype == after.dtype and before.shape == after.shape
    )


def _is_conv_weight(node: fx.Node) -> bool:
    """Whether ``node`` is the weight of a convolution (which runtimes want as an initializer, whatever its size)."""
    from .grouped_conv import conv_call

    return any((call := conv_call(user)) is not None and call.weight is node for user in node.users)


def fold_constants(gm: fx.GraphModule, facts: GraphFacts | None = None, *, dry_run: bool = False) -> int:
    """Replace each parameter-only value read by input-dependent code with a buffer; how many were folded
    (with ``dry_run``: how many would be, changing nothing)."""
    facts = facts or analyze(gm.graph)
    graph = gm.graph
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or not facts.is_constant(node):
            continue
        if not any(not facts.is_constant(user) or user.op == "output" for user in node.users):
            continue
        sources = _attribute_inputs(node)
        if not sources or _is_identity(node):
            continue
        meta = node.meta.get("val")
        value = None if isinstance(meta, torch.Tensor) else evaluate(gm, node, {})
        if value is not None and not isinstance(value, torch.Tensor):
            continue
        numel = (meta if value is None else value).numel()
        held = [attribute(gm, s.target) for s in sources]
        budget = sum(int(t.numel()) for t in held if isinstance(t, torch.Tensor))
        if numel > budget and not _is_conv_weight(node):
            continue
        if dry_run:
            folded += 1
            continue
        value = evaluate(gm, node, {}) if value is None else value
        name = register_constant(gm, "folded", folded, value.detach().clone().contiguous())
        with graph.inserting_before(node):
            const = inherit_meta(graph.get_attr(name), node, value=True)
        node.replace_all_uses_with(const)
        folded += 1
    if not dry_run:
        graph.eliminate_dead_code()
    return folded


def merge_reshapes(graph: fx.Graph) -> int:
    """Let every reshape of a reshape read the original tensor; how many were merged."""
    merged = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _RESHAPES:
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and source.op == "call_function" and source.target in _RESHAPES:
            source = source.args[0]
        if source is not node.args[0]:
            node.target = aten.reshape.default
            node.args = (source, *node.args[1:])
            merged += 1
    graph.eliminate_dead_code()
    return merged


def _same_shape(a: object, b: object) -> bool:
    """Whether two fake values have the same shape as expressions (``s0 * 512`` is ``512 * s0``)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return False
    exprs = [[d.node.expr if isinstance(d, torch.SymInt) else d for d in v.shape] for v in (a, b)]
    return all(x == y for x, y in zip(*exprs))


def drop_identity_reshapes(graph: fx.Graph) -> int:
    """Let readers of a reshape to the shape its input already has read the input; how many went.

    Decided on the nodes' fake values of a *dynamic* capture, where a symbolic shape equals another
    only as an expression -- that is, at every batch size (a static capture's equal sizes may be a
    coincidence of its batch size, and are left alone)."""
    dropped = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _RESHAPES or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        if _same_shape(source.meta.get("val"), node.meta.get("val")) and source.meta["val"].dtype == node.meta["val"].dtype:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            dropped += 1
    return dropped


def remove_unused(gm: fx.GraphModule) -> bool:
    """Dead code, then every parameter, buffer and submodule no ``get_attr`` reads any more; whether
    anything went."""
    removed = gm.graph.eliminate_dead_code()
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name in used:
            continue
        removed = True
        owner_path, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if leaf in owner._parameters:
            del owner._parameters[leaf]
        elif leaf in owner._buffers:
            del owner._buffers[leaf]
    gm.delete_all_unused_submodules()
    gm.recompile()
    return removed


def _annotated(gm: fx.GraphModule) -> bool:
    """Fake values for the nodes the passes added; ``False`` where an op has no fake kernel (the graph is
    correct as it is, only not tidied; its export then traces it again)."""
    from .program import fake_values

    try:
        return fake_values(gm)
    except Exception:
        return False


def _drop_identity(context: GraphContext) -> PassResult:
    """:func:`drop_identity_reshapes` on a dynamic capture whose added nodes have fake values (the
    replacements' shapes, as the capture's own); a generalised graph has no symbolic shapes to compare."""
    if context.generalized or not _annotated(context.gm):
        return PassResult(False)
    return PassResult(drop_identity_reshapes(context.gm.graph) > 0)


#: The tidying after the rules, in order (see the module docstring).
CLEANUP_PASSES = (
    GraphPass("graph:remove_unused", lambda context: PassResult(remove_unused(context.gm))),
    GraphPass("graph:fold_constants", lambda context: PassResult(fold_constants(context.gm) > 0)),
    GraphPass("graph:merge_reshapes", lambda context: PassResult(merge_reshapes(context.gm.graph) > 0)),
    GraphPass("graph:drop_identity_reshapes", _drop_identity),
    GraphPass("graph:remove_unused", lambda context: PassResult(remove_unused(context.gm))),
)

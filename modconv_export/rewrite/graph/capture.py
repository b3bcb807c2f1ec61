"""Capture a model as an FX ATen graph with a symbolic batch: ``torch.export``, then a plain GraphModule.

The first try is a dynamic capture (axis 0 of every tensor input is one symbolic ``batch``). Code that
turns the batch size into a Python int (``int(x.shape[0])``, as NVlabs' StyleGAN2/3 does before its grouped
conv) makes ``torch.export`` specialise the batch; such a model is captured at two fixed batch sizes and
the two graphs are generalised into one (:mod:`.generalize`). Either way the result is a GraphModule whose
placeholders are the flat tensor inputs and whose output is the flat tuple of outputs, plus the pytree
spec that rebuilds the model's own output structure.

An ``autograd.Function`` whose forward torch cannot trace (a CUDA extension call) stops the capture; the
error names it, since registering a lowering for it (:func:`modconv_export.register_function_lowering`)
is the way past.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from ..._util import exception_line, quiet
from ...errors import CaptureError
from .batch import batch_symbol
from .edit import buffer_name

__all__ = ["CaptureError", "GraphCapture", "at_batch", "capture", "dynamic_batch_shapes", "plain_graph_module"]


@dataclass
class GraphCapture:
    """A captured model: ``module`` runs the flat inputs to the flat outputs, ``out_spec`` rebuilds them."""

    module: fx.GraphModule
    out_spec: Any
    symbol: Any  # the batch symbol of a dynamic capture, ``None`` for a generalised static one
    generalized: bool
    #: The dynamic capture itself (``None`` for a generalised one): what the ONNX exporter can take as is
    #: when no pass changed the graph, saving a second trace.
    program: torch.export.ExportedProgram | None = None


def at_batch(args: tuple, batch: int, *, seed: int | None = None) -> tuple:
    """``args`` with axis 0 of every tensor resized to ``batch`` by cycling its samples; with ``seed``,
    floating samples are perturbed slightly so that no two samples of the result are equal."""
    out = []
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for a in args:
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            out.append(a)
            continue
        index = torch.arange(batch) % a.shape[0]
        b = a[index].clone()
        if generator is not None and b.is_floating_point():
            scale = float(a.float().std()) if a.numel() > 1 else 1.0
            noise = torch.randn(b.shape, generator=generator, dtype=torch.float64).to(b.dtype)
            b = b + 0.05 * (scale or 1.0) * noise
        out.append(b)
    return tuple(out)


def dynamic_batch_shapes(model: nn.Module, args: tuple) -> Any:
    """``dynamic_shapes`` for ``torch.export``: axis 0 of every tensor argument is one symbolic ``batch``.

    Given per parameter of ``model.forward`` (a ``*noise`` parameter gets a tuple), the structure
    ``torch.export`` matches against the call, whatever mix of named and variadic parameters it has.
    """
    import inspect

    batch = torch.export.Dim("batch")

    def spec(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        return {0: batch} if isinstance(value, torch.Tensor) and value.dim() > 0 else None

    try:
        bound = inspect.signature(model.forward).bind(*args)
    except (TypeError, ValueError):
        return tuple(spec(a) for a in args)
    return {name: spec(value) for name, value in bound.arguments.items()}


_GUARDS = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten.sym_constrain_range.default,
}


_REGIONS = {torch.ops.higher_order.wrap_with_set_grad_enabled, torch.ops.higher_order.wrap_with_autocast}


def _inline_regions(gm: fx.GraphModule) -> None:
    """Inline the subgraphs dynamo wraps in grad-mode or autocast regions (an autograd Function's forward,
    captured in strict mode): for export their ops are ordinary ops, and every pass must see them."""
    import operator

    graph = gm.graph
    while True:
        region = next((n for n in graph.nodes if n.op == "call_function" and n.target in _REGIONS), None)
        if region is None:
            break
        owner = next(a for a in region.args if isinstance(a, fx.Node) and a.op == "get_attr")
        body: fx.GraphModule = getattr(gm, owner.target)
        operands = list(region.args[region.args.index(owner) + 1 :])
        env: dict[fx.Node, Any] = {}
        outputs: Any = None
        with graph.inserting_before(region):
            for node in body.graph.nodes:
                if node.op == "placeholder":
                    env[node] = operands.pop(0)
                elif node.op == "output":
                    outputs = fx.node.map_arg(node.args[0], env.__getitem__)
                elif node.op == "get_attr":
                    name, value = buffer_name(gm, "region", f"{owner.target}_{node.target}"), getattr(body, node.target)
                    if isinstance(value, torch.Tensor):
                        gm.register_buffer(name, value)
                    else:
                        setattr(gm, name, value)
                    env[node] = graph.get_attr(name)
                else:
                    env[node] = graph.node_copy(node, env.__getitem__)
        outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        for user in list(region.users):
            if user.target is operator.getitem:
                user.replace_all_uses_with(outputs[user.args[1]])
                graph.erase_node(user)
        if region.users:
            raise CaptureError(f"cannot inline the {region.target} region {owner.target}")
        graph.erase_node(region)
        if not owner.users:
            graph.erase_node(owner)
    gm.delete_all_unused_submodules()


def plain_graph_module(program: torch.export.ExportedProgram) -> tuple[fx.GraphModule, Any]:
    """The unlifted module of ``program`` as a plain GraphModule (flat inputs and outputs, no guards,
    no nested regions)."""
    unlifted = program.module()
    graph = unlifted.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and not node.users:
            graph.erase_node(node)  # _guards_fn: shape guards for the original pytree call
        elif node.op == "call_function" and node.target in _GUARDS and not node.users:
            graph.erase_node(node)  # dtype and range assertions of the capture, not of the model
    graph._codegen = fx.graph.CodeGen()
    module = fx.GraphModule(unlifted, graph)
    _inline_regions(module)
    module.delete_all_unused_submodules()
    module.recompile()
    return module, program.call_spec.out_spec


def _function_in_traceback(exc: BaseException) -> str | None:
    """The ``Class.forward`` of the innermost ``autograd.Function`` forward the failure went through."""
    name = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name == "forward" and code.co_varnames[:1] == ("ctx",):
            name = getattr(code, "co_qualname", code.co_name)
    return name


def _specialized(exc: BaseException) -> bool:
    from torch._dynamo.exc import UserError, UserErrorType

    return isinstance(exc, UserError) and exc.error_type == UserErrorType.CONSTRAINT_VIOLATION


def _mutates(target: Any) -> bool:
    """Whether an op writes to one of its arguments (its schema says so; ``torch.Tag.inplace`` is newer
    than torch 2.11, the schema flag is not)."""
    schema = getattr(target, "_schema", None)
    return bool(getattr(schema, "is_mutable", False))


def _functional(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` without in-place ops (NVlabs adds noise with ``x.add_(noise)`` to a view of the conv
    output). The graph passes read data flow: a mutation would make a recorded value or a folded
    constant wrong. Functionalising costs a retrace, so it runs only where a mutation is present."""
    mutates = any(n.op == "call_function" and _mutates(n.target) for n in program.graph.nodes)
    return program.run_decompositions({}) if mutates else program


def _export(model: nn.Module, args: tuple, dynamic_shapes: Any) -> torch.export.ExportedProgram:
    """``torch.export`` without dynamo first (it runs any Python); with dynamo (``strict``) where that
    fails, since dynamo copes with what the other cannot (``weight.data`` in a forward, as the seed has).
    The program is functional (:func:`_functional`)."""
    with quiet():
        return _functional(_capture_either(model, args, dynamic_shapes))


def _capture_either(model: nn.Module, args: tuple, dynamic_shapes: Any) -> torch.export.ExportedProgram:
    try:
        _drop_hook_state(model)
        return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as first:
        if _specialized(first):
            raise
        try:
            _drop_hook_state(model)  # what the failed trace's hooks stored (fake tensors)
            return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=True)
        except Exception:
            raise first from None


def _explain(exc: BaseException, model: nn.Module, args: tuple, batch: int | None = None) -> CaptureError:
    from ..diagnose import describe_export_failure

    function = _function_in_traceback(exc)
    if function:
        return CaptureError(
            f"torch.export cannot trace through the autograd Function {function} ({exception_line(exc)}); "
            "register a lowering for it (modconv_export.register_function_lowering) or give it a forward torch can trace"
        )
    if batch is not None:
        return CaptureError(f"the model does not run at batch size {batch}, so its batch cannot be made dynamic: {exception_line(exc)}")
    described = describe_export_failure(model, args, exc, action="graph capture (torch.export)")
    return CaptureError(described or f"graph capture (torch.export) failed: {exception_line(exc)}")


def _drop_hook_state(model: nn.Module) -> None:
    """Remove tensors that forward pre-hooks compute and store as plain attributes (an equalised
    learning-rate hook's ``weight``, left over from an earlier forward).

    ``torch.export`` would lift such a leftover as a constant and then see the hook overwrite it during
    the trace. Only an attribute that the module's own pre-hooks recreate is removed: the hook computes
    it again, inside the captured graph, on every call.
    """
    for module in model.modules():
        if not module._forward_pre_hooks:
            continue
        stale = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)]
        if not stale:
            continue
        saved = {k: vars(module).pop(k) for k in stale}
        try:
            with torch.no_grad():
                for hook in list(module._forward_pre_hooks.values()):
                    hook(module, ())
        except Exception:
            vars(module).update(saved)  # a hook that needs the inputs: leave the module as it was
            continue
        for k in stale:
            if k in vars(module):
                del vars(module)[k]
            else:
                vars(module)[k] = saved[k]  # not computed by the hooks: the module's own state


def capture(model: nn.Module, args: tuple) -> GraphCapture:
    """Capture ``model`` on example ``args`` (tensors, axis 0 the batch) with a symbolic batch.

    ``model`` is the caller's copy: attributes its hooks compute are removed from it (:func:`_drop_hook_state`).
    """
    from .generalize import generalize

    args = tuple(args)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise CaptureError("graph capture takes tensor inputs only")
    try:
        program = _export(model, at_batch(args, 2), dynamic_batch_shapes(model, args))
    except Exception as exc:
        if not _specialized(exc):
            raise _explain(exc, model, at_batch(args, 2)) from exc
    else:
        module, out_spec = plain_graph_module(program)
        return GraphCapture(module, out_spec, batch_symbol(module.graph), generalized=False, program=program)
    # The code turns the batch size into a constant: capture at two sizes and generalise.
    programs = []
    for batch in (2, 3):
        try:
            programs.append(plain_graph_module(_export(model, at_batch(args, batch), None)))
        except Exception as exc:
            raise _explain(exc, model, at_batch(args, batch), batch if batch != 2 else None) from exc
    (module, out_spec), (other, _) = programs
    generalize(module, other, (2, 3))
    return GraphCapture(module, out_spec, None, generalized=True)


def flat_outputs(outputs: Any) -> list[Any]:
    return pytree.tree_leaves(outputs)

"""The rewritten graph as a ``torch.export`` program again, without tracing it a second time.

The ONNX exporter takes an :class:`~torch.export.ExportedProgram`. The graph passes work on the plain
GraphModule of the capture (parameters as ``get_attr``, :mod:`.capture`); handing the exporter that module
would make it trace the whole model again (``torch.export`` of the rewritten graph, before its own
decomposition trace). :func:`exported_program` instead lifts the module's tensors back into placeholders
with a graph signature -- parameters as parameters, every other tensor (the rewrite's kernels, folded
constants) as a buffer -- and keeps the capture's symbolic batch (its range constraints and call
signature). Nodes the passes added get their fake values from the capture's own fake mode, one op each,
as the program's verifier requires. The program shares the module's tensors; nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec, TensorArgument

from .evaluate import attribute

__all__ = ["ProgramSignature", "exported_program", "fake_values"]


@dataclass(frozen=True)
class ProgramSignature:
    """What a dynamic capture's program says beyond its graph: the batch's range and the call's pytree specs."""

    range_constraints: dict
    module_call_graph: list

    @classmethod
    def of(cls, program: torch.export.ExportedProgram) -> ProgramSignature:
        return cls(dict(program.range_constraints), list(program.module_call_graph))


def _fake_mode(graph: fx.Graph) -> Any:
    for node in graph.nodes:
        value = node.meta.get("val")
        if node.op == "placeholder" and hasattr(value, "fake_mode"):
            return value.fake_mode
    return None


def fake_values(gm: fx.GraphModule) -> bool:
    """``meta["val"]`` for every node the passes added, computed from its inputs' fake values in the
    capture's own fake mode (its symbolic batch included); whether the graph had a fake mode to use."""
    mode = _fake_mode(gm.graph)
    if mode is None:
        return False
    for node in gm.graph.nodes:
        if node.op == "get_attr" and "val" not in node.meta:
            value = attribute(gm, node.target)
            if isinstance(value, torch.Tensor):
                node.meta["val"] = mode.from_tensor(value, static_shapes=True)
    _fake_values(gm.graph, mode)
    return True


def _fake_values(graph: fx.Graph, mode: Any) -> None:
    with mode:
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method") or "val" in node.meta:
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
            target = getattr(args[0], node.target) if node.op == "call_method" else node.target
            node.meta["val"] = target(*args[1:], **kwargs) if node.op == "call_method" else target(*args, **kwargs)


def exported_program(gm: fx.GraphModule, signature: ProgramSignature) -> torch.export.ExportedProgram | None:
    """``gm`` (a plain GraphModule of a dynamic capture, see :func:`.capture.plain_graph_module`) as an
    ``ExportedProgram`` with the capture's ``signature``; ``None`` where it has no fake values to start from."""
    mode = _fake_mode(gm.graph)
    if mode is None:
        return None
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, mapping)
    graph.output(output)
    if not isinstance(output, (tuple, list)) or not all(isinstance(o, fx.Node) for o in output):
        return None
    users = [n for n in graph.nodes if n.op == "placeholder"]
    lifted: dict[str, fx.Node] = {}  # target -> its placeholder
    specs: list[InputSpec] = []
    state: dict[str, torch.Tensor] = {}
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        value = attribute(gm, node.target)
        if not isinstance(value, torch.Tensor):
            return None  # a submodule or script object: not a program this module can lift
        if node.target not in lifted:
            parameter = isinstance(value, torch.nn.Parameter)
            with graph.inserting_before(users[0] if users else next(iter(graph.nodes))):
                placeholder = graph.placeholder(("p_" if parameter else "b_") + node.target.replace(".", "_"))
            placeholder.meta.update(node.meta)
            placeholder.meta["val"] = mode.from_tensor(value, static_shapes=True)
            kind = InputKind.PARAMETER if parameter else InputKind.BUFFER
            specs.append(InputSpec(kind, TensorArgument(placeholder.name), node.target, None if parameter else True))
            lifted[node.target], state[node.target] = placeholder, value
        node.replace_all_uses_with(lifted[node.target])
        graph.erase_node(node)
    _fake_values(graph, mode)
    inputs = specs + [InputSpec(InputKind.USER_INPUT, TensorArgument(n.name), None) for n in users]
    outputs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in output]
    module = fx.GraphModule(gm, graph)
    return torch.export.ExportedProgram(
        root=module,
        graph=graph,
        graph_signature=ExportGraphSignature(input_specs=inputs, output_specs=outputs),
        state_dict=state,
        range_constraints=signature.range_constraints,
        module_call_graph=signature.module_call_graph,
        constants={},
    )

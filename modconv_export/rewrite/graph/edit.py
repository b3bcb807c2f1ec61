"""One way to edit a captured graph: insert nodes where a node was, carry its metadata, name buffers, undo.

Every graph pass adds nodes that stand for an existing one -- the constant-weight form of a conv, the
matmul form of a demodulation, zeros for a noise draw, a pushed selection, a folded constant, a cast.
They inherit the replaced node's metadata so that reports name the module the computation came from and
the ONNX exporter names the nodes after it (:data:`INHERITED_META`). Tensors the passes create are stored
on the module under :func:`buffer_name`'s one scheme, ``_modconv_<kind>_<stem>``, never colliding with
an attribute already there. A rewrite that is tried before it is accepted records what it added in a
:class:`GraphEdit`, so that a failed proof leaves the graph as it was.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx

__all__ = ["INHERITED_META", "GraphEdit", "buffer_name", "inherit_meta", "register_constant"]

#: Node metadata a node added in place of another inherits from it: the module path (reports, ONNX node
#: names), where in the model's source it came from, and which torch function produced it.
INHERITED_META = ("nn_module_stack", "stack_trace", "source_fn_stack")
_IDENTIFIER = re.compile(r"\W")


def inherit_meta(node: fx.Node, source: fx.Node, *, value: bool = False) -> fx.Node:
    """Copy ``source``'s :data:`INHERITED_META` onto ``node`` -- and its fake value with ``value``, for a
    node that computes a value of the same shape and dtype (zeros for a draw, a folded constant)."""
    keys = (*INHERITED_META, "val") if value else INHERITED_META
    node.meta.update({key: source.meta[key] for key in keys if key in source.meta})
    return node


def buffer_name(module: torch.nn.Module, kind: str, stem: object) -> str:
    """A free attribute name ``_modconv_<kind>_<stem>`` on ``module`` (``_1``, ``_2``, ... appended on a
    collision); ``stem`` is made an identifier (a module path ``"convs.0"`` becomes ``convs_0``)."""
    base = f"_modconv_{kind}_{_IDENTIFIER.sub('_', str(stem)) or 'root'}"
    name, count = base, 1
    while hasattr(module, name):
        name, count = f"{base}_{count}", count + 1
    return name


def register_constant(module: torch.nn.Module, kind: str, stem: object, value: torch.Tensor) -> str:
    """Store ``value`` as a buffer of ``module`` under :func:`buffer_name`; the name."""
    name = buffer_name(module, kind, stem)
    module.register_buffer(name, value)
    return name


class GraphEdit:
    """Nodes added before ``anchor`` (each inheriting its metadata) and buffers registered on ``gm``, until
    :meth:`replace` commits them in ``anchor``'s place or :meth:`undo` removes them all."""

    def __init__(self, gm: fx.GraphModule, anchor: fx.Node) -> None:
        self.gm, self.anchor = gm, anchor
        self.added: list[fx.Node] = []
        self.buffers: list[str] = []

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        """A ``call_function`` node of ``target`` on ``args`` and ``kwargs``."""
        with self.gm.graph.inserting_before(self.anchor):
            node = self.gm.graph.call_function(target, args, kwargs)
        self.added.append(inherit_meta(node, self.anchor))
        return node

    def constant(self, kind: str, stem: object, value: torch.Tensor) -> fx.Node:
        """A node reading ``value``, stored as a new buffer (see :func:`register_constant`)."""
        name = register_constant(self.gm, kind, stem, value)
        self.buffers.append(name)
        with self.gm.graph.inserting_before(self.anchor):
            node = self.gm.graph.get_attr(name)
        self.added.append(node)
        return node

    def replace(self, result: fx.Node, *, erase: bool = True) -> None:
        """Let every reader of ``anchor`` read ``result``; ``anchor`` goes unless ``erase`` is false (a node
        left without readers is then removed by the cleanup's dead-code pass)."""
        self.anchor.replace_all_uses_with(result)
        if erase:
            self.gm.graph.erase_node(self.anchor)

    def undo(self) -> None:
        """Remove every node and buffer added, newest first: the graph is as it was."""
        for node in reversed(self.added):
            self.gm.graph.erase_node(node)
        for name in self.buffers:
            delattr(self.gm, name)
        self.added, self.buffers = [], []

"""The graph stage's two contracts: a *rule* finds, proves and replaces; a *pass* runs and says what it changed.

A :class:`GraphRule` is the graph's counterpart of a module rule (:mod:`..registry`), built as inductor's
pattern matcher and onnxscript's rewriter are: ``find`` reads the pattern (no numbers), ``prove`` accepts
a candidate on the probe's numbers, ``replace`` edits the graph (:class:`~.edit.GraphEdit`) and checks
its construction. A step that fails returns a :class:`NoMatch` -- falsy, with the reason and the module
path -- never ``None`` or a bare string, so the runner (:func:`~modconv_export.rewrite.graph.rewrite_graph`)
is one loop over an ordered rule list: every rule's ``find`` on the same graph, one probe run for every
candidate's needed values, then each rule's ``prove`` and ``replace`` in order.

A :class:`GraphPass` is an edit needing no proof (noise draws to zeros, pushed selections, constant
folding): ``run(context) -> PassResult``, as torch.fx's and onnx-ir's ``PassBase`` return a
``PassResult(module, modified)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch.fx as fx

from .facts import GraphFacts

__all__ = ["GraphContext", "GraphPass", "GraphRule", "NoMatch", "PassResult", "Probe", "Site", "run_passes"]


@dataclass(frozen=True)
class NoMatch:
    """Why a candidate is not rewritten, and where (its module path); falsy, as inductor's ``FailedMatch``.

    ``blocking`` when no export can keep the candidate as it is (a convolution grouped by the batch): the
    rewrite then refuses the model with :attr:`GraphRule.refusal` and this reason.
    """

    path: str
    reason: str
    blocking: bool = False

    def __bool__(self) -> bool:
        return False


class Site(Protocol):
    """A candidate a rule's ``find`` returns: where it is, and which probe values its proof reads."""

    path: str

    def needed(self) -> set[fx.Node]:
        """Nodes whose probe *values* the proof reads."""

    def shaped(self) -> set[fx.Node]:
        """Nodes whose probe *shapes* the proof reads (no value kept)."""


@dataclass
class GraphContext:
    """What rules and passes read: the module being rewritten, the facts of its graph and its batch symbol
    (``None`` for a graph generalised from fixed batch sizes)."""

    gm: fx.GraphModule
    facts: GraphFacts
    symbol: Any
    generalized: bool = False


@dataclass(frozen=True)
class Probe:
    """The probe run at batch size ``batch``: values of the candidates' needed nodes and of every size
    node, and shapes of their shaped nodes."""

    values: dict[fx.Node, Any]
    shapes: dict[fx.Node, tuple]
    batch: int


#: ``find(context) -> (candidates, misses)``: what the pattern finds, and what looks like it but is not.
FindFn = Callable[[GraphContext], tuple[Sequence[Any], Sequence[NoMatch]]]


@dataclass(frozen=True)
class GraphRule:
    """One graph rewrite (see the module docstring); ``name`` is what reports call it."""

    name: str
    find: FindFn
    #: ``prove(context, site, probe) -> proof | NoMatch``: the numbers that accept ``site``.
    prove: Callable[[GraphContext, Any, Probe], Any]
    #: ``replace(context, site, proof) -> None | NoMatch``: the edit; on a ``NoMatch`` the graph is as it was.
    replace: Callable[[GraphContext, Any, Any], NoMatch | None]
    #: The progress line shown while the rule's candidates are proven.
    progress: str
    #: Whether a candidate that fails its proof is reported as a near miss (a rule whose candidates are
    #: correct as they are, only slower, leaves them quietly).
    reports: bool = True
    #: The message a blocking :class:`NoMatch` stops the rewrite with, before its path and reason.
    refusal: str = ""

    def apply(self, context: GraphContext, site: Any, probe: Probe) -> NoMatch | None:
        """``prove`` then ``replace`` ``site``: ``None`` when it was rewritten, else why not."""
        proof = self.prove(context, site, probe)
        if isinstance(proof, NoMatch):
            return proof
        return self.replace(context, site, proof)


@dataclass(frozen=True)
class PassResult:
    """What a pass did: whether it changed the graph, and notes for the report (``(path, note)``)."""

    modified: bool
    notes: tuple[tuple[str, str], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GraphPass:
    """An edit without a proof: ``run(context) -> PassResult``.

    ``keeps_program`` when the edit computes exactly what the captured program computes (a selection
    pushed into a product), so that a capture no rule changed may still be handed to the exporter as is;
    a pass that changes what is computed (noise draws to zeros) makes the rewritten graph the one to export.
    """

    name: str
    run: Callable[[GraphContext], PassResult]
    keeps_program: bool = False


def run_passes(passes: Sequence[GraphPass], context: GraphContext) -> list[tuple[GraphPass, PassResult]]:
    """Run ``passes`` in order on ``context``; each with its result."""
    return [(graph_pass, graph_pass.run(context)) for graph_pass in passes]

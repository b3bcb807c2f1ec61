"""The graph-level rewrite: find batch-grouped convolutions in the traced graph, whatever the code.

Module rules (:mod:`modconv_export.rewrite.rules`) recognise layers of codebases we know by their
structure; this stage recognises the *computation*, so it serves every StyleGAN2 relative -- rosinality's,
NVlabs', a user's own. :func:`rewrite_graph`:

1. captures the model with ``torch.export`` and a symbolic batch (:mod:`.capture`; a model that freezes
   its batch is captured twice and generalised, :mod:`.generalize`), tracing through autograd Functions;
2. replaces Gaussian draws by zero noise (:mod:`.noise`);
3. finds each convolution whose groups are the batch and whose weight is a constant kernel times
   per-sample factors, and replaces it by ``conv(x * s, K) * d`` (:mod:`.grouped_conv`); computes
   demodulations from ``s`` instead of the per-sample weight (:mod:`.demodulation`); each replacement is
   accepted only if it is proven exact on probe values at batch size :data:`PROBE_BATCH`;
4. folds parameter-only values into constants and tidies reshapes (:mod:`.cleanup`).

The proofs read the weight chains -- parameters and per-sample vectors -- and the capture's shapes: the
probe values are computed from the probe inputs by :func:`.evaluate.evaluate_many`, which runs only what
they depend on (the mapping network of a StyleGAN2, not its synthesis), so the rewrite costs about what
the capture costs at any image size. A graph generalised from fixed batch sizes has no symbolic shapes:
it is run once at the probe batch (and once at batch 1), which also proves the generalisation.

The result is a :class:`GraphExportForm`: an ``nn.Module`` that runs at any batch size with constant
convolution weights, exportable to ONNX by either exporter and to TorchScript by tracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..._util.memory import give_back
from ..._util.progress import counted, step
from ...errors import RewriteError
from ...layers.graph_form import GraphExportForm
from ..report import NearMiss, Note, RewriteReport, Rewritten
from .capture import CaptureError, GraphCapture, at_batch, capture
from .cleanup import CLEANUP_PASSES, fold_constants
from .contract import GraphContext, GraphPass, GraphRule, NoMatch, Probe, run_passes
from .demodulation import DEMODULATION_RULE
from .evaluate import concrete_shape
from .facts import analyze
from .grouped_conv import GROUPED_CONV_RULE
from .noise import NOISE_PASS
from .probe import PROBE_BATCH, compare_outputs, flat_tensors, probe_values
from .program import ProgramSignature
from .selections import SELECTIONS_PASS

__all__ = [
    "CaptureError",
    "GraphCapture",
    "GraphExportForm",
    "GRAPH_PASSES",
    "GRAPH_RULE_ORDER",
    "GRAPH_RULES",
    "HALF_TOLERANCE",
    "PROBE_BATCH",
    "captured_form",
    "half_form",
    "rewrite_graph",
]

#: The passes that prepare the graph for the rules, in order: noise draws to zeros, selections pushed.
GRAPH_PASSES: tuple[GraphPass, ...] = (NOISE_PASS, SELECTIONS_PASS)
#: The graph rules, in the order they find and then rewrite: a demodulation is found on the graph the
#: convolutions were found on, and rewritten after them.
GRAPH_RULE_ORDER: tuple[GraphRule, ...] = (GROUPED_CONV_RULE, DEMODULATION_RULE)
#: Names under which graph rewrites appear in a :class:`~modconv_export.rewrite.RewriteReport`.
GRAPH_RULES = {"conv": GROUPED_CONV_RULE.name, "demod": DEMODULATION_RULE.name, "noise": NOISE_PASS.name}
#: Relative L2 the float16 graph may differ from the float32 one on the probe (the fp16 parity limit).
HALF_TOLERANCE = 1e-2


def _refuse(rule: GraphRule, miss: NoMatch) -> None:
    raise RewriteError(f"{miss.path or 'the model'}: {rule.refusal}: {miss.reason}")


def _batch_of(args: tuple) -> int | None:
    return next((int(a.shape[0]) for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)


def _example_outputs(gm: fx.GraphModule, out_spec: Any, batch: int | None, symbol: Any) -> Any:
    """The outputs' shapes and dtypes at ``batch`` as ``meta`` tensors in the model's output structure, read
    from the capture (``None`` where a shape is not known: the caller then runs the model)."""
    from torch.utils import _pytree as pytree

    output = next(n for n in gm.graph.nodes if n.op == "output")
    flat = []
    for node in output.args[0]:
        shape = concrete_shape(node, batch, symbol) if batch is not None and symbol is not None else None
        if shape is None:
            return None
        flat.append(torch.empty(shape, dtype=node.meta["val"].dtype, device="meta"))
    return pytree.tree_unflatten(flat, out_spec)


def _form(gm: fx.GraphModule, captured: GraphCapture, args: tuple, outputs: Any, program: Any = None) -> GraphExportForm:
    form = GraphExportForm(gm, captured.out_spec, program=program)
    form.example_outputs, form.example_batch = outputs, _batch_of(args)
    form.signature = ProgramSignature.of(captured.program) if captured.program is not None else None
    return form


def _prepare(context: GraphContext, passes: Sequence[GraphPass], report: RewriteReport) -> bool:
    """Run ``passes``, their notes into ``report``, the facts read again after each that changed the graph;
    whether one changed what the graph computes."""
    changed = False
    for graph_pass in passes:
        result = graph_pass.run(context)
        report.notes.extend(Note(path, graph_pass.name, note) for path, note in result.notes)
        if result.modified:
            context.facts = analyze(context.gm.graph)
        changed = changed or (result.modified and not graph_pass.keeps_program)
    return changed


def _find(context: GraphContext, rules: Sequence[GraphRule], report: RewriteReport) -> list[tuple[GraphRule, Sequence[Any]]]:
    """Every rule's candidates on the same graph; near misses into ``report``, a blocking one refused."""
    found = []
    for rule in rules:
        sites, misses = rule.find(context)
        if rule.reports:
            report.near_misses.extend(NearMiss(miss.path, rule.name, miss.reason) for miss in misses)
        blocking = next((miss for miss in misses if miss.blocking), None)
        if blocking is not None:
            _refuse(rule, blocking)
        found.append((rule, sites))
    return found


def _apply(context: GraphContext, found: list[tuple[GraphRule, Sequence[Any]]], probe: Probe, report: RewriteReport) -> None:
    """Prove and replace every candidate, rule by rule; what failed into ``report``, a blocking failure refused."""
    failed: list[tuple[GraphRule, NoMatch]] = []
    for rule, sites in found:
        for site in counted(sites, rule.progress):
            result = rule.apply(context, site, probe)
            give_back()  # the proof's weight-sized temporaries
            if result is None:
                report.rewritten.append(Rewritten(site.path, rule.name))
            elif rule.reports:
                failed.append((rule, result))
    report.near_misses.extend(NearMiss(miss.path, rule.name, miss.reason) for rule, miss in failed)
    blocking = next(((rule, miss) for rule, miss in failed if miss.blocking), None)
    if blocking is not None:
        _refuse(*blocking)


def rewrite_graph(
    model: nn.Module,
    args: tuple,
    report: RewriteReport,
    *,
    rules: Sequence[GraphRule] = GRAPH_RULE_ORDER,
    passes: Sequence[GraphPass] = GRAPH_PASSES,
    cleanup: Sequence[GraphPass] = CLEANUP_PASSES,
) -> GraphExportForm:
    """Capture and rewrite ``model`` (see the module docstring); what was done goes into ``report``.

    ``args`` are example inputs (tensors, axis 0 the batch). ``passes`` prepare the graph, every rule of
    ``rules`` finds its candidates on it, one probe run gives the values their proofs read, each rule
    proves and replaces its candidates in order, and ``cleanup`` tidies the result. Raises
    :class:`RewriteError` when the model cannot be captured, or when a batch-grouped convolution cannot be
    proven equal to a constant-weight one (the message names its module path and why) -- never returns a
    graph with a frozen batch.
    """
    step("rewrite: capturing the graph (torch.export)")
    captured = capture(model, args)
    gm = captured.module
    outputs = _example_outputs(gm, captured.out_spec, _batch_of(args), captured.symbol)
    context = GraphContext(gm, analyze(gm.graph), captured.symbol, captured.generalized)
    changed = _prepare(context, passes, report)
    found = _find(context, rules, report)
    if not (any(sites for _, sites in found) or changed or captured.generalized) and not fold_constants(gm, dry_run=True):
        return _form(gm, captured, args, outputs, program=captured.program)  # nothing to rewrite
    wanted = set().union(*(site.needed() for _, sites in found for site in sites))
    shaped = set().union(*(site.shaped() for _, sites in found for site in sites))
    step(f"rewrite: probe values at batch {PROBE_BATCH}" + (" (a run of the generalised graph)" if captured.generalized else ""))
    probe = probe_values(model, captured, args, wanted, shaped)
    _apply(context, found, probe, report)
    del probe

    step("rewrite: folding constants")
    run_passes(cleanup, context)
    return _form(gm, captured, args, outputs)


def captured_form(model: nn.Module, args: tuple) -> GraphExportForm:
    """``model`` captured as it is, no pass applied (what ``rewrite=False`` exports in float16)."""
    args = tuple(args)
    captured = capture(model, args)
    outputs = _example_outputs(captured.module, captured.out_spec, _batch_of(args), captured.symbol)
    return _form(captured.module, captured, args, outputs, program=captured.program)


def half_form(form: GraphExportForm, args: tuple) -> GraphExportForm:
    """A float16 copy of ``form`` (:mod:`.half`: feature maps in float16, float32 islands, float32 I/O).

    Checked against ``form`` on the probe inputs: finite everywhere and within :data:`HALF_TOLERANCE`, or
    a :class:`RewriteError` saying by how much it is not.
    """
    import copy

    from .evaluate import annotate
    from .half import to_half_graph

    gm = copy.deepcopy(form.graph_module)
    annotate(gm, tuple(args))
    to_half_graph(gm)
    half = GraphExportForm(gm, form.out_spec, form.lowerings)
    half.example_outputs, half.example_batch = form.example_outputs, form.example_batch  # float32 I/O either way
    half.signature = form.signature
    probe = at_batch(tuple(args), PROBE_BATCH, seed=0)
    with torch.no_grad():
        actual, expected = flat_tensors(half(*probe)), flat_tensors(form(*probe))
    if not all(bool(torch.isfinite(a).all()) for a in actual):
        raise RewriteError("in float16 the model's outputs are not finite on the probe inputs")
    error = compare_outputs(actual, expected)
    if not error <= HALF_TOLERANCE:
        raise RewriteError(
            f"in float16 the model's outputs differ from float32 by relative L2 {error:.2e} on the probe (limit {HALF_TOLERANCE:.0e})"
        )
    return half

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

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..._util import relative_l2
from ..._util.memory import give_back
from ..._util.progress import counted, step
from ...errors import RewriteError
from ...layers.graph_form import GraphExportForm
from .capture import CaptureError, GraphCapture, at_batch, capture
from .cleanup import drop_identity_reshapes, fold_constants, merge_reshapes, remove_unused
from .demodulation import find_sums_of_squares, rewrite_sum_of_squares
from .evaluate import concrete_shape, evaluate_many, sizes_at
from .facts import analyze
from .grouped_conv import find_grouped_convs, rewrite_grouped_conv
from .noise import zero_gaussian_draws
from .program import ProgramSignature, fake_values
from .selections import push_selections

__all__ = [
    "CaptureError",
    "GraphCapture",
    "GraphExportForm",
    "GRAPH_RULES",
    "HALF_TOLERANCE",
    "PROBE_BATCH",
    "captured_form",
    "half_form",
    "rewrite_graph",
]

#: Batch size of the probe run that proves each replacement (distinct from the capture's 2).
PROBE_BATCH = 3
#: Names under which graph rewrites appear in a :class:`~modconv_export.rewrite.RewriteReport`.
GRAPH_RULES = {
    "conv": "graph:batch_grouped_conv",
    "demod": "graph:demodulation",
    "noise": "graph:noise",
}
#: Relative L2 a graph generalised from fixed batch sizes may differ from the model (float reassociation).
GRAPH_TOLERANCE = 1e-4
#: Relative L2 the float16 graph may differ from the float32 one on the probe (the fp16 parity limit).
HALF_TOLERANCE = 1e-2


def _flat(outputs: Any) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    return [o for o in pytree.tree_leaves(outputs) if isinstance(o, torch.Tensor)]


def _compare(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return float("inf")
    return max((relative_l2(a, e) for a, e in zip(actual, expected)), default=0.0)


def _refuse(miss: tuple[str, str]) -> None:
    path, reason = miss
    raise RewriteError(f"{path or 'the model'}: a convolution grouped by the batch cannot be made batch-independent: {reason}")


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


def _recorded_run(gm: fx.GraphModule, inputs: tuple, wanted: set, shaped: set) -> tuple[dict, dict, list]:
    """One run of ``gm``: the values of ``wanted`` nodes and of every non-tensor node, the shapes of
    ``shaped`` nodes, and the flat outputs (every other value is freed after its last use)."""
    values: dict[fx.Node, Any] = {}
    shapes: dict[fx.Node, tuple] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            value = super().run_node(node)
            if not isinstance(value, torch.Tensor):
                values[node] = value
            elif node in wanted:
                values[node] = value.clone()  # a later op of the run must not change what was recorded
            if node in shaped and isinstance(value, torch.Tensor):
                shapes[node] = tuple(value.shape)
            return value

    with torch.no_grad():
        outputs = _flat(_Recorder(gm).run(*inputs))
    return values, shapes, outputs


def _probe_values(model: nn.Module, captured: GraphCapture, args: tuple, wanted: set, shaped: set) -> tuple[dict, dict]:
    """The probe's values of ``wanted`` (and of every size node) and shapes of ``shaped`` nodes."""
    gm, probe = captured.module, at_batch(args, PROBE_BATCH, seed=0)
    if not captured.generalized:
        sizes = sizes_at(gm.graph, PROBE_BATCH, captured.symbol)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        values = evaluate_many(gm, wanted, {**dict(zip(placeholders, probe)), **sizes})
        shapes = {n: concrete_shape(n, PROBE_BATCH, captured.symbol) for n in shaped}
        return {**sizes, **values}, shapes
    values, shapes, outputs = _recorded_run(gm, probe, wanted, shaped)
    for batch, inputs in ((PROBE_BATCH, probe), (1, at_batch(args, 1, seed=1))):
        with torch.no_grad():
            actual = outputs if batch == PROBE_BATCH else _flat(gm(*inputs))
            error = _compare(actual, _flat(model(*inputs)))
        if not error <= GRAPH_TOLERANCE:
            raise RewriteError(
                f"the model's graph, generalised from fixed batch sizes, does not reproduce it at batch size {batch} (relative L2 {error:.2e})"
            )
        del actual
    return values, shapes


def _annotated(gm: fx.GraphModule) -> bool:
    """Fake values for the nodes the passes added; ``False`` where an op has no fake kernel (the graph is
    correct as it is, only not tidied; its export then traces it again)."""
    try:
        return fake_values(gm)
    except Exception:
        return False


def rewrite_graph(model: nn.Module, args: tuple, report: Any) -> GraphExportForm:
    """Capture and rewrite ``model`` (see the module docstring); what was done goes into ``report``.

    ``args`` are example inputs (tensors, axis 0 the batch). Raises :class:`RewriteError` when the model
    cannot be captured, or when a batch-grouped convolution cannot be proven equal to a constant-weight one
    (the message names its module path and why) -- never returns a graph with a frozen batch.
    """
    step("rewrite: capturing the graph (torch.export)")
    captured = capture(model, args)
    gm = captured.module
    outputs = _example_outputs(gm, captured.out_spec, _batch_of(args), captured.symbol)
    draws = zero_gaussian_draws(gm.graph)
    for path, op in draws:
        report.notes.append(
            (
                path,
                GRAPH_RULES["noise"],
                f"draws Gaussian noise ({op}); the export adds zero noise there (pass noise explicitly to keep other values)",
            )
        )
    facts = analyze(gm.graph)
    if push_selections(gm.graph, facts):  # (K * s)[:, :out, :in] -> K[:, :out, :in] * s[:, :, :in]
        facts = analyze(gm.graph)
    convs, misses = find_grouped_convs(gm.graph, facts, captured.symbol)
    report.near_misses.extend((path, GRAPH_RULES["conv"], reason) for path, reason, _ in misses)
    blocking = [(path, reason) for path, reason, blocks in misses if blocks]
    if blocking:
        _refuse(blocking[0])
    sums = find_sums_of_squares(gm.graph, facts)
    if not (convs or sums or draws or captured.generalized) and not fold_constants(gm, dry_run=True):
        return _form(gm, captured, args, outputs, program=captured.program)  # nothing to rewrite
    wanted = set().union(*(c.needed() for c in convs), *(s.needed() for s in sums))
    step(f"rewrite: probe values at batch {PROBE_BATCH}" + (" (a run of the generalised graph)" if captured.generalized else ""))
    values, shapes = _probe_values(model, captured, args, wanted, set().union(*(c.shaped() for c in convs)))

    failed = []
    for site in counted(convs, "rewrite: proving batch-grouped convolutions"):
        reason = rewrite_grouped_conv(gm, site, values, PROBE_BATCH, shapes)
        give_back()  # the proof's weight-sized temporaries
        if reason is None:
            report.rewritten.append((site.path, GRAPH_RULES["conv"]))
        else:
            failed.append((site.path, reason))
    for site in counted(sums, "rewrite: proving demodulations"):
        if rewrite_sum_of_squares(gm, site, values, PROBE_BATCH) is None:
            report.rewritten.append((site.path, GRAPH_RULES["demod"]))
        give_back()
    report.near_misses.extend((path, GRAPH_RULES["conv"], reason) for path, reason in failed)
    if failed:
        _refuse(failed[0])
    del values

    step("rewrite: folding constants")
    remove_unused(gm)
    fold_constants(gm)
    merge_reshapes(gm.graph)
    if not captured.generalized and _annotated(gm):  # the replacements' shapes, as the capture's own
        drop_identity_reshapes(gm.graph)
    remove_unused(gm)
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
        actual, expected = _flat(half(*probe)), _flat(form(*probe))
    if not all(bool(torch.isfinite(a).all()) for a in actual):
        raise RewriteError("in float16 the model's outputs are not finite on the probe inputs")
    error = _compare(actual, expected)
    if not error <= HALF_TOLERANCE:
        raise RewriteError(
            f"in float16 the model's outputs differ from float32 by relative L2 {error:.2e} on the probe (limit {HALF_TOLERANCE:.0e})"
        )
    return half

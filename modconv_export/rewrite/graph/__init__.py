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
   accepted only if it reproduces the original on a probe run;
4. folds parameter-only values into constants and tidies reshapes (:mod:`.cleanup`);
5. checks the whole rewritten graph against the captured one on the probe inputs.

The result is a :class:`GraphExportForm`: an ``nn.Module`` that runs at any batch size with constant
convolution weights, exportable to ONNX by either exporter and to TorchScript by tracing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..._util import relative_l2
from ...errors import RewriteError
from ...layers.graph_form import GraphExportForm
from .capture import CaptureError, GraphCapture, at_batch, capture
from .cleanup import fold_constants, merge_reshapes, remove_unused
from .demodulation import find_sums_of_squares, rewrite_sum_of_squares
from .evaluate import record
from .facts import analyze
from .grouped_conv import find_grouped_convs, rewrite_grouped_conv
from .noise import zero_gaussian_draws
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
#: Relative L2 the rewritten graph may differ from the captured one on the probe (float reassociation).
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


def rewrite_graph(model: nn.Module, args: tuple, report: Any) -> GraphExportForm:
    """Capture and rewrite ``model`` (see the module docstring); what was done goes into ``report``.

    ``args`` are example inputs (tensors, axis 0 the batch). Raises :class:`RewriteError` when the model
    cannot be captured, or when a batch-grouped convolution cannot be proven equal to a constant-weight one
    (the message names its module path and why) -- never returns a graph with a frozen batch.
    """
    captured = capture(model, args)
    gm = captured.module
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
        return GraphExportForm(gm, captured.out_spec, program=captured.program)  # nothing to rewrite
    probe = at_batch(args, PROBE_BATCH, seed=0)
    wanted = set().union(*(c.needed() for c in convs), *(s.needed() for s in sums))
    values, outputs = record(gm, probe, wanted)
    expected = _flat(outputs)
    if captured.generalized:
        with torch.no_grad():
            for batch, inputs in ((PROBE_BATCH, probe), (1, at_batch(args, 1, seed=1))):
                reference = expected if batch == PROBE_BATCH else _flat(gm(*inputs))
                error = _compare(reference, _flat(model(*inputs)))
                if not error <= GRAPH_TOLERANCE:
                    raise RewriteError(
                        f"the model's graph, generalised from fixed batch sizes, does not reproduce it at batch size {batch} (relative L2 {error:.2e})"
                    )

    failed = []
    for site in convs:
        reason = rewrite_grouped_conv(gm, site, values, PROBE_BATCH)
        if reason is None:
            report.rewritten.append((site.path, GRAPH_RULES["conv"]))
        else:
            failed.append((site.path, reason))
    for site in sums:
        if rewrite_sum_of_squares(gm, site, values, PROBE_BATCH) is None:
            report.rewritten.append((site.path, GRAPH_RULES["demod"]))
    report.near_misses.extend((path, GRAPH_RULES["conv"], reason) for path, reason in failed)
    if failed:
        _refuse(failed[0])

    remove_unused(gm)
    fold_constants(gm)
    merge_reshapes(gm.graph)
    remove_unused(gm)
    with torch.no_grad():
        error = _compare(_flat(gm(*probe)), expected)
    if not error <= GRAPH_TOLERANCE:
        raise RewriteError(f"the rewritten graph differs from the captured one on the probe (relative L2 {error:.2e})")
    return GraphExportForm(gm, captured.out_spec)


def captured_form(model: nn.Module, args: tuple) -> GraphExportForm:
    """``model`` captured as it is, no pass applied (what ``rewrite=False`` exports in float16)."""
    captured = capture(model, tuple(args))
    return GraphExportForm(captured.module, captured.out_spec, program=captured.program)


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

"""Applies the registered rules to a model: a deep copy, children first, each replacement proven on numbers.

Children are rewritten before their parent, so a parent rule (the modulated conv) receives children
that are already in export form (its folded style MLP, its depthwise blur) and simply keeps them.
Every replacement of a rule with a probe is run against the module it replaces on the inputs the model
gives that module -- recorded from one forward pass of the whole model on the example inputs
(:mod:`.recorded`) -- or, for a module that pass did not reach, on the rule's synthetic probe inputs. A
replacement that disagrees is rejected and reported as a near miss rather than silently changing the model.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import torch
import torch.nn as nn

from .._util import as_tuple, exception_line, relative_l2
from .._util.progress import step
from ..errors import RewriteError
from .recorded import ModuleCall, Recording, is_plain_torch, record_calls
from .registry import Replacement, Rule, RuleRegistry, active_rules
from .report import NearMiss, Note, Proof, RewriteReport, Rewritten

__all__ = ["RewriteReport", "copy_module", "rewrite_model", "make_exportable", "rewrite_report"]

_REPORT_ATTR = "_modconv_export_report"
#: Batch size of the forward pass the module rules' inputs are recorded from.
RECORD_BATCH = 2


def _probe_calls(rule: Rule, module: nn.Module, recorded: list[ModuleCall] | None) -> list[ModuleCall]:
    """What ``rule``'s replacement of ``module`` is compared on: the calls the model makes (adapted by the
    rule), else the rule's synthetic probe, else nothing (a rule without a probe)."""
    if rule.probe_inputs is None:
        return []
    if recorded:
        adapt = rule.adapt_call
        drawn = [call.materialized(seed) for seed, call in enumerate(recorded)]  # shapes recorded: values drawn now
        return [ModuleCall(*adapt(module, c.args, c.kwargs), values=c.values) if adapt else c for c in drawn]
    inputs = rule.probe_inputs(module)
    return [] if inputs is None else [ModuleCall(tuple(inputs), {}, source="synthetic")]


def _mismatch(actual: tuple, expected: tuple, where: str, tolerance: float) -> str | None:
    if len(actual) != len(expected):
        return "its export form returns a different number of outputs"
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return f"its export form gives shape {tuple(a.shape)} instead of {tuple(e.shape)} on {where}"
        err = relative_l2(a, e)
        if not err <= tolerance:
            return f"its export form differs on {where} (relative L2 {err:.2e} > {tolerance:.0e})"
    return None


def _proof_error(rule: Rule, before: nn.Module, after: nn.Module, calls: list[ModuleCall]) -> tuple[str | None, str | None]:
    """Run both modules on every call: the reason for rejecting ``after`` (or ``None``) and a note for the report."""
    for call in calls:
        with torch.no_grad():
            try:
                expected = as_tuple(call.run(before))
            except Exception as exc:  # the original cannot run where the model runs it
                if not rule.replaces_unrunnable:
                    return f"it fails on {call.where} ({exception_line(exc, 200)})", None
                failure = exception_line(exc, 160)
                try:
                    call.run(after)
                except Exception as other:
                    return f"its export form fails on {call.where} ({exception_line(other, 200)})", None
                return None, f"not compared numerically: the original cannot run here ({failure})"
            try:
                actual = as_tuple(call.run(after))
            except Exception as exc:
                return f"its export form fails on {call.where} ({exception_line(exc, 200)})", None
        reason = _mismatch(actual, expected, call.where, rule.probe_tolerance)
        if reason is not None:
            return reason, None
    return None, None


def _apply_rules(module: nn.Module, path: str, report: RewriteReport, recorded: list[ModuleCall] | None, rules: RuleRegistry) -> nn.Module:
    for rule in rules:
        if not rule.looks_like(module):
            continue
        reason, note, calls = rule.check(module), None, []
        if reason is None and rule.skip_plain_torch and recorded and all(is_plain_torch(module, c) for c in recorded):
            continue  # already plain torch where the model calls it: the graph stage handles it, whatever it computes
        if reason is None:
            try:
                calls = _probe_calls(rule, module, recorded)
            except Exception as exc:
                reason = f"its probe inputs cannot be made ({exception_line(exc, 160)})"
        if reason is None and rule.skip_plain_torch and not recorded and calls and all(is_plain_torch(module, c) for c in calls):
            continue
        if reason is None:
            try:
                replaced = rule.replace(module)
                result = replaced if isinstance(replaced, Replacement) else Replacement(replaced)
            except Exception as exc:
                reason = f"its replacement failed ({exception_line(exc, 200)})"
            else:
                replacement = result.module
                reason, note = _proof_error(rule, module, replacement, calls)
        if reason is not None:
            report.near_misses.append(NearMiss(path, rule.name, reason))
            continue
        report.rewritten.append(Rewritten(path, rule.name))
        report.proofs.append(Proof(path, rule.name, calls[0].source if calls else "none"))
        report.notes.extend(Note(path, rule.name, text) for text in (result.note, note) if text)
        module = replacement
    return module


def _rewrite_tree(module: nn.Module, path: str, report: RewriteReport, recording: Recording | None, rules: RuleRegistry) -> nn.Module:
    for name, child in list(module.named_children()):
        new_child = _rewrite_tree(child, f"{path}.{name}" if path else name, report, recording, rules)
        if new_child is not child:
            module._modules[name] = new_child
    return _apply_rules(module, path, report, recording.calls.get(module) if recording is not None else None, rules)


def _stand_in(rule: Rule, module: nn.Module) -> nn.Module:
    result = rule.replace(module)
    return result.module if isinstance(result, Replacement) else result


def _record(model: nn.Module, args: tuple, registry: RuleRegistry) -> Recording:
    """The calls of every module a rule looks at, from one forward pass of ``model`` at batch 2 (distinct
    samples, as the graph stage's probe), else at the example's own batch. A module a rule may replace
    where it cannot run (a CUDA-only op) has that replacement stand in for it where it fails."""
    from .graph.capture import at_batch

    rules = registry.ordered()
    compared = [rule for rule in rules if rule.probe_inputs is not None]  # a fold is the same arithmetic by construction
    chosen = [m for m in model.modules() if any(rule.looks_like(m) for rule in compared)]
    if not chosen:  # nothing to prove: no forward pass (at 1024 px it costs what the model's forward costs)
        return Recording()
    stand_ins = {}
    for module in chosen:
        rule = next((r for r in rules if r.replaces_unrunnable and r.looks_like(module) and r.check(module) is None), None)
        if rule is not None:
            stand_ins[module] = functools.partial(_stand_in, rule, module)
    probe = at_batch(args, RECORD_BATCH, seed=0)
    recording = record_calls(model, probe, chosen, stand_ins, shapes_only=True)
    if recording.error is None and not recording.cannot_run:
        return recording
    # The fake pass could not tell (an op without a fake kernel, an integer argument, a module that raised
    # there): the real pass, which keeps copies of the real arguments.
    recording = record_calls(model, probe, chosen, stand_ins)
    if recording.error is not None:
        recording = record_calls(model, args, chosen, stand_ins)
    return recording


def copy_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with hook-computed tensor attributes.

    After one forward, an ``EqualLR`` hook leaves ``module.weight`` as a non-leaf tensor, which
    ``deepcopy`` refuses; those attributes are copied detached (the hook recomputes them anyway).
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def rewrite_model(
    model: nn.Module, *, strict: bool = False, example_inputs: Any = None, graph: bool = True, rules: RuleRegistry | None = None
) -> tuple[nn.Module, RewriteReport]:
    """Return an export-ready deep copy of ``model`` (eval mode) and the report of what changed.

    The module rules run first (known layer families, folds), each replacement proven on the inputs the
    model gives that module in one forward pass on ``example_inputs`` (a tensor or a tuple in ``forward``
    order, axis 0 the batch; without them, on synthetic probes). With ``example_inputs`` the model is then
    captured as a graph and every convolution grouped by the batch is rewritten there (:mod:`.graph`; not
    with ``graph=False``): the result is a :class:`~modconv_export.rewrite.graph.GraphExportForm` that runs
    at any batch size, whatever code the model comes from. ``strict=True`` raises :class:`RewriteError` on
    any near miss instead of warning. ``rules`` are the module rules to apply (default: :func:`.registry.active_rules`).
    """
    rules = rules if rules is not None else active_rules()
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    report = RewriteReport()
    step("rewrite: module rules")
    copied = copy_module(model).eval()
    args = as_tuple(example_inputs) if example_inputs is not None else None
    recording = _record(copied, args, rules) if args is not None else None
    rewritten = _rewrite_tree(copied, "", report, recording, rules).eval()
    if args is not None and graph:
        from .graph import rewrite_graph

        rewritten = rewrite_graph(rewritten, args, report)
    _settle(report, strict)
    object.__setattr__(rewritten, _REPORT_ATTR, report)
    return rewritten, report


def _settle(report: RewriteReport, strict: bool) -> None:
    """Raise (strict) or warn about the report's near misses."""
    if report.near_misses:
        lines = report.describe_near_misses()
        if strict:
            raise RewriteError("; ".join(lines))
        warnings.warn("modules left unrewritten: " + "; ".join(lines), stacklevel=3)


def make_exportable(model: nn.Module, example_inputs: Any = None, *, strict: bool = False, rules: RuleRegistry | None = None) -> nn.Module:
    """A deep copy of ``model`` in eval mode in export form; the original model is untouched.

    Without ``example_inputs``: the module rules only (seed ``ModulatedConv2d`` -> input-modulated conv,
    ``Blur`` -> depthwise conv, ``EqualLR`` hooks folded, the GFPGAN/basicsr layers). With them: also the
    graph-level rewrite, which finds batch-grouped convolutions in any code (rosinality, NVlabs, yours)
    and returns a module that runs at any batch size with constant convolution weights.
    :func:`rewrite_report` on the result lists what was rewritten, with module paths.
    """
    return rewrite_model(model, strict=strict, example_inputs=example_inputs, rules=rules)[0]


def rewrite_report(module: nn.Module) -> RewriteReport:
    """The :class:`RewriteReport` of a module returned by :func:`make_exportable`."""
    report = getattr(module, _REPORT_ATTR, None)
    if report is None:
        raise ValueError("this module did not come from make_exportable()")
    return report

"""Applies the registered rules to a model: a deep copy, children first, each replacement self-checked.

Children are rewritten before their parent, so a parent rule (the modulated conv) receives children
that are already in export form (its folded style MLP, its depthwise blur) and simply keeps them.
Every replacement that declares probe inputs is run against the module it replaces; a replacement
that disagrees is rejected and reported as a near miss rather than silently changing the model.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .._util import as_tuple, exception_line, relative_l2
from .._util.progress import step
from ..errors import RewriteError
from .registry import Replacement, Rule, registered_rules

__all__ = ["RewriteReport", "copy_module", "rewrite_model", "make_exportable", "rewrite_report"]

_REPORT_ATTR = "_modconv_export_report"


@dataclass
class RewriteReport:
    """What :func:`rewrite_model` did: rewritten module paths and near misses with their reasons."""

    rewritten: list[tuple[str, str]] = field(default_factory=list)  # (module path, rule name)
    near_misses: list[tuple[str, str, str]] = field(default_factory=list)  # (path, rule, reason)
    #: (path, rule, note): what a user should know about a replacement (its :class:`Replacement` note), e.g.
    #: that random noise became zero noise or that the original could not be run for the probe.
    notes: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Paths (as in ``named_modules``; ``""`` is the root) of the modules that were replaced."""
        return [path for path, _ in self.rewritten]

    def count(self, rule: str | None = None) -> int:
        return sum(1 for _, r in self.rewritten if rule is None or r == rule)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, rule in self.rewritten:
            out[rule] = out.get(rule, 0) + 1
        return out

    def describe_near_misses(self) -> list[str]:
        return [f"{path or '<root>'}: looks like {rule} but {reason}" for path, rule, reason in self.near_misses]

    def describe_notes(self) -> list[str]:
        """One line per distinct (rule, note), naming the modules it applies to."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for path, rule, note in self.notes:
            grouped.setdefault((rule, note), []).append(path or "<root>")
        return [f"{rule} ({len(paths)}: {', '.join(paths)}): {note}" for (rule, note), paths in grouped.items()]


def _probe_error(rule: Rule, before: nn.Module, after: nn.Module) -> str | None:
    """Run both modules on the rule's probe inputs; the reason for rejecting ``after``, if any."""
    inputs = rule.probe_inputs(before) if rule.probe_inputs else None
    if inputs is None:
        return None
    with torch.no_grad():
        try:
            expected = as_tuple(before(*inputs))
        except Exception as exc:  # the original cannot run on a well-formed probe: not our pattern
            return f"it fails on a probe input ({exception_line(exc, 200)})"
        try:
            actual = as_tuple(after(*inputs))
        except Exception as exc:
            return f"its export form fails on a probe input ({type(exc).__name__}: {exc})"
    if len(actual) != len(expected):
        return "its export form returns a different number of outputs"
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return f"its export form gives shape {tuple(a.shape)} instead of {tuple(e.shape)}"
        err = relative_l2(a, e)
        if not err <= rule.probe_tolerance:
            return f"its export form differs on a probe input (relative L2 {err:.2e} > {rule.probe_tolerance:.0e})"
    return None


def _apply_rules(module: nn.Module, path: str, report: RewriteReport) -> nn.Module:
    for rule in registered_rules():
        if not rule.looks_like(module):
            continue
        reason = rule.check(module)
        if reason is None:
            try:
                result = rule.replace(module)
                result = result if isinstance(result, Replacement) else Replacement(result)
            except Exception as exc:
                reason = f"its replacement failed ({type(exc).__name__}: {exc})"
            else:
                replacement = result.module
                reason = _probe_error(rule, module, replacement)
        if reason is not None:
            report.near_misses.append((path, rule.name, reason))
            continue
        report.rewritten.append((path, rule.name))
        if result.note:
            report.notes.append((path, rule.name, result.note))
        module = replacement
    return module


def _rewrite_tree(module: nn.Module, path: str, report: RewriteReport) -> nn.Module:
    for name, child in list(module.named_children()):
        new_child = _rewrite_tree(child, f"{path}.{name}" if path else name, report)
        if new_child is not child:
            module._modules[name] = new_child
    return _apply_rules(module, path, report)


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


def rewrite_model(model: nn.Module, *, strict: bool = False, example_inputs: Any = None) -> tuple[nn.Module, RewriteReport]:
    """Return an export-ready deep copy of ``model`` (eval mode) and the report of what changed.

    The module rules run first (known layer families, folds). With ``example_inputs`` (a tensor or a
    tuple in ``forward`` order, axis 0 the batch) the model is then captured as a graph and every
    convolution grouped by the batch is rewritten there (:mod:`.graph`): the result is a
    :class:`~modconv_export.rewrite.graph.GraphExportForm` that runs at any batch size, whatever code the
    model comes from. ``strict=True`` raises :class:`RewriteError` on any near miss instead of warning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    report = RewriteReport()
    step("rewrite: module rules")
    copied = copy_module(model).eval()
    rewritten = _rewrite_tree(copied, "", report).eval()
    if example_inputs is not None:
        from .graph import rewrite_graph

        rewritten = rewrite_graph(rewritten, as_tuple(example_inputs), report)
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


def make_exportable(model: nn.Module, example_inputs: Any = None, *, strict: bool = False) -> nn.Module:
    """A deep copy of ``model`` in eval mode in export form; the original model is untouched.

    Without ``example_inputs``: the module rules only (seed ``ModulatedConv2d`` -> input-modulated conv,
    ``Blur`` -> depthwise conv, ``EqualLR`` hooks folded, the GFPGAN/basicsr layers). With them: also the
    graph-level rewrite, which finds batch-grouped convolutions in any code (rosinality, NVlabs, yours)
    and returns a module that runs at any batch size with constant convolution weights.
    :func:`rewrite_report` on the result lists what was rewritten, with module paths.
    """
    return rewrite_model(model, strict=strict, example_inputs=example_inputs)[0]


def rewrite_report(module: nn.Module) -> RewriteReport:
    """The :class:`RewriteReport` of a module returned by :func:`make_exportable`."""
    report = getattr(module, _REPORT_ATTR, None)
    if report is None:
        raise ValueError("this module did not come from make_exportable()")
    return report

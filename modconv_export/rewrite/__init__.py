"""Rewrite: turn seed-style layers into export forms (see :mod:`.engine` and :mod:`.rules`)."""

from . import rules  # noqa: F401  (registers the built-in rules)
from .engine import RewriteReport, copy_module, make_exportable, rewrite_model, rewrite_report
from .registry import STAGES, Replacement, Rule, RuleRegistry, register_rule, registered_rules, unregister_rule, use_rules
from .report import NearMiss, Note, Proof, Rewritten

__all__ = [
    "STAGES",
    "NearMiss",
    "Note",
    "Proof",
    "Replacement",
    "Rewritten",
    "RewriteReport",
    "Rule",
    "RuleRegistry",
    "copy_module",
    "make_exportable",
    "register_rule",
    "registered_rules",
    "rewrite_model",
    "rewrite_report",
    "unregister_rule",
    "use_rules",
]

"""What a rewrite did, as data: one small record per rewritten module, near miss, note and proof.

The records are what the command line prints (``-v``), what ``--json`` writes and what an exported
file's metadata summarises; each has a ``to_json`` with its field names as keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["NearMiss", "Note", "Proof", "RewriteReport", "Rewritten"]


@dataclass(frozen=True)
class Rewritten:
    """The module at ``path`` (as in ``named_modules``; ``""`` is the root) was replaced by ``rule``."""

    path: str
    rule: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NearMiss:
    """The module at ``path`` looks like what ``rule`` rewrites but is left as it is, for ``reason``."""

    path: str
    rule: str
    reason: str

    def describe(self) -> str:
        return f"{self.path or '<root>'}: looks like {self.rule} but {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Note:
    """What a user should know about ``rule``'s work at ``path`` (noise made zero, a comparison skipped)."""

    path: str
    rule: str
    note: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Proof:
    """What a module rule's replacement at ``path`` was compared on: ``inputs`` is ``"recorded"`` (the
    inputs the model gives the module), ``"synthetic"`` (built from its parameters) or ``"none"``."""

    path: str
    rule: str
    inputs: str


@dataclass
class RewriteReport:
    """What :func:`rewrite_model` did: rewritten module paths and near misses with their reasons."""

    rewritten: list[Rewritten] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    #: What a user should know about a replacement (its module rule's note, a graph pass's note), e.g. that
    #: random noise became zero noise or that the original could not be run for the probe.
    notes: list[Note] = field(default_factory=list)
    #: What each module rule's replacement was compared on.
    proofs: list[Proof] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Paths (as in ``named_modules``; ``""`` is the root) of the modules that were replaced."""
        return [done.path for done in self.rewritten]

    def count(self, rule: str | None = None) -> int:
        return sum(1 for done in self.rewritten if rule is None or done.rule == rule)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for done in self.rewritten:
            out[done.rule] = out.get(done.rule, 0) + 1
        return out

    def describe_near_misses(self) -> list[str]:
        return [miss.describe() for miss in self.near_misses]

    def first_rewrite_at(self, path: str) -> tuple[str, str] | None:
        """``(path, rule)``: the first module rule applied to the module at ``path``, else to the nearest module
        around it, else to one inside it -- where to look when the rewritten model fails at ``path``."""
        applied = [(done.path, done.rule) for done in self.rewritten if not done.rule.startswith("graph:")]
        around = [(p, r) for p, r in applied if p == "" or path == p or path.startswith(p + ".")]
        inside = [(p, r) for p, r in applied if path == "" or p.startswith(path + ".")]
        if around:
            nearest = max(len(p) for p, _ in around)
            return next((p, r) for p, r in around if len(p) == nearest)
        return inside[0] if inside else None

    def describe_notes(self) -> list[str]:
        """One line per distinct (rule, note), naming the modules it applies to."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for note in self.notes:
            grouped.setdefault((note.rule, note.note), []).append(note.path or "<root>")
        return [f"{rule} ({len(paths)}: {', '.join(paths)}): {note}" for (rule, note), paths in grouped.items()]

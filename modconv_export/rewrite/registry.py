"""The rewrite-rule registry: one small registered unit per layer pattern.

A rule has three parts, as onnxscript's rewriter rules do:

* ``looks_like(module)`` -- cheap structural test: is this *meant* to be the layer? (attributes,
  parameter and buffer shapes; never the class or its import path, since users keep their own copies);
* ``check(module)`` -- returns ``None`` when the module fits the pattern exactly, otherwise the reason
  it does not. A module that looks like the layer but fails the check is a *near miss* and is reported;
* ``replace(module)`` -- builds the export form: a module, or a :class:`Replacement` that carries a
  note for the report along with it (e.g. that random noise became zero noise).

Every replacement is then proven on numbers (:mod:`.engine`): run against the module it replaces on the
inputs the model gives that module -- recorded from one forward pass of the whole model
(:mod:`.recorded`) -- or, where there are none (no example inputs, a module the model does not call), on
the rule's synthetic ``probe_inputs``. A rule for code torch cannot run or trace here declares it
(``skip_plain_torch``, ``replaces_unrunnable``): where such a module turns out to be plain torch, the graph
stage handles it whatever it computes, and a replacement could only add risk.

Order is declared, not implied: every rule belongs to a :data:`STAGES` entry -- ``"fold"`` rules
(re-parameterisations such as EqualLR's weight hook) run on a module before ``"layer"`` rules replace it
-- and within a stage rules run in name order. Children are rewritten before their parents, so a parent's
rule may require its children's export forms (its ``check`` says so when they are missing).

Rules register with :func:`register_rule` (into :data:`BUILTIN_RULES`) or a :class:`RuleRegistry`'s ``rule``
decorator; a duplicate name or a malformed rule fails at import time. A rewrite uses the registry it is
given, else the one :func:`use_rules` makes current, else the built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "BUILTIN_RULES",
    "STAGES",
    "Replacement",
    "Rule",
    "RuleRegistry",
    "active_rules",
    "register_rule",
    "registered_rule",
    "registered_rules",
    "unregister_rule",
    "use_rules",
]

ProbeFn = Callable[[nn.Module], tuple | None]
#: Makes a recorded call comparable between a module and its replacement (e.g. explicit noise for a layer
#: the model lets draw its own): ``(module, args, kwargs) -> (args, kwargs)``.
AdaptFn = Callable[[nn.Module, tuple, dict], tuple[tuple, dict]]

#: The order in which rules run on one module: folds first, then layer replacements.
STAGES = ("fold", "layer")


@dataclass(frozen=True)
class Replacement:
    """A rule's result: the export form, and what a user should know about it (shown in the report)."""

    module: nn.Module
    note: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    looks_like: Callable[[nn.Module], bool]
    check: Callable[[nn.Module], str | None]
    replace: Callable[[nn.Module], nn.Module | Replacement]
    #: Synthetic inputs for the numerical check of a replacement where the model's own are not recorded,
    #: or ``None`` to skip the check (for rules whose replacement is the same arithmetic by construction).
    probe_inputs: ProbeFn | None = None
    #: Adapts each recorded call before the comparison (see :data:`AdaptFn`), or ``None``.
    adapt_call: AdaptFn | None = None
    #: The rule exists for code torch cannot run or trace (a CUDA kernel): a module that is plain torch on
    #: its probe inputs is left to the graph stage.
    skip_plain_torch: bool = False
    #: A module that cannot run on its probe inputs here (a CUDA-only op on the CPU) is replaced all the
    #: same, without a comparison, and the report notes it; otherwise that is a near miss.
    replaces_unrunnable: bool = False
    #: Relative L2 error above which the replacement is rejected as inexact.
    probe_tolerance: float = 1e-5
    #: Which of :data:`STAGES` the rule belongs to.
    stage: str = "layer"
    description: str = ""


class RuleRegistry:
    """An ordered set of module rules, looked up by name; a call can be given one (``rewrite_model(...,
    rules=RuleRegistry([...]))``). :data:`BUILTIN_RULES` holds the toolkit's rules and those registered
    with :func:`register_rule`; :func:`active_rules` is the one a call without ``rules`` uses."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> Rule:
        """Add ``rule``; a name already present is an error (a rule replaces another only after :meth:`remove`)."""
        if rule.name in self._rules:
            raise ValueError(f"rewrite rule {rule.name!r} is registered twice")
        self._rules[rule.name] = rule
        return rule

    def remove(self, name: str) -> None:
        del self._rules[name]

    def get(self, name: str) -> Rule | None:
        return self._rules.get(name)

    def ordered(self) -> list[Rule]:
        """The rules in the order they are tried on a module: by stage, then by name."""
        return sorted(self._rules.values(), key=lambda r: (STAGES.index(r.stage), r.name))

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.ordered())

    def __len__(self) -> int:
        return len(self._rules)

    def rule(self, name: str, **options: Any) -> Callable[[Callable[[nn.Module], nn.Module]], Callable[[nn.Module], nn.Module]]:
        """Decorator adding ``replace`` as the rule ``name`` to this registry (see :func:`register_rule`)."""
        return _decorator(self, name, **options)


#: The toolkit's rules and every rule registered with :func:`register_rule`.
BUILTIN_RULES = RuleRegistry()
_ACTIVE: ContextVar[RuleRegistry | None] = ContextVar("modconv_export_rules", default=None)


def active_rules() -> RuleRegistry:
    """The registry a rewrite without ``rules`` uses: the one :func:`use_rules` set here, else :data:`BUILTIN_RULES`."""
    chosen = _ACTIVE.get()
    return BUILTIN_RULES if chosen is None else chosen  # an empty registry is a choice too (it is falsy)


@contextmanager
def use_rules(rules: RuleRegistry) -> Iterator[RuleRegistry]:
    """Within the block, every rewrite that is given no ``rules`` (an export included) uses ``rules``;
    restored on exit, even on error (``use_rules(RuleRegistry())``: the graph rewrite alone)."""
    token = _ACTIVE.set(rules)
    try:
        yield rules
    finally:
        _ACTIVE.reset(token)


def register_rule(
    name: str,
    *,
    looks_like: Callable[[nn.Module], bool],
    check: Callable[[nn.Module], str | None],
    probe_inputs: ProbeFn | None = None,
    probe_tolerance: float = 1e-5,
    stage: str = "layer",
    adapt_call: AdaptFn | None = None,
    skip_plain_torch: bool = False,
    replaces_unrunnable: bool = False,
) -> Callable[[Callable[[nn.Module], nn.Module]], Callable[[nn.Module], nn.Module]]:
    """Decorator registering ``replace`` (module -> module or :class:`Replacement`) as the rule ``name``
    in :data:`BUILTIN_RULES`."""
    return _decorator(
        BUILTIN_RULES,
        name,
        looks_like=looks_like,
        check=check,
        probe_inputs=probe_inputs,
        probe_tolerance=probe_tolerance,
        stage=stage,
        adapt_call=adapt_call,
        skip_plain_torch=skip_plain_torch,
        replaces_unrunnable=replaces_unrunnable,
    )


def _validate(name: str, looks_like: Any, check: Any, probe_inputs: Any, adapt_call: Any, stage: str) -> None:
    """A malformed rule fails where it is declared (import time), not when a model meets it."""
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"rule name must be a non-empty identifier, got {name!r}")
    for part, value in (("looks_like", looks_like), ("check", check)):
        if not callable(value):
            raise TypeError(f"rule {name!r}: {part} must be callable")
    for part, value in (("probe_inputs", probe_inputs), ("adapt_call", adapt_call)):
        if value is not None and not callable(value):
            raise TypeError(f"rule {name!r}: {part} must be callable or None")
    if stage not in STAGES:
        raise ValueError(f"rule {name!r}: stage must be one of {', '.join(STAGES)}, got {stage!r}")


def _decorator(
    registry: RuleRegistry,
    name: str,
    *,
    looks_like: Callable[[nn.Module], bool],
    check: Callable[[nn.Module], str | None],
    stage: str = "layer",
    probe_inputs: ProbeFn | None = None,
    adapt_call: AdaptFn | None = None,
    **options: Any,
) -> Callable[[Callable[[nn.Module], nn.Module]], Callable[[nn.Module], nn.Module]]:
    _validate(name, looks_like, check, probe_inputs, adapt_call, stage)

    def decorate(replace: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        if not callable(replace):
            raise TypeError(f"rule {name!r}: replace must be callable")
        description = (replace.__doc__ or "").strip().splitlines()[0] if replace.__doc__ else ""
        rule = Rule(
            name=name,
            looks_like=looks_like,
            check=check,
            replace=replace,
            probe_inputs=probe_inputs,
            adapt_call=adapt_call,
            stage=stage,
            description=description,
            **options,
        )
        registry.add(rule)
        return replace

    return decorate


def unregister_rule(name: str) -> None:
    """Remove a rule from :data:`BUILTIN_RULES` (for users replacing a built-in one)."""
    BUILTIN_RULES.remove(name)


def registered_rule(name: str) -> Rule | None:
    """The rule registered as ``name`` in the registry in use (:func:`active_rules`), or ``None``."""
    return active_rules().get(name)


def registered_rules() -> list[Rule]:
    """All rules of the registry in use (:func:`active_rules`), in the order they are tried on a module."""
    return active_rules().ordered()


def param_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype a probe input for ``module`` should have."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def probe_tensor(module: nn.Module, *shape: int, seed: int = 0) -> torch.Tensor:
    """A reproducible random probe input on ``module``'s device and dtype."""
    device, dtype = param_device_dtype(module)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def conv_shape_mismatch(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Why a conv-like module's ``in_channels``/``out_channels``/``kernel_size`` (where it has them)
    disagree with its weight ``shape`` (``[..., Cout, Cin, k, k]``), or a non-square kernel; else ``None``."""
    c_out, c_in, k_h, k_w = shape[-4:]
    if k_h != k_w:
        return f"its kernel is {k_h}x{k_w}, not square"
    for attr, expected in (("in_channels", c_in), ("out_channels", c_out), ("kernel_size", k_h)):
        value = getattr(module, attr, expected)
        if value != expected:
            return f"{attr}={value} disagrees with weight shape {tuple(shape)}"
    return None
